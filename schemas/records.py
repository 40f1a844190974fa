"""The types that flow through every stage: the key, the discovered item, the sample record, quarantine records.

Rules (see docs/architecture.md):
- ``SampleKey`` is immutable, hashable, orders and pickles deterministically, and its string form has no dots
  (webdataset splits member names at the first dot) and no identifiers (the digest is an HMAC of the source
  identity under the user's key).
- ``Sample`` is the one record type: harmonized metadata in ``meta`` plus payloads. Derived products (resampled
  volume, DRR views, captions) are added to the same record, never to a parallel structure.
- ``Item`` carries source locations (which may contain PHI, e.g. dcm2niix file names); it never reaches an output.
  Samples keep only content hashes of their sources.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

DATASET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PART_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True, order=True)
class SampleKey:
    """Pseudonymous, deterministic sample identity: ``<dataset>_<digest>[_<part>]``."""

    dataset: str
    digest: str
    part: str = ""

    def __post_init__(self):
        if not DATASET_ID_RE.match(self.dataset):
            raise ValueError("dataset id must match [a-z0-9][a-z0-9-]* (no dots or underscores)")
        if not DIGEST_RE.match(self.digest):
            raise ValueError("digest must be lowercase hex")
        if self.part and not PART_RE.match(self.part):
            raise ValueError("key part must match [a-z0-9][a-z0-9-]*")

    def __str__(self) -> str:
        return f"{self.dataset}_{self.digest}" + (f"_{self.part}" if self.part else "")

    def derive(self, part: str) -> "SampleKey":
        """Key of a product derived from this sample (a DRR view, a split volume)."""
        return SampleKey(self.dataset, self.digest, f"{self.part}-{part}" if self.part else part)

    @classmethod
    def parse(cls, text: str) -> "SampleKey":
        pieces = text.split("_")
        if len(pieces) not in (2, 3):
            raise ValueError("not a sample key")
        return cls(*pieces)

    def __reduce__(self):
        # Plain tuple state: deterministic pickling independent of dict ordering or class internals.
        return (SampleKey, (self.dataset, self.digest, self.part))


@dataclass(frozen=True)
class Item:
    """One discovered source unit. ``uri``/``companions`` are internal (they may hold PHI) and never written."""

    dataset: str
    kind: str  # dicom | volume | image | duplicate-rows | missing | orphan | unknown
    uri: str
    companions: tuple = ()  # ((role, uri), ...) e.g. ("label", uri), ("report", uri)
    row: tuple = ()  # ((column, value), ...) the label-table row for this item, if any
    units: int = 1  # how many discovered units this item stands for (always 1 at discovery)
    size: Optional[int] = None  # bytes, when discovery listed it (saves a metadata call per read)
    info: tuple = ()  # ((name, value), ...) facts the adapter knows: label names, channel name, case id

    def info_dict(self) -> dict:
        return dict(self.info)

    def companion(self, role: str) -> Optional[str]:
        for r, uri in self.companions:
            if r == role:
                return uri
        return None

    def row_dict(self) -> dict:
        return dict(self.row)


@dataclass
class Caption:
    text: str
    kind: str  # template | llm
    model: Optional[str] = None
    prompt_id: Optional[str] = None
    seed: Optional[int] = None
    checked: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class View:
    """One projection derived from a volume (a DRR): float32 line integrals, display image, label maps."""

    name: str  # e.g. "ap", "lateral", "pa-cone"
    line_integral: np.ndarray  # float32 (rows, cols)
    display: np.ndarray  # uint8 or uint16 (rows, cols)
    labels: np.ndarray  # bool (n_structures, rows, cols), or float32 path lengths
    structures: list  # names, one per label map
    geometry: dict  # projection description (kind, matrix, spacing, distances)
    mapping: dict  # HU -> attenuation and display mapping, with names and versions
    captions: list = field(default_factory=list)


@dataclass
class Sample:
    """The record every stage reads and extends.

    Arrays: 3D volumes are indexed ``[i, j, k]`` and ``affine`` maps ``(i, j, k, 1)`` to DICOM/ITK LPS millimetres.
    2D images are ``[row, col]`` (``[row, col, channel]`` for colour).
    """

    key: SampleKey
    dataset: str
    kind: str  # volume | image
    meta: dict = field(default_factory=dict)
    image: Optional[np.ndarray] = None
    affine: Optional[np.ndarray] = None
    label: Optional[np.ndarray] = None
    label_names: dict = field(default_factory=dict)  # {int value: structure name}
    header: Any = None  # pydicom Dataset until de-identified, then a JSON-able dict
    text: dict = field(default_factory=dict)  # {"report": ...}
    views: list = field(default_factory=list)  # [View]
    captions: list = field(default_factory=list)  # [Caption]
    source_sha256: tuple = ()  # content hashes of every source file in this sample
    units: int = 1  # discovered units this sample accounts for
    private: dict = field(default_factory=dict)  # identifiers seen at read time, for de-id only; never written

    def replace(self, **changes) -> "Sample":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class QuarantineRecord:
    """Why an input (or a derived product) was not written. No PHI: reason codes and fixed messages only."""

    dataset: str
    stage: str
    reason: str
    message: str
    source_sha256: tuple = ()
    key: Optional[str] = None
    units: int = 1  # discovered units not written; 0 for a derived product of a written sample
    detail: tuple = ()  # ((name, value), ...) non-identifying facts: counts, shapes, tag keywords

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "stage": self.stage,
            "reason": self.reason,
            "message": self.message,
            "key": self.key,
            "units": self.units,
            "source_sha256": list(self.source_sha256),
            "detail": {k: v for k, v in self.detail},
        }


class QuarantineError(Exception):
    """Raised by a stage function for one bad item. ``message`` must be fixed text with no values from the input."""

    def __init__(
        self,
        reason: str,
        message: str,
        detail: Optional[dict] = None,
        units: Optional[int] = None,
        source_sha256: tuple = (),
    ):
        super().__init__(f"{reason}: {message}")
        if not re.match(r"^[a-z0-9_]+$", reason):
            raise ValueError("reason codes are snake_case")
        self.reason = reason
        self.message = message
        self.detail = tuple(sorted((detail or {}).items()))
        self.units = units
        self.source_sha256 = tuple(source_sha256)
