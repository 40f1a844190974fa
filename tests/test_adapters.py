"""Each dataset layout end to end on generated data: `medcurate run` on a recipe, read back from the catalog."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
from PIL import Image

from medcurate.schemas import recipe as recipe_mod
from medcurate.transforms.discover import discover
from medcurate.transforms.read.volume import read_volume
from tests.conftest import make_context, run_cli

RAS = np.diag([-2.0, -2.0, 2.5, 1.0])


def phantom(shape, seed, dtype=np.int16, low=-1000, high=1500):
    rng = np.random.default_rng(seed)
    vol = np.full(shape, low, dtype=np.float32)
    s = tuple(slice(n // 4, 3 * n // 4) for n in shape[:3])
    vol[s] = rng.integers(0, high, size=vol[s].shape)
    return vol.astype(dtype)


def save_nifti(path, array, affine=RAS):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def run(tmp_path, key_file, recipe_text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(recipe_text)
    out = tmp_path / ("out-" + name.split(".")[0])
    assert run_cli(["run", str(path), "--out", str(out), "--key-file", key_file]) == 0
    rows = pq.read_table(out / "catalog" / "catalog.parquet").to_pylist()
    summary = json.loads((out / "summary.json").read_text())
    quarantine = [json.loads(line) for line in (out / "quarantine" / "quarantine.jsonl").read_text().splitlines()]
    assert summary["total"]["reconciled"]
    return rows, summary, quarantine


def test_msd_task_with_multichannel_images(tmp_path, key_file):
    task = tmp_path / "Task99_Toy"
    cases = {"toy_001": True, "toy_002": True, "toy_003": False}
    for n, (case, labelled) in enumerate(cases.items()):
        folder = "imagesTr" if labelled else "imagesTs"
        save_nifti(str(task / folder / f"{case}.nii.gz"), np.stack([phantom((16, 16, 10), n), phantom((16, 16, 10), 9 + n)],
                                                                     axis=-1))
        if labelled:
            lab = np.zeros((16, 16, 10), np.uint8)
            lab[5:9, 5:9, 3:6] = 1
            save_nifti(str(task / "labelsTr" / f"{case}.nii.gz"), lab)
    (task / "imagesTr" / "._toy_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    doc = {"name": "Toy", "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "tumour"},
           "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                        for c in ("toy_001", "toy_002", "toy_004")],
           "test": ["./imagesTs/toy_003.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(doc))
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: msd-toy, license: CC-BY-SA-4.0}}
source: {{adapter: msd, root: {task}}}
defaults: {{modality: MR, body_part: HEAD}}
processing: {{resample: {{spacing_mm: [2.0, 2.0, 2.0]}}}}
""")
    assert sorted(r["product"] for r in rows) == ["volume"] * 2 + ["volume_seg"] * 4
    segs = [r for r in rows if r["product"] == "volume_seg"]
    assert all(r["structures"] == ["neoplasm"] and r["structures_raw"] == ["tumour"] for r in segs)
    assert {(q["reason"]) for q in quarantine} == {"orphan_image", "missing_file"}
    assert summary["total"] == {"discovered": 5, "written": 3, "quarantined": 2, "reconciled": True}
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["split"])
    assert len(patients) == 3 and all(len(s) == 1 for s in patients.values())  # channels share their patient


def test_nnunet_v2_dataset(tmp_path, key_file):
    root = tmp_path / "Dataset001_Toy"
    for n, case in enumerate(("case_a", "case_b")):
        save_nifti(str(root / "imagesTr" / f"{case}_0000.nii.gz"), phantom((20, 20, 16), n))
        lab = np.zeros((20, 20, 16), np.uint8)
        lab[4:8, 4:8, 4:8], lab[12:16, 12:16, 8:12] = 1, 2
        save_nifti(str(root / "labelsTr" / f"{case}.nii.gz"), lab)
    save_nifti(str(root / "labelsTr" / "case_c.nii.gz"), np.zeros((20, 20, 16), np.uint8))
    save_nifti(str(root / "imagesTs" / "case_d_0000.nii.gz"), phantom((20, 20, 16), 5))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                   "liver": 1, "spleen": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: nnunet-toy, license: CC-BY-4.0}}
