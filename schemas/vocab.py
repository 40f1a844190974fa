"""Controlled vocabularies (``schemas/vocab/*.yaml``): raw header or table values -> harmonized values.

An unmapped value is never guessed: ``lookup`` returns None, the caller keeps the raw value, and the run summary
lists it so the table can be extended.
"""
from __future__ import annotations

import functools
import os
import re

import yaml

from medcurate.schemas import VOCAB_DIR


def normalize(raw) -> str:
    return re.sub(r"[\s_]+", " ", str(raw or "")).strip().upper()


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict:
    with open(os.path.join(VOCAB_DIR, f"{name}.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.lru_cache(maxsize=None)
def _index(name: str) -> dict:
    doc = load(name)
    index = {}
    for value, entry in doc["values"].items():
        for spelling in [value] + list(entry.get("dicom", [])) + list(entry.get("synonyms", [])):
            index[normalize(spelling)] = value
            index[normalize(spelling).replace(" ", "")] = value
    return index


def lookup(name: str, raw) -> str | None:
    key = normalize(raw)
    if not key:
        return None
    index = _index(name)
    return index.get(key) or index.get(key.replace(" ", ""))


def code(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return load(name)["values"].get(value, {}).get("code")


def version(name: str) -> str:
    return str(load(name)["version"])


def label_space(name: str) -> dict:
    return load("findings")["label_spaces"][name]
