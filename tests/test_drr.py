"""DRR accuracy against closed forms, the projection matrix, and radiographic display conventions."""
from __future__ import annotations

import numpy as np
import pytest

from medcurate.transforms.drr import (
    HU_MAPPINGS,
    display_image,
    hu_to_mu,
    projection_matrix,
    cone_vectors,
    render_cone,
    render_parallel,
)
from medcurate.transforms.resample import get_backend

CPU = get_backend("cpu")
MU = 0.02


def canonical_affine(shape, spacing=1.0, origin=(-40.0, -40.0, -40.0)):
    A = np.diag([spacing] * 3 + [1.0])
    A[:3, 3] = origin
    return A


def sphere_volume(n=80, radius=30.0, center=(0.0, 0.0, 0.0), spacing=1.0, supersample=4):
    """Partial-volume sphere (fraction of each voxel inside), canonical grid centred on the origin."""
    origin = -(n - 1) / 2 * spacing
    A = canonical_affine((n,) * 3, spacing, (origin,) * 3)
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    axis = origin + np.arange(n) * spacing
    frac = np.zeros((n, n, n), np.float32)
    for dx in sub:
        for dy in sub:
            for dz in sub:
                x = axis[:, None, None] + dx * spacing - center[0]
                y = axis[None, :, None] + dy * spacing - center[1]
                z = axis[None, None, :] + dz * spacing - center[2]
                frac += (x * x + y * y + z * z <= radius * radius)
    return frac / supersample**3, A


@pytest.fixture(scope="module")
def sphere():
    return sphere_volume()


def test_parallel_sphere_chords(sphere):
    frac, A = sphere
    image, _, geo = render_parallel(CPU, frac * MU, None, A, "ap", [], "binary")
    n = frac.shape[0]
    P = np.array(geo["projection_matrix"])
    rows, cols = np.mgrid[0: image.shape[0], 0: image.shape[1]]
    # pixel centre -> world (x, z): invert the affine camera
    x = (cols - P[0, 3]) / P[0, 0]
    z = (rows - P[1, 3]) / P[1, 2]
    d = np.hypot(x, z)
    inside = d < 0.8 * 30.0
    expected = 2 * np.sqrt(np.maximum(30.0**2 - d**2, 0)) * MU
    rel = np.abs(image[inside] - expected[inside]) / expected[inside]
    assert rel.max() <= 0.015, rel.max()
    assert image.shape == (n, n)


def test_cone_sphere_chords(sphere):
    frac, A = sphere
    view = {"direction": "pa", "sid_mm": 400.0, "sdd_mm": 600.0, "rows": 96, "cols": 96, "pixel_mm": 1.0}
    image, _, geo = render_cone(CPU, frac * MU, None, A, view, [], "binary")
    vec = {k: np.array(v) for k, v in geo["cone_vec"].items()}
    rows, cols = geo["rows"], geo["cols"]
    cc, rr = np.meshgrid(np.arange(cols) - (cols - 1) / 2, np.arange(rows) - (rows - 1) / 2)
    pix = vec["detector"] + cc[..., None] * vec["u"] + rr[..., None] * vec["v"]
    dirs = pix - vec["source"]
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    centre = np.zeros(3)  # sphere centre = volume centre = isocentre
    to_c = centre - vec["source"]
    d = np.linalg.norm(to_c - (dirs @ to_c)[..., None] * dirs, axis=-1)
    inside = d < 0.8 * 30.0
    expected = 2 * np.sqrt(np.maximum(30.0**2 - d**2, 0)) * MU
    rel = np.abs(image[inside] - expected[inside]) / expected[inside]
    assert inside.sum() > 500 and rel.max() <= 0.015, rel.max()


def test_uniform_cube_parallel_and_lateral():
    vol = np.zeros((40, 40, 40), np.float32)
    vol[10:30, 5:35, 12:28] = MU
    A = canonical_affine(vol.shape, 1.5)
    ap, _, _ = render_parallel(CPU, vol, None, A, "ap", [], "binary")
    lat, _, _ = render_parallel(CPU, vol, None, A, "lateral", [], "binary")
    assert np.allclose(ap[ap > 0], 30 * 1.5 * MU)  # depth along P: 30 voxels of 1.5 mm
    assert np.allclose(lat[lat > 0], 20 * 1.5 * MU)  # depth along L: 20 voxels
    assert (ap > 0).sum() == 20 * 16 and (lat > 0).sum() == 30 * 16