source: {{adapter: nnunet, root: {root}}}
defaults: {{modality: CT, body_part: ABDOMEN}}
""")
    volumes = [r for r in rows if r["product"].startswith("volume")]
    assert sorted(r["product"] for r in volumes) == ["volume", "volume_seg", "volume_seg"]
    assert all(r["structures"] == ["liver", "spleen"] for r in volumes if r["product"] == "volume_seg")
    assert [q["reason"] for q in quarantine] == ["orphan_label"]
    assert len([r for r in rows if r["product"] == "drr"]) == 6  # CT volumes get AP and lateral DRRs


def test_totalsegmentator_folders_with_meta_csv(tmp_path, key_file):
    root = tmp_path / "Totalsegmentator_dataset"
    for n, subject in enumerate(("s0001", "s0002")):
        save_nifti(str(root / subject / "ct.nii.gz"), phantom((18, 18, 16), n))
        for value, name in ((1, "liver"), (2, "spleen"), (3, "tumor_bed_clinic_x")):
            mask = np.zeros((18, 18, 16), np.uint8)
            mask[4 * value:4 * value + 3, 5:9, 5:9] = 1
            save_nifti(str(root / subject / "segmentations" / f"{name}.nii.gz"), mask)
    (root / "meta.csv").write_text("image_id;age;gender;institute;study_type;split\n"
                                   "s0001;64;m;A;ct thorax;train\ns0002;95;f;B;ct abdomen;test\ns0003;70;m;A;ct;val\n")
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: totalseg-toy, license: CC-BY-4.0}}
source:
  adapter: totalsegmentator
  root: {root}
  labels_csv: meta.csv
  columns: {{image: image_id, age: age, sex: gender, split: split}}
defaults: {{modality: CT}}
processing: {{drr: false}}
""")
    assert [q["reason"] for q in quarantine] == ["missing_file"]
    by_split = {r["split"]: r for r in rows}
    assert set(by_split) == {"train", "test"} and {r["split_source"] for r in rows} == {"official"}
    assert by_split["train"]["age_years"] == 64.0 and by_split["train"]["sex"] == "M"
    assert by_split["test"]["age_years"] == 90.0 and by_split["test"]["sex"] == "F"  # 95 top-coded
    # A structure name no vocabulary entry has is kept raw, never guessed, and listed in the run summary.
    assert all(r["structures"] == ["liver", "spleen", "tumor_bed_clinic_x"] for r in rows)
    assert all(r["unmapped"] == ["structures=tumor_bed_clinic_x"] for r in rows)
    assert summary["unmapped_values"] == {"structures=tumor_bed_clinic_x": 2}


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".hdr"])
def test_simpleitk_formats_read_like_nifti(suffix, tmp_path, pseudo):
    array = phantom((12, 10, 8), 3)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-10.0, 5.0, 20.0))
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])
    image.SetDirection(direction.ravel().tolist())
    (tmp_path / "vols").mkdir()
    sitk.WriteImage(image, str(tmp_path / "vols" / f"phantom{suffix}"))
    recipe = recipe_mod.from_dict({"dataset": {"id": "fmt", "license": "MIT"},
                                   "source": {"adapter": "nifti-folder", "root": str(tmp_path / "vols"),
                                              "images": "*"}}, base_dir=str(tmp_path))
    items = list(discover(recipe))
    assert [i.kind for i in items] == ["volume"]  # the .raw/.img data file travels with its header
    (sample,) = read_volume(items[0], make_context([recipe], pseudo))
    ref = sitk.ReadImage(str(tmp_path / "vols" / f"phantom{suffix}"))  # SimpleITK itself, on the original files
    np.testing.assert_array_equal(sample.image, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    ref_affine = np.eye(4)
    ref_affine[:3, :3] = np.array(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())
    ref_affine[:3, 3] = ref.GetOrigin()
    np.testing.assert_allclose(sample.affine, ref_affine, atol=1e-6)
    if suffix == ".hdr":  # an Analyze/NIfTI pair keeps its own geometry rules; voxels and reference agree above
        return
    np.testing.assert_array_equal(sample.image, array)
    expected = np.eye(4)
    expected[:3, :3] = direction @ np.diag([0.8, 0.9, 2.0])
    expected[:3, 3] = (-10.0, 5.0, 20.0)
    np.testing.assert_allclose(sample.affine, expected, atol=1e-6)
    assert len(sample.source_sha256) == (2 if suffix == ".mhd" else 1)


def test_4d_volumes_split_when_asked(corpus, tmp_path, pseudo):
    src = os.path.join(corpus.root, "nibabel-samples")
    recipe = recipe_mod.from_dict({"dataset": {"id": "n4d", "license": "MIT"},
                                   "source": {"adapter": "nifti-folder", "root": src, "images": "example4d.nii.gz"},
                                   "processing": {"split_4d": "time"}}, base_dir=src)
    (item,) = list(discover(recipe))
    samples = read_volume(item, make_context([recipe], pseudo))
    img = nib.load(os.path.join(src, "example4d.nii.gz"))
    assert len(samples) == img.shape[3] and [s.units for s in samples] == [1] + [0] * (img.shape[3] - 1)
    np.testing.assert_array_equal(samples[1].image, np.asarray(img.dataobj)[..., 1])
    assert [s.key.part for s in samples] == [f"t{t}" for t in range(img.shape[3])]


def test_image_table_in_json_with_tiff_and_report_column(tmp_path, key_file):
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    grey = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 11)
    Image.fromarray(grey, mode="I;16").save(images / "a.tif")
    Image.fromarray((grey // 256).astype(np.uint8)).save(images / "b.png")
    table = {"a.tif": {"finding": "Mass|Effusion", "patient": "PX-1", "report": "Patient John Doe (MRN 8812345) has a mass."},
             "b.png": {"finding": "No Finding", "patient": "PX-2", "report": "Normal study for Jane Roe."}}
    (tmp_path / "set" / "labels.json").write_text(json.dumps(table))
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: json-toy, license: CC0-1.0}}
source:
  adapter: image-csv
  root: {tmp_path / 'set'}
  images: "images/*"
  labels_json: labels.json
  columns: {{image: file, labels: finding, patient: patient, report: report}}
  label_vocabulary: chestxray14
