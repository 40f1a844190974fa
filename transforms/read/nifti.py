"""NIfTI-1/2 volumes (and their label masks), decoded in memory with nibabel.

nibabel's affine (sform when its code is set, else qform) maps indices to RAS; it is converted to LPS once, here.
Scaling: when scl_slope/scl_inter are identity or unset the stored integers are kept (CT stays int16); otherwise
the scaled values are used (int16 if they are integers in range, else float32).
"""
from __future__ import annotations

import csv
import gzip
import io
import posixpath
import re
import zlib

import nibabel as nib
import numpy as np

from medcurate.schemas.records import Item, QuarantineError, Sample, SampleKey
from medcurate.transforms.context import Context
from medcurate.transforms.io import read_bytes, relpath, sha256_bytes

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE_TOL = 1e-3
HEADER_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def load_nifti(data: bytes) -> nib.Nifti1Image:
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as exc:
        raise QuarantineError("corrupt_file", "gzip stream is damaged") from exc
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            np.asanyarray(img.dataobj[(0,) * len(img.shape)]) if img.shape else None  # touch the data
            return img
        except Exception:  # noqa: BLE001 - try the other header version, then give up
            continue
    raise QuarantineError("not_nifti", "file is not a readable NIfTI image")


def image_values(img) -> np.ndarray:
    slope, inter = img.header.get_slope_inter()
    proxy = img.dataobj
    try:
        if (slope is None or slope == 1) and (inter is None or inter == 0):
            values = np.asarray(proxy.get_unscaled())
        else:
            values = np.asarray(proxy, dtype=np.float64)
    except (ValueError, OSError, EOFError) as exc:
        raise QuarantineError("truncated_data", "image data is shorter than the header says") from exc
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        if values.size and -32768 <= values.min() and values.max() <= 32767:
            return values.astype(np.int16)
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    return values


def lps_affine(img) -> np.ndarray:
    return RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)


def header_text(img) -> list[str]:
    """Free text held in the header (descrip, aux_file, intent_name, db_name, extensions): identifier candidates."""
    out = []
    for name in HEADER_TEXT_FIELDS:
        try:
            value = img.header[name]
        except (KeyError, ValueError):
            continue
        text = value.item().decode("latin-1", "replace") if hasattr(value, "item") else str(value)
        text = text.strip("\x00 ").strip()
        if text:
            out.append(text)
    for ext in getattr(img.header, "extensions", []):
        content = ext.get_content() if hasattr(ext, "get_content") else getattr(ext, "_content", b"")
        if isinstance(content, bytes):
            out.append(content.decode("latin-1", "replace"))
    return out


def name_tokens(uri: str) -> list[str]:
    """Words of a file name (dcm2niix names often hold patient names): identifier candidates, never output."""
    stem = posixpath.basename(uri).split(".")[0]
    return [t for t in re.split(r"[^A-Za-z0-9]+", stem) if len(t) >= 2]


def read_structures(uri: str) -> dict:
    return read_structures_text(read_bytes(uri).decode("utf-8-sig"))


def read_structures_text(text: str) -> dict:
    """A structures table (columns id|value|label and structure|name) -> {label value: name}."""
    rows = list(csv.DictReader(io.StringIO(text)))
    names = {}
    for row in rows:
        value = row.get("id") or row.get("value") or row.get("label")
        name = row.get("structure") or row.get("name")
        if value is None or name is None:
            raise QuarantineError("bad_structures_table", "structures table needs id and structure columns")
        names[int(value)] = name.strip()
    return names


def read_nifti(item: Item, ctx: Context) -> Sample:
    recipe = ctx.recipe(item.dataset)
    data = read_bytes(item.uri, recipe.max_file_bytes)
    hashes = [sha256_bytes(data)]
    img = load_nifti(data)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise QuarantineError("unsupported_4d", "4D (or higher) NIfTI volumes are not split yet", {"ndim": len(shape)},
                              source_sha256=tuple(hashes))
    values = image_values(img).reshape(shape)
    affine = lps_affine(img)
    private = {"text": header_text(img), "name_tokens": name_tokens(item.uri)}
    label, label_names = None, {}
    label_uri = item.companion("label")
    if label_uri:
        label_data = read_bytes(label_uri, recipe.max_file_bytes)
        hashes.append(sha256_bytes(label_data))
        limg = load_nifti(label_data)
        label = np.asarray(limg.dataobj)
        if label.shape[: len(shape)] != shape or label.ndim > 3 and label.shape[3] != 1:
            raise QuarantineError("label_geometry_mismatch", "label mask shape differs from the image",
                                  source_sha256=tuple(sorted(hashes)))
        label = label.reshape(shape)
        if not np.allclose(lps_affine(limg), affine, atol=AFFINE_TOL):
            raise QuarantineError("label_geometry_mismatch", "label mask affine differs from the image",
                                  source_sha256=tuple(sorted(hashes)))
        if label.dtype.kind == "f":
            if not np.all(label == np.round(label)):
                raise QuarantineError("label_not_integer", "label mask holds non-integer values",
                                      source_sha256=tuple(sorted(hashes)))
        label = label.astype(np.uint16 if label.max(initial=0) > 255 else np.uint8)
        private["text"] += header_text(limg)
    structures_uri = item.companion("structures")
    if structures_uri:
        label_names = read_structures(structures_uri)
    key = SampleKey(recipe.id, ctx.pseudo.digest("sample", recipe.id, "file", relpath(item.uri, recipe.root)))
    header = {
        "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
        "qform_code": int(img.header["qform_code"]),
        "sform_code": int(img.header["sform_code"]),
        "xyzt_units": int(img.header["xyzt_units"]),
        "datatype": str(img.header.get_data_dtype()),
    }
    return Sample(
        key=key, dataset=recipe.id, kind="volume", meta={"slices": int(shape[2])},
        image=np.ascontiguousarray(values), affine=affine, label=label, label_names=label_names,
        header=header, source_sha256=tuple(sorted(hashes)), units=1, private=private,
    )
