"""DICOM: a header per file, then each series assembled after grouping.

``read_header`` parses one file (pixels are not decoded) and keys it by study and series; segmentation objects
(DICOM SEG, RT Structure Sets) are keyed by the series they reference, so they meet their images. ``assemble`` turns
one group into samples:

- Instances without position/orientation, multi-frame objects and projection images (CR, DX, MG, ...) stand alone.
- The rest is split by geometry signature (orientation, rows/columns, pixel spacing): a "series" that mixes
  orientations (localizers) or sizes becomes several samples.
- Slices are ordered by the projection of ImagePositionPatient on the slice normal, never by file name or
  InstanceNumber. Several instances at one position: copies of one instance (same SOP Instance UID, same pixels)
  are merged and flagged; otherwise the stack is split by the first of AcquisitionNumber, EchoNumbers,
  TemporalPositionIdentifier, TriggerTime, DiffusionBValue, ImageType that separates them; otherwise quarantined.
- Uneven slice spacing (missing slices, irregular positions) is quarantined, or with the recipe option
  ``processing.dicom.uneven_spacing: interpolate`` filled by linear interpolation along the stack and flagged;
  never silently stitched. A gantry tilt is kept as a shear in the affine.
- Rescale Slope/Intercept apply per slice (CT in HU as int16 when it fits); MONOCHROME1 is inverted for 2D images.
- Enhanced multi-frame objects (per-frame functional groups) and RT dose grids (GridFrameOffsetVector, Dose Grid
  Scaling, in Gy) become volumes; other multi-frame objects (cine, dynamic) are quarantined with their own reason.
- SEG and RTSTRUCT become the label map of the volume whose instances they reference (``dicom_seg.py``).

Arrays: volume ``[i, j, k]`` with i along a row (IOP[0:3]), j down the columns (IOP[3:6]), k along the slice step;
2D images ``[row, col]``. The affine maps indices to LPS mm.
"""
from __future__ import annotations

import io
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medcurate.schemas.records import Item, QuarantineError, QuarantineRecord, Sample, SampleKey
from medcurate.transforms.context import Context
from medcurate.transforms.io import read_bytes, relpath, sha256_bytes

# Modalities whose images are projections (or photographs): each instance is its own 2D sample.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "XA", "RF", "IO", "PX", "OT", "SC", "US", "ES", "XC", "GM", "SM", "OP", "DOC"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
SPLIT_ATTRIBUTES = ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier", "TriggerTime",
                    "DiffusionBValue", "ImageType")
ORIENTATION_TOL = 1e-4
POSITION_TOL = 0.01  # mm: two slices closer than this share a position
SPACING_REL_TOL = 0.01  # default; recipe: processing.dicom.spacing_tolerance
READ_THREADS = 2


@dataclass
class Instance:
    item: Item
    sha256: str
    header: pydicom.Dataset  # without PixelData
    pixel_offset: Optional[int] = None  # file position of the PixelData value (native data fast path)
    role: str = "image"  # image | seg | rtstruct

    def quarantine_identity(self) -> dict:
        return {"dataset": self.item.dataset, "key": None, "units": 1, "source_sha256": (self.sha256,)}

    @property
    def sop_uid(self) -> str:
        return str(self.header.get("SOPInstanceUID", "") or "")

    @property
    def frames(self) -> int:
        return _int(self.header, "NumberOfFrames", 1)

    @property
    def orientation(self) -> Optional[tuple]:
        return _floats(self.header.get("ImageOrientationPatient"), 6)

    @property
    def position(self) -> Optional[tuple]:
        return _floats(self.header.get("ImagePositionPatient"), 3)


class TruncatedFile(Exception):
    pass


def _parse(data: bytes, stop_before_pixels: bool) -> pydicom.Dataset:
    """Parse in memory. pydicom reads a truncated file with only a warning (sometimes into an empty dataset), so
    its end-of-file warnings are turned into ``TruncatedFile``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # Files without the 128-byte preamble and DICM prefix are common in public sets; accept them only if
            # forcing yields a real image or object header, otherwise they are not DICOM.
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and "Rows" not in ds:
                raise
    if any("End of file reached" in str(w.message) for w in caught) or len(ds) == 0:
        raise TruncatedFile()
    return _detached(ds)


def _detached(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A plain Dataset with the file meta: pydicom's FileDataset keeps the whole source buffer (``.buffer``), which
    would travel with every pickled header through the grouping shuffle."""
    plain = pydicom.Dataset(ds)
    if getattr(ds, "file_meta", None) is not None:
        plain.file_meta = ds.file_meta
    return plain


