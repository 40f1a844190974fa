"""DICOM series quirks: splits, copies, acquisitions, uneven spacing, gantry tilt, multi-frame, RT dose, SEG,
RTSTRUCT, malformed headers. References: the single-frame read, SimpleITK, analytic functions and shapes."""
from __future__ import annotations

import glob
import io
import os
import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medcurate.schemas.records import Item, QuarantineError, QuarantineRecord
from medcurate.transforms.read.dicom import _native_pixels, assemble, read_header
from medcurate.transforms.resample import canonical_grid, get_backend, pullback, resample_array
from tests.test_read_dicom import _ctx, read_all

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")


@pytest.fixture(scope="module")
def block(corpus):
    """12 contiguous slices of the demo CT series, ordered by position."""
    files = glob.glob(os.path.join(corpus.root, "ct-dicom", "**", "*.dcm"), recursive=True)
    z = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    return sorted(files, key=z.get)[40:52]


def _copy(files, dst, edit=None):
    os.makedirs(dst, exist_ok=True)
    out = []
    for i, p in enumerate(files):
        ds = pydicom.dcmread(p)
        if edit:
            edit(i, ds)
        path = os.path.join(dst, f"f{i:03d}.dcm")
        ds.save_as(path)
        out.append(path)
    return out


def _outputs(paths, root, pseudo, processing=None):
    recipe, ctx = _ctx(root, pseudo, processing)
    groups = {}
    for p in paths:
        g, inst = read_header(Item(recipe.id, "dicom", p), ctx)
        groups.setdefault(g, []).append(inst)
    return [o for g, insts in sorted(groups.items()) for o in assemble((g, insts), ctx)]


def test_a_series_mixing_orientations_is_split_into_volumes(block, tmp_path, pseudo):
    axial = _copy(block, tmp_path / "a")

    def sagittal(i, ds):
        ds.SOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-50.0 + 2.0 * i, -100.0, 50.0]

    extra = _copy(block[:5], tmp_path / "b", sagittal)
    out = _outputs(axial + extra, tmp_path, pseudo)
    assert all(not isinstance(o, QuarantineRecord) for o in out)
    assert sorted(o.image.shape[2] for o in out) == [5, 12]
    assert sum(o.units for o in out) == 17
    assert {o.key.part for o in out} == {"v0", "v1"} and len({o.key.digest for o in out}) == 1


def test_copies_of_one_instance_are_merged_and_counted(block, tmp_path, pseudo):
    files = _copy(block, tmp_path / "s")
    shutil.copy(files[3], tmp_path / "s" / "copy.dcm")
    (sample,) = read_all(sorted(glob.glob(str(tmp_path / "s" / "*.dcm"))), tmp_path, pseudo)
    assert sample.image.shape[2] == 12 and sample.units == 13 and sample.meta["duplicates_merged"] == 1
    assert len(sample.source_sha256) == 13


