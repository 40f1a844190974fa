"""Discover: recipe -> items. Every file the adapter's patterns match becomes an item, and so does every label row
that points to a missing file and every companion (label mask, report) with no image: nothing is dropped here,
the read stage quarantines what cannot be used, so ``discovered = written + quarantined`` holds in items.

Adapters (``source.adapter``):
- ``dicom-folder``: every file under ``root`` matching ``pattern`` (default ``**/*``).
- ``nifti-folder``: volumes matching ``images`` (NIfTI ``.nii``/``.nii.gz``; NRRD ``.nrrd``/``.nhdr``, MetaImage
  ``.mha``/``.mhd`` and Analyze/NIfTI pairs ``.hdr``+``.img`` through SimpleITK), masks by the ``labels`` pattern,
  names from ``structures_csv``.
- ``msd``: a Medical Segmentation Decathlon task: ``dataset.json`` lists training images with labels and test
  images; multi-channel 4D images are split into one sample per channel named by its ``modality`` entry.
- ``nnunet``: an nnU-Net raw dataset: ``imagesTr/<case>_<XXXX><ending>`` channels, ``labelsTr/<case><ending>``,
  ``imagesTs``; names from ``dataset.json`` (``channel_names``/``modality``, ``labels``, ``file_ending``).
- ``totalsegmentator``: one folder per subject with ``ct.nii.gz`` and ``segmentations/<structure>.nii.gz``.
- ``image-csv``: 2D images (PNG, JPEG, TIFF) matching ``images`` with a label table row each (ChestX-ray14-like).
Any adapter can take a label table (``labels_csv`` or ``labels_json`` with ``columns``; rows are matched on
``columns.image`` against an item's file name, stem, or case/subject id) and reports (``reports`` pattern with
``{name}``, ``{stem}``, ``{case}`` or ``{study}``, or a ``columns.report`` text column).
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from collections import defaultdict
from typing import Iterable, Iterator, Optional

import apache_beam as beam

from medcurate.schemas.recipe import Recipe, RecipeError
from medcurate.schemas.records import Item, QuarantineRecord
from medcurate.transforms.common import QUARANTINE, counter
from medcurate.transforms.io import match, match_sizes, read_bytes, relpath

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
DATA_SUFFIXES = (".raw.gz", ".raw", ".zraw", ".img.gz", ".img")  # detached data of .mhd/.nhdr/.hdr headers
KNOWN_SUFFIXES = VOLUME_SUFFIXES + DATA_SUFFIXES + (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".txt", ".json")


def _stem(path: str) -> str:
    name = posixpath.basename(path)
    for suffix in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0]


def _is_volume(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES) and not posixpath.basename(path).startswith("._")


def _pattern_to_glob(pattern: str) -> str:
    return re.sub(r"\{[a-z]+\}", "*", pattern)


def _companion(recipe: Recipe, pattern: str, image_uri: str, **fields) -> str:
    name = posixpath.basename(image_uri)
    return recipe.path(pattern.format(name=name, stem=_stem(image_uri), **{"case": _stem(image_uri), **fields}))


def _sized(files: list) -> dict:
    return dict(files)


# -- label tables -------------------------------------------------------------------------------------------------
def _read_rows(recipe: Recipe) -> list[dict]:
    src = recipe.source
    if "labels_json" in src:
        doc = json.loads(read_bytes(recipe.path(src["labels_json"])).decode("utf-8-sig"))
        image_col = src.get("columns", {}).get("image", "image")
        if isinstance(doc, dict):
            return [{image_col: k, **{str(a): _cell(b) for a, b in v.items()}} for k, v in doc.items()]
        return [{str(a): _cell(b) for a, b in row.items()} for row in doc]
    rows = []
    tables = src["labels_csv"] if isinstance(src["labels_csv"], list) else [src["labels_csv"]]
    for table in tables:  # several tables (CheXpert's train.csv and valid.csv) are read as one
        text = read_bytes(recipe.path(table)).decode("utf-8-sig")
        delimiter = src.get("csv_delimiter")
        if not delimiter:
            first = text.split("\n", 1)[0]
            delimiter = ";" if first.count(";") > first.count(",") else ("\t" if "\t" in first else ",")
        rows += csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return rows


def _cell(value) -> str:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return "" if value is None else str(value)


class Rows:
    """A recipe's label table indexed by ``columns.image``; items look their row up by several names."""

    def __init__(self, recipe: Recipe):
        self.by_name: dict[str, list[dict]] = defaultdict(list)
        self.used: set[str] = set()
        self.present = "labels_csv" in recipe.source or "labels_json" in recipe.source
        if self.present:
            column = recipe.source["columns"][_row_key(recipe)]
            table = _read_rows(recipe)
            header = set().union(*(row.keys() for row in table)) if table else set()
            view = recipe.source["columns"].get("view", [])
            wanted = [column] + list(recipe.source.get("label_columns", [])) + (
                view if isinstance(view, list) else [])
            missing = [c for c in wanted if table and c not in header]
            if missing:
                raise RecipeError(f"{recipe.id}: label table has no column {', '.join(map(repr, missing))} "
                                  "(fix: source.columns.image / source.label_columns must name its header)")
            for row in table:
                self.by_name[(row.get(column) or "").strip().replace("\\", "/")].append(row)

    def lookup(self, *names: str) -> tuple[tuple, bool]:
        """(row as sorted pairs or (), whether several rows name it)."""
        for name in names:
            rows = self.by_name.get(name)
            if rows:
                self.used.add(name)
                if len(rows) > 1:
                    return (), True
                return tuple(sorted((k, v if v is not None else "") for k, v in rows[0].items())), False
        return (), False

    def unused(self) -> list[tuple[str, dict]]:
        return [(name, row) for name in sorted(self.by_name) if name not in self.used for row in self.by_name[name]]