@pytest.mark.parametrize("direction, angle", [("pa", 0.0), ("ap", 0.0), ("lateral", 0.0), ("pa", 25.0)])
def test_single_bright_voxel_lands_where_the_projection_matrix_says(direction, angle):
    vol = np.zeros((60, 60, 60), np.float32)
    voxel = (38, 21, 44)
    vol[voxel] = 1.0
    A = canonical_affine(vol.shape, 1.0, (-30.0, -30.0, -30.0))
    view = {"direction": direction, "angle_deg": angle, "sid_mm": 500.0, "sdd_mm": 800.0, "rows": 128, "cols": 128,
            "pixel_mm": 1.0}
    image, _, geo = render_cone(CPU, vol, None, A, view, [], "binary")
    P = np.array(geo["projection_matrix"])
    h = P @ (A @ np.array([*voxel, 1.0]))
    col, row = h[0] / h[2], h[1] / h[2]
    peak = np.unravel_index(np.argmax(image), image.shape)
    assert abs(peak[0] - row) <= 1.0 and abs(peak[1] - col) <= 1.0, (peak, row, col)


def _marker_centroid(marker_slices, render):
    vol = np.full((50, 50, 50), 0.2 * MU, np.float32)
    vol[marker_slices] = 5 * MU
    A = canonical_affine(vol.shape, 1.0, (-25.0, -25.0, -25.0))
    img = render(vol, A)
    excess = img - np.median(img)
    excess[excess < 0.5 * excess.max()] = 0
    rows, cols = np.indices(img.shape)
    return (rows * excess).sum() / excess.sum(), (cols * excess).sum() / excess.sum(), img.shape


RENDERS = {
    "ap-parallel": lambda v, A: render_parallel(CPU, v, None, A, "ap", [], "binary")[0],
    "lateral-parallel": lambda v, A: render_parallel(CPU, v, None, A, "lateral", [], "binary")[0],
    **{f"{d}-cone": (lambda d: lambda v, A: render_cone(
        CPU, v, None, A, {"direction": d, "sid_mm": 600.0, "sdd_mm": 900.0, "rows": 96, "cols": 96,
                          "pixel_mm": 1.0}, [], "binary")[0])(d) for d in ("ap", "pa", "lateral")},
}
LEFT = (slice(42, 46), slice(20, 30), slice(20, 30))  # i -> +L: the patient's left
ANTERIOR = (slice(20, 30), slice(3, 7), slice(20, 30))  # j -> +P: small j is anterior
SUPERIOR = (slice(20, 30), slice(20, 30), slice(44, 48))  # k -> +S


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_markers_appear_on_the_radiographic_side(name):
    """Radiographs are read facing the patient: the patient's left is on the image right in AP and PA views alike;
    a left lateral shows anterior on the image left; superior is up in every view."""
    row, col, shape = _marker_centroid(SUPERIOR, RENDERS[name])
    assert row < shape[0] / 2 - 5
    if name.startswith(("ap", "pa")):
        _, col, shape = _marker_centroid(LEFT, RENDERS[name])
        assert col > shape[1] / 2 + 5
    else:
        _, col, shape = _marker_centroid(ANTERIOR, RENDERS[name])
        assert col < shape[1] / 2 - 5


def test_label_maps_follow_the_image_rays(sphere):
    frac, A = sphere
    label = (frac > 0.5).astype(np.uint8)
    label[:5, :5, :5] = 3  # a small second structure in a corner
    image, maps, _ = render_parallel(CPU, frac * MU, label, A, "ap", [1, 3], "binary")
    expected = (label == 1).sum(axis=1).T[::-1, :] > 0
    np.testing.assert_array_equal(maps[0], expected)
    assert maps.shape == (2,) + image.shape and maps[1].sum() == 25
    _, lengths, _ = render_parallel(CPU, frac * MU, label, A, "ap", [1, 3], "path_length")
    np.testing.assert_allclose(lengths[0], (label == 1).sum(axis=1).T[::-1, :] * 1.0)
    view = {"direction": "pa", "sid_mm": 400.0, "sdd_mm": 600.0, "rows": 64, "cols": 64, "pixel_mm": 1.5}
    _, cmaps, _ = render_cone(CPU, frac * MU, label, A, view, [1, 3], "binary")
    indicator, _, _ = render_cone(CPU, (label == 1).astype(np.float32), None, A, view, [], "binary")
    # Nearest sampling of the mask and linear sampling of its indicator differ only for rays grazing the edge.
    assert np.all(cmaps[0][indicator > 3.0]) and not np.any(cmaps[0][indicator == 0])


