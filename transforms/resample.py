"""Resample volumes to a target spacing in the canonical orientation, as one pull-back.

Canonical orientation: index axes along +L, +P, +S (identity direction in LPS; the standard axial DICOM layout).
Output grid: the input's field of view (outer voxel edges) in LPS, cut into voxels of the target spacing; or a
fixed ``size`` centred on the field of view (crop or pad).
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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from medcurate.schemas.records import QuarantineError, Sample
from medcurate.transforms.context import Context
from medcurate.transforms.harmonize import geometry

ANTIALIAS_FACTOR = 1.5
MAX_OUTPUT_VOXELS = 2_000_000_000
GEOMETRY_TOL = 1e-4
EDGE_EPS = 1e-6
SLAB_VOXELS = 4_000_000  # output voxels per slab: bounds temporaries to ~tens of MB


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


def canonical_grid(shape, affine: np.ndarray, spacing, size=None) -> tuple[tuple, np.ndarray]:
    """Output shape and affine, axes along +L, +P, +S: covering the input's field of view, or, with ``size``,
    exactly ``size`` voxels centred on the field of view (cropping or padding with the fill value)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    edges = [(-0.5, n - 0.5) for n in shape]
    corners = np.array([[*c, 1.0] for c in itertools.product(*edges)]) @ np.asarray(affine).T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    out_affine = np.eye(4)
    out_affine[:3, :3] = np.diag(spacing)
    if size is not None:
        out_shape = tuple(int(n) for n in size)
        out_affine[:3, 3] = (lo + hi) / 2 - (np.array(out_shape) - 1) / 2 * spacing
        return out_shape, out_affine
    out_shape = tuple(int(max(1, np.ceil((h - l) / s - 1e-6))) for l, h, s in zip(lo, hi, spacing))
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


def _threads(backend: Backend, threads: int | None) -> int:
    if backend.name != "cpu":
        return 1  # one device: kernels are queued on one stream
    return max(1, threads if threads else min(4, os.cpu_count() or 1))


def _run_chunks(jobs: list, workers: int) -> None:
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(workers) as pool:  # NumPy and SciPy release the GIL in these kernels
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def _axis_weights(xp, coords: np.ndarray, n: int, order: int):
    """Per output position along one axis: input indices and weight (linear) or index (nearest), clamped to the
    grid as ITK does inside its buffer, plus the positions beyond half a voxel of the grid (to be filled)."""
    outside = (coords < -0.5 - EDGE_EPS) | (coords > n - 0.5 + EDGE_EPS)
    if order == 0:
        idx = np.clip(np.floor(coords + 0.5), 0, n - 1).astype(np.int64)
        return xp.asarray(idx), None, None, outside
    i0 = np.floor(coords)
    w = (coords - i0).astype(np.float32)
    i1 = np.clip(i0 + 1, 0, n - 1).astype(np.int64)
    i0 = np.clip(i0, 0, n - 1).astype(np.int64)
    return xp.asarray(i0), xp.asarray(i1), xp.asarray(w), outside


