"""Release gate: find identifiers from the inputs in the outputs, without ever holding them in plain text.

Identifiers are normalized to their word sequence (lower case, runs of letters and digits) and kept only as keyed
fingerprints (BLAKE2b keyed with a subkey of the user's key, 64 bits), each with a kind (name, id, date, place,
contact, file, text). A scan fingerprints every n-gram of words of an output's text (up to the longest identifier)
and looks them up, so a hit names the file, the place in it and the kind, never the value.

What counts as an identifier: values the DICOM profile removed or replaced (names, ids, dates, institutions, ...),
patient ids from label tables, spans presidio found in reports, words of file names and NIfTI header text. Words
that are common clinical or template vocabulary never count alone, single words need three letters or six digits,
so the gate does not fire on "chest" or "2019".
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterable

TOKEN = re.compile(r"[a-z0-9]+")
MAX_WORDS = 8
KINDS = ("name", "id", "date", "place", "contact", "file", "text")
STOPWORDS = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
with without no not none normal clear study exam report patient patients mr mrs ms dr doctor male female year years
old age left right upper lower anterior posterior superior inferior view volume image images scan series frontal
lateral axial coronal sagittal radiograph radiographs chest ct mri xr dx cr pa ap mm cm findings finding impression
labelled labeled anatomy digitally reconstructed projection computed beam cone parallel structures structure more
and true false null none yes unknown other phantom test demo sample samples data dataset json png npy txt seg tar
""".split())
# Street-type words that are no surname ("Lane", "Way", "Court" and "Place" can be, so they stay distinctive).
STREET_TYPES = frozenset("street st avenue ave road rd boulevard blvd drive ln parkway pkwy highway hwy".split())


def words(text: str) -> list[str]:
    return TOKEN.findall(str(text).lower())


@functools.lru_cache(maxsize=1)
def common_words() -> frozenset:
    """Words that never identify alone: stopwords, medcurate's vocabularies and their codes' words, the words of the
    ``<ENTITY>`` tags that replace identifiers in text, and street-type words ("Baker [Street]")."""
    from medcurate.schemas import vocab
    from medcurate.transforms.deid.text import ENTITIES

    found = set(STOPWORDS)
    for entity in ENTITIES:
        found.update(words(entity.replace("_", " ")))
    found.update(STREET_TYPES)
    for name in ("modality", "body_part", "view", "clinical_terms"):
        doc = vocab.load(name)
        for key, entry in (doc.get("values") or {}).items():
            found.update(words(key))
            for field in ("name", "dicom", "synonyms"):
                value = entry.get(field)
                for v in value if isinstance(value, list) else [value or ""]:
                    found.update(words(v))
        for term in doc.get("terms", []):
            found.update(words(term))
    findings = vocab.load("findings")
    for f in findings["findings"]:
        found.update(words(f))
    for space in findings["label_spaces"].values():
        for k, v in space["map"].items():
            found.update(words(k) + words(v))
    return frozenset(found)


def _token_distinctive(w: str) -> bool:
    if w in common_words():
        return False
    if w.isdigit():
        return len(w) >= 6  # ids, dates written as one number; never "2019" or "512"
    if w.isalpha():
        return len(w) >= 3
    return len(w) >= 5 and sum(c.isdigit() for c in w) >= 3  # codes: MRN4471823, ALT99812; not nifti1, mp2rage


def _is_distinctive(seq: tuple, kind: str) -> bool:
    if kind == "date" and len(seq) >= 3 and all(w.isdigit() for w in seq):
        return True  # 03/14/1958, 2019-03-04
    if not any(_token_distinctive(w) for w in seq):
        return False
    if kind in ("text", "file") and len(seq) == 1 and seq[0].isalpha():
        return False  # one plain word of free text or a file name ("Linear", "standard") identifies no one
    return True


def sequences(value: str, kind: str = "text") -> list[tuple]:
    """Word sequences an identifier contributes: the whole value (up to MAX_WORDS words); for names and file-name
    words also each distinctive word (names are written in other orders and in part); for ids each long number."""
    seq = tuple(words(value))
    if not seq:
        return []
    out = [seq] if len(seq) <= MAX_WORDS and _is_distinctive(seq, kind) else []
    if len(seq) > 1 and kind == "name":
        out += [(w,) for w in seq if _token_distinctive(w)]
    elif len(seq) > 1 and kind == "file":
        # file names: adjacent word pairs ("doe jane") and codes or long numbers, never single plain words
        out += [pair for pair in zip(seq, seq[1:]) if any(_token_distinctive(w) for w in pair)]
        out += [(w,) for w in seq if _token_distinctive(w) and not w.isalpha()]
    elif len(seq) > 1 and kind in ("id", "date"):
        out += [(w,) for w in seq if w.isdigit() and len(w) >= 6]
    return sorted(set(out), key=out.index)


