"""Query a run's catalog with SQL (DuckDB), and print counts.

The Parquet is read through Beam FileSystems into Arrow and registered in DuckDB as the view ``catalog`` (and
``quarantine``, ``shards``), so the same command works on local, gs:// and s3:// outputs and needs no DuckDB
extension download (extension autoloading is switched off).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Optional

import duckdb
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from medcurate.catalog.build import CATALOG_PATH
from medcurate.transforms.io import exists, join

TABLES = {"catalog": CATALOG_PATH, "quarantine": "quarantine/quarantine.parquet", "shards": "shards/index.parquet"}


class CatalogError(RuntimeError):
    pass


def _read_table(out_dir: str, rel: str):
    uri = join(out_dir, rel)
    if not exists(uri):
        raise CatalogError(f"no {rel} under the output folder: is it a medcurate output?")
    with FileSystems.open(uri, compression_type="uncompressed") as f:
        return pq.read_table(io.BytesIO(f.read()))


def connect(out_dir: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    for setting in ("autoinstall_known_extensions", "autoload_known_extensions"):
        try:
            con.execute(f"SET {setting} = false")
        except duckdb.Error:
            pass
    for name, rel in TABLES.items():
        try:
            table = _read_table(out_dir, rel)
        except CatalogError:
            if name == "catalog":
                raise
            continue
        con.register(f"_{name}_arrow", table)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
    return con


def query(
    out_dir: str,
    where: Optional[str] = None,
    columns: Optional[str] = None,
    sql: Optional[str] = None,
    limit: Optional[int] = None,
    order_by: str = "key",
) -> tuple[list[str], list[tuple]]:
    con = connect(out_dir)
    if sql is None:
        cols = columns or "key, product, dataset, split, modality, body_part, view, shape, shard"
        sql = f"SELECT {cols} FROM catalog"
        if where:
            sql += f" WHERE {where}"
        sql += f" ORDER BY {order_by}"
        if limit:
            sql += f" LIMIT {int(limit)}"
    try:
        rel = con.execute(sql)
    except duckdb.Error as exc:
        raise CatalogError(f"query failed: {exc}") from None
    names = [d[0] for d in rel.description]
    return names, rel.fetchall()


def stats(out_dir: str) -> list[tuple[str, list[str], list[tuple]]]:
    con = connect(out_dir)
    out = []
    for title, group in (
        ("samples by dataset, modality, split", "dataset, modality, split"),
        ("samples by product and split", "product, split"),
        ("samples by body part and view", "body_part, view"),
    ):
        rel = con.execute(f"SELECT {group}, count(*) AS samples FROM catalog GROUP BY ALL ORDER BY ALL")
        out.append((title, [d[0] for d in rel.description], rel.fetchall()))
    rel = con.execute(
        "SELECT f AS finding, count(*) AS samples FROM (SELECT unnest(findings) AS f FROM catalog) GROUP BY f ORDER BY f"
    )
    out.append(("positive findings", [d[0] for d in rel.description], rel.fetchall()))
    try:
        rel = con.execute(
            "SELECT stage, reason, count(*) AS records, sum(units) AS units FROM quarantine GROUP BY ALL ORDER BY ALL"
        )
        out.append(("quarantine by reason", [d[0] for d in rel.description], rel.fetchall()))
    except duckdb.Error:
        pass
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def render(names: list[str], rows: list[tuple], fmt: str = "table", max_width: int = 60) -> str:
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(names, r)), default=str, sort_keys=False) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(names)
        writer.writerows([[_cell(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in cells]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)
