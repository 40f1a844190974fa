"""A seeded generator of radiology reports with planted identifiers, and a recall measure for text de-id.

Each report mixes clinical sentences with identifiers in the formats real reports use: names (first last, LAST,
First, DICOM LAST^FIRST, titled), dates (numeric with / - ., ISO, month names, two-digit years), MRNs, accession
numbers, phone numbers, street addresses, city/state/ZIP, e-mails, social security numbers, dictation signatures. ``header`` identifiers are the ones a study's
headers also hold (patient name and MRN); the de-identifier receives them as its deny-list.
"""
from __future__ import annotations

import datetime as dt
import random
import re
from collections import defaultdict

FIRST = ["John", "Maria", "Wei", "Aisha", "Peter", "Laura", "Carlos", "Yuki", "Fatima", "Olga", "Kwame", "Ingrid",
         "Rahul", "Sophie", "David", "Elena", "Tomasz", "Nadia", "Jamal", "Hannah", "Mateo", "Chloe", "Arjun", "Lena",
         "Samuel", "Priya", "Lucas", "Amara", "Diego", "Mei"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Novak", "Bennett", "Mendez", "Tanaka", "Haddad", "Petrova", "Mensah",
        "Larsen", "Mehta", "Laurent", "Kim", "Rossi", "Kowalski", "Farouk", "Washington", "Schneider", "Alvarez",
        "Dubois", "Patel", "Fischer", "Oyelaran", "Sharma", "Moreau", "Nwosu", "Ramirez", "Wang"]
STREETS = ["Baker Street", "Elm Avenue", "Harbor Road", "Maple Drive", "Sunset Boulevard", "Pine Lane", "Cedar Court",
           "Willow Way", "Oak Street", "Lakeview Drive"]
CITIES = [("Boston", "MA"), ("Denver", "CO"), ("Austin", "TX"), ("Seattle", "WA"), ("Chicago", "IL"),
          ("Portland", "OR"), ("Atlanta", "GA"), ("Phoenix", "AZ")]
IMPRESSIONS = ["No acute cardiopulmonary process.", "Right lower lobe pneumonia.", "Stable small pleural effusion.",
               "Cardiomegaly without edema.", "Pulmonary nodule; recommend follow-up CT in 6 months."]
FINDINGS = ["The lungs are clear.", "There is a small left pleural effusion.", "Mild cardiomegaly is present.",
            "No pneumothorax.", "Patchy opacity in the right lower lobe may represent pneumonia.",
            "Degenerative changes of the thoracic spine.", "A 6 mm nodule projects over the left upper zone.",
            "Interval improvement of the right basilar atelectasis."]


def _date_formats(d: dt.date) -> list[str]:
    return [d.strftime("%m/%d/%Y"), d.strftime("%Y-%m-%d"), d.strftime("%B %d, %Y").replace(" 0", " "),
            d.strftime("%d %b %Y"), d.strftime("%m-%d-%Y"), d.strftime("%m/%d/%y"), d.strftime("%d.%m.%Y")]


