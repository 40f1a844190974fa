"""CPU/GPU parity of the resampler and the DRR engine. Runs only where CuPy sees a CUDA device (never in CI);
the GPU path shares every line of geometry code with the CPU path, which the rest of the suite tests."""
from __future__ import annotations

import numpy as np
import pytest

from medcurate.transforms.drr import hu_to_mu, render_cone, render_parallel
from medcurate.transforms.resample import canonical_grid, get_backend, resample_array

cupy = pytest.importorskip("cupy")
try:
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 - CuPy installed without a driver
    HAS_GPU = False
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")


@pytest.fixture(scope="module")
def ct(demo_ct):
    hu, mask, affine, _ = demo_ct
    return hu[::2, ::2, :], mask[::2, ::2, :], affine @ np.diag([2.0, 2.0, 1.0, 1.0])


def test_resample_parity(ct):
    hu, mask, affine = ct
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    shape, out = canonical_grid(hu.shape, affine, (1.5, 1.5, 1.5))
    a = resample_array(cpu, hu, affine, shape, out, order=1, fill=-1024)
    b = gpu.to_host(resample_array(gpu, cupy.asarray(hu), affine, shape, out, order=1, fill=-1024))
    assert np.abs(a.astype(np.int32) - b).max() <= 1
    la = resample_array(cpu, mask, affine, shape, out, order=0)
    lb = gpu.to_host(resample_array(gpu, cupy.asarray(mask), affine, shape, out, order=0))
    assert (la != lb).mean() < 1e-4


def test_drr_parity(ct):
    hu, mask, affine = ct
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    shape, out = canonical_grid(hu.shape, affine, (1.5, 1.5, 1.5))
    vol = resample_array(cpu, hu, affine, shape, out, order=1, fill=-1024)
    lab = resample_array(cpu, mask, affine, shape, out, order=0)
    values = sorted(int(v) for v in np.unique(lab) if v)
    view = {"direction": "pa", "sid_mm": 1000, "sdd_mm": 1500, "rows": 256, "cols": 256, "pixel_mm": 1.5,
            "angle_deg": 12.0}
    for backend, v, lb in ((cpu, vol, lab), (gpu, cupy.asarray(vol), cupy.asarray(lab))):
        def to_mu(x, backend=backend):
            return hu_to_mu(backend, x, "water-linear-v1")

        res = (render_cone(backend, v, lb, out, view, values, "binary", to_mu=to_mu),
               render_parallel(backend, v, lb, out, "ap", values, "binary", to_mu=to_mu))
        if backend is cpu:
            ref = res
    for (img_c, maps_c, _), (img_g, maps_g, _) in zip(ref, res):
        np.testing.assert_allclose(img_g, img_c, rtol=1e-4, atol=1e-4)
        assert (maps_c != maps_g).mean() < 1e-4