def _interp_axis(xp, x, axis: int, coords: np.ndarray, order: int):
    i0, i1, w, _ = _axis_weights(xp, coords, x.shape[axis], order)
    if order == 0:
        return xp.take(x, i0, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    a = xp.take(x, i0, axis=axis).astype(xp.float32, copy=False)
    b = xp.take(x, i1, axis=axis).astype(xp.float32, copy=False)
    b -= a
    b *= w.reshape(shape)
    a += b
    return a


def _finish(xp, values, out, fill, masks, out_dtype) -> None:
    """Fill positions beyond the grid, round and clip to integer dtypes, store into ``out``."""
    for axis, bad in masks:
        if bad.any():
            index = [slice(None)] * values.ndim
            index[axis] = xp.asarray(np.nonzero(bad)[0])
            values[tuple(index)] = fill
    if out_dtype.kind in "iu" and values.dtype.kind == "f":
        info = np.iinfo(out_dtype)
        xp.rint(values, out=values)
        xp.clip(values, info.min, info.max, out=values)
    out[...] = values


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


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
    threads: int | None = None,
):
    """Pull ``volume`` (a host or device array) back onto the output grid; returns a device array of ``out_dtype``.

    Work proceeds in slabs of the output's last axis, so temporaries stay small (a few tens of MB) whatever the
    volume size; on the CPU the slabs run on a few threads.
    """
    xp, ndi = backend.xp, backend.ndi
    m4 = pullback(in_affine, out_affine)
    m3, offset = m4[:3, :3], m4[:3, 3]
    src = backend.asarray(volume)
    out_dtype = np.dtype(out_dtype or src.dtype)
    out = xp.empty(tuple(int(s) for s in out_shape), dtype=out_dtype)
    sigmas = antialias_sigmas(m3) if (order > 0 and antialias) else np.zeros(3)
    perm = _signed_permutation(m3)
    plane = int(np.prod(out_shape[:2]))
    slab = max(1, SLAB_VOXELS // max(plane, 1))
    jobs = []
    if perm is not None:
        src_t = src.transpose(perm)  # a view: output axis b reads input axis perm[b]
        sig_t = sigmas[perm]
        coords = [m3[perm[b], b] * np.arange(out_shape[b]) + offset[perm[b]] for b in range(3)]
        masks01 = [(b, _axis_weights(np, coords[b], src_t.shape[b], order)[3]) for b in (0, 1)]
        margin = int(np.ceil(4 * sig_t[2]))  # the Gaussian's reach (scipy truncates at 4 sigma)
        for k0, k1 in _chunks(out_shape[2], slab):
            def job(k0=k0, k1=k1):
                c2 = coords[2][k0:k1]
                lo = int(max(0, np.floor(c2.min()) - margin))
                hi = int(min(src_t.shape[2], np.floor(c2.max()) + 2 + margin))
                part = src_t[:, :, lo:hi]
                if sig_t.any():
                    part = ndi.gaussian_filter(part.astype(xp.float32), sigma=tuple(float(v) for v in sig_t),
                                               mode="nearest")
                part = _interp_axis(xp, part, 0, coords[0], order)
                part = _interp_axis(xp, part, 1, coords[1], order)
                # The margin keeps both neighbours of every position inside the slab, so clamping to the slab
                # only happens at the volume's own edges; positions beyond the grid are filled below.
                part = _interp_axis(xp, part, 2, c2 - lo, order)
                bad2 = _axis_weights(np, c2, src_t.shape[2], order)[3]
                _finish(xp, part, out[:, :, k0:k1], fill, masks01 + [(2, bad2)], out_dtype)
            jobs.append(job)
    else:
        if sigmas.any():
            src = ndi.gaussian_filter(src.astype(xp.float32), sigma=tuple(float(v) for v in sigmas), mode="nearest")
        shape_in = np.array(src.shape)
        for k0, k1 in _chunks(out_shape[2], slab):
            def job(k0=k0, k1=k1):
                off = offset + m3[:, 2] * k0
                part_shape = (out_shape[0], out_shape[1], k1 - k0)
                part = ndi.affine_transform(
                    src, m3, offset=off, output_shape=part_shape, order=order, mode="nearest",
                    output=xp.float32 if order > 0 else src.dtype, prefilter=False,
                )
                i, j, k = (np.arange(n, dtype=np.float64) for n in part_shape)
                inside = np.ones(part_shape, dtype=bool)
                for a in range(3):  # the pulled-back index along input axis a, built by broadcasting
                    cont = (m3[a, 0] * i)[:, None, None] + (m3[a, 1] * j)[None, :, None] + (m3[a, 2] * k)[None, None, :]
                    cont += off[a]
                    inside &= (cont >= -0.5 - EDGE_EPS) & (cont <= shape_in[a] - 0.5 + EDGE_EPS)
                part[~backend.asarray(inside)] = fill
                _finish(xp, part, out[:, :, k0:k1], fill, [], out_dtype)
            jobs.append(job)
    _run_chunks(jobs, _threads(backend, threads))
    return out


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
        out_shape, out_affine = canonical_grid(sample.image.shape, sample.affine, spacing,
                                               recipe.resample.get("size"))
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
