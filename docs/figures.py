"""Render docs/img/drr-labels.png from a demo output: DRRs with their projected anatomy label maps.

    .venv/bin/medcurate demo --out demo-out && .venv/bin/python docs/figures.py demo-out
"""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import webdataset as wds
from PIL import Image

GROUPS = [  # (name prefix, RGB): drawn in this order, later groups on top
    ("lung_", (70, 130, 255)),
    ("heart", (235, 60, 60)),
    ("aorta", (255, 150, 40)),
    ("rib_", (250, 220, 60)),
    ("vertebrae_", (60, 200, 90)),
    ("clavicula", (200, 90, 230)),
    ("scapula", (90, 220, 220)),
]


def overlay(display: np.ndarray, maps: np.ndarray, names: list, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(display[..., None].astype(np.float32), 3, axis=2)
    for prefix, colour in GROUPS:
        mask = np.zeros(display.shape, bool)
        for m, name in zip(maps, names):
            if name.startswith(prefix):
                mask |= m.astype(bool)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def main(out_dir: str, target: str) -> None:
    with open(os.path.join(out_dir, "shards", "index.json")) as f:
        shards = [s["shard"] for s in json.load(f)["shards"] if s["product"] == "drr"]
    panels = []
    for shard in shards:
        for s in wds.WebDataset(os.path.join(out_dir, shard), shardshuffle=False):
            record = json.loads(s["json"])
            if not record["structures"]:
                continue
            display = np.asarray(Image.open(io.BytesIO(s["png"])))
            maps = np.load(io.BytesIO(s["seg.npy"]))
            grey = np.repeat(display[..., None], 3, axis=2)
            pair = np.concatenate([grey, overlay(display, maps, record["structures"])], axis=1)
            panels.append((record["derivation"]["view"], pair))
    panels.sort(key=lambda p: p[0])
    height = max(p.shape[0] for _, p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0))) for _, p in panels]
    Image.fromarray(np.concatenate(padded, axis=1)).save(target, optimize=True)
    print(f"wrote {target}: views {[v for v, _ in panels]}")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "img"), exist_ok=True)
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-out", os.path.join(here, "img", "drr-labels.png"))
