"""Wiring shared by all stages: one DoFn that runs a plain function and turns failures into quarantine records.

Stage logic lives in plain functions (``fn(element) -> iterable``) that raise ``QuarantineError`` for a bad item.
``StageFn`` wraps one as a Beam DoFn with a main output and a ``quarantine`` output, and counts per stage:
``<stage>/in``, ``<stage>/out``, ``<stage>/quarantined`` and ``<stage>/quarantined_units`` (discovered units lost).
Unexpected exceptions become ``internal_error`` records naming only the exception type: messages from libraries can
quote file names or header values, so they never reach an output. Set MEDCURATE_RAISE=1 to re-raise instead.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from medcurate.schemas.records import Item, QuarantineError, QuarantineRecord, Sample, SampleKey
from medcurate.transforms.io import try_sha256

QUARANTINE = "quarantine"
METRICS_NAMESPACE = "medcurate"
log = logging.getLogger("medcurate")


class SampleKeyCoder(beam.coders.Coder):
    """Deterministic coder for SampleKey, so it can key a GroupByKey on any runner."""

    def encode(self, value: SampleKey) -> bytes:
        return str(value).encode("ascii")

    def decode(self, encoded: bytes) -> SampleKey:
        return SampleKey.parse(encoded.decode("ascii"))

    def is_deterministic(self) -> bool:
        return True


beam.coders.registry.register_coder(SampleKey, SampleKeyCoder)


def counter(stage: str, name: str):
    return Metrics.counter(METRICS_NAMESPACE, f"{stage}/{name}")


def identity_of(element: Any) -> dict:
    """Dataset, key, units and source hashes of an element, for its quarantine record."""
    if isinstance(element, Sample):
        return {
            "dataset": element.dataset,
            "key": str(element.key),
            "units": element.units,
            "source_sha256": tuple(element.source_sha256),
        }
    if isinstance(element, Item):
        return {"dataset": element.dataset, "key": None, "units": element.units, "source_sha256": None, "item": element}
    if hasattr(element, "quarantine_identity"):
        return element.quarantine_identity()
    if isinstance(element, tuple) and len(element) == 2 and hasattr(element[1], "__iter__"):
        # A grouped element (group key, members): the members carry the identity.
        members = list(element[1])
        if len(members) == 1:
            return identity_of(members[0])
        ids = [identity_of(m) for m in members]
        return {
            "dataset": ids[0]["dataset"] if ids else "unknown",
            "key": None,
            "units": sum(i["units"] for i in ids),
            "source_sha256": tuple(sorted({h for i in ids for h in (i["source_sha256"] or ())})),
        }
    return {"dataset": "unknown", "key": None, "units": 1, "source_sha256": ()}


def quarantine_record(stage: str, element: Any, exc: Exception, derived: bool = False) -> QuarantineRecord:
    ident = identity_of(element)
    if isinstance(exc, QuarantineError):
        reason, message, detail = exc.reason, exc.message, exc.detail
        hashes = exc.source_sha256 if getattr(exc, "source_sha256", None) else ident["source_sha256"]
        units = exc.units if exc.units is not None else ident["units"]
    else:
        reason, message, detail = "internal_error", f"unexpected {type(exc).__name__} in stage {stage}", ()
        hashes, units = ident["source_sha256"], ident["units"]
    if hashes is None and "item" in ident:
        hashes = try_sha256(ident["item"].uri)
    return QuarantineRecord(
        dataset=ident["dataset"],
        stage=getattr(exc, "stage", None) or stage,
        reason=reason,
        message=message,
        source_sha256=tuple(hashes or ()),
        key=ident["key"],
        units=0 if derived else units,
        detail=detail,
    )


class StageFn(beam.DoFn):
    """Runs ``fn`` on each element; ``fn`` may define ``setup()`` for per-worker resources (models, engines).

    ``derived=True`` marks stages whose failures lose a derived product, not a discovered unit (the sample itself is
    still written), so their quarantine records carry ``units=0``.
    """

    def __init__(self, stage: str, fn: Callable[[Any], Iterable[Any]], derived: bool = False):
        self.stage = stage
        self.fn = fn
        self.derived = derived

    def setup(self):
        if hasattr(self.fn, "setup"):
            self.fn.setup()
        self._in = counter(self.stage, "in")
        self._out = counter(self.stage, "out")
        self._q = counter(self.stage, "quarantined")
        self._qu = counter(self.stage, "quarantined_units")

    def process(self, element):
        self._in.inc()
        try:
            outputs = list(self.fn(element))
        except Exception as exc:  # noqa: BLE001 - every failure of one item becomes a record, never a crash
            if not isinstance(exc, QuarantineError):
                if os.environ.get("MEDCURATE_RAISE") == "1":
                    raise
                log.warning("stage %s: unexpected %s (item quarantined)", self.stage, type(exc).__name__)
            record = quarantine_record(self.stage, element, exc, self.derived)
            self._q.inc()
            self._qu.inc(record.units)
            yield beam.pvalue.TaggedOutput(QUARANTINE, record)
            return
        for out in outputs:
            if isinstance(out, QuarantineRecord):
                self._q.inc()
                self._qu.inc(out.units)
                yield beam.pvalue.TaggedOutput(QUARANTINE, out)
            else:
                self._out.inc()
                yield out


class Stage(beam.PTransform):
    """``pcoll | Stage("read", fn)`` -> (good, quarantine)."""

    def __init__(self, stage: str, fn: Callable[[Any], Iterable[Any]], derived: bool = False):
        super().__init__(label=stage)
        self.stage = stage
        self.fn = fn
        self.derived = derived

    def expand(self, pcoll):
        results = pcoll | f"{self.stage}/run" >> beam.ParDo(StageFn(self.stage, self.fn, self.derived)).with_outputs(
            QUARANTINE, main="ok"
        )
        return results.ok, results[QUARANTINE]


class Bound:
    """A plain ``fn(element, ctx) -> output`` bound to a context, as a stage function yielding that one output.

    Per-worker resources: if ``fn`` has a ``setup(ctx)`` attribute it is called once per worker.
    """

    def __init__(self, fn: Callable[[Any, Any], Any], ctx: Any):
        self.fn = fn
        self.ctx = ctx

    def setup(self):
        if hasattr(self.fn, "setup"):
            self.fn.setup(self.ctx)

    def __call__(self, element):
        out = self.fn(element, self.ctx)
        if isinstance(out, list):  # several outputs (a series that splits into samples, with records)
            yield from out
        elif out is not None:
            yield out
