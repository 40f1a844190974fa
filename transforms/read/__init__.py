"""Read: items -> samples. DICOM files are read header-first and grouped into series; NIfTI and 2D images are
read one item at a time; rows without files, companions without images and unknown formats are quarantined."""
from __future__ import annotations

import apache_beam as beam

from medcurate.schemas.records import Item, QuarantineError
from medcurate.transforms.common import Bound, Stage
from medcurate.transforms.context import Context
from medcurate.transforms.read.dicom import assemble, read_header
from medcurate.transforms.read.image2d import read_image
from medcurate.transforms.read.nifti import read_nifti

KINDS = ("dicom", "nifti", "image", "other")


def reject(item: Item, ctx: Context):
    role = item.companion("role") or "file"
    if item.kind == "missing":
        raise QuarantineError("missing_file", "a label-table row names a file that does not exist", source_sha256=())
    if item.kind == "orphan":
        raise QuarantineError(f"orphan_{role}", f"{role} file has no matching image")
    raise QuarantineError("unknown_format", "file type is not handled by this adapter")


def _kind_index(item: Item, n: int) -> int:
    if item.kind in ("image", "duplicate-rows"):
        return KINDS.index("image")
    return KINDS.index(item.kind) if item.kind in KINDS else KINDS.index("other")


class Read(beam.PTransform):
    """Items -> (samples, quarantine)."""

    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx

    def expand(self, items):
        parts = items | "by-kind" >> beam.Partition(_kind_index, len(KINDS))
        dicom, nifti, image, other = (parts[i] for i in range(len(KINDS)))
        headers, q_header = dicom | "dicom-header" >> Stage("read-dicom-header", Bound(read_header, self.ctx))
        series = headers | "group-series" >> beam.GroupByKey()
        volumes, q_series = series | "dicom-series" >> Stage("read-dicom-series", Bound(assemble, self.ctx))
        niftis, q_nifti = nifti | "nifti" >> Stage("read-nifti", Bound(read_nifti, self.ctx))
        images, q_image = image | "image" >> Stage("read-image", Bound(read_image, self.ctx))
        _, q_other = other | "other" >> Stage("read-other", Bound(reject, self.ctx))
        samples = (volumes, niftis, images) | "samples" >> beam.Flatten()
        quarantine = (q_header, q_series, q_nifti, q_image, q_other) | "quarantine" >> beam.Flatten()
        return samples, quarantine