def _floats(value, n: int) -> Optional[tuple]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """An integer attribute; a present but malformed value is a quarantine reason, not a crash."""
    try:
        value = ds.get(keyword, default)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        raise QuarantineError("invalid_header_value", "an attribute the reader needs holds an invalid value",
                              {"attribute": keyword}) from None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001 - undecodable values read as absent
        return ""


# -- header stage -------------------------------------------------------------------------------------------------
def _referenced_series(ds: pydicom.Dataset, role: str) -> str:
    try:
        if role == "seg":
            return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        for frame in ds.ReferencedFrameOfReferenceSequence:
            for study in frame.RTReferencedStudySequence:
                for series in study.RTReferencedSeriesSequence:
                    return str(series.SeriesInstanceUID)
    except (AttributeError, IndexError, KeyError):
        return ""
    return ""


def read_header(item: Item, ctx: Context) -> tuple:
    """One file -> (group key, Instance). Raises QuarantineError for files that cannot be an image or a mask."""
    recipe = ctx.recipe(item.dataset)
    data = read_bytes(item.uri, recipe.max_file_bytes, item.size)
    sha = sha256_bytes(data)
    try:
        return _read_header(item, ctx, recipe, data, sha)
    except QuarantineError as exc:
        exc.source_sha256 = exc.source_sha256 or (sha,)
        raise


def _read_header(item: Item, ctx: Context, recipe, data: bytes, sha: str) -> tuple:
    try:
        ds = _parse(data, stop_before_pixels=False)
    except TruncatedFile:
        raise QuarantineError("truncated_file", "DICOM file ends before its data elements do") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage
        raise QuarantineError("not_dicom", "file is not a readable DICOM object") from exc
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality").upper()
    study = _text(ds, "StudyInstanceUID")
    if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        ref = _referenced_series(ds, "rtstruct")
        if not ref:
            raise QuarantineError("segmentation_reference_missing", "structure set references no image series")
        return ctx.pseudo.digest("sample", item.dataset, "series", study, ref), Instance(item, sha, ds, None,
                                                                                         "rtstruct")
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise QuarantineError(
            "no_pixel_data", "DICOM object carries no image (structured report, plan, presentation state, ...)",
            {"modality": (modality or "none")[:16]})
    missing = [kw for kw in ("Rows", "Columns", "BitsAllocated") if kw not in ds]
    if missing:
        raise QuarantineError("incomplete_image_header", "pixel data without the attributes that describe it",
                              {"missing": ",".join(missing)})
    for kw in ("Rows", "Columns", "BitsAllocated", "NumberOfFrames", "SamplesPerPixel", "PixelRepresentation"):
        _int(ds, kw, 1)
    offset = getattr(ds["PixelData"], "file_tell", None) if "PixelData" in ds else None
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            del ds[tag]
    if sop_class == SEG_SOP_CLASS or modality == "SEG":
        ref = _referenced_series(ds, "seg")
        if not ref:
            raise QuarantineError("segmentation_reference_missing", "segmentation references no image series")
        return ctx.pseudo.digest("sample", item.dataset, "series", study, ref), Instance(item, sha, ds, offset, "seg")
    series = _text(ds, "SeriesInstanceUID")
    if series:
        group = ctx.pseudo.digest("sample", item.dataset, "series", study, series)
    else:
        group = ctx.pseudo.digest("sample", item.dataset, "file", relpath(item.uri, recipe.root))
    return group, Instance(item, sha, ds, offset)


# -- pixels -------------------------------------------------------------------------------------------------------
def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""


def _check_decoder(ts: str) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts) if ts else None
    except NotImplementedError as exc:
        raise QuarantineError(
            "unsupported_transfer_syntax", "no pixel decoder exists for this transfer syntax", {"transfer_syntax": ts}
        ) from exc
    if decoder is not None and not decoder.is_available:
        raise QuarantineError(
            "unsupported_transfer_syntax", "no installed pixel decoder handles this transfer syntax",
            {"transfer_syntax": ts},
        )


