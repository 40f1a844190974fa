"""``medcurate`` command line.

    medcurate run RECIPE.yaml [RECIPE.yaml ...] --out DIR [--key-file KEY] [beam pipeline args]
    medcurate demo --out DIR [--key-file KEY] [--keep-corpus DIR] [beam pipeline args]
    medcurate catalog query DIR [--where SQL] [--columns COLS] [--sql SQL] [--limit N] [--format table|csv|json]
    medcurate catalog stats DIR
    medcurate scan-phi DIR (--identifiers FILE | RECIPE.yaml ... --key-file KEY)
    medcurate linkage show FILE --linkage-key-file KEY

Flags medcurate does not know are handed to Beam untouched (``--runner``, ``--direct_num_workers``, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

LOG_PATH = "logs/run.log"
OUR_OUTPUTS = ("shards", "catalog", "quarantine", "logs", "summary.json", "_parts", "audit", "release_gate.json",
               "DATASET_CARD.md")


def _quiet_beam_logging() -> None:
    """Libraries log per-file problems (with tracebacks) that medcurate reports as quarantine records instead."""
    import warnings

    logging.getLogger().setLevel(logging.WARNING)
    for name in ("apache_beam", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("pydicom", "nibabel", "nibabel.global", "highdicom", "presidio-analyzer", "PIL"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for module in ("pydicom", "nibabel", "highdicom", "PIL"):
        warnings.filterwarnings("ignore", module=module)


class _LogCollector(logging.Handler):
    """Keeps medcurate's own log lines (fixed texts and counts, never values) for logs/run.log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def _logger() -> tuple[logging.Logger, _LogCollector]:
    log = logging.getLogger("medcurate")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    collector = _LogCollector()
    log.addHandler(collector)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(stream)
    return log, collector


def _prepare_out(out: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    from medcurate.transforms.io import join

    if not FileSystems.exists(out):
        if "://" not in out:
            os.makedirs(out, exist_ok=True)
        return
    present = [p for p in OUR_OUTPUTS if FileSystems.exists(join(out, p))]
    if "://" not in out:
        others = sorted(set(os.listdir(out)) - set(OUR_OUTPUTS))
        if others:
            raise SystemExit(f"error: {out} holds files that are not a medcurate output; choose an empty folder")
    if present and not overwrite:
        raise SystemExit(f"error: {out} already holds a medcurate output; pass --overwrite to replace it")
    for p in present:
        FileSystems.delete([join(out, p)])


def _load_recipes(paths: list[str]):
    from apache_beam.io.filesystems import FileSystems

    from medcurate.schemas import recipe as recipe_mod

    recipes = []
    for path in paths:
        try:
            r = recipe_mod.load(path)
        except recipe_mod.RecipeError as exc:
            raise SystemExit(f"error: {exc}") from None
        except OSError as exc:
            raise SystemExit(f"error: cannot read recipe {os.path.basename(path)} ({type(exc).__name__})") from None
        if not FileSystems.exists(r.root):
            raise SystemExit(f"error: {os.path.basename(path)}: source.root does not exist (fix: point it at the "
                             "dataset folder, relative to the recipe file)")
        recipes.append(r)
    ids = [r.id for r in recipes]
    if len(set(ids)) != len(ids):
        raise SystemExit("error: two recipes share one dataset.id; ids must be unique in a run")
    return recipes


def _metrics_table(result) -> list[tuple[str, str, int]]:
    from apache_beam.metrics.metric import MetricsFilter

    from medcurate.transforms.common import METRICS_NAMESPACE

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return []
    totals: dict[tuple[str, str], int] = {}
    for c in counters:
        stage, _, name = c.key.metric.name.partition("/")
        value = c.committed if c.committed is not None else c.attempted
        totals[(stage, name)] = totals.get((stage, name), 0) + int(value or 0)
    return sorted((s, n, v) for (s, n), v in totals.items())


STAGE_ORDER = ["discover", "read-index", "read", "deidentify", "harmonize", "resample", "drr", "caption", "encode"]


def _print_summary(log, summary: dict, metrics: list, seconds: float) -> bool:
    log.info("")
    log.info("per-stage counts (elements in / out / quarantined):")
    by_stage: dict[str, dict[str, int]] = {}
    for stage, name, value in metrics:
        by_stage.setdefault(stage, {})[name] = value
    for stage in sorted(by_stage, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s)):
        c = by_stage[stage]
        if stage == "discover":
            log.info(f"  {stage:<20} items {c.get('items', 0)}, unreadable sources {c.get('failed_recipes', 0)}")
            continue
        log.info(f"  {stage:<20} {c.get('in', 0):>6} {c.get('out', 0):>6} {c.get('quarantined', 0):>6}")
    log.info("")
    log.info("samples written by product/split: " + ", ".join(
        f"{k} {v}" for k, v in summary["samples_by_product_split"].items()))
    log.info("samples by dataset/modality:      " + ", ".join(
        f"{k} {v}" for k, v in summary["samples_by_dataset_modality"].items()))
    if summary["quarantine_by_reason"]:
        log.info("quarantine by reason (records, discovered units):")
        for q in summary["quarantine_by_reason"]:
            log.info(f"  {q['stage']:<20} {q['reason']:<32} {q['records']:>5} {q['units']:>6}")
    if summary["unmapped_values"]:
        log.info("unmapped values (kept raw; extend schemas/vocab to map them): " + ", ".join(
            f"{k} ({v})" for k, v in summary["unmapped_values"].items()))
    t = summary["total"]
    ok = t["reconciled"]
    log.info("")
    log.info(f"discovered {t['discovered']} = written {t['written']} + quarantined {t['quarantined']}: "
             + ("OK" if ok else "MISMATCH"))
    for d, c in summary["datasets"].items():
        if not c["reconciled"]:
            log.info(f"  dataset {d}: discovered {c['discovered']}, written {c['written']}, "
                     f"quarantined {c['quarantined']}")
    log.info(f"wall time {seconds:.1f} s")
    return ok


