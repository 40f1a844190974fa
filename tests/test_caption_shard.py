"""Template captions checked against labels; shard planning and tar writing read back with webdataset."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import webdataset as wds

from medcurate.schemas.records import Caption
from medcurate.transforms.caption import TemplateCaptioner, check_caption
from medcurate.transforms.shard import TAR_MTIME, ShardSample, npy_bytes, plan_shards, png_bytes, write_shard


def test_template_caption_names_the_positive_findings_only():
    record = {"kind": "image", "modality": "XR", "body_part": "CHEST", "view": "PA", "age_years": 58.0, "sex": "F",
              "labels": {"Cardiomegaly": 1, "Pleural Effusion": 1, "Mass": 0, "Pneumonia": 0}}
    cap = TemplateCaptioner().caption(record)
    assert isinstance(cap, Caption) and cap.kind == "template" and cap.model == "template-v1"
    assert cap.text.startswith("Posteroanterior (PA) chest radiograph of a 58-year-old female patient")
    assert "cardiomegaly" in cap.text and "pleural effusion" in cap.text and "mass" not in cap.text.lower()
    assert check_caption(cap.text, record["labels"]) == []


def test_caption_check_catches_contradictions():
    labels = {"Cardiomegaly": 1, "Pneumothorax": 0}
    assert check_caption("Chest radiograph. Findings: none.", labels) == ["positive finding not mentioned: Cardiomegaly"]
    problems = check_caption("Chest radiograph. Findings: cardiomegaly, pneumothorax.", labels)
    assert problems == ["negative finding asserted: Pneumothorax"]


def test_drr_and_volume_captions():
    cap = TemplateCaptioner()
    drr = cap.caption({"product_kind": "drr", "body_part": "CHEST", "structures": ["lung_upper_lobe_left", "heart"],
                       "derivation": {"geometry": {"direction": "lateral", "projection": "cone"}}})
    assert drr.text == ("Digitally reconstructed left lateral radiograph of the chest, cone-beam projection computed "
                        "from CT. Labelled anatomy: lung upper lobe left, heart.")
    vol = cap.caption({"product_kind": "volume", "modality": "CT", "body_part": "CHEST",
                       "output": {"spacing_mm": [1.5, 1.5, 1.5]}})
    assert vol.text == "CT volume of the chest at 1.5x1.5x1.5 mm."


def test_plan_packs_in_key_order_under_size_and_count_limits():
    entries = [(f"ds_{i:08x}", 40) for i in range(10)][::-1]
    plan = plan_shards((("image", "train"), entries), max_bytes=100, max_count=1000)
    shards = [s for _, s in plan]
    assert [k for k, _ in plan] == sorted(k for k, _ in entries)
    assert shards.count("shards/image/train-000000.tar") == 2 and shards[-1] == "shards/image/train-000004.tar"
    by_count = plan_shards((("image", "val"), entries), max_bytes=10**9, max_count=3)
    assert len({s for _, s in by_count}) == 4
    assert plan == plan_shards((("image", "train"), list(reversed(entries))), max_bytes=100, max_count=1000)


def test_written_shard_reads_back_with_webdataset(tmp_path):
    samples = []
    for i in range(3):
        img = (np.arange(64, dtype=np.uint8).reshape(8, 8) + i)
        members = {"png": png_bytes(img), "json": json.dumps({"i": i}).encode(), "txt": f"caption {i}".encode()}
        samples.append(ShardSample("image", "train", f"demo_{i:08x}", members, {"key": f"demo_{i:08x}"}))
    rows = [{**_row(s.key)} for s in samples]
    for s, r in zip(samples, rows):
        s.row = r
    entry, out_rows = write_shard(("shards/image/train-000000.tar", list(reversed(samples))), str(tmp_path))
    path = tmp_path / "shards/image/train-000000.tar"
    assert entry["samples"] == 3 and entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == sorted(s.key for s in samples)
    assert sorted(k for k in got[0] if not k.startswith("__")) == ["json", "png", "txt"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got[1]["png"]))),
                                  np.arange(64, dtype=np.uint8).reshape(8, 8) + 1)
    import tarfile

    with tarfile.open(path) as tar:
        assert {m.mtime for m in tar.getmembers()} == {TAR_MTIME}
        assert all("." not in m.name.split(".", 1)[0] for m in tar.getmembers())
    assert (tmp_path / "shards/image/train-000000.stats.json").exists()
    assert [r["members"] for r in out_rows][0] == [f"{samples[0].key}.json", f"{samples[0].key}.png",
                                                    f"{samples[0].key}.txt"]


def test_npy_bytes_are_canonical():
    a = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    b = np.ascontiguousarray(a)
    assert npy_bytes(a) == npy_bytes(b)
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(a))), a)


def _row(key):
    from medcurate.schemas.sample import CATALOG_SCHEMA

    row = {name: None for name in CATALOG_SCHEMA.names}
    row.update(schema_version="1.0", key=key, product="image", dataset="demo", kind="image", patient_id="p1",
               split="train", license="MIT", redistributable=True, source_sha256=["00"], source_units=1,
               recipe_sha256="r", pipeline_version="0")
    for f in ("shard", "members", "bytes"):
        row.pop(f)
    return row
