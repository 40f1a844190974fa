"""Read: items -> samples.

Two steps, for every kind of item:
1. ``index``: each item gets a group key. DICOM files are parsed header-first (no pixel decoding) and keyed by
   study and series; every other item is its own group.
2. after one GroupByKey of that small metadata, ``build`` assembles a group into a sample: a DICOM series (or
   single image), a NIfTI volume, a 2D image with its row and report; rows without files, companions without
   images and unknown formats are quarantined.
Payloads are created only in ``build``, which fuses with the stages after it, so no runner ever buffers decoded
images between stages (a Flatten of sample PCollections would make the in-memory DirectRunner hold them all).
Quarantine records keep the specific stage: read-dicom-header, read-dicom-series, read-volume, read-image, read-other.
"""
from __future__ import annotations

import apache_beam as beam

from medcurate.schemas.records import Item, QuarantineError
from medcurate.transforms.common import Bound, Stage
from medcurate.transforms.context import Context
from medcurate.transforms.read.dicom import Instance, assemble, read_header
from medcurate.transforms.read.image2d import read_image
from medcurate.transforms.read.volume import read_volume


def reject(item: Item, ctx: Context):
    role = item.companion("role") or "file"
    if item.kind == "missing":
        raise QuarantineError("missing_file", "a label table or dataset list names a file that does not exist",
                              source_sha256=())
    if item.kind == "orphan":
        raise QuarantineError(f"orphan_{role}", f"{role} file has no matching image")
    raise QuarantineError("unknown_format", "file type is not handled by this adapter")


def duplicate_rows(item: Item, ctx: Context):
    raise QuarantineError("duplicate_label_rows", "more than one label-table row names this file")


READERS = {"volume": ("read-volume", read_volume), "image": ("read-image", read_image)}


def _in_stage(stage: str, fn, *args):
    try:
        return fn(*args)
    except QuarantineError as exc:
        exc.stage = stage
        raise


def index(item: Item, ctx: Context) -> tuple:
    """Item -> (group key, member): DICOM headers grouped by series, anything else alone."""
    if item.kind == "dicom":
        return _in_stage("read-dicom-header", read_header, item, ctx)
    return ctx.pseudo.digest("item", item.dataset, item.kind, item.uri), item


def build(group: tuple, ctx: Context):
    key, members = group
    members = list(members)
    if isinstance(members[0], Instance):
        return _in_stage("read-dicom-series", assemble, (key, members), ctx)
    item = members[0]
    if item.kind == "duplicate-rows":
        return _in_stage("read-other", duplicate_rows, item, ctx)
    stage, reader = READERS.get(item.kind, ("read-other", reject))
    return _in_stage(stage, reader, item, ctx)


class Read(beam.PTransform):
    """Items -> (samples, quarantine)."""

    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx

    def expand(self, items):
        keyed, q_index = items | "index" >> Stage("read-index", Bound(index, self.ctx))
        groups = keyed | "group" >> beam.GroupByKey()
        samples, q_build = groups | "build" >> Stage("read", Bound(build, self.ctx))
        return samples, (q_index, q_build) | "quarantine" >> beam.Flatten()
