"""De-identify: raw samples -> samples whose header, text and ids carry no identifiers.

- DICOM headers: PS3.15 Annex E profile (``dicom.py``), then kept as a DICOM JSON dict; burned-in-text policy for
  modalities that commonly carry it (quarantine by default).
- NIfTI: only geometry fields of the header travel on; descrip/aux_file/intent_name/db_name/extensions and the
  file name are dropped, and their words join the deny-list.
- Label-table rows: patient id -> keyed pseudonym, age -> years top-coded at 90, sex/view/labels kept as codes.
- Reports: presidio with extra recognizers and a deny-list from the same study's identifiers (``text.py``).
Identifiers seen here stay in ``Sample.private`` (for the deny-list and PHI scans), which is never written.
"""
from __future__ import annotations

import re
from collections import Counter

from medcurate.schemas.records import QuarantineError, Sample
from medcurate.transforms.context import Context
from medcurate.transforms.deid.dicom import DicomDeidentifier, burned_in_risk, table, to_json
from medcurate.transforms.deid.text import TextDeidentifier

AGE_TOP_CODE = 90


def parse_age_years(text: str) -> float | None:
    """'058Y', '58', '6M', '3W' -> years; None when it is not an age."""
    m = re.fullmatch(r"\s*0*(\d{1,3})\s*([YMWD]?)\s*", str(text or "").upper())
    if not m:
        return None
    value, unit = int(m.group(1)), m.group(2) or "Y"
    years = {"Y": value, "M": value / 12, "W": value / 52.1775, "D": value / 365.25}[unit]
    return float(min(years, AGE_TOP_CODE)) if unit == "Y" else round(min(years, AGE_TOP_CODE), 3)


def _profile_summary(options: dict) -> dict:
    return {
        "profile": f"PS3.15 Table E.1-1 ({table().edition}) basic application confidentiality profile",
        "options": sorted(k for k, v in options.items() if v is True),
    }


class Deidentify:
    """Stage function; the presidio engine is built once per worker in ``setup``."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.text = TextDeidentifier()

    def setup(self):
        self.text.setup()

    def __call__(self, sample: Sample):
        recipe = self.ctx.recipe(sample.dataset)
        if sample.header is not None and hasattr(sample.header, "dir"):  # a pydicom Dataset
            yield self._dicom(sample, recipe)
        else:
            yield self._file(sample, recipe)

    def _dicom(self, sample: Sample, recipe) -> Sample:
        ds = sample.header
        meta = dict(sample.meta)
        options = {k: v for k, v in recipe.deid.items() if isinstance(v, bool)}
        if sample.kind == "image" and burned_in_risk(ds):
            if recipe.deid["burned_in_policy"] == "quarantine":
                raise QuarantineError(
                    "burned_in_text_risk",
                    "modality or SOP class commonly carries burned-in text (policy: quarantine)",
                    {"modality": str(ds.get("Modality", "") or "")[:16]},
                )
            meta["burned_in_risk"] = True
        engine = DicomDeidentifier(self.ctx.pseudo, options, recipe.patient_namespace, clean_text=self.text)
        result, ids = engine.run(ds)
        meta.update(ids)
        meta["deid"] = {
            **_profile_summary(options),
            "actions": dict(sorted(Counter(a for a, _ in result.actions.elements()).items())),
            "private_creators_removed": len(result.unknown_private_creators),
        }
        private = {"identifiers": sorted(result.identifiers)}
        return sample.replace(header=to_json(ds), meta=meta, private=private)

    def _file(self, sample: Sample, recipe) -> Sample:
        """Files (volumes, 2D images): file-name words and header text join the deny-list and are never written;
        the label-table row gives pseudonymous ids, a top-coded age and codes; reports are cleaned."""
        meta = dict(sample.meta)
        identifiers = set(sample.private.get("name_tokens", []))
        for text in sample.private.get("text", []):
            identifiers.update(t for t in re.split(r"[^A-Za-z0-9^]+", text) if len(t) >= 2)
        row = dict(sample.private.get("row", ()))
        columns = recipe.source.get("columns", {})
        raw_patient = (row.get(columns.get("patient", ""), "") or "").strip()
        if raw_patient:
            identity = "id:" + raw_patient
            identifiers.add(raw_patient)
        elif meta.get("case"):
            identity = "case:" + str(meta["case"])  # one patient per case (nnU-Net channels, TotalSegmentator)
        else:
            identity = "file:" + sample.key.digest
        meta.pop("case", None)
        meta["patient_id"] = self.ctx.pseudo.patient(recipe.patient_namespace, identity)
        study = (row.get(columns.get("study", ""), "") or "").strip()
        meta["study_id"] = "s" + self.ctx.pseudo.digest("study", recipe.id, study, length=20) if study else None
        meta["series_id"] = None
        if "age" in columns:
            meta["age_years"] = parse_age_years(row.get(columns["age"], ""))
        for field in ("sex", "view", "labels", "split"):
            if field in columns:
                meta[f"source_{field}"] = (row.get(columns[field], "") or "").strip()
        text = dict(sample.text)
        entity_counts: Counter = Counter()
        report = sample.private.get("report")
        if report is None and "report" in columns:
            report = row.get(columns["report"]) or None
        if report is not None:
            text["report"], entity_counts = self.text.clean(report, deny=identifiers)
        meta["deid"] = {
            "profile": "file name and header text dropped; label row: pseudonymous ids, top-coded age; "
                       "report: presidio + deny-list",
            "options": [],
            "text_entities": dict(sorted(entity_counts.items())),
        }
        return sample.replace(meta=meta, text=text, private={"identifiers": sorted(identifiers)})