def _write_log(out: str, collector: _LogCollector) -> None:
    from medcurate.transforms.io import join, write_bytes

    write_bytes(join(out, LOG_PATH), ("\n".join(collector.lines) + "\n").encode("utf-8"))


def execute(recipes, out: str, key, args, beam_args, log, collector) -> int:
    from medcurate.catalog.build import SUMMARY_PATH
    from medcurate.pipelines.curate import run_pipeline
    from medcurate.pipelines.options import RunConfig
    from medcurate.transforms.io import join, read_bytes

    linkage_key = _linkage_key(args, out)
    config = RunConfig(
        recipes=recipes, out=out, key=key, limit=args.limit, device=args.device, split_ratios=args.split_ratios,
        shard_max_bytes=args.shard_max_bytes, shard_max_count=args.shard_max_count, beam_args=beam_args,
        folds=args.folds, min_k=args.min_k,
        linkage_out=args.linkage_out, linkage_key=linkage_key,
    )
    log.info(f"medcurate: {len(recipes)} dataset(s): {', '.join(r.id for r in recipes)}")
    start = time.time()
    result = run_pipeline(config)
    summary = json.loads(read_bytes(join(out, SUMMARY_PATH)))
    ok = _print_summary(log, summary, _metrics_table(result), time.time() - start)
    log.info(f"outputs: {out}/shards, {out}/catalog/catalog.parquet, {out}/quarantine, {out}/summary.json")
    gate = summary.get("release_gate", {})
    if gate.get("passed"):
        log.info(f"release gate: {gate['files_scanned']} files scanned for {gate['fingerprints']} identifier "
                 "fingerprints from the inputs: no hit")
    else:
        log.info(f"RELEASE GATE FAILED: {gate.get('hits')} place(s) in the outputs hold identifiers from the inputs; "
                 f"see {out}/release_gate.json (files and kinds, never values). Do not release this output.")
    risk = summary.get("reidentification_risk") or {}
    if risk.get("levels"):
        target = (f"; target k >= {risk['min_k']} {'met' if risk['target_met'] else 'NOT MET: review before release'}"
                  if risk.get("min_k") else "; no --min-k: reported only")
        log.info(f"re-identification risk: k = {risk['k']}, unique share {risk['unique_share']} at generalization "
                 f"'{risk['applied']}'{target} (catalog/reidentification_risk.json)")
    log.info(f"dataset card: {out}/DATASET_CARD.md")
    if args.linkage_out:
        log.info(f"linkage: encrypted linkage table written to {args.linkage_out} (outside the release)")
    _write_log(out, collector)
    if not gate.get("passed"):
        return 5
    return 0 if ok else 3


