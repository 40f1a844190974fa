"""Resampling geometry, checked against SimpleITK's ResampleImageFilter and against analytic functions."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medcurate.transforms.resample import (
    antialias_sigmas,
    canonical_grid,
    get_backend,
    pullback,
    resample_array,
)

CPU = get_backend("cpu")


def to_sitk(arr: np.ndarray, affine: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(affine[:3, 3].tolist())
    img.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return img


def sitk_resample(arr, affine, out_shape, out_affine, interpolator, default, pixel_type):
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(out_affine[:3, 3].tolist())
    f.SetOutputSpacing(np.diag(out_affine)[:3].tolist())
    f.SetOutputDirection(np.eye(3).ravel().tolist())
    f.SetSize([int(s) for s in out_shape])
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(pixel_type)
    return sitk.GetArrayFromImage(f.Execute(to_sitk(arr, affine))).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def phantom():
    """Oblique, left/right-asymmetric CT-like phantom with non-identity direction cosines."""
    rng = np.random.default_rng(7)
    shape = (64, 56, 40)
    img = rng.normal(0, 30, shape).astype(np.float32) - 1000
    img[8:30, 6:50, 5:35] += 1040  # soft-tissue block
    img[44:58, 20:26, 10:16] += 2400  # bright block on one side only
    labels = np.zeros(shape, np.uint8)
    labels[8:30, 6:50, 5:35] = 1
    labels[44:58, 20:26, 10:16] = 2
    R = Rotation.from_euler("xyz", [14, -9, 31], degrees=True).as_matrix()
    A = np.eye(4)
    A[:3, :3] = R @ np.diag([0.8, 1.1, 2.0])
    A[:3, 3] = [-21.0, 13.5, 57.0]
    return np.round(img).astype(np.int16), labels, A


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (0.7, 0.9, 1.2)])
def test_parity_with_simpleitk_on_an_oblique_phantom(phantom, spacing):
    img, labels, A = phantom
    out_shape, out_A = canonical_grid(img.shape, A, spacing)
    ours = resample_array(CPU, img, A, out_shape, out_A, order=1, fill=-1024, antialias=False, out_dtype=np.float32)
    ref = sitk_resample(img, A, out_shape, out_A, sitk.sitkLinear, -1024, sitk.sitkFloat32)
    rms = float(np.sqrt(np.mean((ours - ref) ** 2)))
    assert rms <= 1e-3, rms
    ours_l = resample_array(CPU, labels, A, out_shape, out_A, order=0)
    ref_l = sitk_resample(labels, A, out_shape, out_A, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(ours_l, ref_l)
    assert ours_l.dtype == np.uint8


def test_int16_ct_stays_int16_and_is_rounded(phantom):
    img, _, A = phantom
    out_shape, out_A = canonical_grid(img.shape, A, (1.5, 1.5, 1.5))
    ours = resample_array(CPU, img, A, out_shape, out_A, order=1, fill=-1024, antialias=False)
    ref = sitk_resample(img, A, out_shape, out_A, sitk.sitkLinear, -1024, sitk.sitkFloat32)
    assert ours.dtype == np.int16
    assert np.abs(ours - ref).max() <= 0.5 + 1e-3


def _random_affine(draw_perm, flips, spacing, angles, origin):
    perm = np.eye(3)[list(draw_perm)]
    D = perm @ np.diag(flips)
    if angles is not None:
        D = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ D
    A = np.eye(4)
    A[:3, :3] = D @ np.diag(spacing)
    A[:3, 3] = origin
    return A


@settings(max_examples=40, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    spacing=st.tuples(*[st.floats(0.5, 3.0)] * 3),
    out_spacing=st.tuples(*[st.floats(0.6, 2.5)] * 3),
    oblique=st.booleans(),
    angles=st.tuples(*[st.floats(-40, 40)] * 3),
    origin=st.tuples(*[st.floats(-200, 200)] * 3),
    coef=st.tuples(*[st.floats(-3, 3)] * 3),
)
def test_linear_world_function_is_reproduced_exactly(perm, flips, spacing, out_spacing, oblique, angles, origin, coef):
    """Trilinear interpolation reproduces a function linear in world position: a geometry check that does not
    depend on the resampler's own conventions."""
    shape = (11, 9, 7)
    A = _random_affine(perm, flips, spacing, angles if oblique else None, origin)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ A[:3, :3].T + A[:3, 3]
    coef = np.array(coef)
    values = (world @ coef + 5.0).reshape(shape).astype(np.float64)
    out_shape, out_A = canonical_grid(shape, A, out_spacing)
    out = resample_array(CPU, values, A, out_shape, out_A, order=1, fill=np.nan, antialias=False,
                         out_dtype=np.float64)
    oidx = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1).reshape(-1, 3)
    oworld = oidx @ out_A[:3, :3].T + out_A[:3, 3]
    cont = oidx @ pullback(A, out_A)[:3, :3].T + pullback(A, out_A)[:3, 3]
    inside = np.all((cont >= -1e-6) & (cont <= np.array(shape) - 1 + 1e-6), axis=1)
    expected = oworld @ coef + 5.0
    got = out.reshape(-1)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-6 * (1 + np.abs(expected[inside]).max()))
    # The output grid is axis-aligned (+L, +P, +S) and covers the input's field of view.
    assert np.allclose(out_A[:3, :3], np.diag(out_spacing))
    corners = np.array([[*c, 1] for c in itertools.product(*[(-0.5, n - 0.5) for n in shape])]) @ A.T
    lo_in, hi_in = corners[:, :3].min(0), corners[:, :3].max(0)
    lo_out = out_A[:3, 3] - np.array(out_spacing) / 2
    hi_out = lo_out + np.array(out_shape) * np.array(out_spacing)
    assert np.all(lo_out <= lo_in + 1e-6) and np.all(hi_out >= hi_in - 1e-6)
    assert np.all(hi_out - hi_in < np.array(out_spacing) + 1e-6)


