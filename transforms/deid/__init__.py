"""De-identify: raw samples -> samples whose header, text and ids carry no identifiers.

- DICOM headers: PS3.15 Annex E profile (``dicom.py``), then kept as a DICOM JSON dict; burned-in-text policy for
  modalities that commonly carry it (quarantine by default).
- NIfTI: only geometry fields of the header travel on; descrip/aux_file/intent_name/db_name/extensions and the
  file name are dropped, and their words join the deny-list.
- Label-table rows: patient id -> keyed pseudonym, age -> years top-coded at 90, sex/view/labels kept as codes.
- Reports: presidio with extra recognizers and a deny-list from the same study's identifiers (``text.py``).
Identifiers seen here become keyed fingerprints in ``Sample.private["gate"]`` for the release gate (``gate.py``);
no plain-text identifier leaves this stage. Each sample also gets an audit record (profile, options, edition, per-tag
action counts; no values) and, when the user asks for linkage, an AES-GCM-encrypted linkage record.
"""
from __future__ import annotations

import re
from collections import Counter

from medcurate.pipelines._version import __version__
from medcurate.schemas import vocab
from medcurate.schemas.records import QuarantineError, Sample
from medcurate.transforms.context import Context
from medcurate.transforms.deid.dicom import DicomDeidentifier, burned_in_risk, table, to_json
from medcurate.transforms.deid.gate import GateKey, common_words, fingerprints, words
from medcurate.transforms.deid.text import TextDeidentifier

AGE_TOP_CODE = 90