def _native_pixels(instance: Instance, data: bytes) -> Optional[np.ndarray]:
    """Uncompressed little-endian, one frame, one sample, bits stored = bits allocated (8 or 16): the pixel values
    are the PixelData bytes themselves, viewed where the header parse found them. None for anything else, which
    goes through pydicom's pixel backend (the test suite holds both equal on pydicom's test files)."""
    ds = instance.header
    if instance.pixel_offset is None or _transfer_syntax(ds) not in NATIVE_LITTLE_ENDIAN:
        return None
    bits = _int(ds, "BitsAllocated", 0)
    if (bits not in (8, 16) or _int(ds, "BitsStored", 0) != bits or _int(ds, "SamplesPerPixel", 1) != 1
            or instance.frames != 1
            or _text(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    dtype = np.dtype(("<i" if _int(ds, "PixelRepresentation", 0) else "<u") + str(bits // 8))
    count = rows * cols
    if count == 0 or instance.pixel_offset + count * dtype.itemsize > len(data):
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=instance.pixel_offset).reshape(rows, cols)


def decode(instance: Instance, max_bytes: int) -> np.ndarray:
    """Pixels of one instance: native data viewed in place, anything else through pydicom's pixel backend
    (pylibjpeg for JPEG / JPEG-LS / JPEG 2000, GDCM as a second decoder, RLE built in)."""
    from pydicom.pixels import pixel_array

    data = read_bytes(instance.item.uri, max_bytes, instance.item.size)
    native = _native_pixels(instance, data)
    if native is not None:
        return native
    ts = _transfer_syntax(instance.header)
    _check_decoder(ts)
    try:
        try:
            return pixel_array(io.BytesIO(data))
        except (InvalidDicomError, AttributeError, KeyError):
            # no file meta (implicit files without preamble): decode through a full parse instead
            return _parse(data, stop_before_pixels=False).pixel_array
    except TruncatedFile:
        raise QuarantineError("truncated_file", "DICOM file ends before its data elements do") from None
    except QuarantineError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise assorted errors on corrupt streams
        raise QuarantineError(
            "pixel_decode_failed", "pixel data could not be decoded", {"transfer_syntax": ts, "error": type(exc).__name__}
        ) from exc


def _rescale_params(ds) -> tuple[float, float]:
    try:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise QuarantineError("invalid_header_value", "an attribute the reader needs holds an invalid value",
                              {"attribute": "RescaleSlope/RescaleIntercept"}) from None


def rescale(pixels: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, bool]:
    """Modality LUT (Rescale Slope/Intercept). Integer slope and intercept stay in integers (CT in HU as int16
    when it fits); otherwise float32."""
    if slope == 1 and intercept == 0:
        return pixels, False
    if float(slope).is_integer() and float(intercept).is_integer() and pixels.dtype.kind in "iu":
        values = pixels.astype(np.int32) * int(slope) + int(intercept)
        if values.size == 0 or (-32768 <= values.min() and values.max() <= 32767):
            return values.astype(np.int16), True
        return values, True
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)), True


# -- grouping -----------------------------------------------------------------------------------------------------
@dataclass
class Stack:
    """Instances that form one volume (ordered), with copies merged into them and how the stack was formed."""

    instances: list
    depth: np.ndarray
    copies: dict = field(default_factory=dict)  # SOP UID -> [duplicate Instances]
    split_by: Optional[str] = None
    label: str = ""  # orders stacks of one group deterministically

    @property
    def all_instances(self) -> list:
        return self.instances + [c for v in self.copies.values() for c in v]


def _signature(inst: Instance) -> tuple:
    ps = _floats(inst.header.get("PixelSpacing"), 2) or (0.0, 0.0)
    return (tuple(round(v, 3) for v in inst.orientation), _int(inst.header, "Rows", 0),
            _int(inst.header, "Columns", 0), tuple(round(v, 4) for v in ps))


def _depths(instances: list) -> np.ndarray:
    iop = np.array(instances[0].orientation)
    normal = np.cross(iop[:3], iop[3:])
    return np.array([np.array(i.position) @ normal for i in instances])


def _clusters(depth: np.ndarray) -> list[list[int]]:
    order = np.argsort(depth, kind="stable")
    clusters, current = [], [order[0]]
    for a, b in zip(order[:-1], order[1:]):
        if depth[b] - depth[a] < POSITION_TOL:
            current.append(b)
        else:
            clusters.append(current)
            current = [b]
    clusters.append(current)
    return clusters


def _attr_key(inst: Instance, attribute: str) -> str:
    value = inst.header.get(attribute, "")
    return "\\".join(map(str, value)) if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)


