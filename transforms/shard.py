"""Shard: finished samples -> WebDataset tar shards, per-shard Parquet and stats, a shard index, catalog rows.

Products and their shard sets. Every sample of a shard set has the same member suffixes:
- ``volume``:      json, npy (image [i,j,k]), txt (caption)
- ``volume_seg``:  json, npy, seg.npy (integer label map on the same grid), txt
- ``image``:       json, png (8/16-bit, lossless), txt
- ``image_npy``:   json, npy, txt (2D images whose values do not fit a PNG: signed, float)
- ``drr``:         json, png (display), lineint.npy (float32 line integrals), seg.npy (label maps, one per
                   structure, possibly zero of them), txt
Shards are ``shards/<product>/<split>-NNNNNN.tar``. Keys are ``SampleKey`` strings (no dots).

Memory: payloads never cross a shuffle. The encode stage writes each sample's tar member blocks to a part file
(``_parts/`` under the output folder) and passes on only (key, size, catalog row); the plan and the shard grouping
move that metadata; each shard writer streams its parts into the tar. A worker holds one sample at a time, so memory
stays flat in the number of samples on every runner, the in-memory DirectRunner included.

Determinism: members are encoded canonically (sorted-key JSON, ``np.save``, PNG without timestamps); a plan sorts
each (product, split) group by key and packs it greedily under the size and count limits, so the same samples give
the same shards on any runner; tar headers carry a fixed mtime, owner and mode. Per shard the tar is written first,
then its Parquet, then its stats JSON, the "done" marker (the img2dataset pattern).
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from medcurate.schemas import vocab
from medcurate.schemas.records import QuarantineError, Sample
from medcurate.schemas.sample import SchemaViolation, dumps, rows_to_table, validate_row
from medcurate.transforms.io import HashingWriter, join, write_bytes
from medcurate.transforms.release import generalize

TAR_MTIME = 1577836800  # 2020-01-01T00:00:00Z, fixed for reproducible tars
PARTS_DIR = "_parts"  # per-sample tar blocks between encoding and shard writing; removed as shards are written
READ_FACTS = ("slices", "rescaled", "gantry_tilt_deg", "photometric", "inverted_monochrome1", "report_missing",
              "burned_in_risk", "duplicates_merged", "split_by", "interpolated_slices", "uneven_spacing",
              "multiframe", "segmentation", "overlapping_segments", "not_closed_planar", "off_slice", "channel",
              "volume_index", "split_4d")
PRODUCT_MEMBERS = {
    "volume": ("json", "npy", "txt"),
    "volume_seg": ("json", "npy", "seg.npy", "txt"),
    "image": ("json", "png", "txt"),
    "image_npy": ("json", "npy", "txt"),
    "drr": ("json", "lineint.npy", "png", "seg.npy", "txt"),
}


@dataclass
class ShardSample:
    product: str
    split: str
    key: str
    members: dict  # suffix -> bytes, every member but the JSON record
    row: dict  # catalog row without the shard location
    record: dict  # the JSON member, encoded when the shard is written (the release step may still change it)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.members.values())


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        value = float(obj)
        return value if np.isfinite(value) else None
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, bytes):
        return None
    return obj


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    if array.dtype == np.uint16:
        img = Image.fromarray(array, mode="I;16") if array.ndim == 2 else None
        if img is None:
            raise QuarantineError("unencodable_image", "16-bit colour images are not written as PNG")
    else:
        img = Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _png_ok(array: np.ndarray) -> bool:
    if array.dtype == np.uint8:
        return array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    return array.dtype == np.uint16 and array.ndim == 2


def _positive(labels: dict | None) -> list:
    return sorted(k for k, v in (labels or {}).items() if v == 1)


def base_row(sample: Sample, product: str, key: str) -> dict:
    m = sample.meta
    out, orig = m.get("output", m["original"]), m["original"]
    cap = sample.captions[0] if sample.captions else None
    return {
        "schema_version": m["schema_version"],
        "key": key,
        "parent_key": None,
        "product": product,
        "dataset": sample.dataset,
        "dataset_name": m.get("dataset_name"),
        "kind": sample.kind,
        "patient_id": m["patient_id"],
        "study_id": m.get("study_id"),
        "series_id": m.get("series_id"),
        "split": m["split"],
        "split_source": m.get("split_source"),
        "fold": m.get("fold"),
        "modality": m.get("modality"),
        "modality_raw": m.get("modality_raw"),
        "body_part": m.get("body_part"),
        "body_part_raw": m.get("body_part_raw"),
        "body_part_code": m.get("body_part_code"),
        "view": m.get("view"),
        "view_raw": m.get("view_raw"),
        "mr_sequence": m.get("mr_sequence"),
        "mr_sequence_code": m.get("mr_sequence_code"),
        "sex": m.get("sex"),
        "age_years": m.get("age_years"),
        "age_band": None,
        "day_offset": None,
        "day_offset_band": None,
        "findings": _positive(m.get("labels")),
        "labels": sorted((m.get("labels") or {}).items()) or None,
        "labels_raw": m.get("labels_raw"),
        "structures": list(m.get("structures", [])),
        "structures_raw": m.get("structures_raw") or None,
        "regions": None,
        "shape": out.get("shape"),
        "spacing_mm": out.get("spacing_mm"),
        "orientation": out.get("orientation"),
        "affine": out.get("affine"),
        "dtype": out.get("dtype"),
        "intensity_unit": out.get("intensity_unit"),
        "resampling": m.get("resampling"),
        "original_shape": orig.get("shape"),
        "original_spacing_mm": orig.get("spacing_mm"),
        "derivation": None,
        "caption": cap.text if cap else None,
        "caption_kind": cap.kind if cap else None,
        "caption_model": cap.model if cap else None,
        "caption_prompt_id": cap.prompt_id if cap else None,
        "caption_seed": cap.seed if cap else None,
        "license": m["license"],
        "redistributable": m["redistributable"],
        "access_tier": m.get("access_tier"),
        "source_sha256": list(sample.source_sha256),
        "source_units": int(sample.units),
        "recipe_sha256": m["recipe_sha256"],
        "pipeline_version": m["pipeline_version"],
        "unmapped": [f"{k}={v}" for k, v in sorted((m.get("unmapped") or {}).items())],
    }


def _record(row: dict, sample: Sample, extra: dict) -> dict:
    """The JSON member: the catalog row plus what only the record carries (header, de-id summary, report)."""
    header = sample.header if isinstance(sample.header, dict) else None
    is_file = header is not None and "format" in header
    doc = {
        **row,
        "labels": dict(row["labels"]) if row["labels"] else None,
        "deid": sample.meta.get("deid"),
        "dicom": header if header is not None and not is_file else None,
        "file_header": header if is_file else None,
        "report": sample.text.get("report"),
        "unmapped": sample.meta.get("unmapped") or {},
        "vocabularies": sample.meta.get("vocabularies"),
        "read": {k: sample.meta[k] for k in READ_FACTS if k in sample.meta},
        "captions": [c.to_dict() for c in sample.captions],
        **extra,
    }
    return jsonable(doc)


def to_shard_samples(sample: Sample) -> list[ShardSample]:
    """Fan a finished sample out to its shard samples (the sample itself and each DRR view)."""
    key = str(sample.key)
    caption = (sample.captions[0].text if sample.captions else "").encode("utf-8")
    out = []
    if sample.kind == "volume":
        product = "volume_seg" if sample.label is not None else "volume"
        row = base_row(sample, product, key)
        members = {"npy": npy_bytes(sample.image), "txt": caption}
        if sample.label is not None:
            members["seg.npy"] = npy_bytes(sample.label)
            row["regions"] = volume_regions(sample.label, sample.label_names)
            members_extra = {"seg_values": {str(v): n for v, n in sorted(sample.label_names.items())
                                            if n in row["structures"]}}
        else:
            members_extra = {}
        out.append(ShardSample(product, row["split"], key, members, row, _record(row, sample, members_extra)))
    else:
        product = "image" if _png_ok(sample.image) else "image_npy"
        row = base_row(sample, product, key)
        members = {"txt": caption}
        members["png" if product == "image" else "npy"] = (
            png_bytes(sample.image) if product == "image" else npy_bytes(sample.image))
        out.append(ShardSample(product, row["split"], key, members, row, _record(row, sample, {})))
    for view in sample.views:
        vkey = str(sample.key.derive(f"drr-{view.name}"))
        row = base_row(sample, "drr", vkey)
        cap = view.captions[0] if view.captions else None
        derivation = {"from": key, "view": view.name, "geometry": view.geometry, "mapping": view.mapping}
        row.update(
            parent_key=key, kind="projection", view={"ap": "AP", "pa": "PA"}.get(view.geometry["direction"], "LATERAL"),
            view_raw=None, structures=list(view.structures), shape=list(view.display.shape),
            spacing_mm=view.geometry["pixel_mm"], orientation=None, affine=None, dtype=str(view.display.dtype),
            intensity_unit="line-integral (display: log-window)", resampling=None,
            derivation=dumps(jsonable(derivation)), caption=cap.text if cap else None,
            caption_kind=cap.kind if cap else None, caption_model=cap.model if cap else None,
            caption_prompt_id=cap.prompt_id if cap else None, caption_seed=cap.seed if cap else None,
            source_units=0, findings=[], labels=None, labels_raw=None,
            regions=projection_regions(view.labels, view.structures),
        )
        members = {
            "png": png_bytes(view.display),
            "lineint.npy": npy_bytes(view.line_integral.astype(np.float32)),
            "seg.npy": npy_bytes(view.labels),
            "txt": (cap.text if cap else "").encode("utf-8"),
        }
        view_sample = dataclasses.replace(sample, captions=view.captions)
        record = _record(row, view_sample, {"derivation": derivation, "structures": view.structures})
        out.append(ShardSample("drr", row["split"], vkey, members, row, record))
    for s in out:
        assert tuple(sorted([*s.members, "json"])) == PRODUCT_MEMBERS[s.product], (s.product, sorted(s.members))
        try:
            validate_row({**s.row, "shard": "-", "members": [], "bytes": 0})
        except SchemaViolation as exc:
            raise QuarantineError("schema_violation", f"record does not fit the catalog schema at field {exc.field}",
                                  {"field": exc.field}) from None
    return out


def volume_regions(label: np.ndarray, names: dict) -> list[dict]:
    """Each label value of a label map: structure name, bounding box ([start, stop) per array axis), voxel count;
    then each composite of structures present (BraTS whole tumour, tumour core): the union of its members."""
    from scipy import ndimage

    out = []
    for v, box in enumerate(ndimage.find_objects(label), start=1):  # label maps are non-negative integers
        if box is None:
            continue
        out.append({"structure": names.get(v, f"label_{v}"), "mask": "seg.npy", "value": v,
                    "bbox": [int(x) for sl in box for x in (sl.start, sl.stop)],
                    "size": int(np.count_nonzero(label[box] == v))})
    return out + _composite_regions(out)


def projection_regions(maps: np.ndarray, structures: list) -> list[dict]:
    """Each projected structure map (index = its position in ``seg.npy``): bounding box and pixel count; then each
    composite of structures present, from the union of its members' maps."""
    out, hits = [], {}
    for i, name in enumerate(structures):
        hit = np.asarray(maps[i]) > 0
        if not hit.any():
            continue
        hits[name] = hit
        out.append({"structure": name, "mask": "seg.npy", "value": i, **_box2d(hit)})
    composite = []
    for name, members in vocab.composites(hits):
        union = np.logical_or.reduce([hits[m] for m in members])
        composite.append({"structure": name, "mask": "seg.npy", "value": None, "members": members, **_box2d(union)})
    return out + composite


