"""De-identification benchmark: DICOM files per millisecond against two peers, report text against presidio alone.

1. DICOM: the same files de-identified by medcurate's engine (PS3.15 Table E.1-1 2024b, default options: modified
   dates, retained patient characteristics, private tags removed unless safe), by dicom-anonymizer (its 2024b rules,
   private tags deleted) and by dicognito, in one process. Each tool gets its own freshly parsed copies of the files
   (parsing is not timed: it is the same pydicom call for all three), de-identifies them and writes them to memory;
   ms per file, best of N rounds; ratio to dicom-anonymizer (goal <= 1.0x). Files: the demo CT written as a DICOM
   series (512x512 slices with planted patient, physician, institution and device identifiers) and pydicom's own
   test files that all three tools accept.
2. Text: the seeded generated radiology reports (tests/synthetic_reports.py), reports per second for presidio's
   AnalyzerEngine + AnonymizerEngine alone (same spaCy model, its default recognizers) and for medcurate's
   TextDeidentifier (extra recognizers, deny-list, name propagation), with each one's recall.

    .venv/bin/python bench/deid.py [--repeats 3] [--reports 100]
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))


def dicom_files(root: str) -> list[bytes]:
    import pydicom
    from pydicom.data import get_testdata_files

    from medcurate.pipelines import demo

    hu, _, affine, _ = demo.load_ct()
    demo.write_ct_dicom(root, hu, affine, demo.Corpus(root=root))
    paths = sorted(glob.glob(os.path.join(root, "**", "*.dcm"), recursive=True))
    blobs = [open(p, "rb").read() for p in paths]
    for path in sorted(get_testdata_files("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            if "PatientID" in ds and "SOPInstanceUID" in ds and "PixelData" in ds:
                blobs.append(open(path, "rb").read())
        except Exception:
            continue
    return blobs


def _parse(blobs):
    import pydicom

    return [pydicom.dcmread(io.BytesIO(b)) for b in blobs]


def _write(ds) -> None:
    buf = io.BytesIO()
    ds.save_as(buf)


def run_ours(datasets):
    from medcurate.schemas.recipe import DEID_OPTIONS
    from medcurate.transforms.deid.dicom import DicomDeidentifier
    from medcurate.transforms.pseudonym import Pseudonymizer, Secret

    engine = DicomDeidentifier(Pseudonymizer(Secret(b"bench-key-0123456789abcdef")), dict(DEID_OPTIONS), "bench")
    for ds in datasets:
        engine.run(ds)
        _write(ds)


def run_dicom_anonymizer(datasets):
    from dicomanonymizer import anonymize_dataset
    from dicomanonymizer.simpledicomanonymizer import initialize_actions_2024b

    for ds in datasets:
        anonymize_dataset(ds, delete_private_tags=True, base_rules_gen=initialize_actions_2024b)
        _write(ds)


def run_dicognito(datasets):
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="bench")
    for ds in datasets:
        anonymizer.anonymize(ds)
        _write(ds)


def bench_dicom(blobs, repeats: int) -> dict:
    tools = {"medcurate": run_ours, "dicom-anonymizer": run_dicom_anonymizer, "dicognito": run_dicognito}
    usable = blobs
    for name, fn in tools.items():  # keep only files every tool accepts, so the three do the same work
        kept = []
        for b in usable:
            try:
                fn(_parse([b]))
                kept.append(b)
            except Exception as exc:  # noqa: BLE001 - a peer rejecting a file is reported, not fatal
                print(f"  {name} rejects one test file: {type(exc).__name__}", file=sys.stderr)
        usable = kept
    best = {}
    for _ in range(repeats):
        for name, fn in tools.items():
            datasets = _parse(usable)
            t0 = time.perf_counter()
            fn(datasets)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return {"files": len(usable), "ms_per_file": {k: 1000 * v / len(usable) for k, v in best.items()}}


def bench_text(n: int) -> dict:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine
    from synthetic_reports import generate, recall

    from medcurate.transforms.deid.text import SPACY_MODEL, TextDeidentifier, _offline_tldextract

    _offline_tldextract()
    reports = generate(n=n, seed=11)
    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}).create_engine()
    analyzer, anonymizer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"]), AnonymizerEngine()

    class PresidioAlone:
        def clean(self, text, deny=()):
            results = analyzer.analyze(text=text, language="en")
            return anonymizer.anonymize(text=text, analyzer_results=results).text, None

    ours = TextDeidentifier()
    ours.setup()
    out = {}
    for name, cleaner in (("presidio alone", PresidioAlone()), ("medcurate", ours)):
        cleaner.clean(reports[0]["text"])  # warm-up
        t0 = time.perf_counter()
        for r in reports:
            cleaner.clean(r["text"], deny=r["header"])
        rate = len(reports) / (time.perf_counter() - t0)
        done, total = recall(cleaner, reports, use_header=True)["all"]
        out[name] = (rate, done / total)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reports", type=int, default=100)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as root:
        result = bench_dicom(dicom_files(root), args.repeats)
    ms = result["ms_per_file"]
    print(f"DICOM de-identification, {result['files']} files (read not timed; de-identify + write), best of "
          f"{args.repeats}:")
    for name, v in ms.items():
        print(f"  {name:<17} {v:7.2f} ms/file   {v / ms['dicom-anonymizer']:.2f}x dicom-anonymizer")
    text = bench_text(args.reports)
    print(f"Report text, {args.reports} generated reports:")
    base = text["presidio alone"][0]
    for name, (rate, rec) in text.items():
        print(f"  {name:<17} {rate:7.1f} reports/s   {rate / base:.2f}x presidio alone   recall {rec:.3f}")


if __name__ == "__main__":
    main()
