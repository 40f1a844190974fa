"""Release level: fused datasets, patient-level splits without leakage, re-identification risk, the dataset card."""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from medcurate.transforms.release import risk_report
from tests.conftest import recipe_by_name, run_cli


def _catalog(out):
    return pq.read_table(os.path.join(out, "catalog", "catalog.parquet")).to_pylist()


def _records(out):
    """Every JSON member of every shard: {key: record}."""
    found = {}
    for root, _, files in os.walk(os.path.join(out, "shards")):
        for name in files:
            if name.endswith(".tar"):
                with tarfile.open(os.path.join(root, name)) as tar:
                    for info in tar:
                        if info.name.endswith(".json"):
                            found[info.name[:-5]] = json.loads(tar.extractfile(info).read())
    return found


@pytest.fixture(scope="module")
def fused(corpus, key_file, tmp_path_factory):
    """Two datasets over the same patients (one shared patient namespace): one with official splits that put a
    patient's images in different splits, one with keyed-hash splits."""
    root = tmp_path_factory.mktemp("fused")
    import shutil

    shutil.copytree(os.path.join(corpus.root, "cxr"), root / "cxr")
    table = root / "cxr" / "Data_Entry_2017.csv"
    rows = list(csv.reader(io.StringIO(table.read_text())))
    rows[0].append("Split")
    for i, row in enumerate(rows[1:]):
        row.append(("train", "test", "val")[i % 3])
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    text = open(recipe_by_name(corpus, "cxr")).read()
    text = text.replace("  root: cxr", f"  root: {root / 'cxr'}")
    a = text.replace("id: demo-cxr", "id: fused-a\n  patient_namespace: nih").replace(
        "sex: Patient Gender}", "sex: Patient Gender, split: Split}")
    b = text.replace("id: demo-cxr", "id: fused-b\n  patient_namespace: nih")
    paths = []
    for name, body in (("a", a), ("b", b)):
        (root / f"{name}.yaml").write_text(body)
        paths.append(str(root / f"{name}.yaml"))
    out = str(root / "out")
    assert run_cli(["run", *paths, "--out", out, "--key-file", key_file]) == 0
    return out


def test_no_patient_in_two_splits_across_fused_datasets(fused):
    rows = _catalog(fused)
    splits, datasets = defaultdict(set), defaultdict(set)
    for r in rows:
        splits[r["patient_id"]].add(r["split"])
        datasets[r["patient_id"]].add(r["dataset"])
    assert any(len(d) == 2 for d in datasets.values())  # the same patients, in both datasets
    assert all(len(s) == 1 for s in splits.values()), splits
    resolved = {r["patient_id"] for r in rows if r["split_source"] == "patient-resolved"}
    assert resolved  # the official splits disagreed for some patients; the most held-out split won
    assert all(splits[p] <= {"test", "val"} for p in resolved)
    summary = json.load(open(os.path.join(fused, "summary.json")))
    assert summary["split_conflicts_resolved"]["patients"] == len(resolved)
    # fused and per-dataset counts
    assert summary["fused"]["samples"] == sum(summary["by_dataset"][d]["samples"] for d in ("fused-a", "fused-b"))
    assert summary["by_dataset"]["fused-a"]["modality"] == {"XR": summary["by_dataset"]["fused-a"]["samples"]}
    assert sum(summary["fused"]["split"].values()) == summary["fused"]["samples"]
    # folds: one per patient, in range
    folds = defaultdict(set)
    for r in rows:
        folds[r["patient_id"]].add(r["fold"])
    assert all(len(f) == 1 and 0 <= next(iter(f)) < 5 for f in folds.values())


def test_risk_report_known_answers():
    def combo(age, sex="M", body="CHEST", days=0):  # values in QUASI_IDENTIFIERS order
        return (age, sex, body, days, None)

    five = [combo(a) for a in (40, 41, 42, 43, 60)]
    report = risk_report(five)
    levels = {lv["level"]: lv for lv in report["levels"]}
    assert levels["none"]["k"] == 1 and levels["none"]["unique_share"] == 1.0
    assert levels["age-5y"]["k"] == 1 and levels["age-5y"]["unique_share"] == 0.2  # 60-64 is alone
    assert levels["age-suppressed+days-banded"]["k"] == 5
    assert report["applied"] == "none" and report["target_met"]  # no minimum asked: reported only
    assert risk_report(five, min_k=2)["applied"] == "age-suppressed+days-banded"
    four = [combo(a) for a in (40, 41, 43, 44)]
    chosen = risk_report(four, min_k=2)
    assert chosen["applied"] == "age-5y" and chosen["k"] == 4 and chosen["target_met"]
    # the smallest classes are described by field names, never by value
    text = json.dumps(risk_report(five))
    assert "60" not in text.replace("0.6", "") and "CHEST" not in text
    never = risk_report([combo(40), combo(50, sex="F")], min_k=3)
    assert never["target_met"] is False and never["applied"] == "age-suppressed+days-suppressed"