def _stack(instances: list, split_by: Optional[str] = None, label: str = ""):
    """Order a geometry-consistent set; merge copies of one instance; None when distinct instances share a
    position."""
    depth = _depths(instances)
    ordered, depths, copies = [], [], {}
    for cluster in _clusters(depth):
        members = sorted((instances[i] for i in cluster), key=lambda x: x.sha256)
        if len({m.sop_uid for m in members}) > 1:
            return None
        ordered.append(members[0])
        depths.append(depth[cluster[0]])
        if len(members) > 1:
            copies[members[0].sop_uid] = members[1:]
    return Stack(ordered, np.array(depths), copies, split_by, label)


def stacks_of(instances: list) -> list[Stack]:
    """Split geometry-consistent instances into stacks without shared positions (see the module docstring)."""
    whole = _stack(instances)
    if whole is not None:
        return [whole]
    for attribute in SPLIT_ATTRIBUTES:
        parts = defaultdict(list)
        for inst in instances:
            parts[_attr_key(inst, attribute)].append(inst)
        if len(parts) < 2:
            continue
        stacks = [_stack(members, attribute, value) for value, members in sorted(parts.items())]
        if all(s is not None for s in stacks):
            return stacks
    raise QuarantineError("duplicate_slices", "distinct slices share one position and no attribute separates them",
                          {"slices": len(instances)})


# -- assembly -----------------------------------------------------------------------------------------------------
def _fail(instances: list, exc: QuarantineError, dataset: str, key: Optional[SampleKey] = None) -> QuarantineRecord:
    hashes = tuple(sorted({i.sha256 for i in instances}))
    return QuarantineRecord(dataset=dataset, stage="read-dicom-series", reason=exc.reason, message=exc.message,
                            source_sha256=hashes, key=str(key) if key else None, units=len(instances),
                            detail=exc.detail)


def _single_key(base: SampleKey, inst: Instance, ctx: Context, alone: bool) -> SampleKey:
    if alone:
        return base
    return base.derive("i" + ctx.pseudo.digest("instance", inst.sop_uid or inst.sha256, length=10))


def assemble(group: tuple, ctx: Context) -> list:
    """One group (a series with the masks that reference it) -> samples and quarantine records."""
    key, instances = group
    instances = sorted(instances, key=lambda i: i.sha256)
    recipe = ctx.recipe(instances[0].item.dataset)
    base = SampleKey(recipe.id, key)
    images = [i for i in instances if i.role == "image"]
    masks = [i for i in instances if i.role != "image"]
    singles, stackable = [], []
    for inst in images:
        modality = _text(inst.header, "Modality").upper()
        if inst.frames > 1 or modality in PROJECTION_MODALITIES or not (inst.orientation and inst.position):
            singles.append(inst)
        else:
            stackable.append(inst)
    by_signature = defaultdict(list)
    for inst in stackable:
        by_signature[_signature(inst)].append(inst)
    jobs, out = [], []
    for sig in sorted(by_signature):
        members = by_signature[sig]
        if len(members) == 1:
            singles.extend(members)
            continue
        try:
            for stack in stacks_of(members):
                stack.label = f"{sig}|{stack.split_by}|{stack.label}"
                jobs.append(stack)
        except QuarantineError as exc:
            out.append(_fail(members, exc, recipe.id))
    outputs = len(jobs) + len({i.sop_uid or i.sha256 for i in singles})
    volumes = []
    for n, stack in enumerate(sorted(jobs, key=lambda s: (s.label, float(s.depth[0])))):
        sample_key = base if outputs == 1 else base.derive(f"v{n}")
        try:
            volumes.append((stack, assemble_volume(stack, sample_key, recipe)))
        except QuarantineError as exc:
            out.append(_fail(stack.all_instances, exc, recipe.id))
    by_uid = defaultdict(list)
    for inst in singles:
        by_uid[inst.sop_uid or inst.sha256].append(inst)
    outputs = len(jobs) + len(by_uid)
    for uid in sorted(by_uid):
        inst, *copies = sorted(by_uid[uid], key=lambda i: i.sha256)
        sample_key = _single_key(base, inst, ctx, outputs == 1)
        try:
            sample = assemble_multiframe(inst, sample_key, recipe) if inst.frames > 1 else assemble_2d(
                inst, sample_key, recipe)
        except QuarantineError as exc:
            out.append(_fail([inst], exc, recipe.id))
            out.extend(_fail([c], exc, recipe.id) for c in copies)
            continue
        merged = []
        for copy in copies:  # copies of one instance (same SOP Instance UID): one sample if the pixels agree
            try:
                same = np.array_equal(decode(copy, recipe.max_file_bytes), decode(inst, recipe.max_file_bytes))
            except QuarantineError as exc:
                out.append(_fail([copy], exc, recipe.id))
                continue
            if same:
                merged.append(copy)
            else:
                out.append(_fail([copy], QuarantineError(
                    "conflicting_duplicates", "two copies of one instance hold different pixels"), recipe.id))
        if merged:
            sample = sample.replace(
                units=sample.units + len(merged), meta={**sample.meta, "duplicates_merged": len(merged)},
                source_sha256=tuple(sorted(sample.source_sha256 + tuple(c.sha256 for c in merged))))
        out.append(sample)
    if masks:
        from medcurate.transforms.read.dicom_seg import attach_masks

        volumes, records = attach_masks(masks, volumes, recipe)
        out.extend(records)
    out.extend(sample for _, sample in volumes)
    return out