defaults: {{modality: XR, body_part: CHEST}}
""")
    assert not quarantine
    by_findings = {tuple(r["findings"]): r for r in rows}
    assert set(by_findings) == {("Mass", "Pleural Effusion"), ()}
    assert by_findings[("Mass", "Pleural Effusion")]["dtype"] == "uint16"
    out = tmp_path / "out-r"
    import webdataset as wds

    records = [json.loads(s["json"]) for s in wds.WebDataset(str(next((out / "shards" / "image").glob("*.tar"))),
                                                               shardshuffle=False)]
    reports = " ".join(r["report"] for r in records)
    assert "John" not in reports and "8812345" not in reports and "Roe" not in reports and "mass" in reports


def test_brats_subregions_harmonized_with_whole_tumour_and_core_regions(tmp_path, key_file):
    """MSD Task01's label names (edema, non-enhancing tumor, enhancing tumour) become the BraTS sub-regions; the
    record gets whole-tumour and tumour-core regions whose boxes and sizes match the label map read back."""
    import webdataset as wds

    task = tmp_path / "Task01_Toy"
    image = np.stack([phantom((24, 24, 12), 1), phantom((24, 24, 12), 2)], axis=-1)
    save_nifti(str(task / "imagesTr" / "BRATS_001.nii.gz"), image)
    lab = np.zeros((24, 24, 12), np.uint8)
    lab[4:14, 5:15, 2:9] = 1  # edema
    lab[7:11, 8:12, 4:7] = 2  # non-enhancing core inside it
    lab[14:18, 15:20, 6:10] = 3  # enhancing part outside the edema box
    save_nifti(str(task / "labelsTr" / "BRATS_001.nii.gz"), lab)
    doc = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1gd"},
           "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
           "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}], "test": []}
    (task / "dataset.json").write_text(json.dumps(doc))
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: brats-toy, license: CC-BY-SA-4.0}}
source: {{adapter: msd, root: {task}}}
defaults: {{modality: MR, body_part: HEAD}}
processing: {{resample: false}}
""")
    assert not quarantine and len(rows) == 2
    row = rows[0]
    assert row["structures"] == ["tumor_edema", "tumor_enhancing", "tumor_necrotic_core"]
    assert row["structures_raw"] == ["edema", "enhancing tumour", "non-enhancing tumor"]
    assert "structures" not in " ".join(row["unmapped"])
    assert {r["mr_sequence"] for r in rows} == {"FLAIR", "T1POST"}

    shard = next((tmp_path / "out-r" / "shards" / "volume_seg").glob("*.tar"))
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False).decode()))
    seg, record = sample["seg.npy"], sample["json"]
    names = {int(v): n for v, n in record["seg_values"].items()}
    by_name = {r["structure"]: r for r in record["regions"]}
    assert set(by_name) == {"tumor_edema", "tumor_necrotic_core", "tumor_enhancing", "tumor_whole", "tumor_core"}

    def box(mask):
        idx = np.nonzero(mask)
        return [int(x) for axis in idx for x in (axis.min(), axis.max() + 1)]

    value = {n: v for v, n in names.items()}
    whole = seg > 0
    core = np.isin(seg, [value["tumor_necrotic_core"], value["tumor_enhancing"]])
    assert by_name["tumor_whole"]["bbox"] == box(whole) and by_name["tumor_whole"]["size"] == int(whole.sum())
    assert by_name["tumor_core"]["bbox"] == box(core) and by_name["tumor_core"]["size"] == int(core.sum())
    assert by_name["tumor_whole"]["value"] is None and by_name["tumor_core"]["members"] == [
        "tumor_necrotic_core", "tumor_enhancing"]
    for name in ("tumor_edema", "tumor_enhancing"):
        assert by_name[name]["bbox"] == box(seg == value[name])


