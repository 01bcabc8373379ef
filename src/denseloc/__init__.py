"""denseloc: deep-learning localization of dense single molecules in SMLM movies.

The package implements the DECODE method (Speiser et al., Nat. Methods 18, 1082, 2021):
a network trained on simulated movies from a physical model of the microscope and camera
localizes overlapping emitters and predicts an uncertainty for each localization.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("denseloc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
