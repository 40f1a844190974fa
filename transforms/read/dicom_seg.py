"""DICOM SEG and RT Structure Sets -> the label map of the volume they reference.

- SEG: decoded with highdicom (``segread``, ``get_pixels_by_source_instance``) against the volume's own instances in
  slice order, segments combined into one integer map (segment numbers as values, segment labels as names).
  Overlapping segments: later segment numbers win and the sample is flagged ``overlapping_segments``.
- RTSTRUCT: each CLOSED_PLANAR contour is mapped to the slice it lies on (within a quarter of the slice spacing)
  and filled with Pillow's polygon fill; several contours of one ROI on one slice combine by XOR (holes). ROIs are
  painted largest first so that structures inside others (organs inside the body outline) stay visible; ROI
  numbers are the values, ROI names the names. Points, open contours and contours off every slice are counted.
- A mask attaches to the volume holding most of its referenced instances (or, for RTSTRUCT, sharing its frame of
  reference). A mask whose images are not in the dataset is quarantined ``segmentation_reference_missing``; a second
  mask for a volume that already has one is quarantined ``additional_segmentation`` (the first, by content hash, is
  kept). The mask file's hash and unit join the sample.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from medcurate.schemas.records import QuarantineError, QuarantineRecord, Sample
from medcurate.transforms.io import read_bytes


def _record(inst, exc: QuarantineError, dataset: str) -> QuarantineRecord:
    return QuarantineRecord(dataset=dataset, stage="read-dicom-series", reason=exc.reason, message=exc.message,
                            source_sha256=(inst.sha256,), units=1, detail=exc.detail)


def _referenced_instances(inst) -> set:
    ds = inst.header
    uids = set()
    try:
        if inst.role == "seg":
            for series in ds.ReferencedSeriesSequence:
                for ref in series.ReferencedInstanceSequence:
                    uids.add(str(ref.ReferencedSOPInstanceUID))
        else:
            for frame in ds.ReferencedFrameOfReferenceSequence:
                for study in frame.RTReferencedStudySequence:
                    for series in study.RTReferencedSeriesSequence:
                        for ref in series.get("ContourImageSequence", []):
                            uids.add(str(ref.ReferencedSOPInstanceUID))
    except (AttributeError, KeyError):
        pass
    return uids


def _frame_of_reference(ds) -> str:
    if "FrameOfReferenceUID" in ds:
        return str(ds.FrameOfReferenceUID)
    try:
        return str(ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    except (AttributeError, IndexError):
        return ""


def _target(mask, volumes: list):
    """Index of the volume this mask belongs to, or None."""
    refs = _referenced_instances(mask)
    best, best_n = None, 0
    for n, (stack, _) in enumerate(volumes):
        overlap = len(refs & {i.sop_uid for i in stack.instances})
        if overlap > best_n:
            best, best_n = n, overlap
    if best is not None:
        return best
    frame = _frame_of_reference(mask.header)
    same = [n for n, (stack, _) in enumerate(volumes) if frame and _frame_of_reference(stack.instances[0].header) == frame]
    return same[0] if len(same) == 1 else None


def seg_labels(mask, stack, recipe) -> tuple[np.ndarray, dict, dict]:
    import highdicom as hd

    data = read_bytes(mask.item.uri, recipe.max_file_bytes, mask.item.size)
    try:
        seg = hd.seg.segread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - highdicom validates the object
        raise QuarantineError("invalid_segmentation", "the segmentation object cannot be decoded",
                              {"error": type(exc).__name__}) from exc
    uids = [i.sop_uid for i in stack.instances]
    flags = {}
    kwargs = dict(source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=False)
    try:
        try:
            pixels = seg.get_pixels_by_source_instance(**kwargs)
        except ValueError as exc:
            if "overlap" not in str(exc).lower():
                raise
            pixels = seg.get_pixels_by_source_instance(**kwargs, skip_overlap_checks=True)
            flags["overlapping_segments"] = True
    except QuarantineError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise QuarantineError("segmentation_reference_missing", "segmentation frames do not match the volume's slices",
                              {"error": type(exc).__name__}) from exc
    names = {}
    for number in seg.segment_numbers:
        names[int(number)] = str(seg.get_segment_description(number).segment_label)
    labels = np.asarray(pixels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    return labels.astype(dtype).transpose(2, 1, 0), names, flags


def _fill(shape_ij: tuple, points_ij: np.ndarray) -> np.ndarray:
    img = Image.new("1", (shape_ij[0], shape_ij[1]), 0)  # width = i (columns), height = j (rows)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points_ij], fill=1, outline=1)
    return np.asarray(img, dtype=bool).T


def rtstruct_labels(mask, sample: Sample) -> tuple[np.ndarray, dict, dict]:
    ds = mask.header
    shape = sample.image.shape
    inverse = np.linalg.inv(sample.affine)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    per_roi: dict[int, np.ndarray] = {}
    skipped = {"not_closed_planar": 0, "off_slice": 0}
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        volume = per_roi.setdefault(number, np.zeros(shape, dtype=bool))
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                skipped["not_closed_planar"] += 1
                continue
            pts = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            idx = np.c_[pts, np.ones(len(pts))] @ inverse.T
            k = float(np.median(idx[:, 2]))
            kk = int(round(k))
            if abs(k - kk) > 0.25 or not 0 <= kk < shape[2] or len(pts) < 3:
                skipped["off_slice"] += 1
                continue
            volume[:, :, kk] ^= _fill(shape[:2], idx[:, :2])
    labels = np.zeros(shape, dtype=np.uint8 if max(per_roi, default=0) < 256 else np.uint16)
    for number in sorted(per_roi, key=lambda n: (-int(per_roi[n].sum()), n)):
        labels[per_roi[number]] = number
    present = {n: names.get(n, f"roi_{n}") for n in per_roi if per_roi[n].any()}
    flags = {k: v for k, v in skipped.items() if v}
    return labels, present, flags


def attach_masks(masks: list, volumes: list, recipe) -> tuple[list, list]:
    """(masks, [(stack, sample)]) -> (updated [(stack, sample)], quarantine records for masks not attached)."""
    records = []
    volumes = list(volumes)
    taken = set()
    for mask in sorted(masks, key=lambda m: m.sha256):
        target = _target(mask, volumes)
        if target is None:
            records.append(_record(mask, QuarantineError(
                "segmentation_reference_missing", "the images this mask references are not in the dataset"),
                recipe.id))
            continue
        if target in taken:
            records.append(_record(mask, QuarantineError(
                "additional_segmentation", "the volume already has a mask; one mask per volume is kept"), recipe.id))
            continue
        stack, sample = volumes[target]
        try:
            if mask.role == "seg":
                labels, names, flags = seg_labels(mask, stack, recipe)
            else:
                labels, names, flags = rtstruct_labels(mask, sample)
        except QuarantineError as exc:
            records.append(_record(mask, exc, recipe.id))
            continue
        if labels.shape != sample.image.shape:
            records.append(_record(mask, QuarantineError("label_geometry_mismatch",
                                                         "the mask's grid differs from the volume's"), recipe.id))
            continue
        taken.add(target)
        meta = {**sample.meta, "segmentation": "SEG" if mask.role == "seg" else "RTSTRUCT", **flags}
        volumes[target] = (stack, sample.replace(
            label=labels, label_names=names, meta=meta, units=sample.units + 1,
            source_sha256=tuple(sorted(sample.source_sha256 + (mask.sha256,)))))
    return volumes, records
