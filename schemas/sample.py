"""The shared sample schema (one catalog row per shard sample) as a pyarrow schema.

Versioning: ``SCHEMA_VERSION`` is in every row and every JSON record. Adding a nullable field is a minor version
bump and never breaks readers (they select the columns they know); renaming, removing or changing a field's type
is a major bump. See docs/schema.md for the field table.
"""
from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "1.2"  # 1.1: fold, mr_sequence, age_band, day_offset, regions, caption_seed, access_tier;
#                         1.2: structures_raw, regions.members (composite regions), harmonized structure names

_str = pa.string()
# A labelled region of a sample: which structure, its value in the sample's label member, its bounding box in
# array indices ([start, stop) per axis of the stored array), and its size in voxels or pixels.
REGION = pa.struct([
    pa.field("structure", _str),
    pa.field("mask", _str),  # the member holding it: "seg.npy" (value = label value, or the map's index for DRRs)
    pa.field("value", pa.int32()),
    pa.field("bbox", pa.list_(pa.int32())),
    pa.field("size", pa.int64()),
    pa.field("members", pa.list_(_str)),  # a composite (BraTS whole tumour, tumour core): its member structures
])
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("schema_version", _str, nullable=False),
        pa.field("key", _str, nullable=False),
        pa.field("parent_key", _str),
        pa.field("product", _str, nullable=False),
        pa.field("dataset", _str, nullable=False),
        pa.field("dataset_name", _str),
        pa.field("kind", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("study_id", _str),
        pa.field("series_id", _str),
        pa.field("split", _str, nullable=False),
        pa.field("split_source", _str),
        pa.field("fold", pa.int8()),
        pa.field("modality", _str),
        pa.field("modality_raw", _str),
        pa.field("body_part", _str),
        pa.field("body_part_raw", _str),
        pa.field("body_part_code", _str),
        pa.field("view", _str),
        pa.field("view_raw", _str),
        pa.field("mr_sequence", _str),
        pa.field("mr_sequence_code", _str),
        pa.field("sex", _str),
        pa.field("age_years", pa.float64()),
        pa.field("age_band", _str),
        pa.field("day_offset", pa.int32()),
        pa.field("day_offset_band", _str),
        pa.field("findings", pa.list_(_str)),
        pa.field("labels", pa.map_(_str, pa.int8())),
        pa.field("labels_raw", _str),
        pa.field("structures", pa.list_(_str)),
        pa.field("structures_raw", pa.list_(_str)),
        pa.field("regions", pa.list_(REGION)),
        pa.field("shape", pa.list_(pa.int32())),
        pa.field("spacing_mm", pa.list_(pa.float64())),
        pa.field("orientation", _str),
        pa.field("affine", pa.list_(pa.float64())),
        pa.field("dtype", _str),
        pa.field("intensity_unit", _str),
        pa.field("resampling", _str),
        pa.field("original_shape", pa.list_(pa.int32())),
        pa.field("original_spacing_mm", pa.list_(pa.float64())),
        pa.field("derivation", _str),
        pa.field("caption", _str),
        pa.field("caption_kind", _str),
        pa.field("caption_model", _str),
        pa.field("caption_prompt_id", _str),
        pa.field("caption_seed", pa.int64()),
        pa.field("license", _str, nullable=False),
        pa.field("redistributable", pa.bool_(), nullable=False),
        pa.field("access_tier", _str),
        pa.field("source_sha256", pa.list_(_str), nullable=False),
        pa.field("source_units", pa.int32(), nullable=False),
        pa.field("recipe_sha256", _str, nullable=False),
        pa.field("pipeline_version", _str, nullable=False),
        pa.field("unmapped", pa.list_(_str)),
        pa.field("shard", _str, nullable=False),
        pa.field("members", pa.list_(_str), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
    ],
    metadata={"medcurate_schema_version": SCHEMA_VERSION},
)

SHARD_INDEX_SCHEMA = pa.schema(
    [
        pa.field("shard", _str, nullable=False),  # URL of the shard relative to the output folder
        pa.field("url", _str, nullable=False),  # the same, as the URL a training job opens (absolute when known)
        pa.field("product", _str, nullable=False),
        pa.field("split", _str, nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", _str, nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", _str, nullable=False),
        pa.field("stage", _str, nullable=False),
        pa.field("reason", _str, nullable=False),
        pa.field("message", _str, nullable=False),
        pa.field("key", _str),
        pa.field("units", pa.int64(), nullable=False),
        pa.field("source_sha256", pa.list_(_str), nullable=False),
        pa.field("detail", _str),
    ]
)


AUDIT_SCHEMA = pa.schema(
    [
        pa.field("key", _str, nullable=False),
        pa.field("dataset", _str, nullable=False),
        pa.field("source_sha256", pa.list_(_str)),
        pa.field("method", _str),
        pa.field("profile", _str),
        pa.field("table_edition", _str),
        pa.field("options", pa.list_(_str)),
        pa.field("tool", _str),
        pa.field("tag_actions", pa.map_(_str, pa.int64())),
        pa.field("private_creators", pa.list_(_str)),
        pa.field("text_entities", pa.map_(_str, pa.int64())),
        pa.field("dates_unparsed", pa.int64()),
        pa.field("header_text_fields_dropped", pa.int64()),
    ]
)


# One row per dataset of a release (catalog/datasets.parquet): its card plus what this release holds of it.
DATASET_SCHEMA = pa.schema(
    [
        pa.field("schema_version", _str, nullable=False),
        pa.field("id", _str, nullable=False),
        pa.field("name", _str),
        pa.field("description", _str),
        pa.field("citation", _str),
        pa.field("homepage", _str),
        pa.field("version", _str),
        pa.field("license", _str, nullable=False),
        pa.field("redistributable", pa.bool_(), nullable=False),
        pa.field("access_tier", _str),  # open | registration | application | dua
        pa.field("modalities", pa.list_(_str)),
        pa.field("anatomy", pa.list_(_str)),
        pa.field("tasks", pa.list_(_str)),  # classification, segmentation, detection, report, caption, ...
        pa.field("label_space", _str),
        pa.field("labels", pa.list_(pa.struct([pa.field("name", _str), pa.field("code", _str)]))),
        pa.field("annotation_source", _str),  # expert | text-mined | model | llm | crowd | mixed
        pa.field("samples_per_split", pa.map_(_str, pa.int64())),
        pa.field("patients", pa.int64()),
        pa.field("recipe_sha256", _str),
    ],
    metadata={"medcurate_schema_version": SCHEMA_VERSION},
)


class SchemaViolation(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def validate_row(row: dict, schema: pa.Schema = CATALOG_SCHEMA) -> None:
    """Raise SchemaViolation naming the first field that does not fit the schema."""
    extra = set(row) - set(schema.names)
    if extra:
        raise SchemaViolation(sorted(extra)[0], "field not in the schema")
    for f in schema:
        value = row.get(f.name)
        if value is None:
            if not f.nullable:
                raise SchemaViolation(f.name, "required field is missing")
            continue
        try:
            pa.array([value], type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise SchemaViolation(f.name, f"value does not fit type {f.type} ({type(exc).__name__})") from None


def rows_to_table(rows: list[dict], schema: pa.Schema = CATALOG_SCHEMA) -> pa.Table:
    if not rows:
        return schema.empty_table()
    return pa.Table.from_pylist(rows, schema=schema)


def dumps(obj) -> str:
    """Canonical JSON: sorted keys, no NaN, compact; the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
