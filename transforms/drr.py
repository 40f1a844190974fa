"""Digitally reconstructed radiographs (DRRs) from CT, with anatomy label maps projected along the same rays.

Input: a CT volume on the canonical grid (``resample.py``: index axes along +L, +P, +S, affine diagonal).

HU -> linear attenuation (1/mm) is a named, versioned mapping (``HU_MAPPINGS``); the line integrals
``p = sum(mu * dl)`` are stored as float32, and the display image (Beer-Lambert log domain, windowed to 8 or 16
bit) is a separate, recorded mapping, so a user can re-render from the line integrals.

Geometries
- ``parallel``: projection along a volume axis (a sum). ``ap``/``pa`` integrate along P (identical line integrals
  in parallel geometry), ``lateral`` along L. Display convention as radiographs are read: frontal views with the
  patient's right on the image left and superior up; the lateral view as a left lateral, anterior on the image left.
- ``cone``: a point source and a flat detector (``sid_mm`` source-isocentre, ``sdd_mm`` source-detector,
  ``rows`` x ``cols`` pixels of ``pixel_mm``), isocentre at the volume centre, rotated about the S axis by
  ``angle_deg`` (``angles_deg: [...]`` expands to one view per angle), or given directly as ASTRA ``cone_vec``-style
  ``vectors``. Each view records its 3x4 projection matrix (world LPS mm -> homogeneous pixel [col, row, 1]) and
  its vectors (source, detector centre, u, v).

Engine: Joseph's method. For each slice along the beam's principal axis, every ray is sampled bilinearly where it
crosses the slice's centre plane and weighted by the ray's length through the slice; when the detector is parallel
to the slices the sampling is separable (columns, then rows). All views sharing a principal axis are rendered in
one pass over the slices; attenuation is computed slice by slice (parallel views: slab by slab), so no float copy
of the volume is ever held; detector columns are split over threads on the CPU.

Label maps, PAXRay-style: one map per structure, set where the ray crosses it (``binary``) or holding the path
length in mm through it (``path_length``), computed from the same rays (or the same sums) as the image.
All array work goes through ``Backend`` (NumPy/SciPy or CuPy), so CPU and GPU share this code.
"""
from __future__ import annotations

import math

import numpy as np

from medcurate.schemas.records import QuarantineError, Sample, View
from medcurate.transforms.common import quarantine_record
from medcurate.transforms.context import Context
from medcurate.transforms.resample import Backend, get_backend

MU_WATER_PER_MM = 0.02  # ~70 keV effective energy
HU_MAPPINGS = {
    # mu = mu_water * (1 + HU/1000), air and below clipped to 0
    "water-linear-v1": {"mu_water_per_mm": MU_WATER_PER_MM, "bone_gain": 1.0},
    # as above for HU <= 0; above 0 the slope is multiplied by bone_gain, brightening bone and contrast
    "bone-emphasis-v1": {"mu_water_per_mm": MU_WATER_PER_MM, "bone_gain": 2.0},
}
DISPLAY_MAPPING = "log-window-v1"  # see display_image
MIN_SLICES = 16
CHUNK_VOXELS = 4_000_000  # voxels converted to attenuation at once (bounds memory)


def hu_to_mu(backend: Backend, hu, mapping: str):
    if mapping not in HU_MAPPINGS:
        raise QuarantineError("unknown_hu_mapping", "the recipe names an HU mapping that does not exist")
    xp = backend.xp
    p = HU_MAPPINGS[mapping]
    hu = hu.astype(xp.float32)
    rel = xp.where(hu > 0, hu * p["bone_gain"], hu) / 1000.0
    return xp.maximum(p["mu_water_per_mm"] * (1.0 + rel), 0.0).astype(xp.float32)


