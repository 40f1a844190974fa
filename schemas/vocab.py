"""Controlled vocabularies (``schemas/vocab/*.yaml``): raw header or table values -> harmonized values.

An unmapped value is never guessed: ``lookup`` returns None, the caller keeps the raw value, and the run summary
lists it so the table can be extended.
"""
from __future__ import annotations

import functools
import os
import re

import yaml

from medcurate.schemas import VOCAB_DIR


def normalize(raw) -> str:
    return re.sub(r"[\s_]+", " ", str(raw or "")).strip().upper()


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict:
    with open(os.path.join(VOCAB_DIR, f"{name}.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.lru_cache(maxsize=None)
def _index(name: str) -> dict:
    doc = load(name)
    index = {}
    for value, entry in doc["values"].items():
        for spelling in [value] + list(entry.get("dicom", [])) + list(entry.get("synonyms", [])):
            index[normalize(spelling)] = value
            index[normalize(spelling).replace(" ", "")] = value
    return index


def lookup(name: str, raw) -> str | None:
    key = normalize(raw)
    if not key:
        return None
    index = _index(name)
    return index.get(key) or index.get(key.replace(" ", ""))


def code(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return (load(name)["values"].get(value) or {}).get("code")


def finding_code(finding: str) -> str | None:
    return (load("findings")["findings"].get(finding) or {}).get("code")


def structure_names(raw_names: dict) -> tuple[dict, list]:
    """{label value: source name} -> ({label value: harmonized structure}, source names with no entry). An
    unmapped name is kept as it is, never guessed."""
    out, unmapped = {}, []
    for value, raw in raw_names.items():
        name = lookup("structures", raw)
        if name is None:
            unmapped.append(str(raw))
        out[value] = name or str(raw)
    return out, sorted(set(unmapped))


def composites(present) -> list[tuple[str, list]]:
    """Composite structures (``members`` in structures.yaml, e.g. BraTS whole tumour and tumour core) with at least
    one member among ``present`` and not present themselves: [(composite, [members present])]."""
    present = set(present)
    out = []
    for value, entry in load("structures")["values"].items():
        members = [m for m in entry.get("members", []) if m in present]
        if members and value not in present:
            out.append((value, members))
    return out


def version(name: str) -> str:
    return str(load(name)["version"])


def label_space(name: str) -> dict:
    return load("findings")["label_spaces"][name]


@functools.lru_cache(maxsize=1)
def _mr_patterns() -> list:
    return [(value, [re.compile(p) for p in entry.get("patterns", [])])
            for value, entry in load("mr_sequence")["values"].items()]


def _number(value) -> float | None:
    try:
        return float(value[0] if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def infer_mr_sequence(texts, params: dict | None = None) -> str:
    """MR sequence from descriptive texts (Series Description, Protocol Name, Sequence Name, Image Type, a channel
    name) and, when they say nothing, from acquisition parameters (DICOM keywords: ScanningSequence,
    SequenceVariant, RepetitionTime, EchoTime, InversionTime, ContrastBolusAgent). ``unknown`` when unsure.

    Parameter rules (ms), used only without a text match: inversion recovery with TI >= 1500 is FLAIR, TI <= 250
    STIR, a gradient-echo IR with TI 300-1300 and TE < 10 T1 (MPRAGE); spin echo with TR < 1000 and TE < 30 is T1,
    TR >= 2000 and TE >= 80 T2, TR >= 2000 and TE < 40 PD; spoiled gradient echo (SP) with TR < 50 and TE < 10 T1.
    T1 with a contrast agent named is T1POST.
    """
    params = params or {}
    text = re.sub(r"[_\-/.,;:()\[\]]+", " ", " ".join(str(t) for t in texts if t)).upper()
    text = re.sub(r"\s+", " ", text).strip()
    found = "unknown"
    if text:
        for value, patterns in _mr_patterns():
            if any(p.search(text) for p in patterns):
                found = value
                break
    if found == "unknown":
        def flags(key):
            v = params.get(key) or []
            return {str(x).strip().upper() for x in (v if isinstance(v, (list, tuple)) else str(v).split("\\"))}

        seq, variant = flags("ScanningSequence"), flags("SequenceVariant")
        tr, te, ti = (_number(params.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
        if "IR" in seq and ti is not None:
            if ti >= 1500:
                found = "FLAIR"
            elif ti <= 250:
                found = "STIR"
            elif "GR" in seq and 300 <= ti <= 1300 and te is not None and te < 10:
                found = "T1"
        elif "SE" in seq and "EP" not in seq and tr is not None and te is not None:
            if tr < 1000 and te < 30:
                found = "T1"
            elif tr >= 2000 and te >= 80:
                found = "T2"
            elif tr >= 2000 and te < 40:
                found = "PD"
        elif "GR" in seq and "SP" in variant and tr is not None and te is not None and tr < 50 and te < 10:
            found = "T1"
    if found == "T1" and str(params.get("ContrastBolusAgent") or "").strip():
        found = "T1POST"
    return found
