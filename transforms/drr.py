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
  ``angle_deg``. Each view records its 3x4 projection matrix (world LPS mm -> homogeneous pixel [col, row, 1]) and
  ASTRA ``cone_vec``-style vectors (source, detector centre, u, v).

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
SAMPLES_PER_CHUNK = 2_000_000  # ray samples held at once (bounds memory)


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


# -- parallel ---------------------------------------------------------------------------------------------------
def _project_labels_parallel(backend: Backend, label, axis: int, values: list, step_mm: float, mode: str):
    """(n_structures, a, b) maps for a parallel projection along ``axis`` of an integer label volume."""
    xp = backend.xp
    lab = backend.asarray(label)
    moved = xp.moveaxis(lab, axis, 2)  # (a, b, depth)
    a, b = moved.shape[:2]
    lookup = np.full(int(max(values, default=0)) + 1, -1, dtype=np.int64)
    for n, v in enumerate(values):
        lookup[v] = n
    lookup = backend.asarray(lookup)
    ia, ib, _ = xp.nonzero(moved)
    struct = lookup[moved[ia, ib, _]]
    keep = struct >= 0
    code = (struct[keep] * a + ia[keep]) * b + ib[keep]
    counts = xp.bincount(code, minlength=len(values) * a * b).reshape(len(values), a, b)
    if mode == "path_length":
        return counts.astype(xp.float32) * step_mm
    return counts > 0


def render_parallel(backend: Backend, mu, label, affine: np.ndarray, direction: str, values: list, mode: str):
    """Line integrals (rows, cols), label maps, and geometry for a parallel view of a canonical volume."""
    spacing = np.diag(affine)[:3]
    origin = affine[:3, 3]
    ni, nj, nk = mu.shape
    if direction in ("ap", "pa"):
        axis, col_axis = 1, 0  # integrate along P; columns along +L
    elif direction == "lateral":
        axis, col_axis = 0, 1  # integrate along L; columns along +P (anterior on the left)
    else:
        raise ValueError(direction)
    p = backend.to_host(mu.sum(axis=axis) * float(spacing[axis]))  # (col_axis, k)
    image = p.T[::-1, :].astype(np.float32)  # rows from superior to inferior
    maps = None
    if label is not None:
        m = _project_labels_parallel(backend, label, axis, values, float(spacing[axis]), mode)  # (s, col_axis, k)
        maps = backend.to_host(m).transpose(0, 2, 1)[:, ::-1, :]
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