@dataclass(frozen=True)
class GateKey:
    """The keyed hash behind fingerprints; a subkey of the user's key (never the key itself), or a random one."""

    key: bytes

    @classmethod
    def from_pseudonymizer(cls, pseudo) -> "GateKey":
        return cls(bytes.fromhex(pseudo.digest("phi-gate-key", length=64)))

    def fingerprint(self, seq: tuple) -> str:
        return hashlib.blake2b(" ".join(seq).encode("utf-8"), key=self.key[:64], digest_size=8).hexdigest()

    def __repr__(self) -> str:
        return "GateKey(<redacted>)"


def fingerprints(gate: GateKey, identifiers: Iterable[tuple], public: Iterable[str] = ()) -> dict:
    """[(kind, value)] -> {fingerprint: "kind:words"}. File-name and free-text sequences made only of ``public``
    words (the recipe's own dataset id, name, description, label names) are no identifiers."""
    public_words = {w for text in public for w in words(text)}
    out: dict[str, str] = {}
    for kind, value in identifiers:
        for seq in sequences(value, kind):
            if kind in ("file", "text") and public_words and all(w in public_words for w in seq):
                continue  # file names and header text may repeat the dataset's own name; a header name may not
            out.setdefault(gate.fingerprint(seq), f"{kind}:{len(seq)}")
    return out


class Scanner:
    """Looks up every word n-gram of a text (n up to the longest identifier) in a fingerprint table."""

    def __init__(self, gate: GateKey, table: dict):
        self.gate = gate
        self.table = table
        self.lengths = sorted({int(v.rsplit(":", 1)[1]) for v in table.values()}) or [1]

    def kinds_in(self, text: str) -> set:
        if not self.table:
            return set()
        toks = words(text)
        found = set()
        for n in self.lengths:
            for i in range(len(toks) - n + 1):
                kind = self.table.get(self.gate.fingerprint(tuple(toks[i: i + n])))
                if kind:
                    found.add(kind.rsplit(":", 1)[0])
        return found

    # -- formats --------------------------------------------------------------------------------------------------
    def scan_member(self, name: str, data: bytes) -> set:
        kinds = self.kinds_in(name)
        if name.endswith((".json", ".txt", ".jsonl", ".csv")):
            kinds |= self.kinds_in(data.decode("utf-8", "replace"))
        elif name.endswith(".npy"):
            kinds |= self.kinds_in(npy_header(data))
        elif name.endswith(".png"):
            kinds |= self.kinds_in(png_text(data))
        return kinds

    def scan_tar(self, data: bytes) -> list[tuple[str, str]]:
        hits = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                member = tar.extractfile(info)
                content = member.read() if member else b""
                hits += [(f"member {info.name}", k) for k in sorted(self.scan_member(info.name, content))]
        return hits

    def scan_file(self, rel: str, data: bytes) -> list[tuple[str, str]]:
        hits = [("file name", k) for k in sorted(self.kinds_in(rel))]
        if rel.endswith((".tar", ".tarpart")):
            hits += self.scan_tar(data if rel.endswith(".tar") else data + b"\0" * 1024)
        elif rel.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            hits += [("parquet values", k) for k in sorted(self.kinds_in(json.dumps(table.to_pylist(), default=str)))]
        elif rel.endswith((".json", ".jsonl", ".log", ".txt", ".csv", ".md", ".yaml")):
            hits += [("text", k) for k in sorted(self.kinds_in(data.decode("utf-8", "replace")))]
        else:
            hits += [("content", k) for k in sorted(self.scan_member(rel, data))]
        return hits


def png_text(data: bytes) -> str:
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


def npy_header(data: bytes) -> str:
    if not data.startswith(b"\x93NUMPY"):
        return ""
    n = struct.unpack("<H", data[8:10])[0] if data[6] == 1 else struct.unpack("<I", data[8:12])[0]
    start = 10 if data[6] == 1 else 12
    return data[start: start + n].decode("latin-1")
