"""Discover: recipe -> items. Every file the adapter's patterns match becomes an item, and so does every label row
that points to a missing file and every companion (label mask, report) with no image: nothing is dropped here,
the read stage quarantines what cannot be used, so ``discovered = written + quarantined`` holds in items.
"""
from __future__ import annotations

import csv
import io
import posixpath
from collections import defaultdict
from typing import Iterable, Iterator

import apache_beam as beam

from medcurate.schemas.recipe import Recipe
from medcurate.schemas.records import Item, QuarantineRecord
from medcurate.transforms.common import QUARANTINE, counter
from medcurate.transforms.io import match, match_sizes, read_bytes

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _stem(path: str) -> str:
    name = posixpath.basename(path)
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0]


def _pattern_to_glob(pattern: str) -> str:
    return pattern.replace("{name}", "*").replace("{stem}", "*")


def _companion(recipe: Recipe, pattern: str, image_uri: str) -> str:
    name = posixpath.basename(image_uri)
    return recipe.path(pattern.format(name=name, stem=_stem(image_uri)))


def discover_dicom(recipe: Recipe, limit: int | None) -> Iterator[Item]:
    files = match_sizes(recipe.root, recipe.source.get("pattern", "**/*"))
    if limit:
        # Series usually live one per folder: a limit keeps whole folders so it does not cut series short.
        by_dir: dict[str, list] = defaultdict(list)
        for f in files:
            by_dir[posixpath.dirname(f[0])].append(f)
        files = [f for d in sorted(by_dir)[:limit] for f in by_dir[d]]
    for uri, size in files:
        yield Item(recipe.id, "dicom", uri, size=size)


def discover_nifti(recipe: Recipe, limit: int | None) -> Iterator[Item]:
    images = [f for f in match(recipe.root, recipe.source["images"]) if f.lower().endswith(NIFTI_SUFFIXES)]
    others = [f for f in match(recipe.root, recipe.source["images"]) if not f.lower().endswith(NIFTI_SUFFIXES)]
    labels_pattern = recipe.source.get("labels")
    structures = recipe.source.get("structures_csv")
    used_labels: set[str] = set()
    for uri in images[:limit] if limit else images:
        companions = []
        if labels_pattern:
            label_uri = _companion(recipe, labels_pattern, uri)
            companions.append(("label", label_uri))
            used_labels.add(label_uri)
        if structures:
            companions.append(("structures", recipe.path(structures)))
        yield Item(recipe.id, "nifti", uri, companions=tuple(companions))
    for uri in others[:limit] if limit else others:
        yield Item(recipe.id, "unknown", uri)
    if labels_pattern and not limit:
        for label_uri in match(recipe.root, _pattern_to_glob(labels_pattern)):
            if label_uri not in used_labels:
                yield Item(recipe.id, "orphan", label_uri, companions=(("role", "label"),))


def _read_table(recipe: Recipe) -> list[dict]:
    data = read_bytes(recipe.path(recipe.source["labels_csv"]))
    text = data.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def discover_image_csv(recipe: Recipe, limit: int | None) -> Iterator[Item]:
    columns = recipe.source["columns"]
    rows = _read_table(recipe)
    by_name: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_name[(row.get(columns["image"]) or "").strip()].append(row)
    images = match(recipe.root, recipe.source["images"])
    if limit:
        images = images[:limit]
    reports = recipe.source.get("reports")
    seen: set[str] = set()
    for uri in images:
        name = posixpath.basename(uri)
        seen.add(name)
        companions = (("report", _companion(recipe, reports, uri)),) if reports else ()
        matched = by_name.get(name, [])
        row = tuple(sorted((k, v if v is not None else "") for k, v in matched[0].items())) if len(matched) == 1 else ()
        kind = "image" if len(matched) <= 1 else "duplicate-rows"
        yield Item(recipe.id, kind, uri, companions=companions, row=row)
    if limit:
        return
    base = posixpath.dirname(images[0]) if images else recipe.root
    for name in sorted(by_name):
        if name not in seen:
            for row in by_name[name]:
                # The uri is where the row says the file is; it is never written anywhere.
                uri = posixpath.join(base, name) if name else base
                yield Item(recipe.id, "missing", uri, row=tuple(sorted((k, v or "") for k, v in row.items())))
    if reports:
        stems = {_stem(n) for n in seen}
        for uri in match(recipe.root, _pattern_to_glob(reports)):
            if _stem(uri) not in stems:
                yield Item(recipe.id, "orphan", uri, companions=(("role", "report"),))


ADAPTERS = {
    "dicom-folder": discover_dicom,
    "nifti-folder": discover_nifti,
    "image-csv": discover_image_csv,
}


def discover(recipe: Recipe, limit: int | None = None) -> Iterable[Item]:
    return ADAPTERS[recipe.source["adapter"]](recipe, limit)


class _DiscoverFn(beam.DoFn):
    def __init__(self, limit: int | None):
        self.limit = limit

    def setup(self):
        self._items = counter("discover", "items")
        self._failed = counter("discover", "failed_recipes")

    def process(self, recipe: Recipe):
        try:
            items = list(discover(recipe, self.limit))
        except Exception as exc:  # noqa: BLE001 - a dataset that cannot be listed is reported, not fatal
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                QUARANTINE,
                QuarantineRecord(
                    dataset=recipe.id,
                    stage="discover",
                    reason="source_unreadable",
                    message=f"the dataset source could not be listed ({type(exc).__name__})",
                    units=0,
                ),
            )
            return
        for item in items:
            self._items.inc()
            yield item


class Discover(beam.PTransform):
    """Recipes -> (items, quarantine)."""

    def __init__(self, recipes: list[Recipe], limit: int | None = None):
        super().__init__()
        self.recipes = recipes
        self.limit = limit

    def expand(self, pbegin):
        results = (
            pbegin
            | "recipes" >> beam.Create(self.recipes, reshuffle=False)
            | "list" >> beam.ParDo(_DiscoverFn(self.limit)).with_outputs(QUARANTINE, main="items")
        )
        # Break fusion so reading spreads over workers instead of following the one recipe element.
        return results.items | "spread" >> beam.Reshuffle(), results[QUARANTINE]
