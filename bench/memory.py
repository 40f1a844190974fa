"""Peak memory of one 512x512x300 CT volume through resample (to 1 mm) + DRR (AP, lateral, 512x512 cone-beam),
with a label mask, as multiples of the input volume's size.

Measured with tracemalloc (NumPy reports its array allocations to it), starting after the input volume and mask
exist; the figure printed adds the input volume's own bytes, so "3.0x" means everything held at the peak, input
included, is three times the volume. The resampled volume and mask are kept (they are outputs).

    .venv/bin/python bench/memory.py
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np


def main() -> None:
    from medcurate.pipelines.demo import load_ct
    from medcurate.transforms.drr import hu_to_mu, render_cone, render_parallel
    from medcurate.transforms.resample import canonical_grid, get_backend, resample_array

    hu, mask, _, _ = load_ct()
    vol = np.ascontiguousarray(np.stack([hu[:, :, k % hu.shape[2]] for k in range(300)], axis=2))
    lab = np.ascontiguousarray(np.stack([mask[:, :, k % mask.shape[2]] for k in range(300)], axis=2))
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    affine[:3, 3] = [-179.0, -179.0, -150.0]
    backend = get_backend("cpu")
    values = sorted(int(v) for v in np.unique(lab) if v)

    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    out_shape, out_affine = canonical_grid(vol.shape, affine, (1.0, 1.0, 1.0))
    res = resample_array(backend, vol, affine, out_shape, out_affine, order=1, fill=-1024)
    res_lab = resample_array(backend, lab, affine, out_shape, out_affine, order=0)
    _, peak_resample = tracemalloc.get_traced_memory()

    def to_mu(x):
        return hu_to_mu(backend, x, "water-linear-v1")

    views = []
    for direction in ("ap", "lateral"):
        views.append(render_parallel(backend, res, res_lab, out_affine, direction, values, "binary", to_mu=to_mu))
    cone = {"direction": "pa", "sid_mm": 1000, "sdd_mm": 1500, "rows": 512, "cols": 512, "pixel_mm": 0.8}
    views.append(render_cone(backend, res, res_lab, out_affine, cone, values, "binary", to_mu=to_mu))
    _, peak = tracemalloc.get_traced_memory()
    seconds = time.perf_counter() - t
    tracemalloc.stop()
    size = vol.nbytes
    print(f"input {vol.shape} int16 = {size / 2**20:.0f} MiB (+ uint8 mask {lab.nbytes / 2**20:.0f} MiB); "
          f"resampled {out_shape} int16 = {res.nbytes / 2**20:.0f} MiB; {len(values)} structures; {seconds:.1f} s")
    print(f"peak during resample:       {(size + peak_resample) / size:.2f}x the volume")
    print(f"peak during resample + DRR: {(size + peak) / size:.2f}x the volume "
          f"({(size + peak) / 2**20:.0f} MiB; goal <= 3x)")
    kept = sum(v[0].nbytes + v[1].nbytes for v in views)
    print(f"  of which DRR outputs kept: {kept / 2**20:.0f} MiB (3 views with {len(values)} label maps each)")


if __name__ == "__main__":
    main()
