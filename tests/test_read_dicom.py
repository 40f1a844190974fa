"""DICOM reading, checked against SimpleITK's series reader and the CT the series was written from."""
from __future__ import annotations

import glob
import os
import shutil
from collections import defaultdict

import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medcurate.schemas import recipe as recipe_mod
from medcurate.schemas.records import Item, QuarantineError, QuarantineRecord
from medcurate.transforms.read.dicom import assemble, read_header
from tests.conftest import make_context

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")


def _ctx(root, pseudo, processing=None):
    doc = {"dataset": {"id": "t-dicom", "license": "MIT"}, "source": {"adapter": "dicom-folder", "root": str(root)}}
    if processing:
        doc["processing"] = processing
    recipe = recipe_mod.from_dict(doc, base_dir=str(root))
    return recipe, make_context([recipe], pseudo)


def read_all(paths, root, pseudo, processing=None):
    """Run the read stage's plain functions (header, group, assemble) as the pipeline does; a quarantine record
    is raised back as the QuarantineError it stands for."""
    recipe, ctx = _ctx(root, pseudo, processing)
    groups = defaultdict(list)
    for p in paths:
        g, inst = read_header(Item(recipe.id, "dicom", p), ctx)
        groups[g].append(inst)
    out = [o for g, insts in sorted(groups.items()) for o in assemble((g, insts), ctx)]
    for o in out:
        if isinstance(o, QuarantineRecord):
            raise QuarantineError(o.reason, o.message, dict(o.detail), units=o.units, source_sha256=o.source_sha256)
    return out


def sitk_affine(image) -> np.ndarray:
    A = np.eye(4)
    A[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    A[:3, 3] = image.GetOrigin()
    return A


@pytest.fixture(scope="module")
def ct_series(corpus):
    return sorted(glob.glob(os.path.join(corpus.root, "ct-dicom", "**", "*.dcm"), recursive=True))


def test_series_matches_simpleitk_and_the_source_ct(ct_series, corpus, pseudo, demo_ct):
    (sample,) = read_all(ct_series, os.path.join(corpus.root, "ct-dicom"), pseudo)
    assert sample.kind == "volume" and sample.units == len(ct_series) == 133
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(os.path.dirname(ct_series[0])))
    ref = reader.Execute()
    ref_arr = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    assert sample.image.dtype == np.int16
    np.testing.assert_array_equal(sample.image, ref_arr)
    np.testing.assert_allclose(sample.affine, sitk_affine(ref), atol=1e-4)
    # The series was written from the NIfTI CT with rows along +P: same HU, j axis reversed.
    hu, _, affine, _ = demo_ct
    np.testing.assert_array_equal(sample.image, hu[:, ::-1, :])
    corner = affine @ np.array([0, hu.shape[1] - 1, 0, 1.0])
    np.testing.assert_allclose(sample.affine[:3, 3], corner[:3], atol=1e-3)


def test_slices_are_ordered_by_position_not_name_or_instance_number(ct_series, corpus, pseudo):
    (sample,) = read_all(ct_series, os.path.join(corpus.root, "ct-dicom"), pseudo)
    positions = []
    for p in ct_series:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        positions.append((float(ds.ImagePositionPatient[2]), int(ds.InstanceNumber), os.path.basename(p)))
    by_name = [pos for pos, _, _ in sorted(positions, key=lambda t: t[2])]
    assert by_name != sorted(by_name), "the demo shuffles file names against position"
    assert sample.affine[2, 2] > 0  # k runs towards +S: ascending position
    assert sample.meta["slices"] == 133 and sample.meta["gantry_tilt_deg"] == 0.0


def test_missing_slice_is_quarantined_not_stitched(ct_series, tmp_path, pseudo):
    root = tmp_path / "series"
    root.mkdir()
    positions = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in ct_series}
    ordered = sorted(ct_series, key=positions.get)
    kept = ordered[:40] + ordered[41:60]
    for p in kept:
        shutil.copy(p, root)
    with pytest.raises(QuarantineError) as err:
        read_all(sorted(glob.glob(str(root / "*.dcm"))), root, pseudo)
    assert err.value.reason == "missing_slices"
    assert err.value.units == 59 and len(err.value.source_sha256) == 59
    assert dict(err.value.detail)["expected"] == 60


def _contiguous_block(ct_series, start=20, n=12):
    positions = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in ct_series}
    return sorted(ct_series, key=positions.get)[start: start + n]


def test_nonuniform_spacing_on_a_contiguous_block(ct_series, tmp_path, pseudo):
    for i, p in enumerate(_contiguous_block(ct_series)):
        ds = pydicom.dcmread(p)
        if i == 6:
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.9]
        ds.save_as(str(tmp_path / os.path.basename(p)))
    with pytest.raises(QuarantineError) as err:
        read_all(sorted(glob.glob(str(tmp_path / "*.dcm"))), tmp_path, pseudo)
    assert err.value.reason == "nonuniform_spacing"


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_compressed_and_plain_single_images_match_simpleitk(name, tmp_path, pseudo):
    src = os.path.join(PYDICOM_FILES, name)
    shutil.copy(src, tmp_path)
    (sample,) = read_all([str(tmp_path / name)], tmp_path, pseudo)
    assert sample.kind == "image"
    ref = sitk.GetArrayFromImage(sitk.ReadImage(src))[0]  # SimpleITK applies rescale slope/intercept
    np.testing.assert_allclose(sample.image.astype(np.float64), ref.astype(np.float64))


def test_objects_that_are_not_images(tmp_path, pseudo):
    shutil.copy(os.path.join(PYDICOM_FILES, "rtplan.dcm"), tmp_path)
    (tmp_path / "garbage.dcm").write_bytes(os.urandom(4000))
    data = open(os.path.join(PYDICOM_FILES, "J2K_pixelrep_mismatch.dcm"), "rb").read()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 3])
    recipe, ctx = _ctx(tmp_path, pseudo)
    reasons = {}
    for name in ("rtplan.dcm", "garbage.dcm", "cut.dcm"):
        with pytest.raises(QuarantineError) as err:
            read_header(Item(recipe.id, "dicom", str(tmp_path / name)), ctx)
        reasons[name] = err.value.reason
        assert len(err.value.source_sha256) == 1
    assert reasons == {"rtplan.dcm": "no_pixel_data", "garbage.dcm": "not_dicom", "cut.dcm": "truncated_file"}


def test_monochrome1_is_inverted(tmp_path, pseudo):
    raw = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 3) % 4096
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CR", 64, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelData = raw.tobytes()
    ds.save_as(str(tmp_path / "cr.dcm"), enforce_file_format=True)
    (sample,) = read_all([str(tmp_path / "cr.dcm")], tmp_path, pseudo)
    np.testing.assert_array_equal(sample.image, 4095 - raw)
    assert sample.meta["inverted_monochrome1"] and sample.meta["pixel_spacing_mm"] == [0.2, 0.2]