def generate(n: int = 200, seed: int = 7) -> list[dict]:
    """[{text, identifiers: [(type, value)], header: [values]}]"""
    rng = random.Random(seed)
    reports = []
    for _ in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        dr_first, dr_last = rng.choice(FIRST), rng.choice(LAST)
        mrn = str(rng.randint(1000000, 99999999))
        acc = f"ACC{rng.randint(100000, 9999999)}"
        exam = dt.date(2012, 1, 1) + dt.timedelta(days=rng.randint(0, 4000))
        dob = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randint(0, 30000))
        exam_s, dob_s = rng.choice(_date_formats(exam)), rng.choice(_date_formats(dob))
        area, mid, end = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
        phone = rng.choice([f"({area}) {mid}-{end:04d}", f"{area}-{mid}-{end:04d}", f"{area}.{mid}.{end:04d}",
                            f"+1 {area} {mid} {end:04d}"])
        street = f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"
        city, state = rng.choice(CITIES)
        zipc = f"{rng.randint(10000, 99999)}"
        email = f"{first.lower()}.{last.lower()}@{rng.choice(['example.org', 'mail.com', 'clinic.net'])}"
        ssn = f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
        rad_first, rad_last, initial = rng.choice(FIRST), rng.choice(LAST), rng.choice("ABCDEFGHJKLMNPRSTW")
        prior = dt.date(2012, 1, 1) + dt.timedelta(days=rng.randint(0, 4000))
        prior_s = rng.choice(_date_formats(prior))
        name = rng.choice([f"{first} {last}", f"{last}, {first}", f"{last.upper()}^{first.upper()}",
                           f"Mr. {last}" if rng.random() < 0.5 else f"Ms. {last}"])
        parts = [
            (f"Patient: {name}. MRN {mrn}. DOB {dob_s}.", [("name", name), ("mrn", mrn), ("date", dob_s)]),
            (f"Exam date {exam_s}; accession {acc}.", [("date", exam_s), ("accession", acc)]),
            (f"Referring physician Dr. {dr_first} {dr_last}, phone {phone}.",
             [("name", f"{dr_first} {dr_last}"), ("phone", phone)]),
            (f"Home address {street}, {city}, {state} {zipc}.", [("address", street), ("zip", zipc)]),
            (f"Results sent to {email}.", [("email", email)]),
            (f"Comparison: radiograph of {prior_s}.", [("date", prior_s)]),
            (f"SSN {ssn} verified at registration.", [("ssn", ssn)]),
        ]
        rng.shuffle(parts)
        body = " ".join(rng.sample(FINDINGS, 3))
        text = "CHEST PA AND LATERAL. " + " ".join(p for p, _ in parts[:3]) + f" FINDINGS: {body} " + " ".join(
            p for p, _ in parts[3:]) + f" IMPRESSION: {rng.choice(IMPRESSIONS)} " + rng.choice([
                f"Discussed with {first} {last}.", f"{first.upper()} {last.upper()} was informed.",
                f"Findings communicated to the patient, {first} {last}, by telephone."]) + (
                f" Dictated by {rad_first} {initial}. {rad_last}, MD.")
        identifiers = [i for _, ids in parts for i in ids] + [("name", f"{first} {last}"),
                                                              ("name", f"{rad_first} {initial}. {rad_last}")]
        reports.append({"text": text, "identifiers": identifiers, "header": [f"{last}^{first}", mrn]})
    return reports


def _leaked(kind: str, value: str, cleaned: str) -> bool:
    """A planted identifier survives if its text does, or, for names, any of its name words does."""
    low = cleaned.lower()
    if kind == "name":
        name_words = [w for w in re.findall(r"[A-Za-z]{2,}", value) if w.lower() not in ("mr", "ms", "dr")]
        return any(re.search(r"\b" + re.escape(w.lower()) + r"\b", low) for w in name_words)
    core = re.sub(r"[^0-9a-z]", "", value.lower())
    return core in re.sub(r"[^0-9a-z]", "", low) if kind in ("phone", "mrn", "zip", "accession", "ssn") else (
        value.lower() in low)


def recall(cleaner, reports: list[dict], use_header: bool = True) -> dict:
    """Per identifier type: (removed, planted). ``use_header`` gives the cleaner the study's header identifiers."""
    counts = defaultdict(lambda: [0, 0])
    header_counts = [0, 0]
    for report in reports:
        cleaned = cleaner.clean(report["text"], deny=report["header"] if use_header else ())[0]
        header_words = {w.lower() for h in report["header"] for w in re.findall(r"[A-Za-z0-9]+", h)}
        for kind, value in report["identifiers"]:
            removed = not _leaked(kind, value, cleaned)
            counts[kind][0] += removed
            counts[kind][1] += 1
            words = {w.lower() for w in re.findall(r"[A-Za-z0-9]+", value)}
            if words and words <= header_words | {"mr", "ms"}:
                header_counts[0] += removed
                header_counts[1] += 1
    table = {k: tuple(v) for k, v in sorted(counts.items())}
    table["all"] = (sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values()))
    table["in headers"] = tuple(header_counts)
    return table


def clinical_kept(cleaner, reports: list[dict]) -> tuple[int, int]:
    """(clinical sentences left intact, clinical sentences): how much of the medicine survives de-identification."""
    kept = total = 0
    for report in reports:
        cleaned = cleaner.clean(report["text"], deny=report["header"])[0]
        for sentence in FINDINGS + IMPRESSIONS:
            if sentence in report["text"]:
                total += 1
                kept += sentence in cleaned
    return kept, total