def _box2d(hit: np.ndarray) -> dict:
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    return {"bbox": [int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1], "size": int(hit.sum())}


def _composite_regions(regions: list) -> list[dict]:
    """Composites over a label map's regions: bounding box = union of the members' boxes, size = their sum (label
    values are disjoint)."""
    by_name = {r["structure"]: r for r in regions}
    out = []
    for name, members in vocab.composites(by_name):
        boxes = np.array([by_name[m]["bbox"] for m in members]).reshape(len(members), -1, 2)
        bbox = np.stack([boxes[:, :, 0].min(axis=0), boxes[:, :, 1].max(axis=0)], axis=1).ravel()
        out.append({"structure": name, "mask": "seg.npy", "value": None, "members": members,
                    "bbox": [int(x) for x in bbox], "size": sum(by_name[m]["size"] for m in members)})
    return out


def plan_shards(group: tuple, max_bytes: int, max_count: int) -> list[tuple[str, str]]:
    """((product, split), [(key, size), ...]) -> [(key, shard path)], packed greedily in key order."""
    (product, split), entries = group
    entries = sorted(entries)
    keys = [k for k, _ in entries]
    if len(set(keys)) != len(keys):  # keys identify samples; a collision would overwrite one with another
        raise RuntimeError(f"duplicate sample keys in {product}/{split}: a pipeline bug, please report it")
    plan, index, used, count = [], 0, 0, 0
    for key, size in entries:
        if count and (count >= max_count or used + size > max_bytes):
            index, used, count = index + 1, 0, 0
        plan.append((key, f"shards/{product}/{split}-{index:06d}.tar"))
        used += size
        count += 1
    return plan


