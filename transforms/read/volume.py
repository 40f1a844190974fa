"""Volume files: NIfTI-1/2 decoded in memory with nibabel; NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and
Analyze/NIfTI pairs (.hdr + .img) through SimpleITK, which needs files: they are copied into a temporary folder
that is always removed (a detached data file travels with its header).

nibabel's affine (sform when its code is set, else qform) maps indices to RAS; it is converted to LPS once, here.
SimpleITK works in LPS already. Scaling: when scl_slope/scl_inter are identity or unset the stored integers are kept
(CT stays int16); otherwise the scaled values are used (int16 if they are integers in range, else float32).

4D images: quarantined ``unsupported_4d`` unless split: ``processing.split_4d: channels`` (or ``time``) makes one
sample per volume of the 4th axis; MSD tasks split by channel with the names of their ``dataset.json``. Masks: a
``label`` companion (same grid, integers), or a TotalSegmentator ``segmentations/`` folder of one binary mask per
structure, combined into one map (values in structure-name order, later names winning where masks overlap).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import posixpath
import re
import tempfile
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


SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")


def _suffix(uri: str) -> str:
    name = uri.lower()
    return next((s for s in (".nii.gz", ".nii") + SITK_SUFFIXES if name.endswith(s)), "")


def _detached_data_name(header: bytes, suffix: str) -> str:
    text = header.decode("latin-1", "replace")
    pattern = r"(?im)^\s*ElementDataFile\s*=\s*(.+?)\s*$" if suffix == ".mhd" else r"(?im)^\s*data ?file\s*:\s*(.+?)\s*$"
    m = re.search(pattern, text)
    return m.group(1).strip() if m else ""


def _detached_uri(uri: str, header: bytes, suffix: str) -> str:
    """The data file a .mhd/.nhdr header names, or the .img beside an .hdr; '' when the data is inline."""
    from medcurate.transforms.io import exists

    if suffix == ".hdr":
        stem = uri[: -len(".hdr")]
        return next((stem + ext for ext in (".img", ".img.gz") if exists(stem + ext)), "")
    name = _detached_data_name(header, suffix)
    if not name or name.upper().startswith(("LOCAL", "LIST")):
        return ""
    return posixpath.normpath(posixpath.join(posixpath.dirname(uri), name))


def load_sitk(uri: str, data: bytes, item: Item, max_bytes: int) -> tuple[np.ndarray, np.ndarray, dict, list]:
    """(array [i,j,k(,t)], LPS affine, geometry header, hashes of detached data) of a volume SimpleITK reads."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # per-file problems become quarantine records
    suffix = _suffix(uri)
    hashes = []
    with tempfile.TemporaryDirectory(prefix="medcurate-sitk-") as tmp:
        header_name = "volume" + suffix
        detached = _detached_uri(uri, data, suffix) if suffix in (".mhd", ".nhdr", ".hdr") else ""
        if detached:
            blob = read_bytes(detached, max_bytes)
            hashes.append(sha256_bytes(blob))
            if suffix == ".hdr":
                target = "volume" + detached[len(uri) - len(".hdr"):]
            else:
                target = _detached_data_name(data, suffix)
            os.makedirs(os.path.dirname(os.path.join(tmp, target)), exist_ok=True)
            with open(os.path.join(tmp, target), "wb") as f:
                f.write(blob)
        with open(os.path.join(tmp, header_name), "wb") as f:
            f.write(data)
        try:
            image = sitk.ReadImage(os.path.join(tmp, header_name))
        except RuntimeError as exc:
            raise QuarantineError("unreadable_volume", "SimpleITK cannot read this volume (or its data file)",
                                  {"format": suffix}) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise QuarantineError("unsupported_vector_image", "volumes with several components per voxel are not read",
                              {"components": image.GetNumberOfComponentsPerPixel()})
    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image).transpose(tuple(range(dim))[::-1])  # [k,j,i] -> [i,j,k(,t)]
    if dim == 2:
        array = array[:, :, None]
    n = min(dim, 3)
    direction = np.eye(3)
    direction[:n, :n] = np.array(image.GetDirection()).reshape(dim, dim)[:n, :n]
    spacing = np.ones(3)
    spacing[:n] = image.GetSpacing()[:n]
    origin = np.zeros(3)
    origin[:n] = image.GetOrigin()[:n]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    header = {"format": suffix.lstrip("."), "dimension": dim, "datatype": str(array.dtype)}
    return array, affine, header, hashes


def _load(uri: str, data: bytes, item: Item, max_bytes: int) -> tuple[np.ndarray, np.ndarray, dict, list, list]:
    """(values, LPS affine, header dict, extra hashes, identifier-bearing text) of any supported volume."""
    if _suffix(uri) in SITK_SUFFIXES:
        values, affine, header, hashes = load_sitk(uri, data, item, max_bytes)
        return values, affine, header, hashes, []
    img = load_nifti(data)
    header = {
        "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
        "qform_code": int(img.header["qform_code"]),
        "sform_code": int(img.header["sform_code"]),
        "xyzt_units": int(img.header["xyzt_units"]),
        "datatype": str(img.header.get_data_dtype()),
    }
    values = image_values(img)
    if values.ndim == 2:
        values = values[:, :, None]
    return values, lps_affine(img), header, [], header_text(img)


