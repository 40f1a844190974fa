"""Catalog outputs of a run, written through Beam FileSystems, every one sorted so reruns give the same bytes.

- ``catalog/catalog.parquet``: one row per shard sample (``schemas.sample.CATALOG_SCHEMA``) with its shard.
- ``catalog/datasets.json``: the recipes' dataset cards (no source paths).
- ``shards/index.json`` and ``shards/index.parquet``: every shard with product, split, sample count, bytes, sha256.
- ``quarantine/quarantine.jsonl`` and ``.parquet``: one record per input or derived product not written.
- ``summary.json``: counts per stage outcome, per dataset/modality/split/product, reasons, unmapped values,
  and the reconciliation ``discovered = written + quarantined`` (in discovered units).
"""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import pyarrow.parquet as pq

from medcurate.schemas.sample import (
    CATALOG_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SHARD_INDEX_SCHEMA,
    dumps,
    rows_to_table,
)
from medcurate.transforms.io import join, write_bytes

CATALOG_PATH = "catalog/catalog.parquet"
DATASETS_PATH = "catalog/datasets.json"
INDEX_PATH = "shards/index.json"
QUARANTINE_PATH = "quarantine/quarantine.jsonl"
SUMMARY_PATH = "summary.json"


def _parquet(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_catalog(rows: list[dict], out_dir: str) -> int:
    rows = sorted(rows, key=lambda r: (r["key"]))
    write_bytes(join(out_dir, CATALOG_PATH), _parquet(rows_to_table(rows, CATALOG_SCHEMA)))
    return len(rows)


def write_index(entries: list[dict], out_dir: str) -> int:
    entries = sorted(entries, key=lambda e: e["shard"])
    doc = {"schema_version": SCHEMA_VERSION, "shards": entries}
    write_bytes(join(out_dir, INDEX_PATH), (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    write_bytes(join(out_dir, "shards/index.parquet"), _parquet(rows_to_table(entries, SHARD_INDEX_SCHEMA)))
    return len(entries)


def quarantine_rows(records) -> list[dict]:
    rows = [r.to_dict() for r in records]
    return sorted(rows, key=lambda r: (r["dataset"], r["stage"], r["reason"], r["source_sha256"], r["key"] or ""))


def write_quarantine(records, out_dir: str) -> int:
    rows = quarantine_rows(records)
    text = "".join(dumps(r) + "\n" for r in rows)
    write_bytes(join(out_dir, QUARANTINE_PATH), text.encode("utf-8"))
    table_rows = [{**r, "detail": dumps(r["detail"])} for r in rows]
    write_bytes(join(out_dir, "quarantine/quarantine.parquet"), _parquet(rows_to_table(table_rows, QUARANTINE_SCHEMA)))
    return len(rows)


def write_datasets(cards: list[dict], out_dir: str) -> None:
    cards = sorted(cards, key=lambda c: c["dataset"]["id"])
    write_bytes(join(out_dir, DATASETS_PATH), (json.dumps(cards, indent=1, sort_keys=True) + "\n").encode())


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
    }


def write_summary(summary: dict, out_dir: str) -> None:
    write_bytes(join(out_dir, SUMMARY_PATH), (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())


def group_units(pairs) -> dict:
    out = defaultdict(int)
    for dataset, units in pairs:
        out[dataset] += units
    return dict(out)
