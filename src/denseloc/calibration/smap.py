"""Read and write SMAP's cubic-spline calibrations (``*_3dcal.mat``).

SMAP (Ries lab, fit3Dcspline) saves a MATLAB struct ``SXY`` (possibly an array of structs, one
per channel or field-of-view region; :func:`read_smap_3dcal` takes element ``index``) whose
field ``cspline`` holds:

``coeff``
    Cell array holding one array (or the array itself) of shape (N1, N2, N3, 64) in MATLAB
    order. Dimension 1 is the image **row** (y), dimension 2 the **column** (x), dimension 3 the
    z-stack frame in acquisition order. SMAP's fitter passes the row coordinate as its first
    parameter and reports it as ``ypix`` (``locs.ypix = P(:,1)``, ``locs.xpix = P(:,2)``).
    Coefficient ``l`` (0-based) of voxel ``(i1, i2, i3)`` multiplies
    ``t1**p1 * t2**p2 * t3**p3`` with ``l = p1 + 4*p2 + 16*p3`` (``kernel_computeDelta3D``),
    where ``t1, t2, t3`` in [0, 1] are the positions inside the voxel along dimensions 1, 2, 3.
``x0``
    Lateral position of the PSF centre, 1-based, in voxel units, the same for both axes
    (``round((ROIxy - 1) / 2) + 1`` for a stack of ``2 * round((ROIxy - 1) / 2) + 1`` px).
``z0``
    Axial spline coordinate of the focal plane. SMAP's fitter works with a 0-based spline z
    coordinate ``P5`` and reports ``znm = -(P5 - z0) * dz``; denseloc (like DECODE) reads z0
    the same way, so z values agree with SMAP's localizations. (SMAP's calibration writes z0
    as a 1-based frame index, so SMAP itself places z = 0 one frame, ``dz`` nm, from the
    reference frame; the refractive-index-mismatch factor SMAP applies at fit time is not part
    of the calibration file and is not applied here.)
``dz``
    Axial voxel size in nm. Lateral voxels are 1 camera pixel.

Frame index increases as the emitter's z decreases (``znm = -(P5 - z0) dz``), so reading
reverses the z axis (exactly: voxel order reversed and ``t3 -> 1 - t3``) and transposes the
lateral axes into denseloc's layout (:mod:`denseloc.calibration.spline`). The spline value
at a pixel is the PSF at ``pixel - emitter`` in both packages, so no lateral mirroring is
involved. Writing applies the inverse transforms.

MATLAB v5/v7 files are read with :func:`scipy.io.loadmat`, v7.3 (HDF5) files with h5py.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
import torch
from scipy.io.matlab import MatReadError

from denseloc._atomic import atomic_path
from denseloc.calibration.spline import CubicSplinePSF
from denseloc.errors import DenselocWarning, InputFileError

__all__ = [
    "psf_from_smap_cspline",
    "read_smap_3dcal",
    "smap_cspline_from_psf",
    "write_smap_3dcal",
]

logger = logging.getLogger(__name__)

# sum_p a_p (1 - t)^p = sum_q b_q t^q with b_q = (-1)^q sum_p binom(p, q) a_p
_REVERSE = np.array(
    [[(-1) ** q * math.comb(p, q) for p in range(4)] for q in range(4)], dtype=np.float64
)


def psf_from_smap_cspline(
    coeff: np.ndarray,
    *,
    x0: float,
    z0: float,
    dz_nm: float,
    source: str | None = None,
) -> CubicSplinePSF:
    """Convert SMAP ``cspline`` fields to a :class:`CubicSplinePSF`.

    Parameters
    ----------
    coeff : ndarray of shape (N1, N2, N3, 64)
        ``cspline.coeff`` indexed as in MATLAB (dimension 1 = rows = y, 2 = columns = x,
        3 = frames), coefficient index ``p1 + 4*p2 + 16*p3``.
    x0 : float
        ``cspline.x0``: 1-based lateral centre in voxels.
    z0 : float
        ``cspline.z0``: focal plane, 0-based spline z coordinate (SMAP's fitter convention).
    dz_nm : float
        ``cspline.dz``: nm per z voxel.
    source : str, optional
        Recorded as the PSF's source.

    Returns
    -------
    CubicSplinePSF
    """
    coeff = np.asarray(coeff, dtype=np.float64)
    if coeff.ndim != 4 or coeff.shape[3] != 64:
        raise ValueError(f"SMAP coeff must have shape (N1, N2, N3, 64), got {coeff.shape}")
    n1, n2, n3, _ = coeff.shape
    # [i1 (y), i2 (x), i3, p3, p2 (x), p1 (y)] -> [i3, iy, ix, p3, py, px]
    c = coeff.reshape(n1, n2, n3, 4, 4, 4).transpose(2, 0, 1, 3, 5, 4)
    c = np.einsum("qp,zyxpab->zyxqab", _REVERSE, c[::-1])  # frames -> increasing z
    return CubicSplinePSF(
        np.ascontiguousarray(c.reshape(n3, n1, n2, 64)),
        dz_nm=float(dz_nm),
        x0=float(x0) - 1.0,
        y0=float(x0) - 1.0,
        z0=n3 - float(z0),
        upsample=1,
        source=source,
    )


def smap_cspline_from_psf(psf: CubicSplinePSF) -> dict[str, Any]:
    """SMAP ``cspline`` fields of a spline PSF (the inverse of :func:`psf_from_smap_cspline`).

    SMAP's fitter assumes 1 px lateral voxels, a square grid and the PSF centred on it; a PSF
    that breaks these raises ValueError.

    Returns
    -------
    dict
        ``coeff`` (ndarray (N1, N2, N3, 64) float32, MATLAB index order), ``x0`` (1-based),
        ``z0`` and ``dz`` (nm).
    """
    nz, ny, nx = psf.shape
    if psf.upsample != 1:
        raise ValueError(
            f"SMAP splines have 1 px lateral voxels; this PSF has upsample={psf.upsample}"
        )
    if nx != ny or psf.x0 != psf.y0 or abs(psf.x0 - nx / 2) > 1e-9:
        raise ValueError(
            f"SMAP assumes a square spline grid centred on the PSF; got {ny} x {nx} voxels "
            f"with centre (x0, y0) = ({psf.x0}, {psf.y0})"
        )
    c = np.asarray(psf.coeff).reshape(nz, ny, nx, 4, 4, 4)
    c = np.einsum("qp,zyxpab->zyxqab", _REVERSE, c)[::-1]  # increasing z -> frames
    coeff = c.transpose(1, 2, 0, 3, 5, 4).reshape(ny, nx, nz, 64)
    return {
        "coeff": np.ascontiguousarray(coeff, dtype=np.float32),
        "x0": psf.x0 + 1.0,
        "z0": nz - psf.z0,
        "dz": psf.dz_nm,
    }


def read_smap_3dcal(path: str | os.PathLike, *, index: int = 0) -> CubicSplinePSF:
    """Read the cubic-spline PSF of a SMAP 3D calibration file.

    Parameters
    ----------
    path : path-like
        ``*_3dcal.mat`` file, MATLAB v5/v7 or v7.3.
    index : int
        Element of the ``SXY`` struct array to read (0 = first).

    Returns
    -------
    CubicSplinePSF
        With ``source`` set to the file path.

    Raises
    ------
    denseloc.errors.InputFileError
        If the file is missing, not a MATLAB file, or holds no spline calibration.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        if h5py.is_hdf5(path):
            fields = _read_v73(path, index)
        else:
            fields = _read_v5(path, index)
        coeff, x0, z0, dz = fields
        if coeff.ndim != 4 or coeff.shape[3] != 64:
            raise InputFileError(
                path, f"SXY.cspline.coeff has shape {coeff.shape}, expected (N1, N2, N3, 64)"
            )
        if not (dz > 0 and math.isfinite(x0) and math.isfinite(z0)):
            raise InputFileError(path, f"invalid cspline fields x0={x0}, z0={z0}, dz={dz}")
        psf = psf_from_smap_cspline(coeff, x0=x0, z0=z0, dz_nm=dz, source=str(path))
    except InputFileError:
        raise
    except (
        OSError,
        KeyError,
        IndexError,
        ValueError,
        TypeError,
        AttributeError,
        NotImplementedError,
        MatReadError,
    ) as exc:
        raise InputFileError(path, f"not a readable SMAP 3D calibration ({exc})") from exc
    logger.info("read SMAP spline %s (dz=%s nm) from %s", psf.shape, psf.dz_nm, path)
    _check_light(psf, path)
    return psf


_CHECKED: set[tuple[str, int]] = set()


def _check_light(psf: CubicSplinePSF, path: Path) -> None:
    """Warn when some plane holds more than all of an emitter's light.

    SMAP divides its whole bead stack by one number (the light of its in-focus planes), so
    bleaching over the stack stays in the PSF: planes taken before the beads bleached can
    hold more than all the light. denseloc's own calibration normalises each plane. A plane
    above 1 makes simulated frames brighter than the ground truth says, and photon estimates
    depend on z.
    """
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key in _CHECKED:  # once per file: a PSF is loaded by every simulation and fit
        return
    _CHECKED.add(key)
    nz, ny, nx = psf.shape
    lo, hi = psf.z_range_nm
    z = torch.linspace(lo, hi, 2 * nz + 1, dtype=torch.float64)
    zero = torch.zeros_like(z)
    light = psf.evaluate(zero, zero, z, max(ny, nx) | 1).sum(dim=(1, 2))
    worst = int(torch.argmax(light))
    if light[worst] > 1.02:
        warnings.warn(
            f"{path}: at z = {z[worst]:.0f} nm the spline holds {light[worst]:.2f} times an "
            "emitter's light (SMAP normalises the whole stack by its in-focus planes, so "
            "bleaching stays in the PSF): photons simulated and estimated with it depend on "
            "z; calibrating the beads with denseloc calibrate normalises each plane",
            DenselocWarning,
            stacklevel=3,
        )


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _read_v5(path: Path, index: int) -> tuple[np.ndarray, float, float, float]:
    mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False, variable_names=["SXY"])
    if "SXY" not in mat:
        raise InputFileError(path, "no variable SXY: not a SMAP 3D calibration (*_3dcal.mat)")
    sxy = np.asarray(mat["SXY"]).reshape(-1)[index]
    cspline = _v5_first(sxy.cspline)
    coeff = np.asarray(cspline.coeff)
    while coeff.dtype == object:  # cell array: take its first element
        coeff = np.asarray(coeff.reshape(-1)[0])
    return coeff, _scalar(cspline.x0), _scalar(cspline.z0), _scalar(cspline.dz)