@dataclass(frozen=True)
class Part:
    """One shard sample's tar member blocks, already written to a part file: only this metadata is shuffled."""

    product: str
    split: str
    key: str
    size: int  # bytes of the member blocks
    path: str  # the part file, relative to the output folder
    row: dict  # catalog row without the shard location
    gate: dict = dataclasses.field(default_factory=dict)  # identifier fingerprints (primary part only)
    audit: Optional[dict] = None  # de-identification audit record (primary part only)
    linkage: Optional[str] = None  # encrypted linkage record (primary part only)
    record: Optional[dict] = None  # the JSON member, written first when the shard is (None: it is in the part file)
    study_day: Optional[int] = None  # shifted study date in days, for the patient's relative day offsets
    site: Optional[str] = None  # institution, only where the recipe retains it (a quasi-identifier)

    def updated(self, **fields) -> "Part":
        """The part with catalog fields changed in its row and its JSON record alike."""
        record = {**self.record, **fields} if self.record is not None else None
        return dataclasses.replace(self, row={**self.row, **fields}, record=record,
                                   split=fields.get("split", self.split))



def tar_blocks(key: str, members: dict) -> bytes:
    """The tar member blocks of one sample (header block, data, zero padding to 512 bytes, per member in name
    order), as Python's tarfile writes them in a USTAR archive; concatenating samples and adding the end-of-archive
    marker gives a valid tar that webdataset reads."""
    out = bytearray()
    for suffix in sorted(members):
        data = bytes(members[suffix])
        info = tarfile.TarInfo(f"{key}.{suffix}")
        info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
        info.uname = info.gname = "medcurate"
        out += info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        out += data
        out += b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return bytes(out)