def test_conflicting_copies_are_quarantined(block, tmp_path, pseudo):
    files = _copy(block, tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(str(tmp_path / "s" / "altered.dcm"))
    with pytest.raises(QuarantineError) as err:
        read_all(sorted(glob.glob(str(tmp_path / "s" / "*.dcm"))), tmp_path, pseudo)
    assert err.value.reason == "conflicting_duplicates" and err.value.units == 13


def test_repeated_positions_split_by_acquisition(block, tmp_path, pseudo):
    first = _copy(block, tmp_path / "a", lambda i, ds: setattr(ds, "AcquisitionNumber", 1))

    def second(i, ds):
        ds.SOPInstanceUID = generate_uid()
        ds.AcquisitionNumber = 2

    out = read_all(first + _copy(block, tmp_path / "b", second), tmp_path, pseudo)
    assert len(out) == 2 and all(o.meta["split_by"] == "AcquisitionNumber" for o in out)
    np.testing.assert_array_equal(out[0].image, out[1].image)
    shutil.rmtree(tmp_path / "b")
    def same_acquisition(i, ds):
        ds.SOPInstanceUID = generate_uid()
        ds.AcquisitionNumber = 1

    _copy(block, tmp_path / "b", same_acquisition)
    with pytest.raises(QuarantineError) as err:
        read_all(first + sorted(glob.glob(str(tmp_path / "b" / "*.dcm"))), tmp_path, pseudo)
    assert err.value.reason == "duplicate_slices"


def test_missing_slice_is_interpolated_only_when_asked(block, tmp_path, pseudo):
    kept = block[:5] + block[6:]
    with pytest.raises(QuarantineError, match="missing_slices"):
        read_all(kept, tmp_path, pseudo)
    (sample,) = read_all(kept, tmp_path, pseudo, {"dicom": {"uneven_spacing": "interpolate"}})
    (full,) = read_all(block, tmp_path, pseudo)
    assert sample.image.shape == full.image.shape and sample.meta["interpolated_slices"] == 1
    np.testing.assert_allclose(sample.affine, full.affine, atol=1e-4)
    expected = (full.image[:, :, 4].astype(np.int32) + full.image[:, :, 6]) / 2
    assert np.abs(sample.image[:, :, 5] - expected).max() <= 0.5
    np.testing.assert_array_equal(sample.image[:, :, 4], full.image[:, :, 4])


def _series_from_function(root, f, tilt_deg, n=10, rows=32, cols=40, spacing=(1.5, 1.2), dz=2.0):
    """A tilted stack (image plane rotated about x, table moving along z) sampling f at every pixel centre."""
    t = np.radians(tilt_deg)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, np.cos(t), np.sin(t)])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        origin = np.array([-20.0, -15.0, -10.0 + k * dz])
        r, c = np.mgrid[0:rows, 0:cols]
        world = origin + c[..., None] * spacing[1] * row_dir + r[..., None] * spacing[0] * col_dir
        values = np.rint(f(world)).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = list(origin)
        ds.PixelSpacing = list(spacing)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = values.tobytes()
        path = os.path.join(root, f"s{k:02d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_gantry_tilt_is_a_shear_and_resamples_exactly(tmp_path, pseudo):
    def f(x):
        return 3.0 * x[..., 0] - 2.0 * x[..., 1] + 5.0 * x[..., 2] + 100.0

    (sample,) = read_all(_series_from_function(str(tmp_path), f, 15.0), tmp_path, pseudo)
    assert abs(sample.meta["gantry_tilt_deg"] - 15.0) < 0.01
    shape, out_affine = canonical_grid(sample.image.shape, sample.affine, (1.0, 1.0, 1.0))
    out = resample_array(get_backend("cpu"), sample.image, sample.affine, shape, out_affine, order=1, fill=np.nan,
                         antialias=False, out_dtype=np.float64)
    idx = np.indices(shape).reshape(3, -1).T
    m = pullback(sample.affine, out_affine)
    cont = idx @ m[:3, :3].T + m[:3, 3]
    inside = np.all((cont >= 0) & (cont <= np.array(sample.image.shape) - 1), axis=1)
    world = idx @ out_affine[:3, :3].T + out_affine[:3, 3]
    assert inside.sum() > 1000
    assert np.abs(out.reshape(-1)[inside] - f(world[inside])).max() <= 1.0  # rounding to int16 in the source


def test_enhanced_multiframe_equals_the_single_frame_series(block, tmp_path, pseudo):
    (series,) = read_all(block, tmp_path, pseudo)
    dss = [pydicom.dcmread(p) for p in block]
    order = [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]  # frames stored out of order
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    mf = Dataset()
    mf.file_meta = meta
    mf.SOPClassUID, mf.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    mf.StudyInstanceUID, mf.SeriesInstanceUID = dss[0].StudyInstanceUID, generate_uid()
    mf.Modality, mf.NumberOfFrames = "CT", len(order)
    mf.Rows, mf.Columns = dss[0].Rows, dss[0].Columns
    mf.SamplesPerPixel, mf.PhotometricInterpretation = 1, "MONOCHROME2"
    mf.BitsAllocated, mf.BitsStored, mf.HighBit, mf.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = dss[0].PixelSpacing, dss[0].SliceThickness
    orient.ImageOrientationPatient = dss[0].ImageOrientationPatient
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    mf.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for i in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = dss[i].ImagePositionPatient
        item.PlanePositionSequence = Sequence([plane])
        per.append(item)
    mf.PerFrameFunctionalGroupsSequence = Sequence(per)
    mf.PixelData = b"".join(dss[i].PixelData for i in order)
    path = str(tmp_path / "enhanced.dcm")
    mf.save_as(path, enforce_file_format=True)
    (sample,) = read_all([path], tmp_path, pseudo)
    assert sample.meta["multiframe"] and sample.image.dtype == np.int16
    np.testing.assert_array_equal(sample.image, series.image)
    np.testing.assert_allclose(sample.affine, series.affine, atol=1e-4)


def test_rt_dose_grid_is_a_volume_in_gray(tmp_path, pseudo):
    shutil.copy(os.path.join(PYDICOM_FILES, "rtdose.dcm"), tmp_path)
    (sample,) = read_all([str(tmp_path / "rtdose.dcm")], tmp_path, pseudo)
    ds = pydicom.dcmread(tmp_path / "rtdose.dcm")
    offsets = np.array([float(v) for v in ds.GridFrameOffsetVector])
    expected = ds.pixel_array[np.argsort(offsets)].astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(sample.image.transpose(2, 1, 0), expected, rtol=1e-6)
    assert sample.meta["intensity_unit"] == str(ds.DoseUnits).upper() and sample.image.shape == (10, 10, 15)


def test_segmentation_object_becomes_the_volume_label_map(block, tmp_path, pseudo):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    files = _copy(block, tmp_path / "ct")
    sources = [pydicom.dcmread(p) for p in files]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), np.uint8)
    mask[3:9, 200:300, 150:260] = 1
    mask[5:7, 100:140, 300:350] = 2
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in ((1, "block"), (2, "patch"))]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medcurate-test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(str(tmp_path / "ct" / "seg.dcm"))
    (sample,) = read_all(sorted(glob.glob(str(tmp_path / "ct" / "*.dcm"))), tmp_path, pseudo)
    assert sample.label_names == {1: "block", 2: "patch"} and sample.meta["segmentation"] == "SEG"
    np.testing.assert_array_equal(sample.label, mask.transpose(2, 1, 0))
    assert sample.units == 13