def _v5_first(value: Any) -> Any:
    """A 1x1 struct loaded by scipy (object array) -> the struct."""
    while isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value


def _read_v73(path: Path, index: int) -> tuple[np.ndarray, float, float, float]:
    with h5py.File(path, "r") as f:
        if "SXY" not in f:
            raise InputFileError(path, "no variable SXY: not a SMAP 3D calibration (*_3dcal.mat)")
        sxy = f["SXY"]
        if not isinstance(sxy, h5py.Group):
            raise InputFileError(path, "SXY is not a MATLAB struct")
        # a struct array stores each field as references, one per element
        cspline = _h5_deref(f, sxy["cspline"], index)
        if not isinstance(cspline, h5py.Group):
            raise InputFileError(path, "SXY.cspline is not a MATLAB struct")
        coeff = _h5_deref(f, cspline["coeff"], 0)  # a cell: its first element
        return (
            np.asarray(coeff[()]).T,  # HDF5 holds MATLAB arrays with the dimensions reversed
            _scalar(_h5_deref(f, cspline["x0"], 0)[()]),
            _scalar(_h5_deref(f, cspline["z0"], 0)[()]),
            _scalar(_h5_deref(f, cspline["dz"], 0)[()]),
        )


def _h5_deref(f: h5py.File, node: Any, index: int) -> Any:
    """Follow object references (cells, struct-array fields) to element `index`."""
    while isinstance(node, h5py.Dataset) and h5py.check_dtype(ref=node.dtype) is not None:
        refs = node[()]
        # MATLAB's column-major linear index = C-order index over the reversed HDF5 shape
        node = f[refs.reshape(-1)[index]]
        index = 0
    return node