def tar_trailer(length: int) -> bytes:
    """End-of-archive (two zero blocks) and padding to a whole record, as tarfile closes an archive."""
    end = length + 2 * tarfile.BLOCKSIZE
    return b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))


def part_path(shard_sample: ShardSample) -> str:
    return f"{PARTS_DIR}/{shard_sample.product}/{shard_sample.key}.tarpart"


def encode_parts(sample: Sample, out_dir: str) -> list[Part]:
    """Fan a sample out to shard samples and write each one's tar blocks to a part file under the output folder."""
    parts = []
    for n, s in enumerate(to_shard_samples(sample)):
        blob = tar_blocks(s.key, s.members)
        rel = part_path(s)
        write_bytes(join(out_dir, rel), blob)
        row = {**s.row, "members": [f"{s.key}.{m}" for m in sorted([*s.members, "json"])], "bytes": s.size}
        extra = {}
        if n == 0:  # the sample itself; its DRR views share its audit and identifiers
            audit = {"key": s.key, "dataset": sample.dataset, "source_sha256": list(sample.source_sha256),
                     **sample.meta.get("_audit", {})}
            extra = {"gate": dict(sample.private.get("gate", {})), "audit": audit,
                     "linkage": sample.meta.get("_linkage")}
        # size: for planning only (the JSON member is encoded at write time, after the release step)
        size = len(blob) + len(dumps(s.record)) + 2 * tarfile.BLOCKSIZE
        parts.append(Part(s.product, s.split, s.key, size, rel, row, record=s.record,
                          study_day=sample.meta.get("study_day"), site=sample.meta.get("site"), **extra))
    return parts


def write_shard(group: tuple, out_dir: str, gate_key=None, table=None, level: str = "none") -> dict:
    """(shard path, [Part]) -> {entry, rows, hits, audits, linkages}. The tar is the parts in key order plus the tar
    trailer, streamed (one part in memory at a time) and scanned by the release gate on the way; then the shard's
    Parquet; then its stats JSON, the "done" marker; then the parts are deleted."""
    from apache_beam.io.filesystems import FileSystems

    from medcurate.transforms.deid.gate import Scanner

    shard, parts = group
    parts = sorted(parts, key=lambda p: p.key)
    uri = join(out_dir, shard)
    scanner = Scanner(gate_key, table or {}) if gate_key is not None else None
    stream = FileSystems.create(uri, mime_type="application/x-tar")
    hashing = HashingWriter(stream)
    rows, hits = [], []
    for part in parts:
        part = generalize(part, level)
        with FileSystems.open(join(out_dir, part.path), compression_type="uncompressed") as f:
            blob = f.read()
        if part.record is not None:  # the JSON member goes first, as "json" sorts first among every product's members
            data = dumps(part.record).encode("utf-8")
            blob = tar_blocks(part.key, {"json": data}) + blob
            part = dataclasses.replace(part, row={**part.row, "bytes": part.row["bytes"] + len(data)})
        hashing.write(blob)
        if scanner is not None:
            hits += [{"file": shard, "where": where, "kind": kind} for where, kind in scanner.scan_tar(
                blob + tar_trailer(len(blob)))]
        rows.append({**part.row, "shard": shard})
    hashing.write(tar_trailer(hashing.bytes))
    stream.close()
    entry = {"shard": shard, "url": shard, "product": parts[0].product, "split": parts[0].split, "samples": len(parts),
             "bytes": hashing.bytes, "sha256": hashing.sha256}
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf, compression="zstd")
    write_bytes(uri[: -len(".tar")] + ".parquet", buf.getvalue())
    write_bytes(uri[: -len(".tar")] + ".stats.json", (json.dumps(entry, sort_keys=True) + "\n").encode())
    FileSystems.delete([join(out_dir, p.path) for p in parts])
    return {"entry": entry, "rows": rows, "hits": hits, "audits": [p.audit for p in parts if p.audit],
            "linkages": [(p.key, p.linkage) for p in parts if p.linkage]}
