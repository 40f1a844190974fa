"""Catalog outputs of a run, written through Beam FileSystems, every one sorted so reruns give the same bytes.

- ``catalog/catalog.parquet``: one row per shard sample (``schemas.sample.CATALOG_SCHEMA``) with its shard.
- ``catalog/datasets.json``: the recipes' dataset cards (no source paths); ``catalog/datasets.parquet``: one row per
  dataset (``schemas.sample.DATASET_SCHEMA``) with modalities, anatomy, tasks, label space and counts per split.
- ``catalog/reidentification_risk.json``: k-anonymity and unique share per generalization level, the level applied.
- ``DATASET_CARD.md``: the release's dataset card (sources, licenses, citations, counts, label prevalence, risk).
- ``shards/index.json`` and ``shards/index.parquet``: every shard with product, split, sample count, bytes, sha256.
- ``quarantine/quarantine.jsonl`` and ``.parquet``: one record per input or derived product not written.
- ``summary.json``: counts per stage outcome, per dataset/modality/split/product, reasons, unmapped values,
  the reconciliation ``discovered = written + quarantined`` (in discovered units), and the release gate's verdict.
- ``audit/deid_audit.parquet``: per sample, the de-identification profile, table edition, options, tool version and
  per-tag action counts (no values).
- ``release_gate.json``: files and fingerprints scanned, and every hit by file, place and kind (never a value).
- the linkage file, only when asked for, outside the output folder: AES-GCM-encrypted records, one per sample.

``finalize`` renders these to bytes, runs the release gate over them (shards were scanned while being written),
then writes them.
"""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from medcurate.schemas.sample import (
    CATALOG_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SHARD_INDEX_SCHEMA,
    dumps,
    rows_to_table,
)
from medcurate.catalog.card import CARD_PATH, dataset_rows, render_card
from medcurate.schemas.sample import DATASET_SCHEMA
from medcurate.transforms.io import join, write_bytes
from medcurate.transforms.release import risk_report

CATALOG_PATH = "catalog/catalog.parquet"
DATASETS_TABLE_PATH = "catalog/datasets.parquet"
RISK_PATH = "catalog/reidentification_risk.json"
DATASETS_PATH = "catalog/datasets.json"
INDEX_PATH = "shards/index.json"
QUARANTINE_PATH = "quarantine/quarantine.jsonl"
SUMMARY_PATH = "summary.json"


def _parquet(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def quarantine_rows(records) -> list[dict]:
    rows = [r.to_dict() for r in records]
    return sorted(rows, key=lambda r: (r["dataset"], r["stage"], r["reason"], r["source_sha256"], r["key"] or ""))


def summarize(discovered: dict, rows: list[dict], quarantine: list) -> dict:
    """Counts and the reconciliation, per dataset and in total. ``discovered``: {dataset: units}."""
    q_rows = quarantine_rows(quarantine)
    written = Counter()
    for r in rows:
        written[r["dataset"]] += r["source_units"]
    lost = Counter()
    for q in q_rows:
        lost[q["dataset"]] += q["units"]
    datasets = sorted(set(discovered) | set(written) | set(lost))
    per_dataset = {}
    for d in datasets:
        per_dataset[d] = {
            "discovered": int(discovered.get(d, 0)),
            "written": int(written.get(d, 0)),
            "quarantined": int(lost.get(d, 0)),
            "reconciled": int(discovered.get(d, 0)) == int(written.get(d, 0)) + int(lost.get(d, 0)),
        }

    def count_by(*fields):
        c = Counter(tuple(r.get(f) or "-" for f in fields) for r in rows)
        return {"/".join(k): v for k, v in sorted(c.items())}

    reasons = Counter((q["stage"], q["reason"]) for q in q_rows)
    reason_units = Counter()
    for q in q_rows:
        reason_units[(q["stage"], q["reason"])] += q["units"]
    unmapped = Counter(u for r in rows for u in (r.get("unmapped") or []))
    primary = [r for r in rows if r.get("parent_key") is None]

    def breakdown(subset):
        out = {}
        for field in ("modality", "body_part", "mr_sequence", "split"):
            c = Counter(r.get(field) or "-" for r in subset)
            out[field] = dict(sorted(c.items()))
        out["findings"] = dict(sorted(Counter(f for r in subset for f in (r.get("findings") or [])).items()))
        out["structures"] = dict(sorted(Counter(s for r in subset for s in (r.get("structures") or [])).items()))
        out["samples"] = len(subset)
        out["patients"] = len({r["patient_id"] for r in subset})
        return out

    total = {k: sum(v[k] for v in per_dataset.values()) for k in ("discovered", "written", "quarantined")}
    total["reconciled"] = total["discovered"] == total["written"] + total["quarantined"]
    return {
        "schema_version": SCHEMA_VERSION,
        "total": total,
        "datasets": per_dataset,
        "samples_by_product_split": count_by("product", "split"),
        "samples_by_dataset_modality": count_by("dataset", "modality"),
        "samples_by_split": count_by("split"),
        "quarantine_by_reason": [
            {"stage": s, "reason": r, "records": n, "units": reason_units[(s, r)]} for (s, r), n in sorted(reasons.items())
        ],
        "unmapped_values": dict(sorted(unmapped.items())),
        # primary samples (not derived DRR views) by modality, body part, MR sequence, split and positive finding
        "fused": breakdown(primary),
        "by_dataset": {d: breakdown([r for r in primary if r["dataset"] == d]) for d in datasets},
        "split_conflicts_resolved": {"patients": len({r["patient_id"] for r in rows
                                                      if r.get("split_source") == "patient-resolved"})},
    }


def group_units(pairs) -> dict:
    out = defaultdict(int)
    for dataset, units in pairs:
        out[dataset] += units
    return dict(out)


AUDIT_PATH = "audit/deid_audit.parquet"
GATE_PATH = "release_gate.json"


def _audit_table(audits: list):
    import pyarrow as pa

    from medcurate.schemas.sample import AUDIT_SCHEMA

    rows = []
    for a in sorted(audits, key=lambda a: a["key"]):
        rows.append({
            "key": a["key"], "dataset": a["dataset"], "source_sha256": a.get("source_sha256", []),
            "method": a.get("method"), "profile": a.get("profile"), "table_edition": a.get("table_edition"),
            "options": a.get("options", []), "tool": a.get("tool"),
            "tag_actions": sorted((a.get("tag_actions") or {}).items()) or None,
            "private_creators": a.get("private_creators", []),
            "text_entities": sorted((a.get("text_entities") or {}).items()) or None,
            "dates_unparsed": a.get("dates_unparsed"),
            "header_text_fields_dropped": a.get("header_text_fields_dropped"),
        })
    return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA) if rows else AUDIT_SCHEMA.empty_table()