def test_min_k_generalizes_every_written_record(corpus, key_file, tmp_path):
    out = str(tmp_path / "out")
    assert run_cli(["run", recipe_by_name(corpus, "cxr"), recipe_by_name(corpus, "pydicom"), "--out", out,
                    "--key-file", key_file, "--min-k", "2"]) == 0
    risk = json.load(open(os.path.join(out, "catalog", "reidentification_risk.json")))
    assert risk["applied"] != "none" and risk["min_k"] == 2
    assert risk["target_met"] == (risk["k"] >= 2)
    rows, records = _catalog(out), _records(out)
    assert rows and all(r["age_years"] is None for r in rows)
    if risk["applied"].startswith("age-suppressed"):
        assert all(r["age_band"] is None for r in rows)
    else:
        banded = [r for r in rows if r["age_band"] is not None]
        assert banded and all(records[r["key"]]["age_band"] == r["age_band"] for r in banded)
    for r in rows:
        record = records[r["key"]]
        assert record["age_years"] is None
        if record.get("dicom"):
            assert "00101010" not in record["dicom"]  # Patient's Age removed from the header too
    card = open(os.path.join(out, "DATASET_CARD.md")).read()
    assert f"Applied generalization: **{risk['applied']}**" in card


def test_demo_release_has_dataset_card_and_dataset_table(demo_run):
    out, code = demo_run
    assert code == 0
    card = open(os.path.join(out, "DATASET_CARD.md")).read()
    datasets = pq.read_table(os.path.join(out, "catalog", "datasets.parquet")).to_pylist()
    summary = json.load(open(os.path.join(out, "summary.json")))
    for d in datasets:
        assert f"| {d['id']} |" in card and d["license"] in card
        assert sum(n for _, n in d["samples_per_split"]) == summary["by_dataset"][d["id"]]["samples"]
    cxr = next(d for d in datasets if d["id"] == "demo-cxr")
    assert cxr["label_space"] == "findings" and "classification" in cxr["tasks"] and cxr["modalities"] == ["XR"]
    nifti = next(d for d in datasets if d["id"] == "demo-chest-ct-nifti")
    assert nifti["label_space"] == "structures" and "segmentation" in nifti["tasks"]
    assert all(label["code"] and label["code"].startswith("SCT:") for label in nifti["labels"])  # TotalSegmentator
    assert next(label for label in cxr["labels"] if label["name"] == "Pneumothorax")["code"] == "SCT:36118008"
    assert summary["fused"]["structures"]["liver"] >= 1 and "| liver | SCT:10200004 |" in card
    for heading in ("## Sources", "## Counts", "## Label prevalence", "## Structures", "## Re-identification risk",
                    "## Release gate"):
        assert heading in card
    rows = _catalog(out)
    seg = next(r for r in rows if r["product"] == "volume_seg")
    assert seg["regions"] and all(len(reg["bbox"]) == 6 and reg["size"] > 0 for reg in seg["regions"])
    drr = next(r for r in rows if r["product"] == "drr" and r["structures"])
    assert drr["regions"] and all(len(reg["bbox"]) == 4 for reg in drr["regions"])
    mr = [r for r in rows if r["modality"] == "MR"]
    assert mr and all(r["mr_sequence"] for r in mr) and {r["mr_sequence"] for r in rows if r["modality"] != "MR"} == {
        None}


def test_generalize_bands_ages_and_day_offsets_in_row_and_record_and_empties_header_dates():
    from medcurate.transforms.release import generalize
    from medcurate.transforms.shard import Part

    row = {"key": "k", "age_years": 47.0, "age_band": None, "day_offset": 45, "day_offset_band": None}
    header = {"00101010": {"vr": "AS", "Value": ["047Y"]}, "00080020": {"vr": "DA", "Value": ["20110304"]},
              "00081110": {"vr": "SQ", "Value": [{"00080021": {"vr": "DA", "Value": ["20110304"]}}]},
              "00080060": {"vr": "CS", "Value": ["CT"]}}
    part = Part("volume", "train", "k", 1, "p", row, record={**row, "dicom": header})
    assert generalize(part, "none") is part
    five = generalize(part, "age-5y")
    assert five.row["age_years"] is None and five.row["age_band"] == "45-49" and five.row["day_offset"] == 45
    assert five.record["age_band"] == "45-49" and "00101010" not in five.record["dicom"]
    assert five.record["dicom"]["00080020"]["Value"] == ["20110304"]  # dates stay while day offsets are exact
    ten = generalize(part, "age-10y+days-banded")
    assert ten.row["age_band"] == "40-49" and ten.row["day_offset"] is None and ten.row["day_offset_band"] == "31-180"
    dicom = ten.record["dicom"]
    assert "Value" not in dicom["00080020"] and "Value" not in dicom["00081110"]["Value"][0]["00080021"]
    assert dicom["00080060"]["Value"] == ["CT"]
    assert generalize(Part("image", "train", "o", 1, "p", {**row, "age_years": 93.0}), "age-20y+days-banded"
                      ).row["age_band"] == "90+"