def display_image(line_integral: np.ndarray, bits: int) -> tuple[np.ndarray, dict]:
    """log-window-v1: the line integral windowed linearly from the 20th percentile of body pixels (p above 10% of
    the high end) to the 99.5th percentile of all positive pixels; high attenuation (bone) bright."""
    positive = line_integral[line_integral > 0]
    high = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    high = high if high > 0 else 1.0
    body = line_integral[line_integral > 0.1 * high]
    low = float(np.percentile(body, 20)) if body.size else 0.0
    low = low if low < high else 0.0
    scaled = np.clip((line_integral - low) / (high - low), 0.0, 1.0)
    top = (1 << bits) - 1
    out = np.rint(scaled * top).astype(np.uint8 if bits == 8 else np.uint16)
    return out, {"name": DISPLAY_MAPPING, "window": [round(low, 6), round(high, 6)], "bits": bits, "bone": "bright"}


def _identity(x):
    return x


def _lookup(backend: Backend, values: list):
    """Label value -> structure index (or -1) as a device array."""
    table = np.full(int(max(values, default=0)) + 2, -1, dtype=np.int64)
    for n, v in enumerate(values):
        table[v] = n
    return backend.asarray(table)


def _label_maps(counts, weight, mode: str):
    """uint16 crossing counts -> binary maps, or path lengths in mm (counts x per-ray step)."""
    if mode == "path_length":
        return counts.astype(np.float32) * weight
    return counts > 0


# -- parallel ---------------------------------------------------------------------------------------------------
def render_parallel(backend: Backend, volume, label, affine: np.ndarray, direction: str, values: list, mode: str,
                    to_mu=None, threads: int | None = None):
    """Line integrals (rows, cols), label maps (structures, rows, cols) and geometry of a parallel view.

    The volume is processed in slabs of its S axis: attenuation is computed per slab, never for the whole volume.
    """
    xp = backend.xp
    to_mu = to_mu or _identity
    spacing = np.diag(affine)[:3].astype(np.float64)
    origin = affine[:3, 3]
    ni, nj, nk = volume.shape
    if direction in ("ap", "pa"):
        axis, col_axis = 1, 0  # integrate along P; columns along +L
    elif direction == "lateral":
        axis, col_axis = 0, 1  # integrate along L; columns along +P (anterior on the left)
    else:
        raise ValueError(direction)
    ncol = volume.shape[col_axis]
    p = xp.zeros((ncol, nk), dtype=xp.float32)
    counts = xp.zeros((len(values), ncol, nk), dtype=xp.uint16) if label is not None else None
    lookup = _lookup(backend, values) if label is not None else None
    slab = max(1, CHUNK_VOXELS // max(ni * nj, 1))
    step = float(spacing[axis])

    def job(k0, k1):
        mu = to_mu(backend.asarray(volume[:, :, k0:k1]))
        p[:, k0:k1] = mu.sum(axis=axis) * step
        if label is not None:
            lab = backend.asarray(label[:, :, k0:k1])
            ii, jj, kk = xp.nonzero(lab)
            struct = lookup[lab[ii, jj, kk].astype(xp.int64)]
            keep = struct >= 0
            col = (jj if col_axis == 1 else ii)[keep]
            code = (struct[keep] * ncol + col) * (k1 - k0) + kk[keep]
            hits = xp.bincount(code, minlength=len(values) * ncol * (k1 - k0)).reshape(len(values), ncol, k1 - k0)
            counts[:, :, k0:k1] = hits.astype(xp.uint16)

    _parallel_jobs(backend, [(lambda a=a, b=b: job(a, b)) for a, b in _spans(nk, slab)], threads)
    image = backend.to_host(p).T[::-1, :].astype(np.float32)
    maps = None
    if label is not None:
        maps = _label_maps(backend.to_host(counts).transpose(0, 2, 1)[:, ::-1, :], step, mode)
    # world (LPS) -> pixel: col = (x_c - o_c)/s_c, row = nk-1 - (z - o_z)/s_z
    P = np.zeros((3, 4))
    P[0, col_axis] = 1.0 / spacing[col_axis]
    P[0, 3] = -origin[col_axis] / spacing[col_axis]
    P[1, 2] = -1.0 / spacing[2]
    P[1, 3] = nk - 1 + origin[2] / spacing[2]
    P[2, 3] = 1.0
    geometry = {
        "projection": "parallel",
        "direction": direction,
        "rows": int(image.shape[0]),
        "cols": int(image.shape[1]),
        "pixel_mm": [float(spacing[2]), float(spacing[col_axis])],  # (row, col) spacing
        "projection_matrix": P.round(9).tolist(),
        "ray_direction_lps": [0.0, 1.0, 0.0] if direction == "ap" else (
            [0.0, -1.0, 0.0] if direction == "pa" else [1.0, 0.0, 0.0]),
    }
    return image, (np.ascontiguousarray(maps) if maps is not None else None), geometry


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _parallel_jobs(backend: Backend, jobs: list, threads: int | None) -> None:
    from medcurate.transforms.resample import _run_chunks, _threads

    _run_chunks(jobs, _threads(backend, threads))


# -- cone -------------------------------------------------------------------------------------------------------
def cone_vectors(view: dict, isocentre: np.ndarray) -> dict:
    """Source, detector centre and detector axes (u: +col, v: +row, scaled to pixel size) in LPS mm."""
    sid, sdd = float(view.get("sid_mm", 1000.0)), float(view.get("sdd_mm", 1500.0))
    direction = view["direction"]
    if direction == "pa":  # source behind the patient, detector in front
        beam, u = np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    elif direction == "ap":
        beam, u = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    else:  # left lateral: source on the patient's right, detector on the left
        beam, u = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    v = np.array([0.0, 0.0, -1.0])
    angle = math.radians(float(view.get("angle_deg", 0.0)))
    rot = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1.0]])
    beam, u = rot @ beam, rot @ u
    pixel = float(view.get("pixel_mm", 0.8))
    source = isocentre - sid * beam
    detector = isocentre + (sdd - sid) * beam
    return {"source": source, "detector": detector, "u": u * pixel, "v": v * pixel, "sdd": sdd, "sid": sid}