def write_smap_3dcal(psf: CubicSplinePSF, path: str | os.PathLike) -> Path:
    """Write a spline PSF as a SMAP ``*_3dcal.mat`` calibration (MATLAB v5, atomically).

    Writes ``SXY.cspline`` (``coeff`` as a 1x1 cell of single, ``x0``, ``z0``, ``dz``),
    ``SXY.Xrange`` and ``SXY.Yrange`` (``[-Inf Inf]``: valid everywhere) and, when the PSF
    keeps its stack, ``SXY.PSF`` (a 1x1 cell, rows x columns x frames). The z clamp range and
    metadata are not part of SMAP's format and are dropped.

    Parameters
    ----------
    psf : CubicSplinePSF
        1 px lateral voxels, square grid, centred PSF (see :func:`smap_cspline_from_psf`).
    path : path-like
        Output ``.mat`` file.

    Returns
    -------
    Path
        The written file.
    """
    fields = smap_cspline_from_psf(psf)
    coeff_cell = np.empty((1, 1), dtype=object)
    coeff_cell[0, 0] = fields.pop("coeff")
    cspline = {"coeff": coeff_cell, **{k: float(v) for k, v in fields.items()}}
    sxy: dict[str, Any] = {
        "cspline": cspline,
        "Xrange": np.array([[-np.inf, np.inf]]),
        "Yrange": np.array([[-np.inf, np.inf]]),
    }
    if psf.stack is not None:
        stack_cell = np.empty((1, 1), dtype=object)
        stack_cell[0, 0] = np.ascontiguousarray(
            np.asarray(psf.stack)[::-1].transpose(1, 2, 0), dtype=np.float32
        )
        sxy["PSF"] = stack_cell
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        scipy.io.savemat(fh, {"SXY": sxy}, do_compression=True, oned_as="row")
    logger.info("wrote SMAP spline calibration to %s", path)
    return path
