"""DICOM de-identification per PS3.15 Table E.1-1: table coverage, planted identifiers, relationships, options."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medcurate.schemas.recipe import DEID_OPTIONS
from medcurate.transforms.deid.dicom import COMBINED, DicomDeidentifier, burned_in_risk, shift_date, table
from medcurate.transforms.pseudonym import Pseudonymizer, Secret

DEFAULT = {k: v for k, v in DEID_OPTIONS.items()}
PLANTED = ["DOE^JOHN", "MRN998877", "19610203", "Mercy Hospital", "A77123", "WELBY^MARCUS", "ROOM12",
           "OTHER-ID-5", "RP-4411", "secret private note", "DOE", "Baker Street 221", "SN-99X"]


def make_ds(patient="MRN998877", name="DOE^JOHN", study="1.2.3.4.100", series="1.2.3.4.100.1", sop="1.2.3.4.100.1.1",
            study_date="20200115", pixels=True, modality="CT") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, study + ".9"
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient, "19610203"
    ds.PatientSex, ds.PatientAge = "M", "095Y"
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDateTime = study_date, study_date, study_date + "093000.5"
    ds.StudyTime = "093000"
    ds.InstitutionName, ds.InstitutionAddress = "Mercy Hospital", "Baker Street 221"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StationName = "A77123", "WELBY^MARCUS", "ROOM12"
    ds.DeviceSerialNumber = "SN-99X"
    ds.StudyDescription = "CT chest for DOE"
    ds.Manufacturer = "Acme"
    other = Dataset()
    other.PatientID = "OTHER-ID-5"
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.4.100.1.7"
    ds.ReferencedImageSequence = Sequence([ref])
    req = Dataset()
    req.RequestedProcedureID = "RP-4411"
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = "1.2.3.4.555"
    nested.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    req.ReferencedStudySequence = Sequence([nested])
    ds.RequestAttributesSequence = Sequence([req])
    block = ds.private_block(0x0029, "ACME 1.1", create=True)
    block.add_new(0x10, "LO", "secret private note")
    if pixels:
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 16, 15
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 1
        ds.PixelData = np.arange(16, dtype=np.int16).tobytes()
    return ds


def all_values(ds: Dataset):
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        yield elem.tag, str(elem.value)


def deid(ds, key=b"k" * 32, options=None, ns="ns"):
    engine = DicomDeidentifier(Pseudonymizer(Secret(key)), options or DEFAULT, ns)
    return engine.run(ds)


def test_table_is_the_2024b_edition_and_every_row_resolves():
    t = table()
    assert t.edition == "2024b" and len(t.rows) == 621
    known = {"X", "Z", "D", "U", "K", "C", "U*"}
    basics = {r["basic"] for r in t.rows}
    assert basics <= {"X", "Z", "D", "U"} | set(COMBINED)
    rules = list(t.exact.values()) + [r for _, _, r in t.masked] + [t.private]
    assert len(rules) == 621
    options = list(DEID_OPTIONS)
    for rule in rules:
        for n in range(3):
            for combo in itertools.combinations(options, n):
                assert rule.resolve(dict.fromkeys(combo, True)) in known, (rule.tag, combo)


def test_planted_identifiers_are_gone_everywhere_including_sequences_and_private_tags():
    ds = make_ds()
    result, ids = deid(ds)
    text = " ".join(v for _, v in all_values(ds))
    for value in PLANTED:
        assert value.lower() not in text.lower(), value
    assert not any(tag.is_private for tag, _ in all_values(ds))
    assert "OtherPatientIDsSequence" not in ds and "RequestAttributesSequence" not in ds
    assert ds.PatientID == ids["patient_id"] and ds.PatientName == ""
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and "113107" in codes and "113108" in codes
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ds.PatientAge == "090Y" and ds.PatientSex == "M" and ds.Manufacturer == "Acme"
    assert {"DOE^JOHN", "MRN998877", "A77123"} <= set(result.identifiers)
    assert result.identifiers["DOE^JOHN"] == "name" and result.identifiers["MRN998877"] == "id"
    assert "ACME 1.1" in result.unknown_private_creators
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID,
                ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID):
        assert re.fullmatch(r"2\.25\.\d+", str(uid)), uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == CTImageStorage  # DICOM-defined UIDs are kept


def test_dates_shift_by_one_offset_per_patient():
    ds = make_ds()
    deid(ds)
    offset = Pseudonymizer(Secret(b"k" * 32)).date_offset_days("ns|id:MRN998877")
    expected = (dt.date(2020, 1, 15) + dt.timedelta(days=offset)).strftime("%Y%m%d")
    assert ds.StudyDate == ds.SeriesDate == expected
    assert ds.AcquisitionDateTime == expected + "093000.5"
    assert ds.StudyTime == "093000"
    assert ds.PatientBirthDate == ""  # basic profile: Z, no option keeps it
    assert shift_date("20200301", -1) == "20200229" and shift_date("2020", -1) is None


def test_pixel_data_is_bit_exact():
    ds = make_ds()
    before = hashlib.sha256(ds.PixelData).hexdigest()
    deid(ds)
    assert hashlib.sha256(ds.PixelData).hexdigest() == before


def test_relationships_like_dicognito():
    same_series = [make_ds(sop=f"1.2.3.4.100.1.{i}") for i in (1, 2)]
    other_series = make_ds(series="1.2.3.4.100.2", sop="1.2.3.4.100.2.1")
    other_study = make_ds(study="1.2.3.4.200", series="1.2.3.4.200.1", sop="1.2.3.4.200.1.1", study_date="20210601")
    other_patient = make_ds(patient="MRN111", name="ROE^RICHARD", study="1.2.3.4.300", series="1.2.3.4.300.1",
                            sop="1.2.3.4.300.1.1")
    ids = [deid(ds)[1] for ds in same_series + [other_series, other_study, other_patient]]
    a, b, c, d, e = same_series + [other_series, other_study, other_patient]
    assert a.StudyInstanceUID == b.StudyInstanceUID == c.StudyInstanceUID != d.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert ids[0]["patient_id"] == ids[3]["patient_id"] != ids[4]["patient_id"]
    # one patient, two studies: one date offset, so the interval between the studies is kept
    orig_gap = (dt.date(2021, 6, 1) - dt.date(2020, 1, 15)).days
    new = [dt.datetime.strptime(x.StudyDate, "%Y%m%d").date() for x in (a, d)]
    assert (new[1] - new[0]).days == orig_gap
    assert e.PatientID != a.PatientID


def test_same_key_same_output_other_key_other_output():
    x, y, z = make_ds(), make_ds(), make_ds()
    deid(x, key=b"a" * 32)
    deid(y, key=b"a" * 32)
    deid(z, key=b"b" * 32)
    assert x.to_json_dict() == y.to_json_dict()
    assert x.StudyInstanceUID != z.StudyInstanceUID and x.PatientID != z.PatientID and x.StudyDate != z.StudyDate


@pytest.mark.parametrize(
    "option, check",
    [
        ("retain_uids", lambda ds: ds.StudyInstanceUID == "1.2.3.4.100"),
        ("retain_device_identity", lambda ds: ds.StationName == "ROOM12" and ds.DeviceSerialNumber == "SN-99X"),
        ("retain_institution_identity", lambda ds: ds.InstitutionName == "Mercy Hospital"),
    ],
)
def test_retain_options(option, check):
    ds = make_ds()
    deid(ds, options={**DEFAULT, option: True})
    assert check(ds)
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert len(codes) == 4  # basic + modified dates + patient characteristics + this option


def test_full_dates_and_basic_profile_dates():
    full = make_ds()
    deid(full, options={**DEFAULT, "retain_long_modified_dates": False, "retain_long_full_dates": True})
    assert full.StudyDate == "20200115" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    basic = make_ds()
    deid(basic, options={k: False for k in DEFAULT})
    assert basic.StudyDate == "" and "PatientAge" not in basic and basic.PatientSex == ""
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_clean_descriptors_runs_text_cleaning_with_the_header_deny_list():
    seen = []

    def cleaner(text, deny):
        seen.append((text, set(deny)))
        out = text
        for term in sorted(deny, key=len, reverse=True):
            out = re.sub(re.escape(term), "<ID>", out, flags=re.I)
        return out

    ds = make_ds()
    engine = DicomDeidentifier(Pseudonymizer(Secret(b"k" * 32)), {**DEFAULT, "clean_descriptors": True}, "ns",
                               clean_text=cleaner)
    engine.run(ds)
    assert ds.StudyDescription == "CT chest for <ID>"
    assert any("DOE" in deny for _, deny in seen)
    assert not any("CT chest for DOE" in deny for _, deny in seen)  # cleaned text is not on its own deny-list


def test_burned_in_policy_inputs():
    assert burned_in_risk(make_ds(modality="US")) and burned_in_risk(make_ds(modality="OT"))
    assert not burned_in_risk(make_ds(modality="CT"))
    flagged = make_ds()
    flagged.BurnedInAnnotation = "YES"
    assert burned_in_risk(flagged)


def test_retain_safe_private_keeps_only_table_e3_10_1_attributes():
    from medcurate.transforms.deid.dicom import safe_private

    assert len(safe_private()) >= 80 and (0x0019, "GEMS_ACQU_01", 0x23) in safe_private()
    ds = make_ds()
    safe = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    safe.add_new(0x23, "DS", "39.375")  # Table Speed: in the safe list
    safe.add_new(0x99, "LO", "DOE^JOHN")  # not in the list
    deid(ds, options={**DEFAULT, "retain_safe_private": True})
    kept = {(e.tag.group, e.tag.element & 0xFF) for e in ds if e.tag.is_private and e.tag.element >= 0x100}
    assert (0x0019, 0x23) in kept and (0x0019, 0x99) not in kept
    assert "secret private note" not in str(ds)
    plain = make_ds()
    deid(plain)
    assert not any(e.tag.is_private for e in plain)


def _ct_slices(n=3):
    out = []
    for i in range(n):
        ds = make_ds(sop=f"1.2.3.4.100.1.{i + 1}")
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * i], [1.0, 0, 0, 0, 1.0, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.7, 0.7], 2.0, i + 1
        ds.SeriesNumber, ds.StudyID, ds.PatientBirthDate = 1, "S1", "19610203"
        ds.ReferringPhysicianName = "WELBY^MARCUS"
        out.append(ds)
    return out


def _reread(ds: Dataset) -> Dataset:
    import io

    import pydicom

    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _uids(ds: Dataset) -> dict:
    """Every UID-valued element, anywhere: {keyword path: value}."""
    found = {}
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.keyword not in ("SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID"):
            found.setdefault(elem.keyword, set()).add(str(elem.value))
    return found


def test_seg_and_rtstruct_references_resolve_after_deidentification():
    """A SEG (highdicom) and an RTSTRUCT de-identified apart from their CT still point at its new UIDs."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ct = _ct_slices()
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1, 1:3, 1:3] = 1
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid="1.2.3.4.100.77", series_number=77, sop_instance_uid="1.2.3.4.100.77.1",
        instance_number=1, manufacturer="medcurate-test", manufacturer_model_name="t", software_versions="1",
        device_serial_number="1")
    rs = Dataset()
    rs.SOPClassUID, rs.SOPInstanceUID, rs.Modality = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.4.100.88.1", "RTSTRUCT"
    rs.PatientID, rs.PatientName = "MRN998877", "DOE^JOHN"
    rs.StudyInstanceUID, rs.SeriesInstanceUID = ct[0].StudyInstanceUID, "1.2.3.4.100.88"
    images = []
    for s in ct:
        img = Dataset()
        img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = s.SOPClassUID, s.SOPInstanceUID
        images.append(img)
    series, study, frame = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = ct[0].SeriesInstanceUID, Sequence(images)
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = ct[0].StudyInstanceUID, Sequence([series])
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = ct[0].FrameOfReferenceUID, Sequence([study])
    rs.ReferencedFrameOfReferenceSequence = Sequence([frame])

    before = {"sop": [s.SOPInstanceUID for s in ct], "series": ct[0].SeriesInstanceUID,
              "study": ct[0].StudyInstanceUID, "frame": ct[0].FrameOfReferenceUID}
    assert set(before["sop"]) <= _uids(seg)["ReferencedSOPInstanceUID"]
    # as files, de-identified one by one, as separate workers would
    ct, seg, rs = [_reread(d) for d in ct], _reread(seg), _reread(rs)
    for ds in [*ct, seg, rs]:
        deid(ds)
    sops = {s.SOPInstanceUID for s in ct}
    assert not sops & set(before["sop"])
    seg_uids, rs_uids = _uids(seg), _uids(rs)
    assert sops == seg_uids["ReferencedSOPInstanceUID"] == rs_uids["ReferencedSOPInstanceUID"] - {
        ct[0].StudyInstanceUID}
    assert seg_uids["SeriesInstanceUID"] == {seg.SeriesInstanceUID, ct[0].SeriesInstanceUID}
    assert rs_uids["SeriesInstanceUID"] == {rs.SeriesInstanceUID, ct[0].SeriesInstanceUID}
    assert seg.StudyInstanceUID == rs.StudyInstanceUID == ct[0].StudyInstanceUID != before["study"]
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID == rs_uids["FrameOfReferenceUID"].pop()
    assert seg.PatientID == rs.PatientID == ct[0].PatientID
