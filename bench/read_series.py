"""DICOM series reading benchmark, and peak memory against the number of series.

1. Speed: the demo CT written as a DICOM series (133 slices, 512x512, signed 16-bit with Rescale Intercept), read by
   medcurate's reader (discovery, the per-file header stage, grouping, series assembly: what the pipeline runs) and
   by SimpleITK's ImageSeriesReader (GDCM) in the same process; best of N runs each; ratio (goal <= 1.5x).
2. Memory: ``medcurate run`` on 1, 5 and 20 such series (resampling and DRRs off, so reading dominates), each in a
   fresh process; peak resident memory of that process (ru_maxrss). Flat in the number of series means a worker
   holds about one series at a time.

    .venv/bin/python bench/read_series.py [--repeats 5] [--series 1,5,20]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np


def write_series(root: str, copies: int) -> None:
    from medcurate.pipelines import demo

    hu, _, affine, _ = demo.load_ct()
    corpus = demo.Corpus(root=root)
    for c in range(copies):
        demo.write_ct_dicom(root, hu, affine, corpus, copy=c)


def speed(root: str, repeats: int) -> None:
    import SimpleITK as sitk

    from medcurate.schemas import recipe as recipe_mod
    from medcurate.transforms.context import Context
    from medcurate.transforms.discover import discover
    from medcurate.transforms.pseudonym import Pseudonymizer, Secret
    from medcurate.transforms.read.dicom import assemble, read_header

    recipe = recipe_mod.from_dict(
        {"dataset": {"id": "bench", "license": "MIT"}, "source": {"adapter": "dicom-folder", "root": root}},
        base_dir=root)
    ctx = Context(recipes={"bench": recipe}, pseudo=Pseudonymizer(Secret(b"bench-key-0123456789abcdef")))

    def ours():
        groups = defaultdict(list)
        for item in discover(recipe):
            g, inst = read_header(item, ctx)
            groups[g].append(inst)
        return [assemble(kv, ctx) for kv in groups.items()]

    series_dir = os.path.dirname(next(i.uri for i in discover(recipe)))

    def theirs():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(series_dir))
        return reader.Execute()

    t_ours = t_theirs = float("inf")
    for _ in range(repeats):  # interleaved, best of N: the machine is shared
        t = time.perf_counter()
        (sample,) = ours()
        t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter()
        image = theirs()
        t_theirs = min(t_theirs, time.perf_counter() - t)
    ref = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    same = np.array_equal(sample.image, ref)
    print(f"series {sample.image.shape} {sample.image.dtype}, {sample.units} files")
    print(f"medcurate reader: {t_ours:.3f} s   SimpleITK ImageSeriesReader: {t_theirs:.3f} s   "
          f"ratio {t_ours / t_theirs:.2f} (goal <= 1.5); identical voxels: {same}")


def peak_rss(n: int, workdir: str) -> tuple[float, float]:
    root = os.path.join(workdir, f"series-{n}")
    write_series(root, n)
    recipe = os.path.join(workdir, f"r{n}.yaml")
    with open(recipe, "w") as f:
        f.write(f"dataset: {{id: bench{n}, license: MIT}}\nsource: {{adapter: dicom-folder, root: {root}}}\n"
                "processing: {resample: false, drr: false}\n")
    key = os.path.join(workdir, "key")
    with open(key, "w") as f:
        f.write("bench-key-0123456789abcdef")
    cmd = [sys.executable, "-m", "medcurate.pipelines.cli", "run", recipe, "--out", os.path.join(workdir, f"o{n}"),
           "--key-file", key]
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, capture_output=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(peak, before) / 1024, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--series", default="1,5,20")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medcurate-bench-") as work:
        one = os.path.join(work, "speed")
        write_series(one, 1)
        speed(one, args.repeats)
        print("peak resident memory of `medcurate run` (reading only), one process per run:")
        for n in (int(x) for x in args.series.split(",")):
            mib, seconds = peak_rss(n, work)
            print(f"  {n:>3} series ({n * 133} files, {n * 70} MB of pixels): peak {mib:.0f} MiB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