def _linkage_key(args, out: str):
    """The linkage encryption key (SHA-256 of the key file's content), only with --linkage-out."""
    import hashlib

    from medcurate.transforms.pseudonym import Secret

    if not getattr(args, "linkage_out", None):
        if getattr(args, "linkage_key_file", None):
            raise SystemExit("error: --linkage-key-file needs --linkage-out")
        return None
    if not args.linkage_key_file:
        raise SystemExit("error: --linkage-out needs --linkage-key-file (the table is always encrypted)")
    target = os.path.abspath(args.linkage_out) if "://" not in args.linkage_out else args.linkage_out
    base = os.path.abspath(out) if "://" not in out else out.rstrip("/")
    if target == base or target.startswith(base.rstrip("/") + "/"):
        raise SystemExit("error: --linkage-out must be outside --out: the linkage table is never part of a release")
    with open(args.linkage_key_file, "rb") as f:
        raw = f.read().strip()
    if len(raw) < 32:
        raise SystemExit("error: the linkage key must be at least 32 bytes")
    return Secret(hashlib.sha256(raw).digest())


def cmd_run(args, beam_args) -> int:
    from medcurate.transforms.pseudonym import KeyProblem, load_key

    log, collector = _logger()
    try:
        key = load_key(args.key_file)
    except (KeyProblem, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    recipes = _load_recipes(args.recipes)
    _prepare_out(args.out, args.overwrite)
    return execute(recipes, args.out, key, args, beam_args, log, collector)


def cmd_demo(args, beam_args) -> int:
    import tempfile

    from medcurate.pipelines import demo
    from medcurate.transforms.pseudonym import KeyProblem, load_key, throwaway_key

    log, collector = _logger()
    if args.key_file or os.environ.get("MEDCURATE_KEY"):
        try:
            key = load_key(args.key_file)
        except (KeyProblem, OSError) as exc:
            raise SystemExit(f"error: {exc}") from None
    else:
        key = throwaway_key()
        log.info("demo: using a throwaway pseudonymization key (pass --key-file to make the output reproducible)")
    _prepare_out(args.out, args.overwrite)
    with tempfile.TemporaryDirectory(prefix="medcurate-demo-") as tmp:
        corpus_dir = args.keep_corpus or tmp
        log.info(f"demo: generating the demo corpus{' in ' + corpus_dir if args.keep_corpus else ''} ...")
        t = time.time()
        corpus = demo.build_corpus(corpus_dir)
        log.info(f"demo: corpus ready in {time.time() - t:.1f} s ({corpus.files} files, {len(corpus.recipes)} datasets)")
        recipes = _load_recipes(corpus.recipes)
        code = execute(recipes, args.out, key, args, beam_args, log, collector)
        hits = demo.scan_outputs(args.out, corpus.identifiers)
        if hits:
            log.info(f"PHI scan: {len(hits)} planted identifier(s) found in outputs: FAILED")
            for h in hits[:20]:
                log.info(f"  {h}")
            code = code or 4
        else:
            log.info(f"PHI scan: none of the {len(corpus.identifiers)} planted identifiers appears in any output: OK")
        _write_log(args.out, collector)
    return code


def cmd_scan_phi(args, _beam_args) -> int:
    """Scan an output folder for identifiers: a list given in a file, or those the recipes' inputs hold."""
    import json as _json

    from medcurate.catalog.scan import identifiers_from_file, identifiers_from_recipes, scan_folder

    if args.identifiers:
        identifiers = identifiers_from_file(args.identifiers)
    elif args.recipes:
        from medcurate.transforms.pseudonym import KeyProblem, load_key

        try:
            key = load_key(args.key_file)
        except (KeyProblem, OSError) as exc:
            raise SystemExit(f"error: {exc}") from None
        identifiers = identifiers_from_recipes(_load_recipes(args.recipes), key)
    else:
        raise SystemExit("error: give --identifiers FILE, or recipes (with --key-file) to collect them from the inputs")
    report = scan_folder(args.dir, identifiers)
    print(_json.dumps({k: report[k] for k in ("files_scanned", "fingerprints")}))
    for hit in report["hits"]:
        print(f"HIT {hit['file']} [{hit['where']}]: a {hit['kind']} identifier")
    print("no identifier found" if not report["hits"] else f"{len(report['hits'])} hit(s): do not release")
    return 0 if not report["hits"] else 5


def cmd_linkage(args, _beam_args) -> int:
    import hashlib
    import json as _json

    from medcurate.transforms.deid import decrypt_linkage
    from medcurate.transforms.pseudonym import Secret

    with open(args.linkage_key_file, "rb") as f:
        key = Secret(hashlib.sha256(f.read().strip()).digest())
    with open(args.file, encoding="utf-8") as f:
        header, *lines = f.read().splitlines()
    for line in lines:
        entry = _json.loads(line)
        print(_json.dumps(decrypt_linkage(key, entry["record"]), sort_keys=True))
    return 0


def cmd_catalog(args, _beam_args) -> int:
    from medcurate.catalog.query import CatalogError, query, render, stats

    try:
        if args.catalog_command == "query":
            names, rows = query(args.dir, where=args.where, columns=args.columns, sql=args.sql, limit=args.limit)
            print(render(names, rows, args.format))
        else:
            for title, names, rows in stats(args.dir):
                print(f"== {title}")
                print(render(names, rows))
                print()
    except CatalogError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    from medcurate.pipelines._version import __version__
    from medcurate.pipelines.options import add_run_arguments

    parser = argparse.ArgumentParser(prog="medcurate", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"medcurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="curate datasets described by recipes")
    run.add_argument("recipes", nargs="+", help="recipe YAML files (one per dataset)")
    add_run_arguments(run)
    demo = sub.add_parser("demo", help="generate the embedded demo corpus and curate it")
    add_run_arguments(demo)
    demo.add_argument("--keep-corpus", help="write the demo corpus here and keep it (it holds planted PHI)")
    cat = sub.add_parser("catalog", help="query a run's catalog")
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    q = csub.add_parser("query", help="SQL over the catalog (DuckDB)")
    q.add_argument("dir", help="a medcurate output folder")
    q.add_argument("--where", help="SQL predicate, e.g. \"modality = 'CT' AND split = 'train'\"")
    q.add_argument("--columns", help="comma-separated columns (default: a useful few)")
    q.add_argument("--sql", help="a whole query over the views catalog, quarantine, shards")
    q.add_argument("--limit", type=int)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    st = csub.add_parser("stats", help="counts by dataset, modality, split, product, finding, quarantine reason")
    st.add_argument("dir")
    scan = sub.add_parser("scan-phi", help="scan an output folder for identifiers (exit 5 on any hit)")
    scan.add_argument("dir", help="a medcurate output folder")
    scan.add_argument("recipes", nargs="*", help="recipes whose inputs hold the identifiers to look for")
    scan.add_argument("--identifiers", help="a file of identifiers, one per line, optionally 'kind<TAB>value'")
    scan.add_argument("--key-file", help="the pseudonymization key the run used (with recipes)")
    link = sub.add_parser("linkage", help="read an encrypted linkage table")
    lsub = link.add_subparsers(dest="linkage_command", required=True)
    show = lsub.add_parser("show", help="decrypt and print the records as JSON lines")
    show.add_argument("file")
    show.add_argument("--linkage-key-file", required=True)
    return parser


def main(argv=None) -> int:
    _quiet_beam_logging()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("catalog", "scan-phi", "linkage") and rest:
        parser.error("unrecognized arguments: " + " ".join(rest))
    handler = {"run": cmd_run, "demo": cmd_demo, "catalog": cmd_catalog, "scan-phi": cmd_scan_phi,
               "linkage": cmd_linkage}[args.command]
    return handler(args, rest)


if __name__ == "__main__":
    sys.exit(main())