def assemble_2d(inst: Instance, key: SampleKey, recipe) -> Sample:
    ds = inst.header
    pixels = decode(inst, recipe.max_file_bytes)
    photometric = _text(ds, "PhotometricInterpretation")
    meta: dict = {"photometric": photometric}
    if pixels.ndim != 2 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        raise QuarantineError("unexpected_dimensions", "grey-scale image with more than one frame")
    if photometric == "MONOCHROME1":
        bits = _int(ds, "BitsStored", 16)
        if pixels.dtype.kind == "u":
            pixels = (np.iinfo(pixels.dtype).max >> max(0, pixels.dtype.itemsize * 8 - bits)) - pixels
        else:
            pixels = pixels.max() + pixels.min() - pixels
        meta["inverted_monochrome1"] = True
    values, rescaled = rescale(pixels, *_rescale_params(ds)) if pixels.ndim == 2 else (pixels, False)
    spacing = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2)
    if spacing:
        meta["pixel_spacing_mm"] = list(spacing)
    meta["rescaled"] = rescaled
    return Sample(key=key, dataset=recipe.id, kind="image", meta=meta, image=np.array(values, order="C"),
                  header=ds, source_sha256=(inst.sha256,), units=1)


def _spacing_policy(recipe) -> tuple[str, float]:
    cfg = recipe.processing.get("dicom", {})
    return cfg.get("uneven_spacing", "quarantine"), float(cfg.get("spacing_tolerance", SPACING_REL_TOL))


def _check_spacing(depth: np.ndarray, recipe, n_units: int) -> Optional[np.ndarray]:
    """None when the positions are evenly spaced; else the target depths of a uniform grid (interpolate policy),
    or a QuarantineError."""
    if len(depth) < 2:
        return None
    gaps = np.diff(depth)
    median = float(np.median(gaps))
    policy, tol = _spacing_policy(recipe)
    if gaps.max() - gaps.min() <= max(POSITION_TOL, tol * median):
        return None
    ratio = gaps / gaps.min()
    missing = bool(np.allclose(ratio, np.round(ratio), atol=0.05))
    if policy != "interpolate":
        if missing:
            raise QuarantineError("missing_slices", "slice positions have gaps (missing slices)",
                                  {"slices": n_units, "expected": int(round((depth[-1] - depth[0]) / gaps.min())) + 1})
        raise QuarantineError("nonuniform_spacing", "slice spacing is not uniform", {"slices": n_units})
    step = float(gaps.min()) if missing else median
    count = int(round((depth[-1] - depth[0]) / step)) + 1
    return depth[0] + np.arange(count) * step


