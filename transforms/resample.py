"""Resample volumes to a target spacing in the canonical orientation, as one pull-back.

Canonical orientation: index axes along +L, +P, +S (identity direction in LPS; the standard axial DICOM layout).
Output grid: the input's field of view (outer voxel edges) in LPS, cut into voxels of the target spacing.
Pull-back: output index -> world -> input index (``M = inv(A_in) @ A_out``), then interpolation: linear for images,
nearest for label masks, with Gaussian anti-aliasing of the input along axes downsampled by more than 1.5x.

Backends: ``scipy.ndimage`` on the CPU and ``cupyx.scipy.ndimage`` on a GPU take the same arguments, so the two
paths share every line of geometry code; only the array module differs. When the pull-back matrix is a signed
permutation (the usual case: the input is axis-aligned), the input is transposed/flipped as a view so the matrix
becomes diagonal, which scipy and CuPy run on their separable fast path.

Edges follow ITK's convention (SimpleITK is the reference): an output point within half a voxel of the input's
outer voxel centres takes the edge value; beyond that it takes the fill value (-1024 HU for CT, 0 otherwise).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from medcurate.schemas.records import QuarantineError, Sample
from medcurate.transforms.context import Context
from medcurate.transforms.harmonize import geometry

ANTIALIAS_FACTOR = 1.5
MAX_OUTPUT_VOXELS = 2_000_000_000
GEOMETRY_TOL = 1e-4


@dataclass
class Backend:
    name: str  # cpu | gpu
    xp: ModuleType  # numpy or cupy
    ndi: ModuleType  # scipy.ndimage or cupyx.scipy.ndimage

    def asarray(self, a):
        return self.xp.asarray(a)

    def to_host(self, a) -> np.ndarray:
        return a.get() if hasattr(a, "get") else np.asarray(a)


def get_backend(device: str = "auto") -> Backend:
    """CuPy when a GPU is present and allowed (``auto``/``gpu``), otherwise NumPy/SciPy."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError("device must be auto, cpu or gpu")
    if device in ("auto", "gpu"):
        try:
            import cupy
            import cupyx.scipy.ndimage as cndi

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return Backend("gpu", cupy, cndi)
        except Exception as exc:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
            if device == "gpu":
                raise RuntimeError("--device gpu was asked for but no CUDA device is usable through CuPy") from exc
        if device == "gpu":
            raise RuntimeError("--device gpu was asked for but no CUDA device is usable through CuPy")
    import scipy.ndimage as ndi

    return Backend("cpu", np, ndi)


def canonical_grid(shape, affine: np.ndarray, spacing) -> tuple[tuple, np.ndarray]:
    """Output shape and affine covering the input's field of view, axes along +L, +P, +S."""
    spacing = np.asarray(spacing, dtype=np.float64)
    edges = [(-0.5, n - 0.5) for n in shape]
    corners = np.array([[*c, 1.0] for c in itertools.product(*edges)]) @ np.asarray(affine).T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    out_shape = tuple(int(max(1, np.ceil((h - l) / s - 1e-6))) for l, h, s in zip(lo, hi, spacing))
    out_affine = np.eye(4)
    out_affine[:3, :3] = np.diag(spacing)
    out_affine[:3, 3] = lo + spacing / 2
    return out_shape, out_affine


def pullback(in_affine: np.ndarray, out_affine: np.ndarray) -> np.ndarray:
    """4x4 matrix taking output indices to input indices."""
    return np.linalg.solve(np.asarray(in_affine, dtype=np.float64), np.asarray(out_affine, dtype=np.float64))


def _signed_permutation(m3: np.ndarray):
    """If each column of ``m3`` has one non-zero entry (rows distinct), the input axis feeding each output axis."""
    scale = np.abs(m3).max()
    nz = np.abs(m3) > 1e-9 * max(scale, 1.0)
    if not (nz.sum(axis=0) == 1).all() or not (nz.sum(axis=1) == 1).all():
        return None
    return [int(np.argmax(nz[:, b])) for b in range(3)]


def antialias_sigmas(m3: np.ndarray) -> np.ndarray:
    """Per input axis: Gaussian sigma (input voxels) when the output step exceeds 1.5 input voxels along it."""
    step = np.abs(m3).max(axis=1)  # input voxels travelled per output voxel, per input axis
    return np.where(step > ANTIALIAS_FACTOR, np.maximum(0.0, (step - 1.0) / 2.0), 0.0)


def _inside_mask(backend: Backend, in_shape, m4: np.ndarray, out_shape):
    """True where the pulled-back point lies within half a voxel of the input grid (ITK's buffer test)."""
    ones = backend.xp.ones(in_shape, dtype=backend.xp.uint8)
    return backend.ndi.affine_transform(
        ones, m4[:3, :3], offset=m4[:3, 3], output_shape=out_shape, order=0, mode="grid-constant", cval=0
    ).astype(bool)


