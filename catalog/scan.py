"""Scan an output folder for known identifiers (PHI), reading each format the way a reader would.

- tar shards: member names; text members (json, txt) in full; ``.npy`` headers; PNG text chunks (tEXt, zTXt,
  iTXt); and the raw bytes of every member for identifiers of 8+ characters (short ones would match by chance in
  pixel bytes).
- Parquet: every value, decoded (raw bytes would hide compressed strings).
- JSON, JSONL, logs, text: in full. Any other file: raw bytes, 8+ character identifiers.
Matching is case-insensitive on word boundaries. A hit names the file, the place in it and the identifier's kind,
never the identifier itself.
"""
from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from medcurate.transforms.io import relpath

MIN_BINARY_LEN = 8


@dataclass(frozen=True)
class Hit:
    file: str
    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.file} [{self.where}]: a {self.kind} identifier"


class Matcher:
    def __init__(self, identifiers: list):
        pairs = sorted({(k, v.strip()) for k, v in identifiers if v and len(v.strip()) >= 2})
        self.text = [(k, re.compile(r"(?<![A-Za-z0-9])" + re.escape(v) + r"(?![A-Za-z0-9])", re.IGNORECASE))
                     for k, v in pairs]
        self.binary = [(k, v.encode("utf-8").lower()) for k, v in pairs if len(v) >= MIN_BINARY_LEN]

    def in_text(self, text: str) -> set:
        return {k for k, rx in self.text if rx.search(text)}

    def in_bytes(self, data: bytes) -> set:
        low = data.lower()
        return {k for k, v in self.binary if v in low}


def _png_text(data: bytes) -> str:
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos: pos + 8])
        chunk = data[pos + 8: pos + 8 + length]
        if ctype == b"tEXt":
            out.append(chunk.decode("latin-1"))
        elif ctype == b"zTXt":
            key, _, rest = chunk.partition(b"\0")
            out.append(key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1", "replace"))
        elif ctype == b"iTXt":
            out.append(chunk.decode("utf-8", "replace"))
        pos += 12 + length
    return "\n".join(out)


def _npy_header(data: bytes) -> str:
    if not data.startswith(b"\x93NUMPY"):
        return ""
    major = data[6]
    if major == 1:
        n = struct.unpack("<H", data[8:10])[0]
        return data[10: 10 + n].decode("latin-1")
    n = struct.unpack("<I", data[8:12])[0]
    return data[12: 12 + n].decode("latin-1")


def _scan_member(name: str, data: bytes, m: Matcher) -> set:
    kinds = m.in_text(name) | m.in_bytes(data)
    if name.endswith((".json", ".txt", ".jsonl", ".csv")):
        kinds |= m.in_text(data.decode("utf-8", "replace"))
    elif name.endswith(".npy"):
        kinds |= m.in_text(_npy_header(data))
    elif name.endswith(".png"):
        kinds |= m.in_text(_png_text(data))
    return kinds


def scan_file(path: str, data: bytes, m: Matcher) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = [("file name", k) for k in m.in_text(path)]
    if path.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                member = tar.extractfile(info)
                content = member.read() if member else b""
                found += [(f"member {info.name}", k) for k in _scan_member(info.name, content, m)]
    elif path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        text = json.dumps(table.to_pylist(), default=str)
        found += [("parquet values", k) for k in m.in_text(text)]
        found += [("parquet schema", k) for k in m.in_text(str(table.schema))]
    elif path.endswith((".json", ".jsonl", ".log", ".txt", ".csv", ".md", ".yaml")):
        found += [("text", k) for k in m.in_text(data.decode("utf-8", "replace"))]
    else:
        found += [("bytes", k) for k in _scan_member(path, data, m)]
    return found


def list_files(out_dir: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([out_dir.rstrip("/") + "/**"])[0].metadata_list)


def scan(out_dir: str, identifiers: list) -> list[Hit]:
    """Every output file under ``out_dir`` checked for ``identifiers`` [(kind, value)]."""
    m = Matcher(identifiers)
    hits = []
    for path in list_files(out_dir):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        rel = relpath(path, out_dir)
        hits += [Hit(rel, where, kind) for where, kind in scan_file(rel, data, m)]
    return sorted(set(hits), key=lambda h: (h.file, h.where, h.kind))
