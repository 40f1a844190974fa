"""Run options: medcurate's own flags are parsed here; every other flag goes to Beam untouched.

``--runner``, ``--direct_num_workers``, ``--direct_running_mode``, Dataflow/Flink/Spark options, ``--setup_file``:
all pass through. With no ``--runner`` the local runner is Beam's FnApiRunner (the DirectRunner's own engine, built
as the DirectRunner builds it), so a local run never tries to download the Prism runner.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

from medcurate.transforms.pseudonym import Secret

DEFAULT_SHARD_MAX_BYTES = 512 * 1024**2
DEFAULT_SHARD_MAX_COUNT = 10000


def parse_ratios(text: str) -> tuple:
    pairs = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value:
            raise argparse.ArgumentTypeError("split ratios look like train=0.8,val=0.1,test=0.1")
        pairs.append((name.strip(), float(value)))
    total = sum(v for _, v in pairs)
    if abs(total - 1.0) > 1e-6 or any(v < 0 for _, v in pairs):
        raise argparse.ArgumentTypeError("split ratios must be non-negative and add up to 1")
    return tuple(pairs)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (local path, gs:// or s3://)")
    parser.add_argument("--key-file", help="file holding the pseudonymization key (else $MEDCURATE_KEY)")
    parser.add_argument("--limit", type=int, help="read at most N items per recipe (DICOM: N folders)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="resample/DRR backend: CuPy on a GPU when present (auto), or force one")
    parser.add_argument("--split-ratios", type=parse_ratios, default=(("train", 0.8), ("val", 0.1), ("test", 0.1)),
                        help="patient-level split ratios, e.g. train=0.8,val=0.1,test=0.1")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds: every patient gets a fold 0..N-1 from its keyed hash (default 5)")
    parser.add_argument("--min-k", type=int, default=0,
                        help="generalize quasi-identifiers (age bands, day-offset bands, dates) until every "
                             "combination is shared by at least K patients; 0 reports the risk only (default)")
    parser.add_argument("--shard-max-bytes", type=int, default=DEFAULT_SHARD_MAX_BYTES)
    parser.add_argument("--shard-max-count", type=int, default=DEFAULT_SHARD_MAX_COUNT)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing medcurate output folder")
    parser.add_argument("--linkage-out", help="write an encrypted linkage table (original ids -> pseudonyms, date "
                        "offsets) to this file, outside --out; needs --linkage-key-file")
    parser.add_argument("--linkage-key-file", help="file holding the linkage encryption key (32+ bytes)")


@dataclass
class RunConfig:
    recipes: list  # [Recipe]
    out: str
    key: Secret
    limit: int | None = None
    device: str = "auto"
    split_ratios: tuple = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES
    shard_max_count: int = DEFAULT_SHARD_MAX_COUNT
    folds: int = 5
    min_k: int = 0
    beam_args: list = field(default_factory=list)
    linkage_out: str | None = None  # encrypted linkage file, outside the output folder
    linkage_key: Secret | None = None

    def pipeline_options(self) -> PipelineOptions:
        return PipelineOptions(list(self.beam_args))

    def runner(self):
        """The runner named by ``--runner``; without one, Beam's FnApiRunner, the engine the DirectRunner itself
        runs. (Beam 2.6x+'s DirectRunner first tries to download the Prism runner binary from GitHub: a network
        fetch at run time, and another runner when it succeeds. Naming the FnApiRunner avoids both.)"""
        if any(a == "--runner" or a.startswith("--runner=") for a in self.beam_args):
            return None  # Beam resolves it from the options
        return local_runner(self.pipeline_options())


def local_runner(options: PipelineOptions):
    """FnApiRunner with the pipeline options in its provision info, as the DirectRunner builds it; honours
    --direct_num_workers and --direct_running_mode (in_memory, multi_threading, multi_processing)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)
