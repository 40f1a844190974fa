"""Recipe validation: errors name the field and the fix; paths resolve relative to the recipe."""
import glob
import os

import pytest
import yaml

from medcurate.schemas import recipe as recipe_mod

MINIMAL = {
    "dataset": {"id": "my-set", "license": "CC-BY-4.0"},
    "source": {"adapter": "dicom-folder", "root": "data"},
}


def _write(tmp_path, doc) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_minimal_recipe_loads_with_defaults_and_relative_root(tmp_path):
    r = recipe_mod.load(_write(tmp_path, MINIMAL))
    assert r.id == "my-set"
    assert r.root == str(tmp_path / "data")
    assert r.resample == {"spacing_mm": [1.5, 1.5, 1.5]}
    assert r.deid["retain_long_modified_dates"] and r.deid["retain_patient_characteristics"]
    assert r.deid["burned_in_policy"] == "quarantine"
    assert len(r.sha256) == 64
    assert "root" not in r.public() and str(tmp_path) not in str(r.public())


@pytest.mark.parametrize(
    "change, field, fix",
    [
        (lambda d: d["dataset"].pop("license"), "dataset.license", "SPDX"),
        (lambda d: d["dataset"].update(id="My.Set"), "dataset.id", "lowercase"),
        (lambda d: d["source"].update(adapter="zip"), "source.adapter", "dicom-folder"),
        (lambda d: d.update(extra=1), "extra", None),
        (lambda d: d["source"].update(adapter="image-csv"), "source.images", "glob"),
        (lambda d: d.update(processing={"resample": {"spacing_mm": [1, 1]}}), "processing.resample", None),
        (lambda d: d["source"].update(labels_csv="t.csv", columns={"patient": "p"}), "source.columns.image", "image"),
        (lambda d: d["source"].update(labels_csv="t.csv", columns={"image": "f"}, label_vocabulary="chexpertt"),
         "source.label_vocabulary", "chexpert"),
        (lambda d: d["source"].update(labels_csv="t.csv", columns={"image": "f"}, label_columns=["Edema"]),
         "source.label_vocabulary", "findings.yaml"),
        (lambda d: d["source"].update(labels_csv="t.csv", columns={"study": "s"}, match_rows_on="study"),
         "source.path_fields", "one group"),
        (lambda d: d["source"].update(path_fields={"patient": "p(\\d+)(x)"}), "source.path_fields.patient",
         None),
    ],
)
def test_invalid_recipes_name_the_field(tmp_path, change, field, fix):
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    change(doc)
    with pytest.raises(recipe_mod.RecipeError) as err:
        recipe_mod.load(_write(tmp_path, doc))
    assert field in str(err.value)
    if fix:
        assert "fix:" in str(err.value) and fix in str(err.value)


def test_conflicting_date_options_are_refused(tmp_path):
    doc = {**MINIMAL, "deid": {"retain_long_full_dates": True}}
    with pytest.raises(recipe_mod.RecipeError, match="retain_long_full_dates"):
        recipe_mod.load(_write(tmp_path, doc))


def test_example_recipes_validate():
    paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))
    assert paths, "recipes/ holds example recipes"
    for path in paths:
        recipe_mod.load(path)


def test_demo_recipes_validate(corpus):
    ids = [recipe_mod.load(p).id for p in corpus.recipes]
    assert len(ids) == len(set(ids)) == 5


def test_every_reason_code_in_the_code_is_documented():
    import re

    root = os.path.join(os.path.dirname(__file__), "..")
    codes = set()
    for folder in ("transforms", "pipelines", "catalog"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    codes |= set(re.findall(r'QuarantineError\(\s*"([a-z_]+)"', text))
                    codes |= set(re.findall(r'reason="([a-z_]+)"', text))
    codes |= {"orphan_image", "orphan_label", "orphan_report"}  # built from the companion's role
    doc = open(os.path.join(root, "docs", "recipes.md"), encoding="utf-8").read()
    undocumented = sorted(c for c in codes if f"`{c}`" not in doc)
    assert len(codes) > 40 and not undocumented, undocumented
