"""NIfTI and 2D image reading and discovery, checked against SimpleITK, Pillow and the demo corpus layout."""
from __future__ import annotations

import glob
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medcurate.schemas import recipe as recipe_mod
from medcurate.schemas.records import Item, QuarantineError
from medcurate.transforms.discover import discover
from medcurate.transforms.read.image2d import decode_image, read_image
from medcurate.transforms.read.volume import read_volume
from tests.conftest import make_context, recipe_by_name


def sitk_affine(image) -> np.ndarray:
    A = np.eye(4)
    A[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    A[:3, 3] = image.GetOrigin()
    return A


def _recipe_ctx(corpus, name, pseudo):
    recipe = recipe_mod.load(recipe_by_name(corpus, name))
    return recipe, make_context([recipe], pseudo)


def test_nifti_ct_with_mask_matches_simpleitk(corpus, pseudo):
    recipe, ctx = _recipe_ctx(corpus, "ct-nifti", pseudo)
    (item,) = list(discover(recipe))
    (sample,) = read_volume(item, ctx)
    ref = sitk.ReadImage(item.uri)  # SimpleITK works in LPS, like medcurate
    np.testing.assert_array_equal(sample.image, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    np.testing.assert_allclose(sample.affine, sitk_affine(ref), atol=1e-4)
    assert sample.image.dtype == np.int16 and sample.label.dtype == np.uint8
    label_ref = sitk.GetArrayFromImage(sitk.ReadImage(item.companion("label"))).transpose(2, 1, 0)
    np.testing.assert_array_equal(sample.label, label_ref)
    assert sample.label_names[5] == "liver" and len(sample.source_sha256) == 2
    # Header text and the file name's words are kept apart for de-identification, never in the header dict.
    assert "DOE" in " ".join(sample.private["text"]) and "DOE" in sample.private["name_tokens"]
    assert "DOE" not in str(sample.header) and "descrip" not in sample.header


def test_nibabel_anatomical_matches_simpleitk(corpus, pseudo):
    recipe, ctx = _recipe_ctx(corpus, "nibabel", pseudo)
    items = {os.path.basename(i.uri): i for i in discover(recipe)}
    (sample,) = read_volume(items["anatomical.nii"], ctx)
    ref = sitk.ReadImage(items["anatomical.nii"].uri)
    np.testing.assert_allclose(sample.image, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    np.testing.assert_allclose(sample.affine, sitk_affine(ref), atol=1e-4)
    with pytest.raises(QuarantineError) as err:
        read_volume(items["example4d.nii.gz"], ctx)
    assert err.value.reason == "unsupported_4d"


def test_label_mask_on_another_grid_is_quarantined(corpus, tmp_path, pseudo):
    root = tmp_path / "set"
    shutil.copytree(os.path.join(corpus.root, "ct-nifti"), root)
    label_path = glob.glob(str(root / "labelsTr" / "*.nii.gz"))[0]
    lab = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :-1], lab.affine), label_path)
    recipe = recipe_mod.from_dict(
        {"dataset": {"id": "t", "license": "MIT"},
         "source": {"adapter": "nifti-folder", "root": str(root), "images": "imagesTr/*.nii.gz",
                    "labels": "labelsTr/{name}"}}, base_dir=str(root))
    (item,) = list(discover(recipe))
    with pytest.raises(QuarantineError) as err:
        read_volume(item, make_context([recipe], pseudo))
    assert err.value.reason == "label_geometry_mismatch" and len(err.value.source_sha256) == 2


def test_image_csv_discovery_reports_every_defect(corpus, pseudo):
    recipe, _ = _recipe_ctx(corpus, "cxr", pseudo)
    items = list(discover(recipe))
    kinds = {}
    for it in items:
        kinds.setdefault(it.kind, []).append(os.path.basename(it.uri))
    assert kinds["missing"] == ["00000099_000.png"]  # a row whose image is not there
    assert kinds["orphan"] == ["00000101_000.txt"]  # a report without an image
    unlabeled = [it for it in items if it.kind == "image" and not it.row]
    assert [os.path.basename(it.uri) for it in unlabeled] == ["00000100_000.png"]
    labeled = [it for it in items if it.kind == "image" and it.row]
    assert len(labeled) == 17
    row = labeled[0].row_dict()
    assert row["Image Index"] == os.path.basename(labeled[0].uri) and "Finding Labels" in row
    assert labeled[0].companion("report").endswith(".txt")


def test_image_reading_8_and_16_bit_and_defects(corpus, pseudo):
    recipe, ctx = _recipe_ctx(corpus, "cxr", pseudo)
    items = {os.path.basename(i.uri): i for i in discover(recipe)}
    s8 = read_image(items["00000001_000.png"], ctx)
    np.testing.assert_array_equal(s8.image, np.asarray(Image.open(items["00000001_000.png"].uri)))
    assert s8.image.dtype == np.uint8 and "report" in s8.private and len(s8.source_sha256) == 2
    s16 = read_image(items["00000003_000.png"], ctx)
    assert s16.image.dtype == np.uint16 and s16.image.max() > 255
    for name, reason in (("00000002_000.png", "corrupt_image"), ("00000100_000.png", "unlabeled_image")):
        with pytest.raises(QuarantineError) as err:
            read_image(items[name], ctx)
        assert err.value.reason == reason


def test_grey_rgb_png_is_read_as_grey():
    import io

    grey = (np.arange(100, dtype=np.uint8).reshape(10, 10))
    buf = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()), grey)


def test_duplicate_label_rows_are_quarantined(tmp_path, pseudo):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,Mass\na.png,Nodule\n")
    recipe = recipe_mod.from_dict(
        {"dataset": {"id": "t", "license": "MIT"},
         "source": {"adapter": "image-csv", "root": str(tmp_path), "images": "images/*.png",
                    "labels_csv": "labels.csv", "columns": {"image": "file", "labels": "label"}}},
        base_dir=str(tmp_path))
    (item,) = list(discover(recipe))
    assert item.kind == "duplicate-rows"
    from medcurate.transforms.read import build

    with pytest.raises(QuarantineError) as err:
        build(("g", [item]), make_context([recipe], pseudo))
    assert err.value.reason == "duplicate_label_rows" and err.value.stage == "read-other"
    assert isinstance(item, Item)
