"""Template captions checked against labels; shard planning and tar writing read back with webdataset."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import webdataset as wds

from medcurate.schemas.records import Caption
from medcurate.transforms.caption import TemplateCaptioner, check_caption
from medcurate.transforms.shard import TAR_MTIME, npy_bytes, plan_shards, png_bytes, write_shard


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


def test_written_shard_reads_back_with_webdataset_and_tarfile(tmp_path):
    import tarfile

    from medcurate.transforms.shard import Part, tar_blocks
    from medcurate.transforms.io import write_bytes

    parts = []
    for i in range(3):
        img = (np.arange(64, dtype=np.uint8).reshape(8, 8) + i)
        members = {"png": png_bytes(img), "json": json.dumps({"i": i}).encode(), "txt": f"caption {i}".encode()}
        key = f"demo_{i:08x}"
        blob = tar_blocks(key, members)
        assert len(blob) % 512 == 0
        write_bytes(str(tmp_path / f"_parts/image/{key}.tarpart"), blob)
        parts.append(Part("image", "train", key, len(blob), f"_parts/image/{key}.tarpart", _row(key)))
    result = write_shard(("shards/image/train-000000.tar", list(reversed(parts))), str(tmp_path))
    entry, rows = result["entry"], result["rows"]
    path = tmp_path / "shards/image/train-000000.tar"
    assert entry["samples"] == 3 and entry["bytes"] == path.stat().st_size and entry["bytes"] % 10240 == 0
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list((tmp_path / "_parts" / "image").iterdir())  # parts are removed once written
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == [p.key for p in parts]
    assert sorted(k for k in got[0] if not k.startswith("__")) == ["json", "png", "txt"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got[1]["png"]))),
                                  np.arange(64, dtype=np.uint8).reshape(8, 8) + 1)
    with tarfile.open(path) as tar:  # a strict reader agrees
        members = tar.getmembers()
        assert {m.mtime for m in members} == {TAR_MTIME} and {m.mode for m in members} == {0o444}
        assert [m.name for m in members][:3] == ["demo_00000000.json", "demo_00000000.png", "demo_00000000.txt"]
        assert tar.extractfile("demo_00000002.txt").read() == b"caption 2"
    assert (tmp_path / "shards/image/train-000000.stats.json").exists()
    assert [r["shard"] for r in rows] == ["shards/image/train-000000.tar"] * 3


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
    row.pop("shard")
    row.update(members=[f"{key}.json", f"{key}.png", f"{key}.txt"], bytes=0)
    return row


def test_projection_regions_add_composites_from_the_union_of_member_maps():
    import numpy as np

    from medcurate.transforms.shard import projection_regions

    maps = np.zeros((3, 20, 30), np.uint8)
    maps[0, 2:6, 3:9] = 1  # tumor_edema
    maps[1, 10:15, 20:28] = 1  # tumor_enhancing
    maps[2, 4:12, 5:7] = 1  # liver: no composite member
    regions = projection_regions(maps, ["tumor_edema", "tumor_enhancing", "liver"])
    by_name = {r["structure"]: r for r in regions}
    assert by_name["tumor_whole"]["bbox"] == [2, 15, 3, 28]
    assert by_name["tumor_whole"]["size"] == int(((maps[0] > 0) | (maps[1] > 0)).sum())
    assert by_name["tumor_core"]["bbox"] == [10, 15, 20, 28] and by_name["tumor_core"]["members"] == ["tumor_enhancing"]
    assert by_name["liver"]["value"] == 2 and "members" not in by_name["liver"]