def _row_key(recipe: Recipe) -> str:
    """Which table column names a row's item: ``image`` (a row per file) or ``study`` (a row per study)."""
    return recipe.source.get("match_rows_on", "image")


def _path_names(recipe: Recipe, uri: str) -> list[str]:
    """Names a table row may give a file by, most specific first: its path under the dataset folder's parent
    (CheXpert's "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"), under root, each shorter path
    suffix, the file name, the stem. Tables that name files by bare file names keep working; tables whose file
    names repeat across folders match on the longer paths."""
    rel = relpath(uri, recipe.root)
    if _row_key(recipe) == "study":  # MIMIC-CXR: files/p10/p10000032/s50414267/<dicom_id>.jpg -> 50414267
        study = recipe.path_fields(rel).get("study")
        return [study] if study else []
    parts = rel.split("/")
    names = [posixpath.basename(recipe.root.rstrip("/")) + "/" + rel]
    names += ["/".join(parts[i:]) for i in range(len(parts))]
    return names + [_stem(uri)]


def _with_row(recipe: Recipe, rows: Rows, item: Item, *names: str) -> Item:
    row, duplicated = rows.lookup(*names)
    kind = "duplicate-rows" if duplicated else item.kind
    companions = list(item.companions)
    reports = recipe.source.get("reports")
    if reports:
        study = dict(row).get(recipe.source.get("columns", {}).get("study", ""), "")
        companions.append(("report", _companion(recipe, reports, item.uri, case=names[-1] if names else "",
                                                study=study)))
    return Item(item.dataset, kind, item.uri, tuple(companions), row, item.units, item.size, item.info)


def _missing_rows(recipe: Recipe, rows: Rows, base: str) -> Iterator[Item]:
    for name, row in rows.unused():
        uri = posixpath.join(base, name) if name else base  # where the row says the file is; never written
        yield Item(recipe.id, "missing", uri, row=tuple(sorted((k, v or "") for k, v in row.items())))


def _orphans(recipe: Recipe, candidates: list, used: set, role: str) -> Iterator[Item]:
    for uri, size in candidates:
        if uri not in used:
            yield Item(recipe.id, "orphan", uri, companions=(("role", role),), size=size)


