"""Dataset recipes: one YAML file per dataset, validated against a JSON Schema.

Validation messages name the field (``source.labels_csv``) and say how to fix it. ``root`` and other paths are
relative to the recipe file unless absolute or a URL (gs://, s3://). See docs/recipes.md and recipes/*.yaml.
"""
from __future__ import annotations

import copy
import hashlib
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

from medcurate.schemas.records import DATASET_ID_RE

ADAPTERS = ("dicom-folder", "nifti-folder", "msd", "nnunet", "totalsegmentator", "image-csv")
MODALITY_HINT = "a modality code such as CT, MR, XR, PT, NM, US, MG"
_NUM = {"type": "number", "exclusiveMinimum": 0}

DEID_OPTIONS = {
    "retain_long_full_dates": False,
    "retain_long_modified_dates": True,
    "retain_patient_characteristics": True,
    "retain_device_identity": False,
    "retain_institution_identity": False,
    "retain_uids": False,
    "retain_safe_private": False,
    "clean_descriptors": False,
    "clean_structured_content": False,
    "clean_graphics": False,
}
BURNED_IN_POLICIES = ("quarantine", "keep-flagged")
ACCESS_TIERS = ("open", "registration", "application", "dua")
TASKS = ("classification", "segmentation", "detection", "registration", "report", "caption", "vqa", "regression",
         "survival", "reconstruction")
ANNOTATION_SOURCES = ("expert", "text-mined", "model", "llm", "crowd", "mixed", "none")

DEFAULT_DRR_VIEWS = [
    {"name": "ap", "projection": "parallel", "direction": "ap"},
    {"name": "lateral", "projection": "parallel", "direction": "lateral"},
]

VIEW_SCHEMA = {
    "type": "object",
    "required": ["name", "projection", "direction"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "projection": {"enum": ["parallel", "cone"]},
        "direction": {"enum": ["ap", "pa", "lateral"]},
        "angle_deg": {"type": "number"},
        "angles_deg": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        "sid_mm": _NUM,
        "sdd_mm": _NUM,
        "rows": {"type": "integer", "minimum": 8, "maximum": 4096},
        "cols": {"type": "integer", "minimum": 8, "maximum": 4096},
        "pixel_mm": _NUM,
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["dataset", "source"],
    "additionalProperties": False,
    "properties": {
        "dataset": {
            "type": "object",
            "required": ["id", "license"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": DATASET_ID_RE.pattern},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "citation": {"type": "string"},
                "homepage": {"type": "string"},
                "version": {"type": "string"},
                "license": {"type": "string", "pattern": r"^(LicenseRef-[A-Za-z0-9.-]+|[A-Za-z0-9][A-Za-z0-9.+-]*)$"},
                "redistributable": {"type": "boolean"},
                "access": {"enum": list(ACCESS_TIERS)},
                "tasks": {"type": "array", "items": {"enum": list(TASKS)}, "uniqueItems": True},
                "annotation_source": {"enum": list(ANNOTATION_SOURCES)},
                "modalities": {"type": "array", "items": {"type": "string"}},
                "anatomy": {"type": "array", "items": {"type": "string"}},
                "patient_namespace": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
            },
        },
        "source": {
            "type": "object",
            "required": ["adapter", "root"],
            "properties": {
                "adapter": {"enum": list(ADAPTERS)},
                "root": {"type": "string", "minLength": 1},
                "pattern": {"type": "string"},
                "images": {"type": "string"},
                "labels": {"type": "string"},
                "structures_csv": {"type": "string"},
                "labels_csv": {"anyOf": [{"type": "string"},
                                         {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                "labels_json": {"type": "string"},
                "csv_delimiter": {"type": "string", "minLength": 1, "maxLength": 1},
                "dataset_json": {"type": "string"},
                "label_separator": {"type": "string", "minLength": 1},
                "columns": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        **{k: {"type": "string"}
                           for k in ("image", "labels", "patient", "age", "sex", "study", "split", "report")},
                        # several columns: the first non-blank one (CheXpert: AP/PA, else Frontal/Lateral)
                        "view": {"anyOf": [{"type": "string"},
                                           {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                    },
                },
                "reports": {"type": "string"},
                "label_vocabulary": {"type": "string"},
                "label_columns": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                                  "uniqueItems": True},
                "uncertain_labels": {"enum": ["unknown", "positive", "negative"]},
                "match_rows_on": {"enum": ["image", "study"]},
                "path_fields": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {k: {"type": "string", "minLength": 1} for k in ("patient", "study", "split")},
                },
            },
            "additionalProperties": False,
            "allOf": [
                {
                    "if": {"properties": {"adapter": {"const": "image-csv"}}},
                    "then": {"required": ["images", "columns"],
                             "anyOf": [{"required": ["labels_csv"]}, {"required": ["labels_json"]}]},
                },
                {"if": {"properties": {"adapter": {"const": "nifti-folder"}}}, "then": {"required": ["images"]}},
                {"if": {"anyOf": [{"required": ["labels_csv"]}, {"required": ["labels_json"]}]},
                 "then": {"required": ["columns"]}},
                {"if": {"properties": {"match_rows_on": {"const": "study"}}, "required": ["match_rows_on"]},
                 "then": {"required": ["columns", "path_fields"],
                          "properties": {"columns": {"required": ["study"]}, "path_fields": {"required": ["study"]}}},
                 "else": {"properties": {"columns": {"required": ["image"]}}}},
                {"if": {"required": ["label_columns"]},
                 "then": {"required": ["label_vocabulary"], "anyOf": [{"required": ["labels_csv"]},
                                                                      {"required": ["labels_json"]}]}},
            ],
        },
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "modality": {"type": "string", "pattern": "^[A-Z]{2,8}$"},
                "body_part": {"type": "string"},
                "view": {"type": "string"},
                "pixel_spacing_mm": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
            },
        },
        "deid": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **{k: {"type": "boolean"} for k in DEID_OPTIONS},
                "burned_in_policy": {"enum": list(BURNED_IN_POLICIES)},
            },
        },
        "processing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_file_bytes": {"type": "integer", "minimum": 1},
                "split_4d": {"enum": [False, "channels", "time"]},
                "dicom": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "uneven_spacing": {"enum": ["quarantine", "interpolate"]},
                        "spacing_tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                    },
                },
                "resample": {
                    "oneOf": [
                        {"const": False},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "spacing_mm": {"type": "array", "items": _NUM, "minItems": 3, "maxItems": 3},
                                "size": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                         "minItems": 3, "maxItems": 3},
                            },
                        },
                    ]
                },
                "drr": {
                    "oneOf": [
                        {"const": False},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "views": {"type": "array", "items": VIEW_SCHEMA, "minItems": 1},
                                "hu_mapping": {"type": "string"},
                                "display_bits": {"enum": [8, 16]},
                                "label_mode": {"enum": ["binary", "path_length"]},
                            },
                        },
                    ]
                },
            },
        },
    },
}