@settings(max_examples=25, deadline=None)
@given(perm=st.permutations([0, 1, 2]), flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
def test_axis_aligned_round_trip_is_lossless(perm, flips):
    """An axis-aligned volume resampled at its own spacing lands on its own voxels: a pure reorientation."""
    rng = np.random.default_rng(1)
    vol = rng.integers(-1000, 2000, (6, 5, 4)).astype(np.int16)
    A = _random_affine(perm, flips, (1.0, 1.0, 1.0), None, (3.0, -4.0, 10.0))
    out_shape, out_A = canonical_grid(vol.shape, A, (1.0, 1.0, 1.0))
    out = resample_array(CPU, vol, A, out_shape, out_A, order=1, fill=-1024, antialias=False)
    assert sorted(out_shape) == sorted(vol.shape)
    assert np.array_equal(np.sort(out.ravel()), np.sort(vol.ravel()))
    # each output voxel holds the input voxel at the same world position
    M = pullback(A, out_A)
    for o in [(0, 0, 0), tuple(s - 1 for s in out_shape), (1, 2, 1)]:
        i = np.rint(M[:3, :3] @ np.array(o) + M[:3, 3]).astype(int)
        assert out[o] == vol[tuple(i)]


def test_antialiasing_only_when_downsampling_by_more_than_one_and_a_half():
    assert np.allclose(antialias_sigmas(np.diag([3.0, 1.2, 0.5])), [1.0, 0.0, 0.0])
    noisy = np.random.default_rng(0).normal(0, 100, (60, 60, 20)).astype(np.float32)
    A = np.diag([0.5, 0.5, 2.0, 1.0])
    out_shape, out_A = canonical_grid(noisy.shape, A, (2.0, 2.0, 2.0))
    smooth = resample_array(CPU, noisy, A, out_shape, out_A, order=1, antialias=True)
    raw = resample_array(CPU, noisy, A, out_shape, out_A, order=1, antialias=False)
    assert smooth[2:-2, 2:-2].std() < 0.5 * raw[2:-2, 2:-2].std()


def test_gpu_request_without_a_gpu_is_an_error_and_auto_falls_back():
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except ImportError:
        has_cupy = False
    if not has_cupy:
        with pytest.raises(RuntimeError, match="--device gpu"):
            get_backend("gpu")
    assert get_backend("auto").name in ("cpu", "gpu")
    assert get_backend("cpu").name == "cpu"


def test_fixed_size_grid_crops_or_pads_around_the_field_of_view_centre(phantom):
    img, _, A = phantom
    full_shape, full_A = canonical_grid(img.shape, A, (1.5, 1.5, 1.5))
    for size in ((32, 32, 32), (128, 100, 90)):
        shape, out_A = canonical_grid(img.shape, A, (1.5, 1.5, 1.5), size=size)
        assert shape == size
        centre = out_A[:3, 3] + (np.array(size) - 1) / 2 * 1.5
        full_centre = full_A[:3, 3] + (np.array(full_shape) - 1) / 2 * 1.5
        assert np.allclose(centre, full_centre, atol=0.75 + 1e-9)
        out = resample_array(CPU, img, A, shape, out_A, order=1, fill=-1024, antialias=False, out_dtype=np.float32)
        ref = sitk_resample(img, A, shape, out_A, sitk.sitkLinear, -1024, sitk.sitkFloat32)
        assert float(np.sqrt(np.mean((out - ref) ** 2))) <= 1e-3
    padded = resample_array(CPU, img, A, (128, 100, 90), canonical_grid(img.shape, A, (1.5,) * 3, size=(128, 100, 90))[1],
                            order=1, fill=-1024)
    assert (padded[0] == -1024).all() and (padded[:, :, -1] == -1024).all()