def explicit_vectors(view: dict) -> dict:
    """A view given as ASTRA cone_vec-style vectors (LPS mm): ``vectors: {source, detector, u, v}``, detector centre
    and per-pixel steps along columns (u) and rows (v). The detector must stand upright: u horizontal, v along S."""
    vec = {k: np.asarray(view["vectors"][k], dtype=np.float64) for k in ("source", "detector", "u", "v")}
    u, v = vec["u"], vec["v"]
    if abs(u[2]) > 1e-6 * np.linalg.norm(u) or np.linalg.norm(v[:2]) > 1e-6 * np.linalg.norm(v):
        raise ValueError("explicit cone vectors need an upright detector (u horizontal, v along the S axis)")
    vec["sdd"] = float(np.linalg.norm(vec["detector"] - vec["source"]))
    vec["sid"] = float(view.get("sid_mm", vec["sdd"]))
    return vec


def projection_matrix(vec: dict, rows: int, cols: int) -> np.ndarray:
    """3x4 P with [col*w, row*w, w] = P @ [x, y, z, 1] for the cone geometry ``vec``."""
    s, d, u, v = vec["source"], vec["detector"], vec["u"], vec["v"]
    n = (d - s) / np.linalg.norm(d - s)
    sdd = float(np.linalg.norm(d - s))
    c0, r0 = (cols - 1) / 2.0, (rows - 1) / 2.0
    du, dv = np.linalg.norm(u), np.linalg.norm(v)
    a = sdd * (u / du) / du + c0 * n
    b = sdd * (v / dv) / dv + r0 * n
    return np.array([[*a, -a @ s], [*b, -b @ s], [*n, -n @ s]])


def _weights(xp, coords, n: int):
    """Linear interpolation indices/weights along one axis, ITK's edge rule (clamp within half a voxel), and a
    0/1 factor that zeroes positions beyond it (air outside the volume)."""
    inside = ((coords >= -0.5) & (coords <= n - 0.5)).astype(xp.float32)
    i0 = xp.floor(coords)
    w = (coords - i0).astype(xp.float32)
    i1 = xp.clip(i0 + 1, 0, n - 1).astype(xp.int64)
    i0 = xp.clip(i0, 0, n - 1).astype(xp.int64)
    return i0, i1, w, inside


def _nearest(xp, coords, n: int):
    inside = (coords >= -0.5) & (coords <= n - 0.5)
    return xp.clip(xp.floor(coords + 0.5), 0, n - 1).astype(xp.int64), inside