# Field-specific fixes appended to validation messages.
HINTS = {
    "dataset.id": "use lowercase letters, digits and hyphens, e.g. 'nih-chestxray14'",
    "dataset.license": "set an SPDX identifier such as CC-BY-4.0, CC0-1.0, or LicenseRef-<name>",
    "source.adapter": "one of " + ", ".join(ADAPTERS),
    "source.root": "the dataset folder, relative to the recipe file or an absolute path / gs:// / s3:// URL",
    "source.images": "a glob relative to root, e.g. 'images/*.png' or 'imagesTr/*.nii.gz'",
    "source.labels_csv": "the label table(s), relative to root, e.g. 'Data_Entry_2017.csv' or [train.csv, valid.csv]",
    "source.labels_json": "a JSON list of records, or an object keyed by image name",
    "source.columns": "map 'image' (required), 'labels', 'patient', 'view', 'age', 'sex' to CSV column names",
    "source.label_columns": "the table's label columns, one per label (CheXpert style: 1, 0, -1 or blank)",
    "source.label_vocabulary": "a label space of schemas/vocab/findings.yaml, e.g. chestxray14 or chexpert",
    "source.uncertain_labels": "unknown (U-Ignore, default), positive (U-Ones) or negative (U-Zeros)",
    "source.match_rows_on": "image (default: a row per file) or study (a row per study, as MIMIC-CXR's chexpert.csv)",
    "source.columns.study": "the table's study column (needed with match_rows_on: study)",
    "source.path_fields": "regexes with one group over the file's path under root, e.g. patient: '(patient\\d+)/'",
    "defaults.modality": MODALITY_HINT,
    "processing.resample.spacing_mm": "three positive numbers in mm, e.g. [1.5, 1.5, 1.5]",
}


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the field and the fix."""


def _field_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        path = f"{path}.{missing}" if path else missing
    if error.validator == "additionalProperties":
        extra = error.message.split("'")[1] if "'" in error.message else ""
        path = f"{path}.{extra}" if path else extra
    return path or "<recipe>"


def _hint(path: str) -> str:
    for key in sorted(HINTS, key=len, reverse=True):
        if path == key or path.startswith(key + "."):
            return HINTS[key]
    return ""


def validate(doc: Any, where: str = "recipe") -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path), e.message))
    if not errors:
        return
    lines = []
    for e in errors:
        path = _field_path(e)
        if e.validator == "additionalProperties":
            msg = "unknown field"
        elif e.validator == "required":
            msg = "required field is missing"
        else:
            msg = e.message
        hint = _hint(path)
        lines.append(f"  {path}: {msg}" + (f" (fix: {hint})" if hint else ""))
    raise RecipeError(f"{where} is not a valid recipe:\n" + "\n".join(lines))


def _resolve(base_dir: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    if "://" in base_dir:
        return posixpath.normpath(posixpath.join(base_dir, path))
    return os.path.normpath(os.path.join(base_dir, path))


@dataclass(frozen=True)
class Recipe:
    id: str
    dataset: dict
    source: dict
    defaults: dict
    deid: dict
    processing: dict
    sha256: str
    root: str = field(repr=False)  # may hold identifying folder names: not printed, never written

    @property
    def patient_namespace(self) -> str:
        return self.dataset.get("patient_namespace", self.id)

    @property
    def max_file_bytes(self) -> int:
        return int(self.processing.get("max_file_bytes", 2 * 1024**3))

    @property
    def resample(self) -> dict | None:
        value = self.processing.get("resample", {"spacing_mm": [1.5, 1.5, 1.5]})
        if value is False:
            return None
        return {"spacing_mm": [1.5, 1.5, 1.5], **value}

    @property
    def drr(self) -> dict | None:
        value = self.processing.get("drr", {})
        if value is False:
            return None
        return {
            "views": DEFAULT_DRR_VIEWS,
            "hu_mapping": "water-linear-v1",
            "display_bits": 8,
            "label_mode": "binary",
            **value,
        }

    def path(self, relative: str) -> str:
        return _resolve(self.root, relative)

    def path_fields(self, relative: str) -> dict:
        """``source.path_fields`` regexes over a file's path under root -> {field: first group} (CheXpert keeps the
        patient, study and split in folder names: train/patient00001/study1/view1_frontal.jpg)."""
        out = {}
        for name, pattern in (self.source.get("path_fields") or {}).items():
            m = re.search(pattern, relative)
            if m and m.group(1):
                out[name] = m.group(1)
        return out

    def public(self) -> dict:
        """The recipe as it may appear in outputs: no source paths."""
        return {
            "dataset": self.dataset,
            "defaults": self.defaults,
            "deid": self.deid,
            "processing": self.processing,
            "adapter": self.source["adapter"],
            "sha256": self.sha256,
        }


def from_dict(doc: dict, base_dir: str, text: str | None = None, where: str = "recipe") -> Recipe:
    validate(doc, where)
    doc = copy.deepcopy(doc)
    text = text if text is not None else yaml.safe_dump(doc, sort_keys=True)
    deid = {**DEID_OPTIONS, "burned_in_policy": "quarantine", **doc.get("deid", {})}
    if deid["retain_long_full_dates"] and deid["retain_long_modified_dates"]:
        raise RecipeError(
            f"{where} is not a valid recipe:\n  deid.retain_long_full_dates: cannot be combined with "
            "retain_long_modified_dates (fix: set one of them to false)"
        )
    _check_source(doc["source"], where)
    return Recipe(
        id=doc["dataset"]["id"],
        dataset=doc["dataset"],
        source=doc["source"],
        defaults=doc.get("defaults", {}),
        deid=deid,
        processing=doc.get("processing", {}),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        root=_resolve(base_dir, doc["source"]["root"]),
    )


def _check_source(src: dict, where: str) -> None:
    """What JSON Schema cannot say: the label space exists, path_fields are regexes with one group."""
    from medcurate.schemas import vocab

    problems = []
    spaces = vocab.load("findings")["label_spaces"]
    if src.get("label_vocabulary") and src["label_vocabulary"] not in spaces:
        problems.append(f"  source.label_vocabulary: unknown label space {src['label_vocabulary']!r} "
                        f"(fix: one of {', '.join(sorted(spaces))}, or add one to schemas/vocab/findings.yaml)")
    for name, pattern in (src.get("path_fields") or {}).items():
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            problems.append(f"  source.path_fields.{name}: not a regular expression ({exc})")
            continue
        if groups != 1:
            problems.append(f"  source.path_fields.{name}: needs exactly one capture group, has {groups}")
    if problems:
        raise RecipeError(f"{where} is not a valid recipe:\n" + "\n".join(problems))


def load(path: str) -> Recipe:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        text = f.read().decode("utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{os.path.basename(path)} is not valid YAML: {exc}") from None
    base_dir = posixpath.dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path))
    return from_dict(doc, base_dir, text=text, where=os.path.basename(path))
