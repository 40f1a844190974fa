"""Dataset-level records and the release's dataset card (Markdown), from the recipes' cards and the catalog rows.

What a recipe declares (name, citation, license, access tier, tasks, annotation source, modalities, anatomy) is taken
as declared; what it leaves out is observed in the written samples (modalities, anatomy, tasks from the products
and labels present). Counts are primary samples (derived DRR views are counted apart).
"""
from __future__ import annotations

from collections import Counter

from medcurate.schemas import vocab
from medcurate.schemas.sample import SCHEMA_VERSION

CARD_PATH = "DATASET_CARD.md"


def _tasks(rows: list) -> list:
    tasks = set()
    if any(r.get("labels") for r in rows):
        tasks.add("classification")
    if any(r.get("product") == "volume_seg" for r in rows):
        tasks.add("segmentation")
    if any(r.get("regions") for r in rows):
        tasks.add("detection")
    if any(r.get("caption") for r in rows):
        tasks.add("caption")
    return sorted(tasks)


def dataset_rows(cards: list, rows: list) -> list[dict]:
    out = []
    for card in sorted(cards, key=lambda c: c["dataset"]["id"]):
        d = card["dataset"]
        mine = [r for r in rows if r["dataset"] == d["id"]]
        primary = [r for r in mine if r.get("parent_key") is None]
        labelled = [r for r in primary if r.get("labels")]
        structures = sorted({s for r in primary for s in (r.get("structures") or [])})
        if labelled:
            space, labels = "findings", [{"name": f, "code": vocab.finding_code(f)}
                                         for f in vocab.load("findings")["findings"]]
        elif structures:
            space, labels = "structures", [{"name": s, "code": vocab.code("structures", s)} for s in structures]
        else:
            space, labels = None, []
        out.append({
            "schema_version": SCHEMA_VERSION,
            "id": d["id"],
            "name": d.get("name"),
            "description": d.get("description"),
            "citation": d.get("citation"),
            "homepage": d.get("homepage"),
            "version": d.get("version"),
            "license": d["license"],
            "redistributable": bool(d.get("redistributable", False)),
            "access_tier": d.get("access"),
            "modalities": d.get("modalities") or sorted({r["modality"] for r in primary if r.get("modality")}),
            "anatomy": d.get("anatomy") or sorted({r["body_part"] for r in primary if r.get("body_part")}),
            "tasks": d.get("tasks") or _tasks(mine),
            "label_space": space,
            "labels": labels,
            "annotation_source": d.get("annotation_source"),
            "samples_per_split": sorted(Counter(r["split"] for r in primary).items()),
            "patients": len({r["patient_id"] for r in primary}),
            "recipe_sha256": card.get("sha256"),
        })
    return out


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_card(cards: list, drows: list, summary: dict) -> str:
    """The dataset card of one release: sources, licenses and citations, counts, label prevalence, risk."""
    fused = summary.get("fused", {})
    risk = summary.get("reidentification_risk", {})
    total = summary.get("total", {})
    out = [
        "# Dataset card",
        "",
        f"A medcurate release of {len(drows)} source dataset(s): {fused.get('samples', 0)} samples from "
        f"{fused.get('patients', 0)} pseudonymous patients, de-identified, harmonized to schema "
        f"{SCHEMA_VERSION}. Inputs discovered {total.get('discovered', 0)} = written {total.get('written', 0)} + "
        f"quarantined {total.get('quarantined', 0)} (units).",
        "",
        "## Sources",
        "",
        _table(["dataset", "name", "version", "license", "redistributable", "access", "tasks", "annotation",
                "samples by split", "patients"],
               [[d["id"], d["name"] or "", d["version"] or "", d["license"], "yes" if d["redistributable"] else "no",
                 d["access_tier"] or "not declared", ", ".join(d["tasks"]) or "-", d["annotation_source"] or "not declared",
                 ", ".join(f"{s} {n}" for s, n in d["samples_per_split"]) or "-", d["patients"]] for d in drows]),
        "",
    ]
    cites = [(d["id"], d["citation"], d["homepage"]) for d in drows if d["citation"] or d["homepage"]]
    if cites:
        out += ["### Citations", ""] + [f"- **{i}**: {c or ''}{' ' + h if h else ''}".rstrip() for i, c, h in cites]
        out += [""]
    out += ["Redistribution follows each source's license; samples of datasets marked not redistributable are for "
            "local use only.", "", "## Counts", ""]
    for field, title in (("modality", "modality"), ("body_part", "body part"), ("mr_sequence", "MR sequence"),
                         ("split", "split")):
        values = fused.get(field, {})
        if values:
            out += [f"**By {title}:** " + ", ".join(f"{k} {v}" for k, v in values.items()), ""]
    findings = fused.get("findings", {})
    labelled = sum(1 for d in drows if d["label_space"] == "findings")
    if findings or labelled:
        n = sum(summary.get("by_dataset", {}).get(d["id"], {}).get("samples", 0)
                for d in drows if d["label_space"] == "findings")
        out += ["## Label prevalence", "", f"Positive samples among the {n} samples with finding labels "
                "(three-valued labels: positive, negative, unknown; see the catalog's `labels`).", ""]
        out += [_table(["finding", "code", "positive", "prevalence"],
                       [[f, vocab.finding_code(f) or "-", c, f"{c / n:.3f}" if n else "-"]
                        for f, c in sorted(findings.items())]), ""]
    structures = fused.get("structures", {})
    if structures:
        out += ["## Structures", "", "Samples whose label map holds each structure (harmonized names, "
                "`schemas/vocab/structures.yaml`; composites such as BraTS whole tumour appear as regions).", ""]
        out += [_table(["structure", "code", "samples"],
                       [[s, vocab.code("structures", s) or "-", c] for s, c in sorted(structures.items())]), ""]
    out += ["## Re-identification risk", ""]
    if risk.get("levels"):
        out += [f"Quasi-identifiers: {', '.join(risk['quasi_identifiers'])}; unit: {risk['unit']}. Applied "
                f"generalization: **{risk['applied']}** (k = {risk['k']}, unique share = {risk['unique_share']}"
                + (f", target k >= {risk['min_k']} {'met' if risk['target_met'] else 'NOT met'}" if risk["min_k"] else
                   ", no minimum k requested: reported only") + ").", ""]
        out += [_table(["generalization", "k", "unique share", "classes", "patients x combinations"],
                       [[lv["level"], lv["k"], lv["unique_share"], lv["classes"], lv["records"]]
                        for lv in risk["levels"]]), ""]
        out += ["Smallest classes at the applied level (by the fields that define them, never by value): "
                + "; ".join(f"{c['patients']} patient(s) over {', '.join(c['fields']) or 'no field'}"
                            for c in risk["smallest_classes"]) + ".", ""]
    else:
        out += ["No samples.", ""]
    gate = summary.get("release_gate", {})
    if gate:
        out += ["## Release gate", "", f"Scanned {gate.get('files_scanned')} files for {gate.get('fingerprints')} "
                f"identifier fingerprints from the inputs: {'passed' if gate.get('passed') else 'FAILED'}.", ""]
    return "\n".join(out)
