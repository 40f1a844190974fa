"""DICOM: header per file, then whole series assembled after grouping.

``read_header`` parses one file (no pixel decoding) and returns the group it belongs to: cross-sectional images
(CT, MR, PT, NM with positions) group by study + series; projection images (CR, DX, MG, ...) and files without
positions stand alone. ``assemble`` orders a group's slices by the projection of ImagePositionPatient on the slice
normal, checks orientation, size and spacing, decodes pixels through pydicom's handlers (pylibjpeg for JPEG,
JPEG-LS, JPEG 2000; RLE built in), applies Rescale Slope/Intercept per slice, and builds the volume and its affine.

Arrays: volume ``[i, j, k]`` with i along a row (IOP[0:3]), j down the columns (IOP[3:6]), k along the slice
step; 2D images ``[row, col]``. The affine maps indices to LPS mm, and its third column is the actual step between
consecutive slice positions, so a gantry tilt is kept as a shear rather than silently straightened.
"""
from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medcurate.schemas.records import Item, QuarantineError, Sample, SampleKey
from medcurate.transforms.context import Context
from medcurate.transforms.io import read_bytes, relpath, sha256_bytes

# Modalities whose images are projections (or photographs): each instance is its own 2D sample.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "XA", "RF", "IO", "PX", "OT", "SC", "US", "ES", "XC", "GM", "SM", "OP", "DOC"}
ORIENTATION_TOL = 1e-4
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL = 0.01  # mm
READ_THREADS = 2


NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@dataclass
class Instance:
    item: Item
    sha256: str
    header: pydicom.Dataset  # without PixelData
    pixel_offset: Optional[int] = None  # file position of the PixelData value (native data fast path)

    def quarantine_identity(self) -> dict:
        return {"dataset": self.item.dataset, "key": None, "units": 1, "source_sha256": (self.sha256,)}


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


def read_header(item: Item, ctx: Context) -> tuple:
    """One file -> (group key, Instance). Raises QuarantineError for files that cannot be an image."""
    recipe = ctx.recipe(item.dataset)
    data = read_bytes(item.uri, recipe.max_file_bytes, item.size)
    sha = sha256_bytes(data)
    try:
        ds = _parse(data, stop_before_pixels=False)
    except TruncatedFile:
        raise QuarantineError("truncated_file", "DICOM file ends before its data elements do",
                              source_sha256=(sha,)) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage
        raise QuarantineError("not_dicom", "file is not a readable DICOM object", source_sha256=(sha,)) from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        modality = str(ds.get("Modality", "") or "none")
        raise QuarantineError(
            "no_pixel_data",
            "DICOM object carries no image (structured report, plan, presentation state, ...)",
            {"modality": modality[:16]},
            source_sha256=(sha,),
        )
    offset = getattr(ds["PixelData"], "file_tell", None) if "PixelData" in ds else None
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            del ds[tag]
    modality = str(ds.get("Modality", "") or "").upper()
    study = str(ds.get("StudyInstanceUID", "") or "")
    series = str(ds.get("SeriesInstanceUID", "") or "")
    positioned = _floats(ds.get("ImagePositionPatient"), 3) and _floats(ds.get("ImageOrientationPatient"), 6)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if modality in PROJECTION_MODALITIES or not positioned or not series or frames > 1:
        group = ctx.pseudo.digest("sample", item.dataset, "file", relpath(item.uri, recipe.root))
    else:
        group = ctx.pseudo.digest("sample", item.dataset, "series", study, series)
    return group, Instance(item, sha, ds, offset)


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


def _decode(instance: Instance, recipe_max_bytes: int) -> np.ndarray:
    """Pixels of one instance, decoded straight from the file's bytes with pydicom's pixel backend (no second
    parse of the data set; the header read at grouping time already holds every other attribute)."""
    from pydicom.pixels import pixel_array

    data = read_bytes(instance.item.uri, recipe_max_bytes, instance.item.size)
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


