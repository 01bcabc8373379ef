"""PSF calibration: cubic-spline PSFs, bead z-stack calibration, SMAP compatibility."""

from __future__ import annotations

import os
from pathlib import Path

from denseloc.calibration.smap import read_smap_3dcal, write_smap_3dcal
from denseloc.calibration.spline import CubicSplinePSF, psf_stack_from_model
from denseloc.errors import InputFileError

__all__ = [
    "BUILTIN_PREFIX",
    "CubicSplinePSF",
    "load_psf",
    "psf_stack_from_model",
    "read_smap_3dcal",
    "resolve_builtin",
    "write_smap_3dcal",
]


BUILTIN_PREFIX = "denseloc:"
"""Paths starting with this name files bundled with the package (``denseloc:NAME``)."""


def resolve_builtin(path: str | os.PathLike) -> Path:
    """Map ``denseloc:NAME`` to the bundled data file NAME; other paths are returned as is.

    The bundled files: ``psf_epfl_beads_as_v2.h5`` (spline PSF calibrated from the EPFL 2016
    astigmatic beads with ``make default-psf``), ``psf_epfl_beads_as.h5`` (the earlier
    calibration of the same beads, with a fixed 60 nm of smoothing along z; the networks
    bundled until 2026-12-03 were trained on it), the astigmatic Gaussian fit
    ``psf_epfl_beads_as_astigmatic.yaml`` and the bundled network's folder ``default_model``.
    """
    text = str(path)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(path)
    from importlib.resources import files

    return Path(str(files("denseloc") / "data" / text.removeprefix(BUILTIN_PREFIX)))


def load_psf(path: str | os.PathLike):
    """Load a PSF calibration file by its suffix.

    ``.h5``/``.hdf5``: denseloc spline PSF (:class:`CubicSplinePSF`); ``.mat``: SMAP
    ``*_3dcal.mat``; ``.yaml``/``.yml``: astigmatic Gaussian (Huang) model written by
    :func:`denseloc.calibration.astigmatic.save_astigmatic`, returned as an
    :class:`~denseloc.sim.psf.AstigmaticPSF`.
    """
    path = resolve_builtin(path)
    if not path.is_file():
        raise InputFileError(path, "PSF calibration file not found")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return CubicSplinePSF.load(path)
    if suffix == ".mat":
        return read_smap_3dcal(path)
    if suffix in (".yaml", ".yml"):
        from denseloc.calibration.astigmatic import load_astigmatic

        return load_astigmatic(path)
    raise InputFileError(
        path, "unknown PSF calibration format (expected .h5, .mat, or an astigmatic .yaml)"
    )
