"""The robustness bar: every file pydicom and nibabel ship as test data, through `medcurate run` with generic
recipes. No crash, no internal error, every file written or quarantined with a specific reason, counts reconcile."""
from __future__ import annotations

import json
import os

import nibabel
import pydicom.data

from tests.conftest import run_cli

DOCUMENTED = {  # docs/recipes.md lists every reason code
    "no_pixel_data", "not_dicom", "truncated_file", "incomplete_image_header", "invalid_header_value",
    "unsupported_transfer_syntax", "pixel_decode_failed", "multiframe_without_geometry",
    "multiframe_dimensions_unsupported", "missing_slices", "nonuniform_spacing", "duplicate_slices",
    "conflicting_duplicates", "segmentation_reference_missing", "additional_segmentation", "invalid_segmentation",
    "unexpected_dimensions", "missing_geometry", "inconsistent_orientation", "burned_in_text_risk", "unknown_format",
    "unreadable_volume", "unsupported_4d", "unsupported_dimensions", "unsupported_vector_image", "corrupt_file",
    "not_nifti", "truncated_data", "label_geometry_mismatch", "file_too_large",
}


def test_every_pydicom_and_nibabel_test_file_is_read_or_quarantined(tmp_path, key_file):
    pydicom_files = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    nibabel_files = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    (tmp_path / "pydicom.yaml").write_text(
        f"dataset: {{id: pydicom-all, license: MIT}}\nsource: {{adapter: dicom-folder, root: {pydicom_files}}}\n")
    (tmp_path / "nibabel.yaml").write_text(
        f"dataset: {{id: nibabel-all, license: MIT}}\n"
        f"source: {{adapter: nifti-folder, root: {nibabel_files}, images: '**/*'}}\ndefaults: {{modality: MR}}\n")
    out = tmp_path / "out"
    code = run_cli(["run", str(tmp_path / "pydicom.yaml"), str(tmp_path / "nibabel.yaml"), "--out", str(out),
                    "--key-file", key_file])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    files = sum(len(f) for _, _, f in os.walk(pydicom_files)) + sum(len(f) for _, _, f in os.walk(nibabel_files))
    assert summary["total"]["discovered"] == files - _detached_data_files(nibabel_files)
    assert summary["total"]["reconciled"]
    reasons = {q["reason"]: q["units"] for q in summary["quarantine_by_reason"]}
    assert "internal_error" not in reasons
    assert set(reasons) <= DOCUMENTED, set(reasons) - DOCUMENTED
    assert summary["total"]["written"] >= 35
    print("\nreason codes (files):", json.dumps(dict(sorted(reasons.items())), indent=1))


def _detached_data_files(root: str) -> int:
    """.img/.raw files that travel with their header as one item."""
    from medcurate.transforms.discover import _data_companions
    from medcurate.transforms.io import match_sizes

    return len(_data_companions(match_sizes(root, "**/*"))[1])
