"""End to end: the main job over the demo corpus on the DirectRunner, read back as a user would."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from medcurate.catalog.scan import list_files, scan
from medcurate.schemas.sample import SCHEMA_VERSION
from medcurate.transforms.shard import PRODUCT_MEMBERS
from tests.conftest import TEST_KEY, recipe_by_name, run_cli

EXPECTED_REASONS = {
    ("read-dicom-header", "no_pixel_data"), ("read-dicom-header", "truncated_file"),
    ("read-dicom-series", "pixel_decode_failed"), ("deidentify", "burned_in_text_risk"),
    ("read-volume", "unsupported_4d"), ("read-image", "corrupt_image"), ("read-image", "unlabeled_image"),
    ("read-other", "missing_file"), ("read-other", "orphan_report"),
}


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def _catalog(out):
    return pq.read_table(os.path.join(out, "catalog", "catalog.parquet")).to_pylist()


def test_run_succeeds_and_reconciles(demo_run):
    out, code = demo_run
    assert code == 0
    summary = _summary(out)
    total = summary["total"]
    assert total["reconciled"] and total["discovered"] == total["written"] + total["quarantined"]
    assert total["discovered"] == 164 and total["quarantined"] == 9
    assert all(d["reconciled"] for d in summary["datasets"].values())
    reasons = {(q["stage"], q["reason"]) for q in summary["quarantine_by_reason"]}
    assert reasons == EXPECTED_REASONS
    assert summary["unmapped_values"] == {}


def test_quarantine_records_say_why_without_identifiers(demo_run):
    out, _ = demo_run
    with open(os.path.join(out, "quarantine", "quarantine.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 9
    for r in records:
        assert r["reason"] and r["message"] and r["stage"]
        assert set(r) == {"dataset", "stage", "reason", "message", "key", "units", "source_sha256", "detail"}
        assert r["reason"] == "missing_file" or len(r["source_sha256"]) >= 1


def test_shards_read_back_with_webdataset(demo_run):
    out, _ = demo_run
    with open(os.path.join(out, "shards", "index.json")) as f:
        index = json.load(f)["shards"]
    catalog = {r["key"]: r for r in _catalog(out)}
    seen = {}
    for entry in index:
        samples = list(wds.WebDataset(os.path.join(out, entry["shard"]), shardshuffle=False))
        assert len(samples) == entry["samples"]
        for s in samples:
            members = tuple(sorted(k for k in s if not k.startswith("__")))
            assert members == PRODUCT_MEMBERS[entry["product"]]
            assert "." not in s["__key__"]
            row = catalog[s["__key__"]]
            assert row["shard"] == entry["shard"] and row["product"] == entry["product"]
            record = json.loads(s["json"])
            assert record["key"] == s["__key__"] and record["schema_version"] == SCHEMA_VERSION == row["schema_version"]
            assert s["txt"].decode().strip() == row["caption"]
            seen.setdefault(entry["product"], []).append((s, row, record))
    assert set(seen) == {"volume", "volume_seg", "image", "image_npy", "drr"}
    # CT volumes: int16 HU on the 1.5 mm canonical grid
    for s, row, record in seen["volume"] + seen["volume_seg"]:
        vol = np.load(io.BytesIO(s["npy"]))
        assert list(vol.shape) == row["shape"]
        if row["modality"] == "CT" and len(vol.shape) == 3 and min(vol.shape) > 100:
            assert vol.dtype == np.int16 and row["spacing_mm"] == [1.5, 1.5, 1.5] and row["orientation"] == "LPS"
            assert -1100 < np.median(vol) < 500  # HU of a chest CT
    (seg_sample, seg_row, _), = seen["volume_seg"]
    seg = np.load(io.BytesIO(seg_sample["seg.npy"]))
    assert seg.shape == tuple(seg_row["shape"]) and len(np.unique(seg)) > 50
    # DRRs: radiograph-like PNGs with per-structure label maps from the CT's mask
    drr_rows = [(s, r) for s, r, _ in seen["drr"]]
    assert len(drr_rows) == 5
    for s, row in drr_rows:
        img = np.asarray(Image.open(io.BytesIO(s["png"])))
        lineint = np.load(io.BytesIO(s["lineint.npy"]))
        labels = np.load(io.BytesIO(s["seg.npy"]))
        assert img.shape == lineint.shape and lineint.dtype == np.float32 and img.dtype == np.uint8
        assert img.std() > 20 and row["parent_key"] in catalog
        assert labels.shape[0] == len(row["structures"]) and labels.shape[1:] == img.shape
    with_labels = [r for s, r in drr_rows if r["structures"]]
    assert {r["view"] for r in with_labels} == {"AP", "LATERAL", "PA"}
    # 2D X-rays with captions naming their findings
    xr = [(s, r) for s, r, _ in seen["image"] if r["modality"] == "XR"]
    assert len(xr) == 16
    for s, row in xr:
        assert row["caption"] and "chest radiograph" in row["caption"]
        for finding in row["findings"]:
            assert finding.lower() in row["caption"]


def test_catalog_query_cli(demo_run, capsys):
    out, _ = demo_run
    capsys.readouterr()
    assert run_cli(["catalog", "query", out, "--where", "modality = 'CT'", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["modality"] == "CT" for r in rows)
    assert {r["product"] for r in rows} == {"volume", "volume_seg", "drr", "image_npy"}
    assert run_cli(["catalog", "query", out, "--sql",
                    "SELECT split, count(DISTINCT patient_id) AS patients FROM catalog GROUP BY ALL ORDER BY ALL",
                    "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("split,patients")
    assert run_cli(["catalog", "stats", out]) == 0
    assert "quarantine by reason" in capsys.readouterr().out
    assert run_cli(["catalog", "query", out, "--where", "no_such_column = 1"]) != 0


def test_no_planted_identifier_and_no_key_in_any_output(demo_run, corpus):
    out, _ = demo_run
    files = list_files(out)
    assert any(f.endswith(".tar") for f in files) and any(f.endswith("run.log") for f in files)
    assert scan(out, corpus.identifiers) == []
    assert scan(out, [("key", TEST_KEY.decode())]) == []
    # The scan can fail: the corpus itself is full of the identifiers it looks for.
    hits = scan(corpus.root, corpus.identifiers)
    assert {h.kind for h in hits} >= {"name", "id", "date", "address"}


def test_patients_never_span_splits(demo_run):
    out, _ = demo_run
    splits = {}
    for row in _catalog(out):
        splits.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_same_input_and_key_give_byte_identical_outputs(demo_run, corpus, key_file, tmp_path):
    out, _ = demo_run
    out2 = str(tmp_path / "again")
    assert run_cli(["run", *corpus.recipes, "--out", out2, "--key-file", key_file]) == 0
    rel = lambda root: sorted(os.path.relpath(p, root) for p in list_files(root))  # noqa: E731
    assert rel(out) == rel(out2)
    for name in rel(out):
        if name == os.path.join("logs", "run.log"):
            continue  # holds the wall time
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read(), name


@pytest.fixture(scope="module")
def subset(corpus):
    return [recipe_by_name(corpus, "cxr"), recipe_by_name(corpus, "pydicom")]


def test_multi_processing_runner_gives_the_same_result(subset, key_file, tmp_path):
    """Separate worker processes catch pickling and global-state bugs: UIDs, pseudonyms and splits must agree."""
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    assert run_cli(["run", *subset, "--out", single, "--key-file", key_file]) == 0
    assert run_cli(["run", *subset, "--out", multi, "--key-file", key_file, "--direct_running_mode=multi_processing",
                    "--direct_num_workers=2"]) == 0
    assert _catalog(single) == _catalog(multi)
    for name in ("shards/index.json", "summary.json", "quarantine/quarantine.jsonl"):
        with open(os.path.join(single, name), "rb") as a, open(os.path.join(multi, name), "rb") as b:
            assert a.read() == b.read(), name


def test_another_key_gives_other_pseudonyms(subset, tmp_path):
    other = tmp_path / "other.key"
    other.write_text("another-key-entirely-0123456789")
    out = str(tmp_path / "out")
    assert run_cli(["run", subset[0], "--out", out, "--key-file", str(other)]) == 0
    keys_other = {r["key"] for r in _catalog(out)}
    mine = str(tmp_path / "mine")
    kf = tmp_path / "mine.key"
    kf.write_bytes(TEST_KEY)
    assert run_cli(["run", subset[0], "--out", mine, "--key-file", str(kf)]) == 0
    assert not keys_other & {r["key"] for r in _catalog(mine)}


def test_run_refuses_without_a_key_and_protects_existing_outputs(subset, tmp_path, monkeypatch, capsys, key_file):
    monkeypatch.delenv("MEDCURATE_KEY", raising=False)
    with pytest.raises(SystemExit) as err:
        from medcurate.pipelines.cli import main

        main(["run", subset[0], "--out", str(tmp_path / "o")])
    assert "--key-file" in str(err.value.code)
    out = str(tmp_path / "p")
    assert run_cli(["run", subset[0], "--out", out, "--key-file", key_file, "--limit", "2"]) == 0
    with pytest.raises(SystemExit) as err:
        main(["run", subset[0], "--out", out, "--key-file", key_file])
    assert "--overwrite" in str(err.value.code)
    assert run_cli(["run", subset[0], "--out", out, "--key-file", key_file, "--limit", "2", "--overwrite"]) == 0


def test_default_runner_is_the_local_fn_api_runner_and_runner_flags_pass_through(key):
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from medcurate.pipelines.options import RunConfig

    local = RunConfig(recipes=[], out="o", key=key, beam_args=["--direct_num_workers=2"])
    assert isinstance(local.runner(), fn_runner.FnApiRunner)
    assert local.pipeline_options().get_all_options()["direct_num_workers"] == 2
    remote = RunConfig(recipes=[], out="o", key=key, beam_args=["--runner=DataflowRunner", "--project=p"])
    assert remote.runner() is None and remote.pipeline_options().get_all_options()["project"] == "p"


def test_demo_command_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "demo-out")
    assert run_cli(["demo", "--out", out, "--limit", "2"]) == 0
    err = capsys.readouterr().err
    assert "throwaway" in err and "PHI scan" in err and ": OK" in err
    assert os.path.exists(os.path.join(out, "catalog", "catalog.parquet"))