# -- adapters -----------------------------------------------------------------------------------------------------
def discover_dicom(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    files = match_sizes(recipe.root, recipe.source.get("pattern", "**/*"))
    if limit:
        # Series usually live one per folder: a limit keeps whole folders so it does not cut series short.
        by_dir: dict[str, list] = defaultdict(list)
        for f in files:
            by_dir[posixpath.dirname(f[0])].append(f)
        files = [f for d in sorted(by_dir)[:limit] for f in by_dir[d]]
    for uri, size in files:
        yield Item(recipe.id, "dicom", uri, size=size)


def _data_companions(files: list) -> tuple[dict, set]:
    """Header files (.mhd, .nhdr, .hdr) -> their detached data file (same stem, same folder)."""
    by_stem = {(posixpath.dirname(u), _stem(u)): u for u, _ in files if u.lower().endswith(DATA_SUFFIXES)}
    pairs = {}
    for uri, _ in files:
        if uri.lower().endswith((".mhd", ".nhdr", ".hdr")):
            data = by_stem.get((posixpath.dirname(uri), _stem(uri)))
            if data:
                pairs[uri] = data
    return pairs, set(pairs.values())


def discover_nifti(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    src = recipe.source
    files = match_sizes(recipe.root, src["images"])
    pairs, data_files = _data_companions(files)
    volumes = [(u, s) for u, s in files if _is_volume(u)]
    others = [(u, s) for u, s in files if not _is_volume(u) and u not in data_files]
    if limit:
        volumes, others = volumes[:limit], others[: max(0, limit - len(volumes))]
    rows = Rows(recipe)
    labels_pattern, structures = src.get("labels"), src.get("structures_csv")
    used_labels: set[str] = set()
    for uri, size in volumes:
        companions = []
        if uri in pairs:
            companions.append(("data", pairs[uri]))
        if labels_pattern:
            label_uri = _companion(recipe, labels_pattern, uri)
            companions.append(("label", label_uri))
            used_labels.add(label_uri)
        if structures:
            companions.append(("structures", recipe.path(structures)))
        item = Item(recipe.id, "volume", uri, tuple(companions), size=size)
        yield _with_row(recipe, rows, item, posixpath.basename(uri), _stem(uri))
    for uri, size in others:
        yield Item(recipe.id, "unknown", uri, size=size)
    if limit:
        return
    if labels_pattern:
        yield from _orphans(recipe, match_sizes(recipe.root, _pattern_to_glob(labels_pattern)), used_labels, "label")
    yield from _missing_rows(recipe, rows, recipe.root)


def _dataset_json(recipe: Recipe) -> dict:
    return json.loads(read_bytes(recipe.path(recipe.source.get("dataset_json", "dataset.json"))).decode("utf-8-sig"))


def _label_names(doc: dict) -> dict:
    """dataset.json labels, as MSD ({"1": "liver"}) or nnU-Net v2 ({"liver": 1}) write them."""
    names = {}
    for a, b in (doc.get("labels") or {}).items():
        if str(a).isdigit():
            names[int(a)] = str(b)
        elif isinstance(b, int) or str(b).isdigit():
            names[int(b)] = str(a)
    return {k: v for k, v in names.items() if k != 0}


def _channels(doc: dict) -> dict:
    raw = doc.get("channel_names") or doc.get("modality") or {}
    return {int(k): str(v) for k, v in raw.items() if str(k).isdigit()}


def _info(doc: dict, **extra) -> tuple:
    info = {"label_names": json.dumps(_label_names(doc), sort_keys=True),
            "channels": json.dumps(_channels(doc), sort_keys=True), **extra}
    return tuple(sorted(info.items()))


def discover_msd(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    doc = _dataset_json(recipe)
    sizes = _sized(match_sizes(recipe.root, "**/*"))
    rows = Rows(recipe)
    listed: set[str] = set()
    entries = [(e["image"], e.get("label")) for e in doc.get("training", [])]
    entries += [(e if isinstance(e, str) else e["image"], None) for e in doc.get("test", [])]
    if limit:
        entries = entries[:limit]
    for image, label in entries:
        uri = recipe.path(image)
        listed.add(uri)
        companions = []
        if label:
            label_uri = recipe.path(label)
            listed.add(label_uri)
            companions.append(("label", label_uri))
        if uri not in sizes:
            yield Item(recipe.id, "missing", uri, info=(("listed_in", "dataset.json"),))
            continue
        item = Item(recipe.id, "volume", uri, tuple(companions), size=sizes[uri],
                    info=_info(doc, split_4d="channels"))
        yield _with_row(recipe, rows, item, posixpath.basename(uri), _stem(uri))
    if limit:
        return
    for folder, role in (("imagesTr", "image"), ("imagesTs", "image"), ("labelsTr", "label")):
        candidates = [(u, s) for u, s in match_sizes(recipe.root, f"{folder}/*")]
        yield from _orphans(recipe, candidates, listed, role)
    yield from _missing_rows(recipe, rows, recipe.root)


def discover_nnunet(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    doc = _dataset_json(recipe)
    ending = doc.get("file_ending", ".nii.gz")
    channel_re = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    channels = _channels(doc)
    rows = Rows(recipe)
    used_labels: set[str] = set()
    count = 0
    for folder, labelled in (("imagesTr", True), ("imagesTs", False)):
        for uri, size in match_sizes(recipe.root, f"{folder}/*"):
            m = channel_re.match(posixpath.basename(uri))
            if not m:
                yield Item(recipe.id, "unknown", uri, size=size)
                continue
            if limit and count >= limit:
                return
            count += 1
            case, channel = m.group("case"), int(m.group("channel"))
            companions = []
            if labelled:
                label_uri = recipe.path(f"labelsTr/{case}{ending}")
                companions.append(("label", label_uri))
                used_labels.add(label_uri)
            item = Item(recipe.id, "volume", uri, tuple(companions), size=size,
                        info=_info(doc, case=case, channel=channels.get(channel, f"channel {channel}")))
            yield _with_row(recipe, rows, item, posixpath.basename(uri), case)
    yield from _orphans(recipe, match_sizes(recipe.root, "labelsTr/*"), used_labels, "label")
    yield from _missing_rows(recipe, rows, recipe.root)


def discover_totalsegmentator(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    image_name = recipe.source.get("images", "ct.nii.gz")
    rows = Rows(recipe)
    subjects = sorted({posixpath.dirname(u) for u, _ in match_sizes(recipe.root, "**/*")
                       if posixpath.basename(u) == image_name})
    sizes = _sized(match_sizes(recipe.root, f"*/{image_name}"))
    for n, folder in enumerate(subjects):
        if limit and n >= limit:
            return
        uri = posixpath.join(folder, image_name)
        subject = posixpath.basename(folder)
        item = Item(recipe.id, "volume", uri, (("structure-dir", posixpath.join(folder, "segmentations")),),
                    size=sizes.get(uri), info=(("case", subject),))
        yield _with_row(recipe, rows, item, subject)
    if not limit:
        yield from _missing_rows(recipe, rows, recipe.root)


def discover_image_csv(recipe: Recipe, limit: Optional[int]) -> Iterator[Item]:
    rows = Rows(recipe)
    images = match_sizes(recipe.root, recipe.source["images"])
    if limit:
        images = images[:limit]
    seen: set[str] = set()
    for uri, size in images:
        seen.add(_stem(uri))
        yield _with_row(recipe, rows, Item(recipe.id, "image", uri, size=size), *_path_names(recipe, uri))
    if limit:
        return
    yield from _missing_rows(recipe, rows, posixpath.dirname(images[0][0]) if images else recipe.root)
    reports = recipe.source.get("reports")
    if reports and "{study}" not in reports:
        for uri in match(recipe.root, _pattern_to_glob(reports)):
            if _stem(uri) not in seen:
                yield Item(recipe.id, "orphan", uri, companions=(("role", "report"),))


ADAPTERS = {
    "dicom-folder": discover_dicom,
    "nifti-folder": discover_nifti,
    "msd": discover_msd,
    "nnunet": discover_nnunet,
    "totalsegmentator": discover_totalsegmentator,
    "image-csv": discover_image_csv,
}


def discover(recipe: Recipe, limit: Optional[int] = None) -> Iterable[Item]:
    return ADAPTERS[recipe.source["adapter"]](recipe, limit)


class _DiscoverFn(beam.DoFn):
    def __init__(self, limit: Optional[int]):
        self.limit = limit

    def setup(self):
        self._items = counter("discover", "items")
        self._failed = counter("discover", "failed_recipes")

    def process(self, recipe: Recipe):
        try:
            items = list(discover(recipe, self.limit))
        except Exception as exc:  # noqa: BLE001 - a dataset that cannot be listed is reported, not fatal
            self._failed.inc()
            # A recipe/table mismatch names only recipe fields; other errors may carry source paths, so only
            # their type is reported.
            mismatch = isinstance(exc, RecipeError)
            yield beam.pvalue.TaggedOutput(
                QUARANTINE,
                QuarantineRecord(
                    dataset=recipe.id,
                    stage="discover",
                    reason="recipe_table_mismatch" if mismatch else "source_unreadable",
                    message=str(exc) if mismatch else
                    f"the dataset source could not be listed ({type(exc).__name__})",
                    units=0,
                ),
            )
            return
        for item in items:
            self._items.inc()
            yield item


class Discover(beam.PTransform):
    """Recipes -> (items, quarantine)."""

    def __init__(self, recipes: list, limit: Optional[int] = None):
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