def test_hu_mapping_and_display():
    hu = np.array([-2000, -1000, 0, 1000], np.int16)
    mu = hu_to_mu(CPU, hu, "water-linear-v1")
    np.testing.assert_allclose(mu, [0, 0, MU, 2 * MU], atol=1e-7)
    bone = hu_to_mu(CPU, hu, "bone-emphasis-v1")
    assert bone[3] > mu[3] and bone[2] == mu[2]
    assert set(HU_MAPPINGS) == {"water-linear-v1", "bone-emphasis-v1"}
    p = np.linspace(0, 10, 400, dtype=np.float32).reshape(20, 20)
    disp, info = display_image(p, 8)
    assert disp.dtype == np.uint8 and disp.max() == 255 and info["bone"] == "bright"
    assert np.all(np.diff(disp.ravel().astype(int)) >= 0)  # monotonic: more attenuation is brighter
    disp16, _ = display_image(p, 16)
    assert disp16.dtype == np.uint16


def test_projection_matrix_maps_the_detector_centre_ray():
    vec = cone_vectors({"direction": "pa", "sid_mm": 1000, "sdd_mm": 1500, "pixel_mm": 0.5}, np.zeros(3))
    P = projection_matrix(vec, 100, 200)
    h = P @ np.array([0, 0, 0, 1.0])
    assert np.allclose([h[0] / h[2], h[1] / h[2]], [99.5, 49.5])
    # a point 10 mm to the patient's left at the isocentre is magnified 1.5x: 15 mm = 30 pixels to the right
    h = P @ np.array([10.0, 0, 0, 1.0])
    assert np.isclose(h[0] / h[2], 99.5 + 30)


def test_views_render_identically_alone_together_and_on_any_thread_count(sphere):
    frac, A = sphere
    label = (frac > 0.5).astype(np.uint8)
    views = [{"name": "pa", "direction": "pa", "sid_mm": 400.0, "sdd_mm": 600.0, "rows": 40, "cols": 56,
              "pixel_mm": 1.5},
             {"name": "lat", "direction": "lateral", "sid_mm": 400.0, "sdd_mm": 600.0, "rows": 40, "cols": 40,
              "pixel_mm": 1.5, "angle_deg": 10.0},
             {"name": "ap", "direction": "ap", "sid_mm": 500.0, "sdd_mm": 700.0, "rows": 32, "cols": 32,
              "pixel_mm": 2.0}]
    together = render_cone(CPU, frac, label, A, views, [1], "binary", threads=2)
    for view, (img, maps, geo) in zip(views, together):
        alone, amaps, ageo = render_cone(CPU, frac, label, A, view, [1], "binary", threads=1)
        np.testing.assert_array_equal(img, alone)
        np.testing.assert_array_equal(maps, amaps)
        assert geo == ageo and img.shape == (view["rows"], view["cols"])


def test_explicit_vectors_reproduce_the_named_geometry(sphere):
    frac, A = sphere
    named = {"direction": "pa", "sid_mm": 400.0, "sdd_mm": 600.0, "rows": 48, "cols": 48, "pixel_mm": 1.2}
    img, _, geo = render_cone(CPU, frac, None, A, named, [], "binary")
    explicit = {"direction": "pa", "rows": 48, "cols": 48, "vectors": geo["cone_vec"]}
    img2, _, geo2 = render_cone(CPU, frac, None, A, explicit, [], "binary")
    np.testing.assert_allclose(img2, img, rtol=1e-5, atol=1e-6)
    assert np.allclose(geo2["projection_matrix"], geo["projection_matrix"])
    tilted = {**explicit, "vectors": {**geo["cone_vec"], "v": [0.0, 0.5, -1.0]}}
    with pytest.raises(ValueError, match="upright"):
        render_cone(CPU, frac, None, A, tilted, [], "binary")


def test_angle_lists_expand_to_named_views():
    from medcurate.transforms.drr import expand_views

    views = expand_views([{"name": "rot", "projection": "cone", "direction": "pa", "angles_deg": [0, 15, -7.5]},
                          {"name": "ap", "projection": "parallel", "direction": "ap"}])
    assert [v["name"] for v in views] == ["rot-0", "rot-15", "rot--7p5", "ap"]
    assert [v.get("angle_deg") for v in views] == [0.0, 15.0, -7.5, None]