def write_linkage(linkages: list, path: str) -> int:
    """Encrypted linkage records (sample key, token) as JSON lines, behind a header line; outside the release."""
    lines = [json.dumps({"format": "medcurate-linkage-v1", "cipher": "AES-256-GCM", "records": len(linkages)})]
    lines += [json.dumps({"key": k, "record": t}) for k, t in sorted(linkages)]
    write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return len(linkages)


def finalize(out_dir: str, cards: list, discovered: dict, results: list, quarantine: list, gate_key, table: dict,
             linkage_out: str | None = None, risk: dict | None = None) -> dict:
    """Write the catalog, index, quarantine, datasets, audit, summary and gate report; return the summary."""
    from medcurate.transforms.deid.gate import Scanner

    rows = [r for res in results for r in res["rows"]]
    index = [res["entry"] for res in results]
    audits = [a for res in results for a in res["audits"]]
    linkages = [pair for res in results for pair in res["linkages"]]
    outputs = {
        CATALOG_PATH: _parquet(rows_to_table(sorted(rows, key=lambda r: r["key"]), CATALOG_SCHEMA)),
        INDEX_PATH: (json.dumps({"schema_version": SCHEMA_VERSION, "shards": sorted(index, key=lambda e: e["shard"])},
                                indent=1, sort_keys=True) + "\n").encode(),
        "shards/index.parquet": _parquet(rows_to_table(sorted(index, key=lambda e: e["shard"]), SHARD_INDEX_SCHEMA)),
        QUARANTINE_PATH: "".join(dumps(r) + "\n" for r in quarantine_rows(quarantine)).encode("utf-8"),
        "quarantine/quarantine.parquet": _parquet(rows_to_table(
            [{**r, "detail": dumps(r["detail"])} for r in quarantine_rows(quarantine)], QUARANTINE_SCHEMA)),
        DATASETS_PATH: (json.dumps(sorted(cards, key=lambda c: c["dataset"]["id"]), indent=1, sort_keys=True)
                        + "\n").encode(),
        AUDIT_PATH: _parquet(_audit_table(audits)),
    }
    summary = summarize(discovered, rows, quarantine)
    summary["reidentification_risk"] = risk or risk_report([])
    drows = dataset_rows(cards, rows)
    outputs[DATASETS_TABLE_PATH] = _parquet(rows_to_table(drows, DATASET_SCHEMA))
    outputs[RISK_PATH] = (json.dumps(summary["reidentification_risk"], indent=1, sort_keys=True) + "\n").encode()
    outputs[CARD_PATH] = render_card(cards, drows, summary).encode("utf-8")
    hits = [h for res in results for h in res["hits"]]
    scanner = Scanner(gate_key, table)
    for rel, data in sorted(outputs.items()):
        hits += [{"file": rel, "where": where, "kind": kind} for where, kind in scanner.scan_file(rel, data)]
    hits += [{"file": SUMMARY_PATH, "where": where, "kind": kind}
             for where, kind in scanner.scan_file(SUMMARY_PATH, json.dumps(summary).encode())]
    for entry in index:  # each shard's own Parquet and stats, read back as written
        for rel in (entry["shard"][: -len(".tar")] + ".parquet", entry["shard"][: -len(".tar")] + ".stats.json"):
            with FileSystems.open(join(out_dir, rel), compression_type="uncompressed") as f:
                hits += [{"file": rel, "where": w, "kind": k} for w, k in scanner.scan_file(rel, f.read())]
    hits = sorted({(h["file"], h["where"], h["kind"]) for h in hits})
    gate = {
        "passed": not hits,
        "fingerprints": len(table),
        "files_scanned": len(outputs) + 1 + 3 * len(index),
        "hits": [{"file": f, "where": w, "kind": k} for f, w, k in hits],
    }
    summary["release_gate"] = {k: gate[k] for k in ("passed", "fingerprints", "files_scanned")} | {
        "hits": len(hits)}
    outputs[SUMMARY_PATH] = (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode()
    # the card again, now with the gate's verdict (the scanned version differs only in that sentence)
    outputs[CARD_PATH] = render_card(cards, drows, summary).encode("utf-8")
    outputs[GATE_PATH] = (json.dumps(gate, indent=1, sort_keys=True) + "\n").encode()
    for rel, data in sorted(outputs.items()):
        write_bytes(join(out_dir, rel), data)
    if linkage_out:
        write_linkage(linkages, linkage_out)
    return summary