def _interpolate_stack(volume: np.ndarray, depth: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation along the stack axis (axis 0 of a (k, rows, cols) array) onto ``target`` depths."""
    out = np.empty((len(target),) + volume.shape[1:], dtype=np.float32)
    hi = np.clip(np.searchsorted(depth, target, side="right"), 1, len(depth) - 1)
    lo = hi - 1
    w = ((target - depth[lo]) / (depth[hi] - depth[lo])).astype(np.float32)
    for k in range(len(target)):
        out[k] = volume[lo[k]] * (1 - w[k]) + volume[hi[k]] * w[k]
    if volume.dtype.kind in "iu":
        info = np.iinfo(volume.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(volume.dtype)
    return out.astype(volume.dtype)


def _affine(orientation, spacing, step, origin) -> np.ndarray:
    iop = np.array(orientation)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * spacing[1]  # i: along a row, column spacing
    affine[:3, 1] = iop[3:] * spacing[0]  # j: down a column, row spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return affine


def assemble_volume(stack: Stack, key: SampleKey, recipe) -> Sample:
    instances, depth = stack.instances, stack.depth
    n, n_units = len(instances), len(stack.all_instances)
    first = instances[0].header
    iop = np.array(instances[0].orientation)
    normal = np.cross(iop[:3], iop[3:])
    target = _check_spacing(depth, recipe, n_units)
    spacing = _floats(first.get("PixelSpacing"), 2)
    if not spacing:
        raise QuarantineError("missing_geometry", "PixelSpacing is missing")
    rows, cols = _int(first, "Rows", 0), _int(first, "Columns", 0)
    copies = stack.copies

    def load(inst):
        pixels = decode(inst, recipe.max_file_bytes)
        if pixels.ndim != 2 or pixels.shape != (rows, cols):
            raise QuarantineError("unexpected_dimensions", "a slice of a volume is not a single grey-scale frame")
        for copy in copies.get(inst.sop_uid, []):
            if not np.array_equal(decode(copy, recipe.max_file_bytes), pixels):
                raise QuarantineError("conflicting_duplicates", "two copies of one instance hold different pixels")
        return rescale(pixels, *_rescale_params(inst.header))

    volume, rescaled_any = None, False
    with ThreadPoolExecutor(READ_THREADS) as pool:  # file reads and copies release the GIL
        for k, (values, rescaled) in enumerate(pool.map(load, instances)):
            rescaled_any |= rescaled
            if volume is None:
                volume = np.empty((n, rows, cols), dtype=values.dtype)  # slices written whole; viewed as [i,j,k]
            elif np.result_type(volume.dtype, values.dtype) != volume.dtype:
                volume = volume.astype(np.result_type(volume.dtype, values.dtype))  # rare: a wider type needed
            volume[k] = values
    positions = np.array([inst.position for inst in instances])
    meta = {"slices": n, "rescaled": rescaled_any}
    if target is not None:
        volume = _interpolate_stack(volume, depth, target)
        meta["interpolated_slices"] = int(len(target) - n)
        meta["uneven_spacing"] = "interpolated"
        along = positions[-1] - positions[0]
        step = along / (depth[-1] - depth[0]) * (target[1] - target[0])
        n = len(target)
    elif n > 1:
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        step = normal * float(first.get("SliceThickness", 1.0) or 1.0)
    affine = _affine(iop, spacing, step, positions[0])
    if n > 1:
        meta["gantry_tilt_deg"] = round(float(np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step),
                                                                            -1, 1)))), 3)
    if copies:
        meta["duplicates_merged"] = sum(len(v) for v in copies.values())
    if stack.split_by:
        meta["split_by"] = stack.split_by
    hashes = tuple(sorted(i.sha256 for i in stack.all_instances))
    return Sample(key=key, dataset=recipe.id, kind="volume", meta=meta, image=volume.transpose(2, 1, 0),
                  affine=affine, header=first, source_sha256=hashes, units=n_units)


# -- multi-frame --------------------------------------------------------------------------------------------------
def _functional(ds: pydicom.Dataset, frame: int, sequence: str):
    """A functional group macro item for one frame: per-frame first, then shared."""
    for container in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(container)
        if not items:
            continue
        item = items[frame] if container.startswith("Per") and frame < len(items) else items[0]
        if sequence in item and len(item[sequence].value):
            return item[sequence].value[0]
    return None


def assemble_multiframe(inst: Instance, key: SampleKey, recipe) -> Sample:
    ds = inst.header
    frames = inst.frames
    if "PerFrameFunctionalGroupsSequence" in ds:
        positions, orientations, params = [], [], []
        for f in range(frames):
            plane = _functional(ds, f, "PlanePositionSequence")
            orient = _functional(ds, f, "PlaneOrientationSequence")
            pos = _floats(plane.get("ImagePositionPatient"), 3) if plane is not None else None
            ori = _floats(orient.get("ImageOrientationPatient"), 6) if orient is not None else None
            if pos is None or ori is None:
                raise QuarantineError("multiframe_without_geometry", "frames lack plane position or orientation",
                                      {"frames": frames})
            transform = _functional(ds, f, "PixelValueTransformationSequence")
            params.append(_rescale_params(transform if transform is not None else ds))
            positions.append(pos)
            orientations.append(ori)
        measures = _functional(ds, 0, "PixelMeasuresSequence")
        spacing = _floats(measures.get("PixelSpacing"), 2) if measures is not None else None
        thickness = float(measures.get("SliceThickness", 1.0) or 1.0) if measures is not None else 1.0
        unit = None
    elif "GridFrameOffsetVector" in ds and inst.orientation and inst.position:
        offsets = [float(v) for v in ds.GridFrameOffsetVector]
        if len(offsets) != frames:
            raise QuarantineError("invalid_header_value", "GridFrameOffsetVector does not match the frame count",
                                  {"attribute": "GridFrameOffsetVector"})
        ori = inst.orientation
        normal = np.cross(np.array(ori[:3]), np.array(ori[3:]))
        positions = [tuple(np.array(inst.position) + o * normal) for o in offsets]
        orientations = [ori] * frames
        scaling = float(ds.get("DoseGridScaling", 1.0) or 1.0)
        params = [(scaling, 0.0)] * frames
        spacing = _floats(ds.get("PixelSpacing"), 2)
        thickness = abs(offsets[1] - offsets[0]) if frames > 1 else 1.0
        unit = str(ds.get("DoseUnits", "") or "").upper() or None
    else:
        raise QuarantineError("multiframe_without_geometry",
                              "multi-frame object without per-frame positions (cine, dynamic or planar frames)",
                              {"frames": frames, "modality": _text(ds, "Modality")[:16]})
    if not spacing:
        raise QuarantineError("missing_geometry", "PixelSpacing is missing")
    if np.abs(np.array(orientations) - np.array(orientations[0])).max() > ORIENTATION_TOL:
        raise QuarantineError("inconsistent_orientation", "frames of one object have different orientations")
    iop = np.array(orientations[0])
    normal = np.cross(iop[:3], iop[3:])
    depth = np.array(positions) @ normal
    clusters = _clusters(depth)
    if any(len(c) > 1 for c in clusters):
        raise QuarantineError("multiframe_dimensions_unsupported",
                              "frames repeat positions (temporal, echo or other dimensions)", {"frames": frames})
    pixels = decode(inst, recipe.max_file_bytes)
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise QuarantineError("unexpected_dimensions", "multi-frame pixel data is not one grey-scale frame each")
    order = np.argsort(depth, kind="stable")
    depth, positions = depth[order], np.array(positions)[order]
    uniform = len(set(params)) == 1  # one rescale for all frames keeps integers; mixed ones go to float32
    planes = [rescale(pixels[f], *params[f])[0] for f in order]
    volume = np.stack(planes if uniform else [p.astype(np.float32) for p in planes])
    target = _check_spacing(depth, recipe, 1)
    if target is not None:
        volume = _interpolate_stack(volume, depth, target)
    n = volume.shape[0]
    if n > 1:
        span = positions[-1] - positions[0]
        step = span / (depth[-1] - depth[0]) * ((target[1] - target[0]) if target is not None else (depth[1] - depth[0]))
    else:
        step = normal * thickness
    meta = {"slices": n, "multiframe": True, "rescaled": any(p != (1.0, 0.0) for p in params)}
    if unit:
        meta["intensity_unit"] = unit
    if target is not None:
        meta["interpolated_slices"] = int(n - frames)
    return Sample(key=key, dataset=recipe.id, kind="volume", meta=meta, image=volume.transpose(2, 1, 0),
                  affine=_affine(iop, spacing, step, positions[0]), header=ds, source_sha256=(inst.sha256,), units=1)
