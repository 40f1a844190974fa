"""2D images (PNG, JPEG, TIFF; 8 or 16 bit, grey or colour) with their label-table row and report, via Pillow.

The label row and report are kept raw in ``Sample.private`` (patient ids, free text): the de-identify stage turns
them into pseudonyms, top-coded ages and cleaned text; nothing raw reaches an output.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from medcurate.schemas.records import Item, QuarantineError, Sample, SampleKey
from medcurate.transforms.context import Context
from medcurate.transforms.io import exists, read_bytes, relpath, sha256_bytes

Image.MAX_IMAGE_PIXELS = 40000 * 40000  # real scans are large; the file-size limit guards memory instead


def decode_image(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise QuarantineError("corrupt_image", "image file cannot be decoded (truncated or not an image)") from exc
    if img.mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(img, dtype=np.uint16)
    elif img.mode == "I":
        arr = np.asarray(img).astype(np.int32)
        if arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
    elif img.mode in ("L", "RGB"):
        arr = np.asarray(img)
    elif img.mode == "LA":
        arr = np.asarray(img.convert("L"))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
    else:  # P, RGBA, CMYK, 1, ...
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 3 and arr.shape[2] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
        arr[..., 0], arr[..., 2]
    ):
        arr = arr[..., 0]  # grey images saved as RGB
    return np.ascontiguousarray(arr)


def read_image(item: Item, ctx: Context) -> Sample:
    recipe = ctx.recipe(item.dataset)
    data = read_bytes(item.uri, recipe.max_file_bytes, item.size)
    hashes = [sha256_bytes(data)]
    if not item.row:
        raise QuarantineError("unlabeled_image", "image has no row in the label table", source_sha256=tuple(hashes))
    image = decode_image(data)
    private: dict = {"row": item.row, "source": relpath(item.uri, recipe.root)}
    meta: dict = {}
    report_uri = item.companion("report")
    if report_uri:
        if exists(report_uri):
            report = read_bytes(report_uri, recipe.max_file_bytes)
            hashes.append(sha256_bytes(report))
            private["report"] = report.decode("utf-8", "replace")
        else:
            meta["report_missing"] = True
    key = SampleKey(recipe.id, ctx.pseudo.digest("sample", recipe.id, "file", relpath(item.uri, recipe.root)))
    spacing = recipe.defaults.get("pixel_spacing_mm")
    if spacing:
        meta["pixel_spacing_mm"] = list(spacing)
    return Sample(
        key=key, dataset=recipe.id, kind="image", meta=meta, image=image, header=None,
        source_sha256=tuple(sorted(hashes)), units=1, private=private,
    )