class _ConeSetup:
    """Per view: the rays of a block of detector columns, expressed against slices along the principal axis."""

    def __init__(self, xp, vec, rows, cols, axis, other, spacing, origin, shape, c_lo, c_hi):
        self.xp, self.axis, self.other = xp, axis, other
        s, det, u, v = vec["source"], vec["detector"], vec["u"], vec["v"]
        c = np.arange(c_lo, c_hi) - (cols - 1) / 2.0
        r = np.arange(rows) - (rows - 1) / 2.0
        base = det - s
        d_a = base[axis] + c * u[axis]  # per column: v has no component in the horizontal plane
        d_b = base[other] + c * u[other]
        d_z = base[2] + r * v[2]  # per row: u is horizontal
        self.s_a, self.s_b, self.s_z = s[axis], s[other], s[2]
        self.d_a, self.d_b, self.d_z = d_a, d_b, d_z
        self.sp_b, self.sp_z, self.o_b, self.o_z = spacing[other], spacing[2], origin[other], origin[2]
        self.n_b, self.n_z = shape[other], shape[2]
        norm = np.sqrt(d_a[:, None] ** 2 + d_b[:, None] ** 2 + d_z[None, :] ** 2)
        self.weight = (spacing[axis] * norm / np.abs(d_a)[:, None]).astype(np.float32)  # mm of ray per slice
        # With the detector parallel to the slices every ray meets a slice at one magnification: separable rows.
        self.separable = bool(np.allclose(d_a, d_a[0], rtol=0, atol=1e-9 * abs(d_a[0])))
        self.acc = xp.zeros((c_hi - c_lo, rows), dtype=xp.float32)

    def coords(self, plane: float):
        t = (plane - self.s_a) / self.d_a  # per column
        p_b = (self.s_b + t * self.d_b - self.o_b) / self.sp_b
        if self.separable:
            p_z = (self.s_z + t[0] * self.d_z - self.o_z) / self.sp_z  # per row
        else:
            p_z = (self.s_z + np.outer(t, self.d_z) - self.o_z) / self.sp_z  # per column and row
        return p_b, p_z


def _sample_slice(xp, plane2d, p_b, p_z, separable: bool):
    """Bilinear samples of a (n_b, n_z) slice at columns' p_b and rows' p_z; zero beyond the slice."""
    n_b, n_z = plane2d.shape
    b0, b1, wb, inb = _weights(xp, xp.asarray(p_b), n_b)
    tmp = xp.take(plane2d, b0, axis=0)
    tmp += (xp.take(plane2d, b1, axis=0) - tmp) * wb[:, None]
    tmp *= inb[:, None]  # (cols, n_z)
    if separable:
        z0, z1, wz, inz = _weights(xp, xp.asarray(p_z), n_z)
        out = xp.take(tmp, z0, axis=1)
        out += (xp.take(tmp, z1, axis=1) - out) * wz[None, :]
        out *= inz[None, :]
    else:
        z0, z1, wz, inz = _weights(xp, xp.asarray(p_z), n_z)
        out = xp.take_along_axis(tmp, z0, axis=1)
        out += (xp.take_along_axis(tmp, z1, axis=1) - out) * wz
        out *= inz
    return out


def _label_slice(xp, plane2d, p_b, p_z, separable: bool):
    n_b, n_z = plane2d.shape
    ib, inb = _nearest(xp, xp.asarray(p_b), n_b)
    tmp = xp.take(plane2d, ib, axis=0) * inb[:, None].astype(plane2d.dtype)
    iz, inz = _nearest(xp, xp.asarray(p_z), n_z)
    if separable:
        return xp.take(tmp, iz, axis=1) * inz[None, :].astype(tmp.dtype)
    return xp.take_along_axis(tmp, iz, axis=1) * inz.astype(tmp.dtype)


