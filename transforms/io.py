"""File access through Beam's FileSystems, so local paths, gs:// and s3:// behave the same.

Bytes are read into memory and decoded there where the library allows (pydicom, nibabel, Pillow); SimpleITK needs a
path, for which ``local_copy`` makes a temporary file that is always removed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import posixpath
import tempfile
from typing import Iterator

from apache_beam.io.filesystems import FileSystems

from medcurate.schemas.records import QuarantineError

DEFAULT_MAX_FILE_BYTES = 2 * 1024**3


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_size(uri: str) -> int:
    found = FileSystems.match([uri], limits=[1])[0].metadata_list
    if not found:
        raise FileNotFoundError("no such file")
    return found[0].size_in_bytes


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES, size: int | None = None) -> bytes:
    """Whole file; refuses (with a quarantine reason) files over ``max_bytes`` before reading them. ``size``, when
    the caller already knows it from a listing, saves a metadata call."""
    try:
        size = file_size(uri) if size is None else size
    except Exception as exc:  # noqa: BLE001 - any filesystem failure is the same for the item
        raise QuarantineError("missing_file", "source file cannot be found or opened") from exc
    if size > max_bytes:
        raise QuarantineError(
            "file_too_large", "source file exceeds the configured size limit", {"bytes": size, "limit": max_bytes}
        )
    with FileSystems.open(uri, compression_type="uncompressed") as f:
        return f.read()


def try_sha256(uri: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple:
    """Content hash for a quarantine record; empty when the file cannot be read."""
    try:
        return (sha256_bytes(read_bytes(uri, max_bytes)),)
    except Exception:  # noqa: BLE001 - best effort, the record says why the item failed
        return ()


def write_bytes(uri: str, data: bytes) -> None:
    with FileSystems.create(uri, mime_type="application/octet-stream") as f:
        f.write(data)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def exists(uri: str) -> bool:
    return FileSystems.exists(uri)


def match_sizes(root: str, pattern: str) -> list[tuple[str, int]]:
    """(path, bytes) of the files under ``root`` matching a glob relative to it (``**`` crosses folders), sorted."""
    root = root.rstrip("/")
    if "**" in pattern:
        # Beam's glob does not cross folders with **; list everything below root and filter by pattern.
        results = FileSystems.match([root + "/**"])[0].metadata_list
        pat = pattern[3:] if pattern.startswith("**/") else pattern
        out = []
        for m in results:
            rel = posixpath.relpath(m.path.replace(os.sep, "/"), root.replace(os.sep, "/"))
            if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(posixpath.basename(rel), pat):
                out.append((m.path, m.size_in_bytes))
        return sorted(out)
    results = FileSystems.match([join(root, pattern)])[0].metadata_list
    return sorted((m.path, m.size_in_bytes) for m in results)


def match(root: str, pattern: str) -> list[str]:
    """Files under ``root`` matching a glob relative to it (``**`` crosses folders), sorted for determinism."""
    return [path for path, _ in match_sizes(root, pattern)]


def relpath(uri: str, root: str) -> str:
    return posixpath.relpath(uri.replace(os.sep, "/"), root.rstrip("/").replace(os.sep, "/"))


@contextlib.contextmanager
def local_copy(data: bytes, suffix: str) -> Iterator[str]:
    """A temporary local file holding ``data`` for libraries that need a path; removed on exit, even on error."""
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="medcurate-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class HashingWriter(io.RawIOBase):
    """Wraps a writable stream, counting bytes and computing sha256 of everything written (for shard indexes)."""

    def __init__(self, stream):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        self._hash.update(b)
        self.bytes += len(b)
        self._stream.write(b)
        return len(b)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
