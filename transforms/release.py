"""Release: patient-level consistency and re-identification risk, between encoding and shard writing.

Only metadata moves here (each shard sample's catalog row and JSON record; payloads stay in their part files).

1. Per patient (a GroupByKey on the pseudonymous patient id, across every dataset of the run):
   - one split per patient. Splits come from the patient's keyed hash, so they agree by construction; official
     source splits can disagree (two fused datasets sharing a ``patient_namespace``, or a source table that puts a
     patient in two splits). Then the most held-out split wins (test, then val, then train) for every sample of that
     patient, ``split_source`` becomes ``patient-resolved`` and the summary counts it: no patient is in two splits.
   - ``day_offset``: days since the patient's first study in this release, from the shifted study dates.
   - the patient's quasi-identifier combinations, once per patient (a patient with five series of one study is one
     person, not a class of five).
2. Risk (``risk_report``): k-anonymity (the smallest number of patients sharing one combination of quasi-identifier
   values) and the share of patients who are unique, over age, sex, body part, day offset and site (where the recipe
   retains institution identity), at generalization levels from none to age suppressed. The report names the
   smallest classes by the fields that make them up and the fields that drive the risk, never by value.
3. With ``--min-k K``, the first level whose k reaches K is applied to every written record (row and JSON): ages in
   bands, day offsets in bands, and, once day offsets are banded, the dates in the DICOM header emptied (they would
   give the exact intervals back). Without it the risk is reported only.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

QUASI_IDENTIFIERS = ("age", "sex", "body_part", "day_offset", "site")
SPLIT_PRIORITY = ("test", "val", "train")  # the most held-out split wins a conflict
DAY_BANDS = ((0, 0, "0"), (1, 30, "1-30"), (31, 180, "31-180"), (181, 365, "181-365"), (366, 10**9, ">365"))
# (name, age band width in years (0 = exact, None = suppressed), day offsets banded, day offsets suppressed)
LEVELS = (
    ("none", 0, False, False),
    ("age-5y", 5, False, False),
    ("age-10y+days-banded", 10, True, False),
    ("age-20y+days-banded", 20, True, False),
    ("age-suppressed+days-banded", None, True, False),
    ("age-suppressed+days-suppressed", None, True, True),
)


def age_band(age, width) -> str | None:
    if age is None or width is None:
        return None
    if age >= 90:
        return "90+"
    low = int(age // width * width)
    return f"{low}-{min(low + width - 1, 89)}"


def day_band(days) -> str | None:
    if days is None:
        return None
    for low, high, name in DAY_BANDS:
        if low <= days <= high:
            return name
    return None


def qi_values(combination: tuple, level: tuple) -> tuple:
    """One patient's quasi-identifier combination (values in ``QUASI_IDENTIFIERS`` order) at a generalization level."""
    _, width, band_days, drop_days = level
    age, sex, body_part, days, site = combination
    age = None if width is None else (age if width == 0 else age_band(age, width))
    days = None if drop_days else (day_band(days) if band_days else days)
    return (age, sex, body_part, days, site)


def _primary(part) -> bool:
    return part.row.get("parent_key") is None


def resolve_patient(group):
    """(patient_id, [Part]) -> Parts with one split and relative day offsets; plus ("qi", combination) outputs."""
    import apache_beam as beam

    _, parts = group
    parts = sorted(parts, key=lambda p: p.key)
    splits = {p.split for p in parts}
    target = None
    if len(splits) > 1:
        ranked = [s for s in SPLIT_PRIORITY if s in splits] + sorted(splits - set(SPLIT_PRIORITY))
        target = ranked[0]
    days = [p.study_day for p in parts if p.study_day is not None]
    first = min(days) if days else None
    seen = set()
    for part in parts:
        changes = {"day_offset": part.study_day - first if part.study_day is not None else None}
        if target is not None:
            changes.update(split=target, split_source="patient-resolved")
        part = part.updated(**changes)
        if _primary(part):
            row = part.row
            combination = (row.get("age_years"), row.get("sex"), row.get("body_part"), row.get("day_offset"), part.site)
            if combination not in seen:
                seen.add(combination)
                yield beam.pvalue.TaggedOutput("qi", combination)
        yield part


