"""Resampling benchmark: a 512x512x200 CT at (0.7, 0.7, 2.5) mm to 1 mm isotropic.

Peers in the same process: SimpleITK's ResampleImageFilter (linear; its default threads) on the same output grid,
and scipy.ndimage.zoom (linear, grid_mode=True). Prints seconds for each, medcurate's ratio to each, and the largest
difference from SimpleITK. The volume is the demo chest CT's 133 slices continued to 200 by repeating slices.
With ``--device gpu`` on a machine with CuPy and a GPU it also prints the GPU time per volume and the fraction of
the memory-bandwidth bound (bytes read and written once, at the device's peak bandwidth).

    .venv/bin/python bench/resample.py [--repeats 3] [--device cpu|gpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def volume_512x512x200() -> tuple[np.ndarray, np.ndarray]:
    from medcurate.pipelines.demo import load_ct

    hu, _, _, _ = load_ct()
    slices = [hu[:, :, k % hu.shape[2]] for k in range(200)]
    vol = np.ascontiguousarray(np.stack(slices, axis=2))
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-179.0, -179.0, -250.0]
    return vol, affine


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = ap.parse_args()

    import scipy.ndimage as ndi
    import SimpleITK as sitk

    from medcurate.transforms.resample import canonical_grid, get_backend, resample_array

    vol, affine = volume_512x512x200()
    out_shape, out_affine = canonical_grid(vol.shape, affine, (1.0, 1.0, 1.0))
    cpu = get_backend("cpu")
    t_ours, ours = best(lambda: resample_array(cpu, vol, affine, out_shape, out_affine, order=1, fill=-1024),
                        args.repeats)

    image = sitk.GetImageFromArray(vol.transpose(2, 1, 0))
    image.SetSpacing([0.7, 0.7, 2.5])
    image.SetOrigin(affine[:3, 3].tolist())
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(out_affine[:3, 3].tolist())
    f.SetOutputSpacing([1.0, 1.0, 1.0])
    f.SetSize([int(s) for s in out_shape])
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(-1024)
    t_sitk, ref = best(lambda: f.Execute(image), args.repeats)
    ref = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    zoom = np.array(out_shape) / np.array(vol.shape)
    t_zoom, _ = best(lambda: ndi.zoom(vol, zoom, order=1, grid_mode=True, mode="grid-constant"), 1)

    print(f"input {vol.shape} int16 at (0.7, 0.7, 2.5) mm -> {out_shape} at 1 mm; "
          f"SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    print(f"medcurate (CPU):   {t_ours:.3f} s")
    print(f"SimpleITK:         {t_sitk:.3f} s   ratio medcurate/SimpleITK {t_ours / t_sitk:.2f}")
    print(f"scipy.ndimage.zoom {t_zoom:.3f} s   ratio medcurate/zoom {t_ours / t_zoom:.2f}")
    print(f"max |medcurate - SimpleITK| = {int(np.abs(ours.astype(np.int32) - ref).max())} HU (rounding to int16)")

    if args.device == "gpu":
        gpu = get_backend("gpu")
        import cupy

        dev = cupy.asarray(vol)
        resample_array(gpu, dev, affine, out_shape, out_affine, order=1, fill=-1024)  # compile kernels
        cupy.cuda.Device().synchronize()

        def run():
            out = resample_array(gpu, dev, affine, out_shape, out_affine, order=1, fill=-1024)
            cupy.cuda.Device().synchronize()
            return out

        t_gpu, out = best(run, max(args.repeats, 5))
        props = cupy.cuda.runtime.getDeviceProperties(0)
        peak = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8  # bytes/s (DDR)
        moved = vol.nbytes + out.nbytes
        print(f"GPU {props['name'].decode()}: {t_gpu * 1e3:.1f} ms per volume; "
              f"{moved / t_gpu / 1e9:.0f} GB/s = {moved / t_gpu / peak:.1%} of the {peak / 1e9:.0f} GB/s bound; "
              f"max |GPU - CPU| = {int(cupy.abs(out.astype(cupy.int32) - cupy.asarray(ours)).max())}")


if __name__ == "__main__":
    main()