def _values(value) -> list:
    """A DICOM value as a list of its values (a multi-valued element, a single value, or nothing)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [str(value)]
    return [str(v) for v in value]


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
        self.gate = GateKey.from_pseudonymizer(ctx.pseudo)

    def setup(self):
        self.text.setup()

    def __call__(self, sample: Sample):
        recipe = self.ctx.recipe(sample.dataset)
        if sample.header is not None and hasattr(sample.header, "dir"):  # a pydicom Dataset
            yield self._dicom(sample, recipe)
        else:
            yield self._file(sample, recipe)

    def _finish(self, sample: Sample, meta: dict, identifiers: list, audit: dict, linkage: dict, **changes) -> Sample:
        """Identifiers leave as keyed fingerprints only; the audit record and the (encrypted) linkage record ride in
        underscore fields that only their own writers read."""
        meta["_audit"] = {"tool": f"medcurate {__version__}", **audit}
        key = self.ctx.options.get("linkage_key")
        if key is not None:
            meta["_linkage"] = encrypt_linkage(key, {"key": str(sample.key), "dataset": sample.dataset,
                                                     "source_sha256": list(sample.source_sha256), **linkage})
        recipe = self.ctx.recipe(sample.dataset)
        public = [str(v) for k, v in recipe.dataset.items() if isinstance(v, str)] + list(sample.label_names.values())
        private = {"gate": fingerprints(self.gate, identifiers, public)}
        return sample.replace(meta=meta, private=private, **changes)

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
        original = {k: str(ds.get(k, "") or "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
        if str(ds.get("Modality", "") or "").upper() == "MR":
            # The MR sequence is read from descriptions the profile removes; only the vocabulary value travels on.
            meta["mr_sequence"] = vocab.infer_mr_sequence(
                [ds.get(k) for k in ("SeriesDescription", "ProtocolName", "SequenceName")]
                + _values(ds.get("ImageType"))[2:],
                {k: ds.get(k) for k in ("ScanningSequence", "SequenceVariant", "RepetitionTime", "EchoTime",
                                        "InversionTime", "ContrastBolusAgent")})
        engine = DicomDeidentifier(self.ctx.pseudo, options, recipe.patient_namespace, clean_text=self.text)
        result, ids = engine.run(ds)
        meta.update(ids)
        summary = _profile_summary(options)
        meta["deid"] = {
            **summary,
            "actions": dict(sorted(Counter(a for a, _ in result.actions.elements()).items())),
            "private_creators_removed": len(result.unknown_private_creators),
        }
        audit = {
            "method": "dicom", **summary, "table_edition": table().edition,
            "tag_actions": {f"{a} {kw}": n for (a, kw), n in sorted(result.actions.items())},
            "private_creators": sorted(result.unknown_private_creators), "dates_unparsed": result.dates_unparsed,
        }
        linkage = {
            "patient_id": original["PatientID"], "patient_pseudonym": ids["patient_id"],
            "study_instance_uid": original["StudyInstanceUID"], "study_uid_pseudonym": str(ds.get("StudyInstanceUID", "")),
            "series_instance_uid": original["SeriesInstanceUID"],
            "series_uid_pseudonym": str(ds.get("SeriesInstanceUID", "")),
            "date_offset_days": engine.last_offset,
        }
        # Free-text attributes (descriptions, comments) stay on the deny-list but not in the gate: their words are
        # mostly clinical; the names, ids, dates and places they might repeat are collected from their own fields.
        # A removed value that only names the device's maker (some files put the vendor in Institution Name) is
        # no identifier: the profile keeps Manufacturer.
        vendor = set(words(str(ds.get("Manufacturer", "") or ""))) | set(words(str(ds.get("ManufacturerModelName", ""))))
        identifiers = [(kind, value) for value, kind in sorted(result.identifiers.items())
                       if kind != "text" and not (set(words(value)) and set(words(value)) <= vendor)]
        return self._finish(sample, meta, identifiers, audit, linkage, header=to_json(ds))

    def _file(self, sample: Sample, recipe) -> Sample:
        """Files (volumes, 2D images): file-name words and header text join the deny-list and are never written;
        the label-table row gives pseudonymous ids, a top-coded age and codes; reports are cleaned."""
        meta = dict(sample.meta)
        # File names are case ids in the MSD, nnU-Net and TotalSegmentator layouts; elsewhere (dcm2niix-style
        # names) their word pairs and numbers may identify.
        tokens = sample.private.get("name_tokens", [])
        identifiers = [("file", " ".join(tokens))] if tokens and recipe.source["adapter"] in (
            "nifti-folder", "image-csv") else []
        for text in sample.private.get("text", []):
            identifiers += [("text", t) for t in re.split(r"[^A-Za-z0-9^]+", text) if len(t) >= 2]
        row = dict(sample.private.get("row", ()))
        columns = recipe.source.get("columns", {})
        from_path = recipe.path_fields(sample.private.get("source") or "")
        raw_patient = (row.get(columns.get("patient", ""), "") or "").strip() or from_path.get("patient", "")
        if raw_patient:
            identity = "id:" + raw_patient
            identifiers.append(("id", raw_patient))
        elif meta.get("case"):
            identity = "case:" + str(meta["case"])  # one patient per case (nnU-Net channels, TotalSegmentator)
        else:
            identity = "file:" + sample.key.digest
        meta.pop("case", None)
        meta["patient_id"] = self.ctx.pseudo.patient(recipe.patient_namespace, identity)
        study = (row.get(columns.get("study", ""), "") or "").strip() or from_path.get("study", "")
        if from_path.get("study"):
            identifiers.append(("id", from_path["study"]))
        meta["study_id"] = "s" + self.ctx.pseudo.digest("study", recipe.id, study, length=20) if study else None
        meta["series_id"] = None
        if "age" in columns:
            meta["age_years"] = parse_age_years(row.get(columns["age"], ""))
        for field in ("sex", "view", "labels", "split"):
            if field in columns:
                names = columns[field] if isinstance(columns[field], list) else [columns[field]]
                meta[f"source_{field}"] = next(
                    (v for v in ((row.get(n) or "").strip() for n in names) if v), "")
        if not meta.get("source_split") and from_path.get("split"):
            meta["source_split"] = from_path["split"]
        if recipe.source.get("label_columns"):  # one column per label: values are codes (1, 0, -1, blank)
            meta["source_label_values"] = [(c, (row.get(c) or "").strip()) for c in recipe.source["label_columns"]]
        text = dict(sample.text)
        entity_counts: Counter = Counter()
        report = sample.private.get("report")
        if report is None and "report" in columns:
            report = row.get(columns["report"]) or None
        if report is not None:
            common = common_words()
            deny = [v for _, v in identifiers] + [t for t in tokens if t.lower() not in common and len(t) >= 3]
            text["report"], entity_counts, spans = self.text.clean_with_spans(report, deny=deny)
            identifiers += spans
        meta["deid"] = {
            "profile": "file name and header text dropped; label row: pseudonymous ids, top-coded age; "
                       "report: presidio + deny-list",
            "options": [],
            "text_entities": dict(sorted(entity_counts.items())),
        }
        audit = {"method": "file", "profile": meta["deid"]["profile"], "options": [],
                 "header_text_fields_dropped": len(sample.private.get("text", [])),
                 "text_entities": dict(sorted(entity_counts.items()))}
        linkage = {"source": sample.private.get("source"), "patient_id": raw_patient or None,
                   "patient_pseudonym": meta["patient_id"], "study": study or None}
        return self._finish(sample, meta, identifiers, audit, linkage, text=text)


def encrypt_linkage(key, record: dict) -> str:
    """One linkage record, AES-256-GCM under the user's linkage key, base64 (nonce + ciphertext)."""
    import base64
    import json
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    return base64.b64encode(nonce + AESGCM(key.reveal()).encrypt(nonce, data, LINKAGE_AAD)).decode("ascii")


def decrypt_linkage(key, token: str) -> dict:
    import base64
    import json

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(token)
    return json.loads(AESGCM(key.reveal()).decrypt(raw[:12], raw[12:], LINKAGE_AAD))


LINKAGE_AAD = b"medcurate-linkage-v1"
