"""Harmonize: de-identified samples -> the shared schema's fields (``schemas/sample.py``).

Only de-identified inputs are read here (the DICOM JSON header after Annex E, pseudonymous ids, cleaned text), so
nothing identifying can reach a harmonized field. Raw values are kept beside harmonized ones (``*_raw``), and a
value with no vocabulary entry stays raw, is listed in ``unmapped`` and counted.
"""
from __future__ import annotations

import numpy as np
from pydicom.datadict import tag_for_keyword

from medcurate.pipelines._version import __version__
from medcurate.schemas import vocab
from medcurate.schemas.records import Sample
from medcurate.schemas.sample import SCHEMA_VERSION
from medcurate.transforms.common import counter
from medcurate.transforms.context import Context
from medcurate.transforms.deid import parse_age_years
from medcurate.transforms.deid.dicom import parse_date


def header_value(header, keyword: str):
    """First value of a keyword in a DICOM JSON dict (or None)."""
    if not isinstance(header, dict):
        return None
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    elem = header.get(f"{tag:08X}")
    if not elem or not elem.get("Value"):
        return None
    value = elem["Value"][0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


def spacing_of(affine: np.ndarray) -> list:
    return [float(round(v, 6)) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def orientation_of(affine: np.ndarray) -> str:
    """Axis codes in LPS terms: for each index axis, the world direction it points to most (e.g. 'LPS', 'RAS')."""
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    out = []
    for axis in range(3):
        v = affine[:3, axis]
        world = int(np.argmax(np.abs(v)))
        out.append(letters[world][1 if v[world] > 0 else 0])
    return "".join(out)


def geometry(image: np.ndarray, affine, unit: str, pixel_spacing=None) -> dict:
    geo = {"shape": [int(s) for s in image.shape], "dtype": str(image.dtype), "intensity_unit": unit}
    if affine is not None:
        geo.update(
            spacing_mm=spacing_of(affine),
            affine=[float(round(v, 6)) for v in np.asarray(affine).ravel()],
            orientation=orientation_of(affine),
        )
    elif pixel_spacing:
        geo["spacing_mm"] = [float(v) for v in pixel_spacing]
    return geo


VOCABULARIES = ("modality", "body_part", "view", "mr_sequence", "findings", "structures")


def study_day(header) -> int | None:
    """The (de-identified, shifted) study date as days since 1970-01-01, or None."""
    import datetime as dt

    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        day = parse_date(header_value(header, keyword))
        if day is not None:
            return (day - dt.date(1970, 1, 1)).days
    return None


OFFICIAL_SPLITS = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                   "validation": "val", "dev": "val", "test": "test", "testing": "test", "ts": "test"}


def official_split(raw) -> str | None:
    return OFFICIAL_SPLITS.get(str(raw or "").strip().lower())


def assign_split(patient_id: str, ctx: Context) -> str:
    """Deterministic patient-level split: every sample of a patient lands in the same split, on any worker."""
    u = ctx.pseudo.unit_interval("split", patient_id)
    edge = 0.0
    for name, ratio in ctx.split_ratios:
        edge += ratio
        if u < edge:
            return name
    return ctx.split_ratios[-1][0]


def harmonize_labels(raw: str, space_name: str, separator: str) -> tuple[dict, list]:
    """'Effusion|Mass' -> ({finding: 1|0|-1}, unmapped source labels). Findings outside the space stay unknown."""
    space = vocab.label_space(space_name)
    findings = vocab.load("findings")["findings"]
    mapped = set(space["map"].values())
    labels = {f: (0 if f in mapped else -1) for f in findings}
    unmapped = []
    parts = [p.strip() for p in (raw or "").split(separator) if p.strip()]
    if not parts:
        return {f: -1 for f in findings}, []
    for part in parts:
        if part == space.get("none"):
            continue
        target = space["map"].get(part)
        if target is None:
            unmapped.append(part)
        else:
            labels[target] = 1
    return labels, unmapped


LABEL_CODES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": "uncertain", "-1.0": "uncertain", "": None}
UNCERTAIN = {"unknown": -1, "positive": 1, "negative": 0}


def harmonize_label_columns(values: list, space_name: str, uncertain: str = "unknown") -> tuple[dict, list, str]:
    """One column per label (CheXpert, MIMIC-CXR): [(column, raw value)] -> ({finding: 1|0|-1}, unmapped, raw).

    1 is positive, 0 negative, blank not mentioned (unknown), -1 uncertain: unknown by default (U-Ignore), or
    positive / negative as the recipe's ``uncertain_labels`` says (U-Ones / U-Zeros, Irvin et al. 2019). The
    space's ``none`` column (``No Finding``) = 1 makes every finding it covers that is not mentioned negative,
    as torchxrayvision does. The raw values are returned as ``column=value|...`` (blank columns left out; a value
    that is no label code shows as ``?``), so the uncertain ones stay visible whatever the policy.
    """
    space = vocab.label_space(space_name)
    labels = {f: -1 for f in vocab.load("findings")["findings"]}
    unmapped, healthy, uncertain_findings = [], False, set()
    for column, raw in values:
        if raw.strip() not in LABEL_CODES:  # not echoed: a free-text cell could hold anything
            unmapped.append(f"{column}=<not 1, 0, -1 or blank>")
            continue
        code = LABEL_CODES[raw.strip()]
        if column == space.get("none"):
            healthy = code == 1
            continue
        target = space["map"].get(column)
        if target is None:
            unmapped.append(column)
        elif code == "uncertain":
            labels[target] = UNCERTAIN[uncertain]
            uncertain_findings.add(target)
        elif code is not None:
            labels[target] = code
    if healthy:  # "No Finding": what it covers and the row does not mention is negative
        covered = set(space["map"].values()) - set(space.get("none_excludes", [])) - uncertain_findings
        labels.update({f: 0 for f in covered if labels[f] == -1})
    raw = "|".join(f"{c}={v.strip() if v.strip() in LABEL_CODES else '?'}" for c, v in values if v.strip())
    return labels, unmapped, raw


class Harmonize:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def setup(self):
        self._unmapped = counter("harmonize", "unmapped_values")

    def __call__(self, sample: Sample):
        recipe = self.ctx.recipe(sample.dataset)
        meta = dict(sample.meta)
        header = sample.header if isinstance(sample.header, dict) else None
        defaults = recipe.defaults
        unmapped = {}

        modality_raw = header_value(header, "Modality") or defaults.get("modality")
        modality = vocab.lookup("modality", modality_raw)
        body_raw = header_value(header, "BodyPartExamined") or defaults.get("body_part")
        body_part = vocab.lookup("body_part", body_raw)
        view_raw = header_value(header, "ViewPosition") or meta.pop("source_view", None) or defaults.get("view")
        view = vocab.lookup("view", view_raw) if sample.kind == "image" else "AXIAL"
        for field, raw, value in (("modality", modality_raw, modality), ("body_part", body_raw, body_part),
                                  ("view", view_raw if sample.kind == "image" else None, view)):
            if raw and value is None:
                unmapped[field] = str(raw)[:64]

        mr_sequence = meta.pop("mr_sequence", None)
        if modality == "MR" and mr_sequence is None:
            mr_sequence = vocab.infer_mr_sequence([meta.get("channel")])  # MSD / nnU-Net channel names
        if modality != "MR":
            mr_sequence = None

        sex_raw = header_value(header, "PatientSex") or meta.pop("source_sex", None)
        sex = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}.get(vocab.normalize(sex_raw))
        age = meta.pop("age_years", None)
        if age is None:
            age = parse_age_years(header_value(header, "PatientAge"))

        labels, label_raw, unmapped_labels = None, meta.pop("source_labels", None), []
        label_values = meta.pop("source_label_values", None)
        space = recipe.source.get("label_vocabulary")
        if label_values is not None and space:
            labels, unmapped_labels, label_raw = harmonize_label_columns(
                label_values, space, recipe.source.get("uncertain_labels", "unknown"))
        elif label_raw is not None and space:
            labels, unmapped_labels = harmonize_labels(label_raw, space, recipe.source.get("label_separator", "|"))
        if unmapped_labels:
            unmapped["labels"] = "|".join(sorted(unmapped_labels))[:256]
        label_names, structures, structures_raw = sample.label_names, [], []
        if sample.label is not None:
            present = {int(v): sample.label_names.get(int(v), f"label_{int(v)}") for v in np.unique(sample.label) if v}
            label_names, unmapped_structures = vocab.structure_names({**sample.label_names, **present})
            structures = sorted({label_names[v] for v in present})
            structures_raw = sorted(set(present.values()))
            unmapped_structures = sorted(set(unmapped_structures) & set(present.values()))
            if unmapped_structures:
                unmapped["structures"] = "|".join(unmapped_structures)[:256]

        if meta.get("intensity_unit"):
            unit = str(meta.pop("intensity_unit"))  # from the reader, e.g. an RT dose grid in GY
        elif modality == "CT" and sample.kind == "volume":
            unit = "HU"
        else:
            unit = "a.u."
        raw_split = meta.pop("source_split", None)
        official = official_split(raw_split)
        if raw_split and official is None:
            unmapped["split"] = str(raw_split)[:32]
        split = official or assign_split(meta["patient_id"], self.ctx)
        fold = int(self.ctx.pseudo.unit_interval("fold", meta["patient_id"]) * self.ctx.folds)
        # Release-level facts, not catalog fields: the shifted study day (for the patient's relative day offsets)
        # and the site where the recipe retains institution identity (a quasi-identifier for the risk report).
        meta["study_day"] = study_day(header)
        meta["site"] = (str(header_value(header, "InstitutionName") or "") or None) if (
            recipe.deid.get("retain_institution_identity")) else None
        self._unmapped.inc(len(unmapped))
        meta.update(
            schema_version=SCHEMA_VERSION,
            key=str(sample.key),
            dataset=sample.dataset,
            dataset_name=recipe.dataset.get("name", recipe.id),
            kind=sample.kind,
            modality=modality,
            modality_raw=str(modality_raw)[:64] if modality_raw else None,
            body_part=body_part,
            body_part_raw=str(body_raw)[:64] if body_raw else None,
            body_part_code=vocab.code("body_part", body_part),
            view=view,
            view_raw=str(view_raw)[:64] if view_raw and sample.kind == "image" else None,
            mr_sequence=mr_sequence,
            mr_sequence_code=vocab.code("mr_sequence", mr_sequence),
            sex=sex,
            age_years=age,
            labels=labels,
            labels_raw=label_raw,
            structures=structures,
            structures_raw=structures_raw,
            split=split,
            split_source="official" if official else "patient-hash",
            fold=fold,
            access_tier=recipe.dataset.get("access"),
            license=recipe.dataset["license"],
            redistributable=bool(recipe.dataset.get("redistributable", False)),
            original=geometry(sample.image, sample.affine, unit, meta.get("pixel_spacing_mm")),
            recipe_sha256=recipe.sha256,
            pipeline_version=__version__,
            vocabularies={n: vocab.version(n) for n in VOCABULARIES},
            unmapped=unmapped,
        )
        yield sample.replace(meta=meta, label_names=label_names)