def _ray_box(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Entry and exit parameters of rays ``origin + t * dirs`` through the box [lo, hi] (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t0 = (lo - origin) * inv
        t1 = (hi - origin) * inv
    tmin = np.nanmax(np.minimum(t0, t1), axis=1)
    tmax = np.nanmin(np.maximum(t0, t1), axis=1)
    return np.maximum(tmin, 0.0), tmax


def render_cone(backend: Backend, mu, label, affine: np.ndarray, view: dict, values: list, mode: str):
    xp, ndi = backend.xp, backend.ndi
    spacing = np.diag(affine)[:3]
    origin = affine[:3, 3]
    shape = np.array(mu.shape)
    rows, cols = int(view.get("rows", 512)), int(view.get("cols", 512))
    lo, hi = origin - spacing / 2, origin + (shape - 0.5) * spacing
    iso = (lo + hi) / 2
    vec = cone_vectors(view, iso)
    P = projection_matrix(vec, rows, cols)
    cc, rr = np.meshgrid(np.arange(cols) - (cols - 1) / 2.0, np.arange(rows) - (rows - 1) / 2.0)
    pixels = vec["detector"] + cc.reshape(-1, 1) * vec["u"] + rr.reshape(-1, 1) * vec["v"]
    dirs = pixels - vec["source"]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t_in, t_out = _ray_box(vec["source"], dirs, lo, hi)
    step = float(spacing.min()) * 0.5
    n_steps = int(np.ceil(np.max(np.maximum(t_out - t_in, 0)) / step)) + 1
    total = np.zeros(rows * cols, dtype=np.float32)
    counts = None
    if label is not None:
        counts = xp.zeros((len(values), rows * cols), dtype=xp.float32)
        lookup = np.full(int(max(values, default=0)) + 1, -1, dtype=np.int64)
        for n, val in enumerate(values):
            lookup[val] = n
        lookup = backend.asarray(lookup)
        lab = backend.asarray(label)
    mu_d = backend.asarray(mu)
    steps = np.arange(n_steps) * step
    chunk = max(64, SAMPLES_PER_CHUNK // n_steps)
    for start in range(0, rows * cols, chunk):
        stop = min(rows * cols, start + chunk)
        length = np.maximum(t_out[start:stop] - t_in[start:stop], 0.0)
        # Segment m covers [m*step, (m+1)*step] of the chord, cut at its end; it is sampled at its midpoint.
        weight = np.clip(length[:, None] - steps[None, :], 0.0, step)  # (rays, steps), mm
        t = t_in[start:stop, None] + steps[None, :] + weight / 2
        pts = vec["source"][None, None, :] + t[..., None] * dirs[start:stop, None, :]
        idx_d = backend.asarray(((pts - origin) / spacing).reshape(-1, 3).T.astype(np.float32))
        w_d = backend.asarray(weight.astype(np.float32))
        samples = ndi.map_coordinates(mu_d, idx_d, order=1, mode="nearest", prefilter=False).reshape(t.shape)
        total[start:stop] = backend.to_host((samples * w_d).sum(axis=1))
        if label is not None:
            lv = ndi.map_coordinates(lab, idx_d, order=0, mode="constant", cval=0, prefilter=False).reshape(t.shape)
            ray, seg = xp.nonzero(lv * (w_d > 0))
            struct = lookup[lv[ray, seg].astype(xp.int64)]
            keep = struct >= 0
            code = struct[keep] * (stop - start) + ray[keep]
            path = xp.bincount(code, weights=w_d[ray, seg][keep], minlength=len(values) * (stop - start))
            counts[:, start:stop] = path.reshape(len(values), stop - start).astype(xp.float32)
    image = total.reshape(rows, cols)
    maps = None
    if label is not None:
        c = backend.to_host(counts).reshape(len(values), rows, cols)
        maps = c if mode == "path_length" else c > 0
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
        "step_mm": step,
    }
    return image.astype(np.float32), maps, geometry


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
        mu = hu_to_mu(self.backend, self.backend.asarray(sample.image), cfg["hu_mapping"])
        views, failed = [], []
        for view in cfg["views"]:
            try:
                views.append(self._view(view, cfg, mu, sample, affine, values, structures))
            except Exception as exc:  # noqa: BLE001 - a failed view loses that view, never the CT sample
                failed.append(quarantine_record("drr", sample, exc, derived=True))
        yield sample.replace(views=views)
        yield from failed

    def _view(self, view, cfg, mu, sample, affine, values, structures) -> View:
        if view["projection"] == "parallel":
            image, maps, geo = render_parallel(
                self.backend, mu, sample.label, affine, view["direction"], values, cfg["label_mode"])
        else:
            image, maps, geo = render_cone(self.backend, mu, sample.label, affine, view, values, cfg["label_mode"])
        display, disp = display_image(image, cfg["display_bits"])
        if maps is None:
            maps = np.zeros((0,) + image.shape, dtype=bool if cfg["label_mode"] == "binary" else np.float32)
        return View(
            name=view["name"], line_integral=image, display=display, labels=maps, structures=list(structures),
            geometry=geo,
            mapping={"hu_to_mu": {"name": cfg["hu_mapping"], **HU_MAPPINGS[cfg["hu_mapping"]]},
                     "display": disp, "label_mode": cfg["label_mode"]},
        )
