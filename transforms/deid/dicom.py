"""DICOM de-identification per PS3.15 Annex E, Table E.1-1 (edition recorded in the data file).

Every row of the table is a rule (``schemas/data/ps3.15-table-e1-1-<edition>.json``). How an action is chosen:

1. Options switched on in the recipe override the basic profile where their column has a code; ``K`` (keep) from
   any enabled option wins over ``C`` (clean), which wins over the basic action.
2. Combined basic codes depend on the IOD's type 1/2/3 requirement, which a generic engine does not know. They are
   resolved to the variant that keeps the object valid, since each removes the original value equally:
   ``X/Z -> Z``, ``X/D, X/Z/D, Z/D -> D``, ``X/Z/U* -> U*`` (keep the sequence, remap the UIDs inside it).
3. Actions: ``X`` remove; ``Z`` empty value; ``D`` dummy value of the VR (Patient ID gets the keyed patient
   pseudonym); ``U`` UID -> ``2.25.<HMAC>`` (UIDs defined by DICOM itself, 1.2.840.10008.*, are kept); ``K`` keep;
   ``C`` clean: dates and date-times shift by the per-patient offset, free text goes through the text cleaner,
   sequences are cleaned item by item, anything else is emptied.
4. Attributes not in the table are kept; private attributes (odd groups) are removed unless Retain Safe Private is
   on and the tag is in PS3.15 Table E.3.10-1 (``schemas/data/ps3.15-table-e3-10-1-2025b.json``: group, creator,
   element), whose private creator elements are then kept too; a kept private date (DA/DT) shifts with the patient's
   dates. Group lengths are removed. Sequences that stay are processed recursively.
Times (TM) are kept under Modified Dates: with the dates shifted they no longer identify a day.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
import os
from typing import Callable, Optional

from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from medcurate.pipelines._version import __version__
from medcurate.schemas import DATA_DIR
from medcurate.transforms.pseudonym import Pseudonymizer

TABLE_FILE = "ps3.15-table-e1-1-2024b.json"
OPTION_ORDER = (
    "retain_safe_private", "retain_uids", "retain_device_identity", "retain_institution_identity",
    "retain_patient_characteristics", "retain_long_full_dates", "retain_long_modified_dates",
    "clean_descriptors", "clean_structured_content", "clean_graphics",
)
COMBINED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U*"}
# PS3.16 CID 7050 "De-identification Method"
CID_7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN", "AE", "CS"}
DUMMY = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0", "DT": "19000101000000",
    "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED", "SH": "ANONYMIZED",
    "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UT": "ANONYMIZED", "UR": "",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0,
}
SAFE_PRIVATE_FILE = "ps3.15-table-e3-10-1-2025b.json"
DICOM_ROOT = "1.2.840.10008."
BURNED_IN_MODALITIES = {"US", "SC", "XA", "OT", "ES", "XC", "DOC", "GM", "SM", "OP"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
AGE_TOP_CODE = 90


@dataclass(frozen=True)
class Rule:
    tag: str
    name: str
    basic: str
    options: tuple  # ((option, code), ...)

    def resolve(self, enabled: dict) -> str:
        codes = {code for option, code in self.options if enabled.get(option)}
        if "K" in codes:
            return "K"
        if "C" in codes:
            return "C"
        return COMBINED.get(self.basic, self.basic)


class ProfileTable:
    """Table E.1-1 as rules keyed by tag, with the repeating-group and private rows matched by mask."""

    def __init__(self, doc: dict):
        self.edition = doc["edition"]
        self.source = doc["source"]
        self.rows = doc["rows"]
        self.exact: dict[int, Rule] = {}
        self.masked: list[tuple[int, int, Rule]] = []
        self.private: Optional[Rule] = None
        for row in self.rows:
            rule = Rule(row["tag"], row["name"], row["basic"], tuple(sorted(row.get("options", {}).items())))
            if row.get("match") == "private":
                self.private = rule
                continue
            group, element = row["tag"].split(",")
            if "X" in group.upper() or "X" in element.upper():
                mask = int("".join("0" if c in "xX" else "F" for c in group + element), 16)
                value = int("".join("0" if c in "xX" else c for c in group + element), 16)
                self.masked.append((mask, value, rule))
            else:
                self.exact[int(group + element, 16)] = rule

    def lookup(self, tag: BaseTag) -> Optional[Rule]:
        if tag.is_private:
            return self.private
        rule = self.exact.get(int(tag))
        if rule is not None:
            return rule
        for mask, value, masked_rule in self.masked:
            if int(tag) & mask == value and tag.group % 2 == 0:
                return masked_rule
        return None


_TABLE: Optional[ProfileTable] = None
_SAFE: Optional[frozenset] = None


def safe_private() -> frozenset:
    """(group, creator, element low byte) of PS3.15 Table E.3.10-1 Safe Private Attributes."""
    global _SAFE  # a read-only cache of a packaged data file, identical on every worker
    if _SAFE is None:
        with open(os.path.join(DATA_DIR, SAFE_PRIVATE_FILE), encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        _SAFE = frozenset((int(r["group"], 16), r["creator"].strip(), int(r["element"][2:], 16)) for r in rows)
    return _SAFE


def table() -> ProfileTable:
    global _TABLE  # a read-only cache of a packaged data file, identical on every worker
    if _TABLE is None:
        with open(os.path.join(DATA_DIR, TABLE_FILE), encoding="utf-8") as f:
            _TABLE = ProfileTable(json.load(f))
    return _TABLE


@dataclass
class DeidResult:
    actions: Counter = field(default_factory=Counter)  # (action, keyword) -> count; never values
    identifiers: dict = field(default_factory=dict)  # removed value -> kind: deny-list and release gate; never written
    unknown_private_creators: set = field(default_factory=set)
    dates_unparsed: int = 0


def parse_date(value) -> Optional[dt.date]:
    """The date of a DA value, or the date part of a DT value (YYYYMMDD...), or None."""
    value = str(value or "").strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def shift_date(value: str, days: int) -> Optional[str]:
    day = parse_date(value)
    if day is None:
        return None
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d") + value.strip()[8:]


def top_code_age(value: str) -> str:
    value = value.strip()
    if len(value) == 4 and value[:3].isdigit() and value[3] == "Y" and int(value[:3]) >= AGE_TOP_CODE:
        return f"{AGE_TOP_CODE:03d}Y"
    return value


def _values(elem: DataElement) -> list:
    if elem.VM == 0 or elem.value is None:
        return []
    return list(elem.value) if elem.VM > 1 else [elem.value]


def identifier_kind(elem: DataElement) -> str:
    keyword = elem.keyword or ""
    if elem.VR == "PN":
        return "name"
    if elem.VR in ("DA", "DT"):
        return "date"
    if "Telephone" in keyword or "Email" in keyword or "URL" in keyword:
        return "contact"
    if any(w in keyword for w in ("Institution", "Address", "Station", "Department", "Location", "Country",
                                  "Region", "Residence")):
        return "place"
    if keyword.endswith(("ID", "IDs", "Number", "Numbers", "Identifier")) or "ID" in keyword:
        return "id"
    return "text"


def _collect_identifiers(elem: DataElement, out: dict) -> None:
    if elem.VR not in TEXT_VRS | {"DA", "DT"}:
        return
    if elem.tag.is_private and 0x10 <= elem.tag.element <= 0xFF:
        return  # private creator strings name vendors (reported in the audit), not people
    kind = identifier_kind(elem)
    for v in _values(elem):
        text = str(v).strip()
        if not text or text.upper() in ("ANONYMIZED", "ANONYMOUS"):
            continue
        out.setdefault(text, kind)
        if elem.VR == "PN":
            for part in str(v).replace("^", " ").replace("=", " ").split():
                if len(part) >= 2:
                    out.setdefault(part, "name")


@dataclass
class DicomDeidentifier:
    """Applies the profile to one dataset in place. ``clean_text`` cleans free text for ``C`` actions."""

    pseudo: Pseudonymizer
    options: dict
    patient_namespace: str
    clean_text: Optional[Callable[[str, frozenset], str]] = None
    _deny: frozenset = frozenset()
    last_offset: int = 0  # the date shift of the last run (for the encrypted linkage table only)

    def patient_identity(self, ds: Dataset) -> str:
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid:
            return "id:" + pid
        name = str(ds.get("PatientName", "") or "").strip()
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        if name:
            return f"name:{name}|{birth}"
        return "study:" + str(ds.get("StudyInstanceUID", "") or "")

    def run(self, ds: Dataset) -> tuple[DeidResult, dict]:
        """De-identify ``ds`` in place; returns the audit counts and the pseudonymous identities."""
        identity = self.patient_identity(ds)
        patient = self.pseudo.patient(self.patient_namespace, identity)
        offset = self.pseudo.date_offset_days(self.patient_namespace + "|" + identity)
        self.last_offset = offset
        ids = {
            "patient_id": patient,
            "study_id": "s" + self.pseudo.digest("study", str(ds.get("StudyInstanceUID", "")), length=20),
            "series_id": "r" + self.pseudo.digest("series", str(ds.get("SeriesInstanceUID", "")), length=20),
        }
        # Pass 1 collects every value the profile removes, so free text cleaned in pass 2 has the whole
        # object's identifiers on its deny-list; pass 2 applies the actions.
        collected = DeidResult()
        self._dataset(ds, collected, patient, offset, depth=0, dry=True)
        self._deny = frozenset(collected.identifiers)
        result = DeidResult()
        self._dataset(ds, result, patient, offset, depth=0)
        if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = self._uid(str(ds.file_meta.MediaStorageSOPInstanceUID))
        self._mark(ds)
        return result, ids

    # -- element actions -------------------------------------------------------------------------------------
    def _uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or uid.startswith(DICOM_ROOT):
            return uid
        return self.pseudo.uid(uid)

    def _dataset(self, ds: Dataset, result: DeidResult, patient: str, offset: int, depth: int, dry=False) -> None:
        tbl = table()
        for elem in list(ds):
            tag = elem.tag
            if tag.element == 0x0000:
                if not dry:
                    del ds[tag]
                result.actions[("X", "GroupLength")] += 1
                continue
            rule = tbl.lookup(tag)
            keyword = elem.keyword or ("private" if tag.is_private else f"{tag.group:04X}{tag.element:04X}")
            if tag.is_private:
                action = self._private_action(ds, tag, result)
            elif rule is None:
                action = "K"
            else:
                action = rule.resolve(self.options)
            if action in ("X", "Z", "D", "U") or (action == "C" and elem.VR in ("DA", "DT")):
                # Removed or replaced values (and real dates) are identifiers for the deny-list; text that is
                # cleaned rather than removed is not, or cleaning would redact it whole.
                _collect_identifiers(elem, result.identifiers)
            if not dry:
                self._apply(ds, elem, action, result, patient, offset, depth)
            result.actions[(action, keyword)] += 1
            if action in ("K", "C", "D", "U*") and tag in ds and ds[tag].VR == "SQ":
                for item in ds[tag].value:
                    self._dataset(item, result, patient, offset, depth + 1, dry)

    def _private_action(self, ds: Dataset, tag: BaseTag, result: DeidResult) -> str:
        if tag.element < 0x0100:  # private creator element
            if 0x10 <= tag.element <= 0xFF and tag.element != 0:
                creator = str(ds[tag].value)
                result.unknown_private_creators.add(creator[:64])
            return "K" if self.options.get("retain_safe_private") else "X"
        if self.options.get("retain_safe_private"):
            creator_tag = Tag(tag.group, tag.element >> 8)
            creator = str(ds[creator_tag].value).strip() if creator_tag in ds else ""
            if (tag.group, creator, tag.element & 0xFF) in safe_private():
                return "K"
        return "X"

    def _apply(self, ds, elem, action, result, patient, offset, depth) -> None:
        tag, vr = elem.tag, elem.VR
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence() if vr == "SQ" else empty_value_for_VR(vr)
        elif action == "D":
            if tag == Tag("PatientID"):
                elem.value = patient
            elif vr == "UI":
                self._remap(elem)
            elif vr == "SQ":
                pass  # the items are cleaned recursively by the caller
            elif vr in DUMMY:
                elem.value = DUMMY[vr]
            else:
                elem.value = empty_value_for_VR(vr)
        elif action == "U":
            self._remap(elem)
        elif action == "C":
            self._clean(elem, result, offset)
        elif action == "K":
            if tag == Tag("PatientAge") and elem.value:
                elem.value = top_code_age(str(elem.value))
            elif tag.is_private and vr in ("DA", "DT") and self.options.get("retain_long_modified_dates"):
                self._clean(elem, result, offset)  # a kept private date moves with the patient's other dates
        # "U*": sequence kept; UIDs inside are handled by their own rows during recursion.

    def _remap(self, elem: DataElement) -> None:
        values = [self._uid(str(v)) for v in _values(elem)]
        elem.value = values if len(values) > 1 else (values[0] if values else "")

    def _clean(self, elem: DataElement, result: DeidResult, offset: int) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            if self.options.get("retain_long_full_dates"):
                return
            out = []
            for v in _values(elem):
                shifted = shift_date(str(v), offset)
                if shifted is None:
                    result.dates_unparsed += 1
                else:
                    out.append(shifted)
            elem.value = (out if len(out) > 1 else out[0]) if out else empty_value_for_VR(vr)
        elif vr == "TM":
            return
        elif vr == "SQ":
            return  # cleaned recursively by the caller
        elif vr == "AS":
            elem.value = top_code_age(str(elem.value or ""))
        elif vr in TEXT_VRS and self.clean_text is not None and vr != "PN":
            cleaned = [self.clean_text(str(v), self._deny) for v in _values(elem)]
            elem.value = cleaned if len(cleaned) > 1 else (cleaned[0] if cleaned else "")
        else:
            elem.value = empty_value_for_VR(vr)

    def _mark(self, ds: Dataset) -> None:
        enabled = [o for o in OPTION_ORDER if self.options.get(o)]
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"medcurate {__version__}; PS3.15 E.1-1 {table().edition}"[:64]
        codes = []
        for name in ["basic"] + enabled:
            value, meaning = CID_7050[name]
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        if self.options.get("retain_long_modified_dates"):
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        elif not self.options.get("retain_long_full_dates"):
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        else:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"


def burned_in_risk(ds: Dataset) -> bool:
    """Header flags are unreliable: modality and SOP class decide, BurnedInAnnotation=YES adds to them."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    return modality in BURNED_IN_MODALITIES or sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or flag == "YES"


def to_json(ds: Dataset, max_binary: int = 1024) -> dict:
    """DICOM JSON model (PS3.18 F.2) of a de-identified header; large binary values (LUTs, icons) are left out."""

    def drop_binary(d: Dataset):
        for elem in list(d):
            if elem.VR == "SQ":
                for item in elem.value:
                    drop_binary(item)
            elif elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and len(elem.value or b"") > max_binary:
                del d[elem.tag]

    drop_binary(ds)
    return ds.to_json_dict(bulk_data_threshold=max_binary * 1024)