def _split(values: np.ndarray, item: Item, recipe) -> list[tuple[str, np.ndarray, dict]]:
    """(key part, 3D volume, meta) for each volume of a 4D image (one, unpartitioned, for 3D)."""
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim == 3:
        return [("", values, {})]
    if values.ndim != 4:
        raise QuarantineError("unsupported_dimensions", "volumes with more than four dimensions are not read",
                              {"ndim": values.ndim})
    mode = item.info_dict().get("split_4d") or recipe.processing.get("split_4d")
    if not mode:
        raise QuarantineError("unsupported_4d", "4D volume: set processing.split_4d to channels or time to split it",
                              {"ndim": 4, "volumes": int(values.shape[3])})
    channels = json.loads(item.info_dict().get("channels", "{}"))
    out = []
    for t in range(values.shape[3]):
        meta = {"volume_index": t, "split_4d": mode}
        if mode == "channels":
            meta["channel"] = channels.get(str(t), f"channel {t}")
        out.append((f"{'c' if mode == 'channels' else 't'}{t}", np.ascontiguousarray(values[..., t]), meta))
    return out


def _integer_labels(label: np.ndarray) -> np.ndarray:
    if label.dtype.kind == "f" and not np.all(label == np.round(label)):
        raise QuarantineError("label_not_integer", "label mask holds non-integer values")
    return label.astype(np.uint16 if label.max(initial=0) > 255 else np.uint8)


def _structure_folder(folder: str, shape: tuple, affine: np.ndarray, recipe, hashes: list) -> tuple:
    """A TotalSegmentator-style folder of binary masks -> (integer map, {value: name})."""
    from medcurate.transforms.io import match_sizes

    files = [(u, s) for u, s in match_sizes(folder, "*") if u.lower().endswith((".nii", ".nii.gz"))]
    if not files:
        raise QuarantineError("missing_file", "the structure folder holds no masks")
    names = {}
    label = np.zeros(shape, dtype=np.uint8 if len(files) < 256 else np.uint16)
    for value, (uri, size) in enumerate(files, start=1):
        data = read_bytes(uri, recipe.max_file_bytes, size)
        hashes.append(sha256_bytes(data))
        img = load_nifti(data)
        mask = np.asarray(img.dataobj)
        if mask.shape != shape or not np.allclose(lps_affine(img), affine, atol=AFFINE_TOL):
            raise QuarantineError("label_geometry_mismatch", "a structure mask's grid differs from the image")
        label[mask > 0] = value
        names[value] = posixpath.basename(uri).split(".")[0]
    return label, names


def read_volume(item: Item, ctx: Context) -> list:
    recipe = ctx.recipe(item.dataset)
    data = read_bytes(item.uri, recipe.max_file_bytes, item.size)
    hashes = [sha256_bytes(data)]
    try:
        values, affine, header, extra, texts = _load(item.uri, data, item, recipe.max_file_bytes)
    except QuarantineError as exc:
        exc.source_sha256 = exc.source_sha256 or tuple(hashes)
        raise
    hashes += extra
    try:
        parts = _split(values, item, recipe)
        shape = parts[0][1].shape
        private = {"text": list(texts), "name_tokens": name_tokens(item.uri), "row": item.row,
                   "source": relpath(item.uri, recipe.root)}
        label, label_names = None, {}
        info = item.info_dict()
        label_uri = item.companion("label")
        if label_uri:
            label_data = read_bytes(label_uri, recipe.max_file_bytes)
            hashes.append(sha256_bytes(label_data))
            lvalues, laffine, _, lextra, ltexts = _load(label_uri, label_data, item, recipe.max_file_bytes)
            hashes += lextra
            private["text"] += ltexts
            if lvalues.ndim == 4 and lvalues.shape[3] == 1:
                lvalues = lvalues[..., 0]
            if lvalues.shape != shape or not np.allclose(laffine, affine, atol=AFFINE_TOL):
                raise QuarantineError("label_geometry_mismatch", "label mask grid differs from the image")
            label = _integer_labels(np.asarray(lvalues))
        if item.companion("structure-dir"):
            label, label_names = _structure_folder(item.companion("structure-dir"), shape, affine, recipe, hashes)
        if item.companion("structures"):
            label_names = read_structures(item.companion("structures"))
        if info.get("label_names"):
            label_names = {int(k): v for k, v in json.loads(info["label_names"]).items()}
    except QuarantineError as exc:
        exc.source_sha256 = tuple(sorted(hashes))
        raise
    base = SampleKey(recipe.id, ctx.pseudo.digest("sample", recipe.id, "file", relpath(item.uri, recipe.root)))
    out = []
    for part, volume, meta in parts:
        meta = {"slices": int(volume.shape[2]), **meta}
        if info.get("case"):
            meta["case"] = info["case"]
        if info.get("channel") and "channel" not in meta:
            meta["channel"] = info["channel"]
        out.append(Sample(
            key=base.derive(part) if part else base, dataset=recipe.id, kind="volume", meta=meta,
            image=np.ascontiguousarray(volume), affine=affine, label=label, label_names=dict(label_names),
            header=header, source_sha256=tuple(sorted(hashes)), units=1 if not out else 0, private=private,
        ))
    return out

