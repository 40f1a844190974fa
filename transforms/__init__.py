"""One module (or subpackage) per stage: discover, read, deid, harmonize, resample, drr, caption, shard.

Logic lives in plain functions and small callable classes; ``common.Stage`` wraps them as Beam transforms with a
quarantine output and counters.
"""