def resample_array(
    backend: Backend,
    volume,
    in_affine: np.ndarray,
    out_shape: tuple,
    out_affine: np.ndarray,
    order: int,
    fill: float = 0.0,
    antialias: bool = True,
    out_dtype=None,
):
    """Pull ``volume`` (a host or device array) back onto the output grid; returns a device array of ``out_dtype``."""
    xp, ndi = backend.xp, backend.ndi
    m4 = pullback(in_affine, out_affine)
    m3, offset = m4[:3, :3], m4[:3, 3]
    src = backend.asarray(volume)
    out_dtype = np.dtype(out_dtype or src.dtype)
    if order > 0:
        src = src.astype(xp.float32, copy=False)
        if antialias:
            sigmas = antialias_sigmas(m3)
            if sigmas.any():
                src = ndi.gaussian_filter(src, sigma=tuple(float(s) for s in sigmas), mode="nearest")
    perm = _signed_permutation(m3)
    if perm is not None:
        # Transpose the input so output axis b reads input axis perm[b]: the matrix becomes diagonal.
        src_t = src.transpose(perm)
        diag = np.array([m3[perm[b], b] for b in range(3)])
        off = np.array([offset[perm[b]] for b in range(3)])
        result = ndi.affine_transform(
            src_t, diag, offset=off, output_shape=out_shape, order=order, mode="nearest",
            output=xp.float32 if order > 0 else src.dtype, prefilter=False,
        )
        # Inside test per axis: continuous input index within [-0.5, n - 0.5].
        for b in range(3):
            n = src_t.shape[b]
            coord = diag[b] * np.arange(out_shape[b]) + off[b]
            bad = (coord < -0.5 - 1e-6) | (coord > n - 0.5 + 1e-6)
            if bad.any():
                index = [slice(None)] * 3
                index[b] = backend.asarray(np.nonzero(bad)[0])
                result[tuple(index)] = fill
    else:
        result = ndi.affine_transform(
            src, m3, offset=offset, output_shape=out_shape, order=order, mode="nearest",
            output=xp.float32 if order > 0 else src.dtype, prefilter=False,
        )
        inside = _inside_mask(backend, src.shape, m4, out_shape)
        result[~inside] = fill
    if order > 0 and out_dtype.kind in "iu":
        info = np.iinfo(out_dtype)
        result = xp.clip(xp.rint(result), info.min, info.max)
    return result.astype(out_dtype, copy=False)


class Resample:
    """Stage function: volumes to the recipe's spacing in canonical orientation; 2D images pass unchanged."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.backend = None

    def setup(self):
        self.backend = get_backend(self.ctx.device)

    def __call__(self, sample: Sample):
        recipe = self.ctx.recipe(sample.dataset)
        meta = dict(sample.meta)
        if sample.kind != "volume" or recipe.resample is None:
            meta["resampling"] = "none"
            meta["output"] = meta["original"]
            yield sample.replace(meta=meta)
            return
        if self.backend is None:
            self.setup()
        spacing = recipe.resample["spacing_mm"]
        out_shape, out_affine = canonical_grid(sample.image.shape, sample.affine, spacing)
        if int(np.prod(out_shape)) > MAX_OUTPUT_VOXELS:
            raise QuarantineError("resample_too_large", "resampled volume would exceed the voxel limit",
                                  {"voxels": int(np.prod(out_shape))})
        unit = meta["original"]["intensity_unit"]
        fill = -1024.0 if unit == "HU" else 0.0
        image = resample_array(self.backend, sample.image, sample.affine, out_shape, out_affine, order=1, fill=fill)
        label = None
        if sample.label is not None:
            assert_same_geometry(sample.image.shape, sample.affine, sample.label.shape, sample.affine)
            label = resample_array(self.backend, sample.label, sample.affine, out_shape, out_affine, order=0)
            label = self.backend.to_host(label)
        image = self.backend.to_host(image)
        meta["resampling"] = (
            f"pull-back to {'x'.join(f'{s:g}' for s in spacing)} mm, axes +L+P+S; linear (images), nearest (labels),"
            f" gaussian anti-aliasing above {ANTIALIAS_FACTOR}x; backend {self.backend.name}"
        )
        meta["output"] = geometry(image, out_affine, unit)
        yield sample.replace(image=image, affine=out_affine, label=label, meta=meta)


def assert_same_geometry(shape_a, affine_a, shape_b, affine_b) -> None:
    """Image and label must share a grid before any joint operation."""
    if tuple(shape_a) != tuple(shape_b) or not np.allclose(affine_a, affine_b, atol=GEOMETRY_TOL):
        raise QuarantineError("label_geometry_mismatch", "image and label grids differ")
