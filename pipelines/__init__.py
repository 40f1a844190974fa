"""Pipeline definitions, run options and the ``medcurate`` command line."""
from medcurate.pipelines._version import __version__

__all__ = ["__version__"]