def _classes(counts: Counter, level: tuple) -> Counter:
    classes: Counter = Counter()
    for combination, n in counts.items():
        classes[qi_values(combination, level)] += n
    return classes


def _stats(classes: Counter) -> dict:
    total = sum(classes.values())
    if not total:
        return {"k": None, "unique_share": 0.0, "classes": 0, "records": 0}
    return {"k": min(classes.values()), "unique_share": round(sum(n for n in classes.values() if n == 1) / total, 4),
            "classes": len(classes), "records": total}


def risk_report(combinations: list, min_k: int = 0) -> dict:
    """Risk figures at every generalization level, the level chosen for ``min_k``, and the smallest classes of the
    chosen level described by field names only."""
    counts = Counter(tuple(c) for c in combinations)
    levels = []
    for level in LEVELS:
        levels.append({"level": level[0], **_stats(_classes(counts, level))})
    chosen = 0
    if min_k and min_k > 1:
        chosen = next((i for i, lv in enumerate(levels) if lv["k"] is not None and lv["k"] >= min_k),
                      len(LEVELS) - 1)
    level = LEVELS[chosen]
    classes = _classes(counts, level)
    smallest = sorted(classes.items(), key=lambda kv: (kv[1], str(kv[0])))[:5]
    described = [{"patients": n, "fields": [f for f, v in zip(QUASI_IDENTIFIERS, values) if v is not None]}
                 for values, n in smallest]
    # which field drives the risk: k and unique share with that one field left out
    drivers = []
    for i, field in enumerate(QUASI_IDENTIFIERS):
        dropped = Counter()
        for values, n in classes.items():
            dropped[values[:i] + (None,) + values[i + 1:]] += n
        drivers.append({"without": field, **_stats(dropped)})
    return {
        "quasi_identifiers": list(QUASI_IDENTIFIERS),
        "unit": "patient (each distinct combination of one patient counts once)",
        "min_k": min_k,
        "levels": levels,
        "applied": level[0],
        "k": levels[chosen]["k"],
        "unique_share": levels[chosen]["unique_share"],
        "target_met": (not min_k or min_k <= 1) or (levels[chosen]["k"] or 0) >= min_k,
        "smallest_classes": described,
        "without_one_field": drivers,
    }


def _strip_dates(header: dict) -> dict:
    """A DICOM JSON dict with every DA and DT value emptied, in sequences too."""
    out = {}
    for tag, elem in header.items():
        if not isinstance(elem, dict):
            out[tag] = elem
            continue
        elem = dict(elem)
        if elem.get("vr") in ("DA", "DT"):
            elem.pop("Value", None)
        elif elem.get("vr") == "SQ" and elem.get("Value"):
            elem["Value"] = [_strip_dates(item) if isinstance(item, dict) else item for item in elem["Value"]]
        out[tag] = elem
    return out


AGE_TAG = "00101010"  # Patient's Age


def generalize(part, level_name: str):
    """The part's row and JSON record at the given generalization level (unchanged at ``none``)."""
    level = next(lv for lv in LEVELS if lv[0] == level_name)
    _, width, band_days, drop_days = level
    if width == 0 and not band_days:
        return part
    row = part.row
    changes = {}
    if width != 0:
        changes.update(age_years=None, age_band=age_band(row.get("age_years"), width))
    if band_days:
        changes.update(day_offset=None, day_offset_band=None if drop_days else day_band(row.get("day_offset")))
    part = part.updated(**changes)
    record = part.record
    if record is not None and isinstance(record.get("dicom"), dict):
        header = dict(record["dicom"])
        if width != 0:
            header.pop(AGE_TAG, None)
        if band_days:
            header = _strip_dates(header)
        part = dataclasses.replace(part, record={**record, "dicom": header})
    return part
