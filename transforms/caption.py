"""Caption: image-text pairs from the harmonized record.

A backend turns a record (the harmonized metadata of a sample or of one of its DRR views) into a ``Caption``
that names its provenance (kind, model, prompt id, seed). ``TemplateCaptioner`` is deterministic and needs
nothing; an LLM backend (OpenAI-compatible HTTP) plugs in through the same ``CaptionBackend`` interface, with its
client built in ``setup``. Every caption is checked against the labels before it is kept: it must name each
positive finding and must not name a finding the labels mark negative.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Protocol

from medcurate.schemas.records import Caption, QuarantineError, Sample
from medcurate.transforms.context import Context

MODALITY_WORDS = {
    "CT": "CT", "MR": "MRI", "XR": "radiograph", "MG": "mammogram", "PT": "PET", "NM": "nuclear medicine image",
    "US": "ultrasound image", "XA": "angiogram", "RF": "fluoroscopy image", "OT": "image",
}
VIEW_WORDS = {"PA": "posteroanterior (PA)", "AP": "anteroposterior (AP)", "LATERAL": "lateral", "LLD": "left lateral decubitus",
              "RLD": "right lateral decubitus"}
DRR_VIEW_WORDS = {"ap": "frontal (AP)", "pa": "frontal (PA)", "lateral": "left lateral"}
MAX_STRUCTURES_NAMED = 12


class CaptionBackend(Protocol):
    name: str

    def setup(self) -> None: ...

    def caption(self, record: dict) -> Caption: ...


def _body(record: dict) -> str:
    part = record.get("body_part")
    return part.lower().replace("abdpelvis", " abdomen and pelvis") if part else "unspecified region"


def _findings_sentence(labels: dict | None) -> str:
    if not labels:
        return ""
    positive = sorted(k for k, v in labels.items() if v == 1)
    if positive:
        return " Findings: " + ", ".join(p.lower() for p in positive) + "."
    if any(v == 0 for v in labels.values()):
        return " No finding among the labelled conditions."
    return ""


def _structures_sentence(structures: list) -> str:
    if not structures:
        return ""
    names = [s.replace("_", " ") for s in structures]
    shown = names[:MAX_STRUCTURES_NAMED]
    more = len(names) - len(shown)
    return " Labelled anatomy: " + ", ".join(shown) + (f" and {more} more structures" if more > 0 else "") + "."


class TemplateCaptioner:
    name = "template-v1"

    def setup(self) -> None:
        pass

    def caption(self, record: dict) -> Caption:
        product = record.get("product_kind", record.get("kind"))
        modality = record.get("modality")
        body = _body(record)
        age, sex = record.get("age_years"), record.get("sex")
        who = ""
        if age is not None or sex in ("M", "F"):
            parts = []
            if age is not None:
                parts.append(f"{int(age)}-year-old" if age >= 1 else "infant")
            if sex in ("M", "F"):
                parts.append({"M": "male", "F": "female"}[sex])
            who = " of a " + " ".join(parts) + " patient"
        if product == "drr":
            geo = record.get("derivation", {}).get("geometry", {})
            view = DRR_VIEW_WORDS.get(geo.get("direction"), geo.get("direction", ""))
            proj = "cone-beam" if geo.get("projection") == "cone" else "parallel-beam"
            text = (f"Digitally reconstructed {view} radiograph of the {body}{who}, {proj} projection "
                    f"computed from CT.")
            text += _structures_sentence(record.get("structures", []))
        elif product == "volume":
            spacing = record.get("output", {}).get("spacing_mm")
            res = f" at {'x'.join(f'{s:g}' for s in spacing)} mm" if spacing else ""
            text = f"{MODALITY_WORDS.get(modality, 'volume')} volume of the {body}{who}{res}."
            text = text[0].upper() + text[1:]
            text += _structures_sentence(record.get("structures", []))
            text += _findings_sentence(record.get("labels"))
        else:
            view = VIEW_WORDS.get(record.get("view"), "")
            what = MODALITY_WORDS.get(modality, "image")
            text = f"{(view + ' ') if view else ''}{body} {what}{who}.".strip()
            text = text[0].upper() + text[1:]
            text += _findings_sentence(record.get("labels"))
        return Caption(text=text, kind="template", model=self.name, prompt_id=None, seed=None)


def check_caption(text: str, labels: dict | None) -> list[str]:
    """Problems of a caption against three-valued labels: missing positives, negatives asserted as present."""
    if not labels:
        return []
    low = text.lower()
    problems = []
    findings_part = low.split("findings:", 1)[1] if "findings:" in low else ""
    for name, value in sorted(labels.items()):
        mentioned = re.search(r"\b" + re.escape(name.lower()) + r"\b", findings_part) is not None
        if value == 1 and not re.search(r"\b" + re.escape(name.lower()) + r"\b", low):
            problems.append(f"positive finding not mentioned: {name}")
        if value == 0 and mentioned:
            problems.append(f"negative finding asserted: {name}")
    return problems


class CaptionStage:
    """Stage function: one caption per sample and per DRR view, each checked against the labels."""

    def __init__(self, ctx: Context, backend: CaptionBackend | None = None):
        self.ctx = ctx
        self.backend = backend or TemplateCaptioner()

    def setup(self):
        self.backend.setup()

    def _checked(self, record: dict) -> Caption:
        cap = self.backend.caption(record)
        problems = check_caption(cap.text, record.get("labels"))
        if problems:
            raise QuarantineError("caption_contradicts_labels", "caption disagrees with the labels",
                                  {"problems": len(problems)})
        cap.checked = True
        return cap

    def __call__(self, sample: Sample):
        record = {**sample.meta, "product_kind": sample.kind}
        captions = [self._checked(record)]
        views = []
        for view in sample.views:
            vrec = {**sample.meta, "product_kind": "drr", "structures": view.structures,
                    "derivation": {"geometry": view.geometry}}
            views.append(dataclasses.replace(view, captions=[self._checked(vrec)]))
        yield sample.replace(captions=captions, views=views)