def _native_pixels(instance: Instance, data: bytes) -> Optional[np.ndarray]:
    """Uncompressed little-endian, one frame, one sample, bits stored = bits allocated (8 or 16): the pixel values
    are the PixelData bytes themselves, viewed where the header parse found them. None for anything else, which
    goes through pydicom's pixel backend (the test suite holds both equal on pydicom's test files)."""
    ds = instance.header
    if instance.pixel_offset is None or _transfer_syntax(ds) not in NATIVE_LITTLE_ENDIAN:
        return None
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if (bits not in (8, 16) or int(ds.get("BitsStored", 0) or 0) != bits or int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1
            or str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    dtype = np.dtype(("<i" if int(ds.get("PixelRepresentation", 0) or 0) else "<u") + str(bits // 8))
    count = rows * cols
    if count == 0 or instance.pixel_offset + count * dtype.itemsize > len(data):
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=instance.pixel_offset).reshape(rows, cols)


def _rescale_params(ds: pydicom.Dataset) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _rescale(ds: pydicom.Dataset, pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Modality LUT (Rescale Slope/Intercept). Integer slope and intercept stay in integers (CT in HU as int16
    when it fits); otherwise float32."""
    slope, intercept = _rescale_params(ds)
    if slope == 1 and intercept == 0:
        return pixels, False
    if slope.is_integer() and intercept.is_integer() and pixels.dtype.kind in "iu":
        values = pixels.astype(np.int32) * int(slope) + int(intercept)
        if values.size == 0 or (-32768 <= values.min() and values.max() <= 32767):
            return values.astype(np.int16), True
        return values, True
    return (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)), True


def _sample_key(group: str, dataset: str) -> SampleKey:
    return SampleKey(dataset, group)


def assemble(group: tuple, ctx: Context) -> Sample:
    key, instances = group
    instances = sorted(instances, key=lambda inst: inst.sha256)
    units = len(instances)
    hashes = tuple(sorted(inst.sha256 for inst in instances))
    recipe = ctx.recipe(instances[0].item.dataset)

    def fail(reason: str, message: str, **detail) -> QuarantineError:
        return QuarantineError(reason, message, detail, units=units, source_sha256=hashes)

    first = instances[0].header
    frames = int(first.get("NumberOfFrames", 1) or 1)
    modality = str(first.get("Modality", "") or "").upper()
    if frames > 1:
        raise fail("unsupported_multiframe", "multi-frame DICOM objects are not assembled yet", frames=frames)
    sample_key = _sample_key(key, recipe.id)
    if units == 1:
        # One single-frame instance is a 2D image, also for CT/MR: it has no slice spacing to resample along.
        return _assemble_2d(instances[0], sample_key, recipe, hashes)
    return _assemble_volume(instances, sample_key, recipe, hashes, fail)


def _assemble_2d(inst: Instance, key: SampleKey, recipe, hashes: tuple) -> Sample:
    ds = inst.header
    pixels = _decode(inst, recipe.max_file_bytes)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    meta: dict = {"photometric": photometric}
    if pixels.ndim == 3 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        raise QuarantineError("unexpected_dimensions", "grey-scale image with more than one frame", units=1,
                              source_sha256=hashes)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16) or 16)
        if pixels.dtype.kind == "u":
            pixels = (np.iinfo(pixels.dtype).max >> max(0, pixels.dtype.itemsize * 8 - bits)) - pixels
        else:
            pixels = pixels.max() + pixels.min() - pixels
        meta["inverted_monochrome1"] = True
    values, rescaled = _rescale(ds, pixels) if pixels.ndim == 2 else (pixels, False)
    spacing = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2)
    if spacing:
        meta["pixel_spacing_mm"] = list(spacing)
    meta["rescaled"] = rescaled
    return Sample(
        key=key, dataset=recipe.id, kind="image", meta=meta, image=np.array(values, order="C"),
        header=ds, source_sha256=hashes, units=1,
    )


def _strip_pixels(ds: pydicom.Dataset) -> pydicom.Dataset:
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            del ds[tag]
    return ds


def _assemble_volume(instances, key: SampleKey, recipe, hashes: tuple, fail) -> Sample:
    iops = np.array([_floats(i.header.get("ImageOrientationPatient"), 6) or (np.nan,) * 6 for i in instances])
    ipps = np.array([_floats(i.header.get("ImagePositionPatient"), 3) or (np.nan,) * 3 for i in instances])
    if not np.all(np.isfinite(iops)) or not np.all(np.isfinite(ipps)):
        raise fail("missing_geometry", "some slices lack ImagePositionPatient or ImageOrientationPatient")
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOL:
        raise fail("inconsistent_orientation", "slices of one series have different orientations")
    sizes = {(int(i.header.get("Rows", 0)), int(i.header.get("Columns", 0))) for i in instances}
    if len(sizes) != 1:
        raise fail("inconsistent_size", "slices of one series have different sizes", sizes=len(sizes))
    row_dir, col_dir = iops[0][:3], iops[0][3:]
    normal = np.cross(row_dir, col_dir)
    depth = ipps @ normal
    order = np.argsort(depth, kind="stable")
    instances = [instances[o] for o in order]
    ipps, depth = ipps[order], depth[order]
    n = len(instances)
    if n > 1:
        gaps = np.diff(depth)
        if gaps.min() < SPACING_ABS_TOL:
            raise fail("duplicate_slices", "two slices share one position", slices=n)
        median = float(np.median(gaps))
        if gaps.max() - gaps.min() > max(SPACING_ABS_TOL, SPACING_REL_TOL * median):
            ratio = gaps / gaps.min()
            if np.allclose(ratio, np.round(ratio), atol=0.05):
                raise fail("missing_slices", "slice positions have gaps (missing slices)",
                           slices=n, expected=int(round((depth[-1] - depth[0]) / gaps.min())) + 1)
            raise fail("nonuniform_spacing", "slice spacing is not uniform", slices=n)
        step = (ipps[-1] - ipps[0]) / (n - 1)
    else:
        thickness = float(instances[0].header.get("SliceThickness", 1.0) or 1.0)
        step = normal * thickness
    spacing = _floats(instances[0].header.get("PixelSpacing"), 2)
    if not spacing:
        raise fail("missing_geometry", "PixelSpacing is missing")
    rows, cols = int(instances[0].header.Rows), int(instances[0].header.Columns)

    def decode(inst):
        pixels = _decode(inst, recipe.max_file_bytes)
        if pixels.ndim != 2 or pixels.shape != (rows, cols):
            raise fail("unexpected_dimensions", "a slice of a volume is not a single grey-scale frame")
        return _rescale(inst.header, pixels)

    volume, rescaled_any = None, False
    with ThreadPoolExecutor(READ_THREADS) as pool:  # file reads and copies release the GIL
        for k, (values, rescaled) in enumerate(pool.map(decode, instances)):
            rescaled_any |= rescaled
            if volume is None:
                volume = np.empty((n, rows, cols), dtype=values.dtype)  # slices written whole; viewed as [i,j,k]
            elif np.result_type(volume.dtype, values.dtype) != volume.dtype:
                volume = volume.astype(np.result_type(volume.dtype, values.dtype))  # rare: a wider type needed
            volume[k] = values
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # i: along a row, column spacing
    affine[:3, 1] = col_dir * spacing[0]  # j: down a column, row spacing
    affine[:3, 2] = step
    affine[:3, 3] = ipps[0]
    tilt = float(np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), -1, 1)))) if n > 1 else 0.0
    meta = {"slices": n, "rescaled": rescaled_any, "gantry_tilt_deg": round(tilt, 3)}
    return Sample(
        key=key, dataset=recipe.id, kind="volume", meta=meta, image=volume.transpose(2, 1, 0),
        affine=affine, header=instances[0].header, source_sha256=hashes, units=n,
    )