def _rtstruct(sources, centre, radius, path):
    ref = sources[0]
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", ref.StudyInstanceUID, generate_uid()
    frame, study, series = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    images = []
    for s in sources:
        img = Dataset()
        img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = s.SOPClassUID, s.SOPInstanceUID
        images.append(img)
    series.ContourImageSequence = Sequence(images)
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 7, "sphere", ref.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for s in sources:
        z = float(s.ImagePositionPatient[2])
        if abs(z - centre[2]) >= radius:
            continue
        r = np.sqrt(radius**2 - (z - centre[2]) ** 2)
        angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.c_[centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles), np.full(72, z)]
        c = Dataset()
        c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", 72
        c.ContourData = [float(v) for v in pts.ravel()]
        contours.append(c)
    roic = Dataset()
    roic.ReferencedROINumber = 7
    roic.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roic])
    ds.save_as(path, enforce_file_format=True)


def test_rtstruct_contours_rasterize_to_the_analytic_sphere(block, tmp_path, pseudo):
    files = _copy(block, tmp_path / "ct")
    sources = sorted((pydicom.dcmread(p) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))
    z_mid = float(sources[6].ImagePositionPatient[2])
    centre = np.array([10.0, -20.0, z_mid])
    _rtstruct(sources, centre, 12.0, str(tmp_path / "ct" / "rs.dcm"))
    (sample,) = read_all(sorted(glob.glob(str(tmp_path / "ct" / "*.dcm"))), tmp_path, pseudo)
    assert sample.label_names == {7: "sphere"} and sample.meta["segmentation"] == "RTSTRUCT"
    idx = np.indices(sample.image.shape).reshape(3, -1).T
    world = idx @ sample.affine[:3, :3].T + sample.affine[:3, 3]
    d_xy = np.linalg.norm(world[:, :2] - centre[:2], axis=1)
    r_slice = np.sqrt(np.maximum(12.0**2 - (world[:, 2] - centre[2]) ** 2, 0))
    expected = (d_xy <= r_slice).reshape(sample.image.shape)
    got = sample.label == 7
    dice = 2 * (got & expected).sum() / (got.sum() + expected.sum())
    assert dice >= 0.93, dice


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "rtstruct.dcm"])
def test_masks_without_their_images_are_quarantined(name, tmp_path, pseudo):
    shutil.copy(os.path.join(PYDICOM_FILES, name), tmp_path)
    out = _outputs([str(tmp_path / name)], tmp_path, pseudo)
    assert [o.reason for o in out] == ["segmentation_reference_missing"] and out[0].units == 1


@pytest.mark.parametrize("name, reason", [("badVR.dcm", "invalid_header_value"),
                                          ("meta_missing_tsyntax.dcm", "incomplete_image_header")])
def test_malformed_headers_have_their_own_reasons(name, reason, tmp_path, pseudo):
    shutil.copy(os.path.join(PYDICOM_FILES, name), tmp_path)
    recipe, ctx = _ctx(tmp_path, pseudo)
    with pytest.raises(QuarantineError) as err:
        read_header(Item(recipe.id, "dicom", str(tmp_path / name)), ctx)
    assert err.value.reason == reason and len(err.value.source_sha256) == 1


def test_unknown_transfer_syntax_is_named(block, tmp_path, pseudo):
    def mpeg(i, ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: video, no image decoder
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    files = _copy(block[:1], tmp_path / "m", mpeg)
    out = _outputs(files, tmp_path, pseudo)
    assert [o.reason for o in out] == ["unsupported_transfer_syntax"]
    assert dict(out[0].detail)["transfer_syntax"] == "1.2.840.10008.1.2.4.100"


def test_native_fast_path_equals_pydicom_on_its_test_files(block):
    from medcurate.transforms.read.dicom import Instance

    checked = 0
    for path in sorted(glob.glob(os.path.join(PYDICOM_FILES, "*.dcm"))) + list(block[:3]):
        data = open(path, "rb").read()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            offset = ds["PixelData"].file_tell
            reference = ds.pixel_array
        except Exception:  # noqa: BLE001 - not an image, or undecodable: not this test's concern
            continue
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        fast = _native_pixels(Instance(Item("x", "dicom", path), "0", header, offset), data)
        if fast is not None:
            np.testing.assert_array_equal(fast, reference)
            checked += 1
    assert checked >= 7  # CT_small, MR_small and others of pydicom's, and the demo CT's signed slices
