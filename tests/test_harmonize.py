"""Harmonization: vocabularies on real header values, three-valued labels, patient-level splits, unmapped values."""
from __future__ import annotations

import os
from collections import Counter

import pydicom
import pydicom.data
import pytest

from medcurate.schemas import vocab
from medcurate.schemas.recipe import from_dict
from medcurate.transforms.harmonize import assign_split, harmonize_labels, orientation_of
from tests.conftest import make_context

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")


def test_modalities_of_real_pydicom_files_map():
    seen = {}
    for name in sorted(os.listdir(PYDICOM_FILES)):
        if not name.endswith(".dcm"):
            continue
        try:
            ds = pydicom.dcmread(os.path.join(PYDICOM_FILES, name), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - some test files are broken on purpose
            continue
        if ds.get("Modality"):
            seen[str(ds.Modality)] = vocab.lookup("modality", ds.Modality)
    assert seen["CT"] == "CT" and seen["MR"] == "MR" and seen["US"] == "US" and seen["NM"] == "NM"
    assert seen["OT"] == "OT"
    assert seen["RTDOSE"] == "RTDOSE" and seen.get("SEG") is None  # a mask is no imaging modality: kept raw


@pytest.mark.parametrize(
    "raw, expected",
    [("CR", "XR"), ("DX", "XR"), (" dx ", "XR"), ("PET", "PT"), ("fundus", "OP"), ("SR", None), ("", None)],
)
def test_modality_folding(raw, expected):
    assert vocab.lookup("modality", raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("CHEST", "CHEST"), ("Thorax", "CHEST"), ("ABDOMEN PELVIS", "ABDOMENPELVIS"), ("abd/pelvis", "ABDOMENPELVIS"),
     ("C-SPINE", "CSPINE"), ("BRAIN", "HEAD"), ("whole body", "WHOLEBODY"), ("KNEE", "KNEE"), ("ELBOWX", None)],
)
def test_body_part_synonyms_and_codes(raw, expected):
    assert vocab.lookup("body_part", raw) == expected
    if expected:
        assert vocab.code("body_part", expected).startswith("SCT:")


def test_chestxray14_labels_are_three_valued():
    labels, unmapped = harmonize_labels("Effusion|Mass", "chestxray14", "|")
    assert labels["Pleural Effusion"] == 1 and labels["Mass"] == 1 and labels["Pneumonia"] == 0
    assert not unmapped
    none, _ = harmonize_labels("No Finding", "chestxray14", "|")
    assert set(none.values()) == {0}
    unknown, _ = harmonize_labels("", "chestxray14", "|")
    assert set(unknown.values()) == {-1}
    _, unmapped = harmonize_labels("Effusion|Covid-19", "chestxray14", "|")
    assert unmapped == ["Covid-19"]


def test_splits_are_deterministic_patient_level_and_follow_ratios(pseudo):
    recipe = from_dict({"dataset": {"id": "x", "license": "MIT"}, "source": {"adapter": "dicom-folder", "root": "."}},
                       base_dir=".")
    ctx = make_context([recipe], pseudo)
    patients = [pseudo.patient("x", str(i)) for i in range(20000)]
    splits = [assign_split(p, ctx) for p in patients]
    assert splits == [assign_split(p, ctx) for p in patients]
    counts = Counter(splits)
    assert abs(counts["train"] / 20000 - 0.8) < 0.015 and abs(counts["test"] / 20000 - 0.1) < 0.01
    other = make_context([recipe], pseudo, split_ratios=(("train", 0.5), ("test", 0.5)))
    assert abs(Counter(assign_split(p, other) for p in patients)["train"] / 20000 - 0.5) < 0.015


def test_orientation_codes():
    import numpy as np

    assert orientation_of(np.diag([0.7, 0.7, 2.5, 1])) == "LPS"
    assert orientation_of(np.diag([-0.7, -0.7, 2.5, 1])) == "RAS"


def test_every_catalog_field_is_documented():
    from medcurate.schemas.sample import CATALOG_SCHEMA

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "schema.md"), encoding="utf-8").read()
    documented = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    assert documented == set(CATALOG_SCHEMA.names)
