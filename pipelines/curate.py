"""The curation pipeline: recipes -> shards + catalog + quarantine + summary.

    Discover -> Read -> Deidentify -> Harmonize -> Resample -> ProjectDRR -> Caption -> Encode -> Release -> Shard
        \\________\\__________\\____________\\____________\\___________\\___________\\_________\\-> Quarantine  -> Catalog

Stages are ``Stage(name, fn)`` wrappers over plain functions (``transforms/``); each returns (good, quarantine).
"""
from __future__ import annotations

import apache_beam as beam

from medcurate.catalog import build as catalog_build
from medcurate.pipelines.options import RunConfig
from medcurate.transforms.caption import CaptionStage
from medcurate.transforms.common import Stage
from medcurate.transforms.context import Context
from medcurate.transforms.deid import Deidentify
from medcurate.transforms.deid.gate import GateKey
from medcurate.transforms.discover import Discover
from medcurate.transforms.drr import ProjectDRR
from medcurate.transforms.harmonize import Harmonize
from medcurate.transforms.pseudonym import Pseudonymizer
from medcurate.transforms.read import Read
from medcurate.transforms.release import resolve_patient, risk_report
from medcurate.transforms.resample import Resample
from medcurate.transforms.shard import encode_parts, plan_shards, write_shard


class _Encode:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def __call__(self, sample):
        yield from encode_parts(sample, self.out_dir)


def _write(group, out_dir, gate_key, table, risk):
    return write_shard(group, out_dir, gate_key, table, level=risk["applied"])


def _assign(part, plan):
    return plan[part.key], part


def _finalize(_, out_dir, cards, gate_key, linkage_out, discovered, results, quarantine, table, risk):
    from apache_beam.io.filesystems import FileSystems

    from medcurate.transforms.io import join
    from medcurate.transforms.shard import PARTS_DIR

    parts = join(out_dir, PARTS_DIR)
    if FileSystems.exists(parts):  # written parts are deleted shard by shard; this removes the folders
        FileSystems.delete([parts])
    yield catalog_build.finalize(out_dir, cards, catalog_build.group_units(discovered), results, quarantine,
                                 gate_key, table, linkage_out, risk)


class Curate(beam.PTransform):
    """The whole job as one composite: returns the summary PCollection (one dict)."""

    def __init__(self, config: RunConfig):
        super().__init__()
        self.config = config
        self.ctx = Context(
            recipes={r.id: r for r in config.recipes},
            pseudo=Pseudonymizer(config.key),
            device=config.device,
            split_ratios=tuple(config.split_ratios),
            folds=config.folds,
            options={"linkage_key": config.linkage_key} if config.linkage_key is not None else {},
        )

    def expand(self, pbegin):
        cfg, ctx = self.config, self.ctx
        items, q_discover = pbegin | "discover" >> Discover(cfg.recipes, cfg.limit)
        samples, q_read = items | "read" >> Read(ctx)
        samples, q_deid = samples | "deidentify" >> Stage("deidentify", Deidentify(ctx))
        samples, q_harm = samples | "harmonize" >> Stage("harmonize", Harmonize(ctx))
        samples, q_res = samples | "resample" >> Stage("resample", Resample(ctx))
        samples, q_drr = samples | "drr" >> Stage("drr", ProjectDRR(ctx))
        samples, q_cap = samples | "caption" >> Stage("caption", CaptionStage(ctx))
        encoded, q_enc = samples | "encode" >> Stage("encode", _Encode(cfg.out))
        resolved = (
            encoded
            | "by-patient" >> beam.Map(lambda part: (part.row["patient_id"], part))
            | "group-patients" >> beam.GroupByKey()
            | "resolve-patients" >> beam.FlatMap(resolve_patient).with_outputs("qi", main="parts")
        )
        shard_samples = resolved.parts
        risk = (
            resolved.qi
            | "all-qi" >> beam.combiners.ToList()
            | "risk" >> beam.Map(risk_report, cfg.min_k)
        )

        plan = (
            shard_samples
            | "sizes" >> beam.Map(lambda s: ((s.product, s.split), (s.key, s.size)))
            | "group-sizes" >> beam.GroupByKey()
            | "plan" >> beam.FlatMap(plan_shards, cfg.shard_max_bytes, cfg.shard_max_count)
        )
        gate_key = GateKey.from_pseudonymizer(ctx.pseudo)
        table = (
            shard_samples
            | "fingerprints" >> beam.FlatMap(lambda part: part.gate.items())
            | "fingerprint-table" >> beam.combiners.ToDict()
        )
        written = (
            shard_samples
            | "assign" >> beam.Map(_assign, plan=beam.pvalue.AsDict(plan))
            | "group-shards" >> beam.GroupByKey()
            | "write-shards" >> beam.Map(_write, cfg.out, gate_key, table=beam.pvalue.AsSingleton(table),
                                         risk=beam.pvalue.AsSingleton(risk))
        )
        results = written | "all-results" >> beam.combiners.ToList()
        quarantine = (
            (q_discover, q_read, q_deid, q_harm, q_res, q_drr, q_cap, q_enc)
            | "quarantine" >> beam.Flatten()
            | "all-quarantine" >> beam.combiners.ToList()
        )
        discovered = (
            items
            | "units" >> beam.Map(lambda i: (i.dataset, i.units))
            | "units-per-dataset" >> beam.CombinePerKey(sum)
            | "all-units" >> beam.combiners.ToList()
        )
        cards = [r.public() for r in cfg.recipes]
        return (
            pbegin
            | "finalize-trigger" >> beam.Create([None])
            | "finalize" >> beam.FlatMap(
                _finalize,
                cfg.out,
                cards,
                gate_key,
                cfg.linkage_out,
                discovered=beam.pvalue.AsSingleton(discovered),
                results=beam.pvalue.AsSingleton(results),
                quarantine=beam.pvalue.AsSingleton(quarantine),
                table=beam.pvalue.AsSingleton(table),
                risk=beam.pvalue.AsSingleton(risk),
            )
        )


def run_pipeline(config: RunConfig):
    """Build and run; returns (PipelineResult, summary dict read back from the output)."""
    pipeline = beam.Pipeline(runner=config.runner(), options=config.pipeline_options())
    _ = pipeline | "curate" >> Curate(config)
    result = pipeline.run()
    result.wait_until_finish()
    return result