def render_cone(backend: Backend, volume, label, affine: np.ndarray, views, values: list, mode: str,
                to_mu=None, threads: int | None = None):
    """Cone-beam views by Joseph's method: for every slice along the beam's principal axis, each ray is sampled
    bilinearly where it crosses the slice's centre plane and weighted by the ray length through the slice.

    ``views``: one view dict or a list; all views sharing a principal axis are rendered in one pass over the
    slices. Returns (image, maps, geometry) for one view, or a list of them. Label maps come from the same rays
    (nearest-neighbour samples of the mask). Detector columns are split over threads on the CPU.
    """
    single = isinstance(views, dict)
    views = [views] if single else list(views)
    xp = backend.xp
    to_mu = to_mu or _identity
    spacing = np.diag(affine)[:3].astype(np.float64)
    origin = affine[:3, 3].astype(np.float64)
    shape = np.array(volume.shape)
    lo, hi = origin - spacing / 2, origin + (shape - 0.5) * spacing
    iso = (lo + hi) / 2
    lookup = _lookup(backend, values) if label is not None else None
    prepared = []
    for view in views:
        vec = explicit_vectors(view) if "vectors" in view else cone_vectors(view, iso)
        rows, cols = int(view.get("rows", 512)), int(view.get("cols", 512))
        beam = vec["detector"] - vec["source"]
        axis = int(np.argmax(np.abs(beam[:2])))
        prepared.append((view, vec, rows, cols, axis))
    workers = _threads_for(backend, threads)
    results: dict[int, tuple] = {}
    for axis in sorted({p[4] for p in prepared}):
        group = [(i, p) for i, p in enumerate(prepared) if p[4] == axis]
        other = 1 - axis
        blocks = []  # (view index, setup, label counts)
        for i, (view, vec, rows, cols, _) in group:
            for c_lo, c_hi in _spans(cols, -(-cols // workers)):
                setup = _ConeSetup(xp, vec, rows, cols, axis, other, spacing, origin, shape, c_lo, c_hi)
                counts = xp.zeros((len(values), c_hi - c_lo, rows), dtype=xp.uint16) if label is not None else None
                blocks.append((i, setup, counts, c_lo, c_hi))

        def job(setup, counts):
            for sl in range(int(shape[axis])):
                plane = origin[axis] + sl * spacing[axis]
                slab = volume[sl, :, :] if axis == 0 else volume[:, sl, :]
                mu = to_mu(backend.asarray(slab))
                p_b, p_z = setup.coords(plane)
                setup.acc += _sample_slice(xp, mu, p_b, p_z, setup.separable)
                if counts is not None:
                    lab = backend.asarray(label[sl, :, :] if axis == 0 else label[:, sl, :])
                    hit = _label_slice(xp, lab, p_b, p_z, setup.separable)
                    cc, rr = xp.nonzero(hit)
                    struct = lookup[hit[cc, rr].astype(xp.int64)]
                    keep = struct >= 0
                    counts[struct[keep], cc[keep], rr[keep]] += 1  # one label per ray per slice: no repeats

        _parallel_jobs(backend, [(lambda s=b[1], c=b[2]: job(s, c)) for b in blocks], threads)
        for i, (view, vec, rows, cols, _) in group:
            mine = [b for b in blocks if b[0] == i]
            image = np.concatenate([backend.to_host(b[1].acc) * b[1].weight for b in mine], axis=0).T
            maps = None
            if label is not None:
                maps = np.concatenate(
                    [_label_maps(backend.to_host(b[2]), b[1].weight[None], mode) for b in mine], axis=1
                ).transpose(0, 2, 1)
            P = projection_matrix(vec, rows, cols)
            geometry = {
                "projection": "cone",
                "direction": view["direction"],
                "angle_deg": float(view.get("angle_deg", 0.0)),
                "rows": rows,
                "cols": cols,
                "pixel_mm": [float(np.linalg.norm(vec["v"])), float(np.linalg.norm(vec["u"]))],
                "sid_mm": vec["sid"],
                "sdd_mm": vec["sdd"],
                "projection_matrix": P.round(9).tolist(),
                "cone_vec": {k: np.asarray(vec[k]).round(6).tolist() for k in ("source", "detector", "u", "v")},
                "method": "joseph",
            }
            results[i] = (np.ascontiguousarray(image, dtype=np.float32),
                          np.ascontiguousarray(maps) if maps is not None else None, geometry)
    out = [results[i] for i in range(len(views))]
    return out[0] if single else out


def _threads_for(backend: Backend, threads: int | None) -> int:
    from medcurate.transforms.resample import _threads

    return _threads(backend, threads)


def expand_views(views: list) -> list:
    """A view with ``angles_deg: [..]`` stands for one view per angle, named ``<name>-<angle>``."""
    out = []
    for view in views:
        angles = view.get("angles_deg")
        if not angles:
            out.append(view)
            continue
        for angle in angles:
            v = {k: val for k, val in view.items() if k != "angles_deg"}
            v["angle_deg"] = float(angle)
            v["name"] = f"{view['name']}-{int(angle) if float(angle).is_integer() else angle}".replace(".", "p")
            out.append(v)
    return out


class ProjectDRR:
    """Stage function: adds ``View``s to CT volume samples; other samples pass unchanged."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.backend = None

    def setup(self):
        self.backend = get_backend(self.ctx.device)

    def __call__(self, sample: Sample):
        recipe = self.ctx.recipe(sample.dataset)
        cfg = recipe.drr
        meta = sample.meta
        if (
            cfg is None or sample.kind != "volume" or meta.get("modality") != "CT"
            or min(sample.image.shape) < MIN_SLICES or meta.get("resampling") == "none"
        ):
            yield sample
            return
        if self.backend is None:
            self.setup()
        affine = sample.affine
        if not np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])) or (np.diag(affine)[:3] <= 0).any():
            raise QuarantineError("drr_needs_canonical_grid", "DRRs are rendered from canonical (+L+P+S) volumes")
        values = sorted(int(v) for v in np.unique(sample.label) if v != 0) if sample.label is not None else []
        structures = [sample.label_names.get(v, f"label_{v}") for v in values]
        order = np.argsort(structures, kind="stable")
        values = [values[i] for i in order]
        structures = [structures[i] for i in order]
        if cfg["hu_mapping"] not in HU_MAPPINGS:
            raise QuarantineError("unknown_hu_mapping", "the recipe names an HU mapping that does not exist")
        backend = self.backend
        volume = backend.asarray(sample.image)  # int16 HU moved once; attenuation is computed slab by slab
        label = backend.asarray(sample.label) if sample.label is not None else None

        def to_mu(hu):
            return hu_to_mu(backend, hu, cfg["hu_mapping"])

        views, failed = [], []
        all_views = expand_views(cfg["views"])
        rendered = {}
        for view in all_views:
            if view["projection"] != "parallel":
                continue
            try:
                rendered[view["name"]] = render_parallel(
                    backend, volume, label, affine, view["direction"], values, cfg["label_mode"], to_mu=to_mu)
            except Exception as exc:  # noqa: BLE001 - a failed view loses that view, never the CT sample
                failed.append(quarantine_record("drr", sample, exc, derived=True))
        cones = [v for v in all_views if v["projection"] == "cone"]
        if cones:
            try:
                for view, result in zip(cones, render_cone(
                        backend, volume, label, affine, cones, values, cfg["label_mode"], to_mu=to_mu)):
                    rendered[view["name"]] = result
            except Exception as exc:  # noqa: BLE001
                failed.extend(quarantine_record("drr", sample, exc, derived=True) for _ in cones)
        for view in all_views:
            if view["name"] in rendered:
                views.append(self._view(view, cfg, rendered[view["name"]], structures))
        yield sample.replace(views=views)
        yield from failed

    def _view(self, view, cfg, result, structures) -> View:
        image, maps, geo = result
        display, disp = display_image(image, cfg["display_bits"])
        if maps is None:
            maps = np.zeros((0,) + image.shape, dtype=bool if cfg["label_mode"] == "binary" else np.float32)
        return View(
            name=view["name"], line_integral=image, display=display, labels=maps, structures=list(structures),
            geometry=geo,
            mapping={"hu_to_mu": {"name": cfg["hu_mapping"], **HU_MAPPINGS[cfg["hu_mapping"]]},
                     "display": disp, "label_mode": cfg["label_mode"]},
        )