def test_chexpert_layout_with_label_columns_paths_and_folder_fields(tmp_path, key_file):
    """CheXpert: two tables (train.csv, valid.csv) name images by their path under the dataset folder's parent;
    file names repeat across patients; one column per label (1, 0, -1, blank); patient, study and split are folder
    names; the view is AP/PA, else Frontal/Lateral."""
    import webdataset as wds

    root = tmp_path / "CheXpert-v1.0-small"
    header = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
              "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
              "Fracture,Support Devices")
    entries = {  # path under root: (sex, age, frontal/lateral, ap/pa, labels by column)
        "train/patient00001/study1/view1_frontal.jpg": ("Female", 68, "Frontal", "AP",
                                                        {"No Finding": "1.0", "Support Devices": "1.0"}),
        "train/patient00001/study2/view1_frontal.jpg": ("Female", 68, "Frontal", "PA",
                                                        {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumonia": "0.0"}),
        "train/patient00002/study1/view1_frontal.jpg": ("Male", 87, "Frontal", "AP", {"Pleural Effusion": "1.0"}),
        "train/patient00002/study1/view2_lateral.jpg": ("Male", 87, "Lateral", "", {"Pleural Effusion": "1.0"}),
        "valid/patient64541/study1/view1_frontal.jpg": ("Male", 73, "Frontal", "AP", {"Edema": "1.0"}),
    }
    columns = header.split(",")[5:]
    tables = {"train": [header], "valid": [header]}
    for n, (rel, (sex, age, fl, appa, labels)) in enumerate(entries.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((np.arange(48 * 40).reshape(48, 40) * (n + 3)) % 251).astype(np.uint8)).save(root / rel)
        cells = [f"CheXpert-v1.0-small/{rel}", sex, str(age), fl, appa] + [labels.get(c, "") for c in columns]
        tables[rel.split("/")[0]].append(",".join(cells))
    for name, lines in tables.items():
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    recipe = f"""
dataset: {{id: chexpert-toy, license: LicenseRef-CheXpert-RUA, access: registration}}
source:
  adapter: image-csv
  root: {root}
  images: "*/patient*/study*/*.jpg"
  labels_csv: [train.csv, valid.csv]
  columns: {{image: Path, age: Age, sex: Sex, view: [AP/PA, Frontal/Lateral]}}
  label_columns: [{", ".join(columns)}]
  label_vocabulary: chexpert
  path_fields: {{patient: '(patient\\d+)/', study: '(patient\\d+/study\\d+)/', split: '^(train|valid)/'}}
defaults: {{modality: XR, body_part: CHEST}}
"""
    rows, summary, quarantine = run(tmp_path, key_file, recipe)
    assert not quarantine and len(rows) == 5
    assert {r["split"] for r in rows} == {"train", "val"} and {r["split_source"] for r in rows} == {"official"}
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["study_id"])
    assert sorted(len(s) for s in patients.values()) == [1, 1, 2]  # 3 patients; patient00001 has two studies
    by_raw = {r["labels_raw"]: r for r in rows}
    healthy = by_raw["No Finding=1.0|Support Devices=1.0"]
    labels = dict(healthy["labels"])
    assert labels["Support Devices"] == 1 and labels["Cardiomegaly"] == 0 and labels["Nodule"] == -1
    sick = dict(by_raw["Cardiomegaly=1.0|Edema=-1.0|Pneumonia=0.0"]["labels"])
    assert sick["Cardiomegaly"] == 1 and sick["Edema"] == -1 and sick["Pneumonia"] == 0 and sick["Fracture"] == -1
    assert sorted(r["view"] for r in rows) == ["AP", "AP", "AP", "LATERAL", "PA"]
    assert {r["sex"] for r in rows} == {"M", "F"} and sorted(r["age_years"] for r in rows)[0] == 68.0

    out = tmp_path / "out-r"
    text = " ".join(p.read_text(errors="replace") for p in out.rglob("*.json*")) + str(rows)
    for tar in (out / "shards").rglob("*.tar"):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            text += " " + s["__key__"] + " " + s["json"].decode()
    assert "patient00001" not in text and "patient64541" not in text and "view1_frontal" not in text
    cards = pq.read_table(out / "catalog" / "datasets.parquet").to_pylist()
    codes = {d["name"]: d["code"] for d in cards[0]["labels"]}
    assert cards[0]["label_space"] == "findings" and codes["Pleural Effusion"] == "SCT:60046008"

    # A label column the table lacks stops this dataset with a reason naming the column, not a crash.
    bad = recipe.replace("label_columns: [", "label_columns: [Covid-19, ")
    rows, summary, quarantine = run(tmp_path, key_file, bad, name="bad.yaml")
    assert rows == [] and [q["reason"] for q in quarantine] == ["recipe_table_mismatch"]
    assert "'Covid-19'" in quarantine[0]["message"]


def test_mimic_cxr_layout_matches_rows_per_study(tmp_path, key_file):
    """MIMIC-CXR-JPG: files/pXX/p<subject>/s<study>/<dicom_id>.jpg and mimic-cxr-2.0.0-chexpert.csv with one row
    per study (subject_id, study_id, the CheXpert columns): every image of a study takes its row; a study row with
    no image is `missing_file`, an image of a study the table lacks `unlabeled_image`."""
    root = tmp_path / "mimic-cxr-jpg"
    images = {"files/p10/p10000032/s50414267/02aa804e.jpg": 1, "files/p10/p10000032/s50414267/174413ec.jpg": 2,
              "files/p10/p10000032/s53189527/2a2277a9.jpg": 3, "files/p11/p11000011/s51029426/ab12cd34.jpg": 4,
              "files/p12/p12000001/s59999999/ffffffff.jpg": 5}
    for rel, n in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((np.arange(32 * 32).reshape(32, 32) * n) % 253).astype(np.uint8)).save(root / rel)
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Edema,No Finding,Pleural Effusion,Support Devices\n"
        "10000032,50414267,,,,1.0,,\n"
        "10000032,53189527,,1.0,-1.0,,0.0,1.0\n"
        "11000011,51029426,1.0,,,,1.0,\n"
        "11000011,58888888,,,,1.0,,\n")
    rows, summary, quarantine = run(tmp_path, key_file, f"""
dataset: {{id: mimic-toy, license: LicenseRef-PhysioNet-Credentialed-Health-Data-1.5.0, access: dua}}
source:
  adapter: image-csv
  root: {root}
  images: "files/*/*/*/*.jpg"
  labels_csv: mimic-cxr-2.0.0-chexpert.csv
  match_rows_on: study
  columns: {{patient: subject_id, study: study_id}}
  path_fields: {{study: '/s(\\d+)/'}}
  label_columns: [Atelectasis, Cardiomegaly, Edema, No Finding, Pleural Effusion, Support Devices]
  label_vocabulary: chexpert
defaults: {{modality: XR, body_part: CHEST}}
""")
    assert sorted(q["reason"] for q in quarantine) == ["missing_file", "unlabeled_image"]
    assert len(rows) == 3 + 1  # the study without a row is quarantined; the others' four images are written
    assert summary["total"]["discovered"] == 6
    by_study = {}
    for r in rows:
        by_study.setdefault(r["study_id"], []).append(r)
    assert sorted(len(v) for v in by_study.values()) == [1, 1, 2]
    assert len({r["patient_id"] for r in rows}) == 2
    two = next(v for v in by_study.values() if len(v) == 2)
    assert all(dict(r["labels"])["Cardiomegaly"] == 0 and r["labels_raw"] == "No Finding=1.0" for r in two)
    sick = next(v[0] for v in by_study.values() if v[0]["labels_raw"].startswith("Cardiomegaly"))
    assert dict(sick["labels"])["Edema"] == -1 and dict(sick["labels"])["Support Devices"] == 1
