"""Scan an output folder for identifiers (``medcurate scan-phi``, the demo's check, the tests).

One engine with the release gate (``transforms/deid/gate.py``): identifiers become keyed fingerprints of their word
sequences and every output file is read as a consumer reads it (tar members and their names, Parquet values, JSON,
logs, PNG text chunks, ``.npy`` headers); hits name the file, the place and the kind, never the value.

Identifiers come from a file (one per line, optionally ``kind<TAB>value``; scanned under a random key) or from the
recipes' inputs (read and de-identified again in process with the run's key, which collects exactly what the run's
gate collected).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from medcurate.transforms.deid.gate import GateKey, Scanner, fingerprints
from medcurate.transforms.io import relpath


@dataclass(frozen=True)
class Hit:
    file: str
    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.file} [{self.where}]: a {self.kind} identifier"


def list_files(out_dir: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([out_dir.rstrip("/") + "/**"])[0].metadata_list)


def scan_with(out_dir: str, gate: GateKey, table: dict) -> dict:
    scanner = Scanner(gate, table)
    files = list_files(out_dir)
    hits = set()
    for path in files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        rel = relpath(path, out_dir)
        hits |= {(rel, where, kind) for where, kind in scanner.scan_file(rel, data)}
    return {"files_scanned": len(files), "fingerprints": len(table),
            "hits": [{"file": f, "where": w, "kind": k} for f, w, k in sorted(hits)]}


def scan_folder(out_dir: str, source) -> dict:
    """``source``: [(kind, value)] plain identifiers, or a (GateKey, fingerprint table) pair."""
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], GateKey):
        gate, table = source
    else:
        gate = GateKey(os.urandom(32))
        table = fingerprints(gate, source)
    return scan_with(out_dir, gate, table)


def scan(out_dir: str, identifiers: list) -> list[Hit]:
    """Hits of plain identifiers [(kind, value)] in every file under ``out_dir``."""
    return [Hit(h["file"], h["where"], h["kind"]) for h in scan_folder(out_dir, identifiers)["hits"]]


def identifiers_from_file(path: str) -> list:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            kind, _, value = line.partition("\t") if "\t" in line else ("text", "", line)
            out.append((kind.strip() or "text", value.strip()))
    return out


def identifiers_from_recipes(recipes: list, key) -> tuple:
    """(GateKey, fingerprint table) of everything the recipes' inputs hold, collected as a run collects it."""
    from medcurate.schemas.records import QuarantineError, Sample
    from medcurate.transforms.context import Context
    from medcurate.transforms.deid import Deidentify
    from medcurate.transforms.discover import discover
    from medcurate.transforms.pseudonym import Pseudonymizer
    from medcurate.transforms.read import build, index

    ctx = Context(recipes={r.id: r for r in recipes}, pseudo=Pseudonymizer(key))
    deid = Deidentify(ctx)
    deid.setup()
    groups = defaultdict(list)
    for recipe in recipes:
        for item in discover(recipe):
            try:
                group, member = index(item, ctx)
            except QuarantineError:
                continue
            groups[group].append(member)
    table: dict = {}
    for group in sorted(groups):
        try:
            built = build((group, groups[group]), ctx)
        except QuarantineError:
            continue
        for sample in built if isinstance(built, list) else [built]:
            if not isinstance(sample, Sample):
                continue
            try:
                for clean in deid(sample):
                    table.update(clean.private.get("gate", {}))
            except QuarantineError:
                continue
    return deid.gate, table
