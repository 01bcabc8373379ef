"""Astigmatic Gaussian PSF calibration: Huang curves fitted to a measured PSF z-stack.

Huang et al. (Science 319, 810, 2008) describe an astigmatic PSF by an elliptical Gaussian
whose widths depend on z, per axis ``a`` in (x, y)::

    sigma_a(z) = sigma0_a * sqrt(1 + u^2 + a3_a u^3 + a4_a u^4),   u = (z - focus_a) / depth_a

:func:`fit_astigmatic` measures ``sigma_x`` and ``sigma_y`` in every plane of a PSF stack by a
least-squares fit of a pixel-integrated elliptical Gaussian (plus a constant), then fits the
two Huang curves with :func:`scipy.optimize.least_squares`. Planes where the Gaussian is a
poor description (far from focus, where the PSF of a real objective becomes a ring) are left
out of the curve fit: those whose fit failed, whose width exceeds ``max_sigma_px``, or whose
Gaussian fit leaves a large residual (``max_plane_residual``).

The result is saved as a small YAML file (:func:`save_astigmatic`), which
:func:`denseloc.calibration.load_psf` reads back as a :class:`~denseloc.sim.psf.AstigmaticPSF`::

    format: denseloc.astigmatic_psf
    format_version: 1
    software_version: 0.1.0
    pixel_size_nm: 100.0
    z_range_nm: [-750.0, 750.0]
    source: beads_as.tif
    astigmatic: {sigma0_px: [..], focus_nm: [..], depth_nm: [..], a3: [..], a4: [..]}
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from scipy.optimize import least_squares

from denseloc import __version__
from denseloc._atomic import atomic_path
from denseloc.config import AstigmaticConfig
from denseloc.errors import DenselocError, InputFileError
from denseloc.sim.psf import AstigmaticPSF, axis_profile

__all__ = [
    "ASTIGMATIC_FORMAT_NAME",
    "ASTIGMATIC_FORMAT_VERSION",
    "AstigmaticFit",
    "GaussianWidths",
    "fit_astigmatic",
    "fit_gaussian_widths",
    "fit_huang",
    "huang_sigma",
    "load_astigmatic",
    "read_astigmatic",
    "save_astigmatic",
]

logger = logging.getLogger(__name__)

ASTIGMATIC_FORMAT_NAME = "denseloc.astigmatic_psf"
"""Value of the ``format`` key of a saved astigmatic PSF file."""
ASTIGMATIC_FORMAT_VERSION = 1
"""Version of the saved layout; files from a newer version are refused."""



# --------------------------------------------------------------------------------------------
# Per-plane elliptical Gaussian fits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianWidths:
    """Pixel-integrated elliptical Gaussian fitted to each plane of a stack.

    Attributes
    ----------
    sigma_x_px, sigma_y_px : ndarray of shape (Z,)
        Widths along x (columns) and y (rows), px.
    x_px, y_px : ndarray of shape (Z,)
        Centre relative to the centre of the central pixel, px.
    amplitude : ndarray of shape (Z,)
        Integral of the Gaussian (same unit as the stack, per plane).
    offset : ndarray of shape (Z,)
        Fitted constant per pixel.
    relative_residual : ndarray of shape (Z,)
        ``||plane - fit|| / ||plane||`` per plane.
    converged : ndarray of shape (Z,), bool
        Whether the fit ended inside its bounds with a finite result.
    """

    sigma_x_px: np.ndarray
    sigma_y_px: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    amplitude: np.ndarray
    offset: np.ndarray
    relative_residual: np.ndarray
    converged: np.ndarray


def _axis_profile(
    centre: np.ndarray, sigma: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-integrated 1D Gaussians (B, size) and their derivatives by centre and sigma, as
    the simulator's PSF computes them (:func:`denseloc.sim.psf.axis_profile`)."""
    parts = axis_profile(torch.from_numpy(np.asarray(centre, dtype=np.float64)),
                         torch.from_numpy(np.asarray(sigma, dtype=np.float64)), size, True)
    return tuple(part.numpy() for part in parts)


def _gaussian_model(p: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Model images (B, size*size) and Jacobians (B, size*size, 6) for p = (A, x, y, sx, sy, b)."""
    amp, x, y, sx, sy, b = p.T
    fx, fx_c, fx_s = _axis_profile(x, sx, size)
    fy, fy_c, fy_s = _axis_profile(y, sy, size)
    n = p.shape[0]
    image = fy[:, :, None] * fx[:, None, :]
    a = amp[:, None, None]
    jac = np.stack(
        [
            image,
            a * fy[:, :, None] * fx_c[:, None, :],
            a * fy_c[:, :, None] * fx[:, None, :],
            a * fy[:, :, None] * fx_s[:, None, :],
            a * fy_s[:, :, None] * fx[:, None, :],
            np.ones_like(image),
        ],
        axis=-1,
    ).reshape(n, size * size, 6)
    model = (a * image + b[:, None, None]).reshape(n, size * size)
    return model, jac


def _moment_start(stack: np.ndarray) -> np.ndarray:
    """Starting values (A, x, y, sx, sy, b) per plane from the positive part's moments."""
    size = stack.shape[1]
    half = size // 2
    coord = np.arange(size, dtype=np.float64) - half
    offset = np.median(np.concatenate([stack[:, 0], stack[:, -1]], axis=1), axis=1)
    w = np.clip(stack - offset[:, None, None], 0, None)
    total = w.sum(axis=(1, 2))
    total_safe = np.where(total > 0, total, 1.0)
    wx, wy = w.sum(axis=1), w.sum(axis=2)
    x = (wx * coord).sum(axis=1) / total_safe
    y = (wy * coord).sum(axis=1) / total_safe
    sx = np.sqrt(np.clip((wx * (coord - x[:, None]) ** 2).sum(axis=1) / total_safe, 0, None))
    sy = np.sqrt(np.clip((wy * (coord - y[:, None]) ** 2).sum(axis=1) / total_safe, 0, None))
    lim = size / 4
    return np.stack(
        [
            np.where(total > 0, total, 1.0),
            np.clip(x, -1.0, 1.0),
            np.clip(y, -1.0, 1.0),
            np.clip(sx, 0.6, lim),
            np.clip(sy, 0.6, lim),
            offset,
        ],
        axis=1,
    )


def fit_gaussian_widths(stack: np.ndarray, *, n_iter: int = 60) -> GaussianWidths:
    """Fit a pixel-integrated elliptical Gaussian plus a constant to every plane of a stack.

    All planes are fitted at once by a batched Levenberg-Marquardt least-squares iteration
    with analytic derivatives (unweighted: meant for averaged, high-SNR bead stacks).

    Parameters
    ----------
    stack : ndarray of shape (Z, S, S)
        PSF planes, emitter near the centre of the central pixel (any linear unit).
    n_iter : int
        Iterations of Levenberg-Marquardt.

    Returns
    -------
    GaussianWidths
        Widths, centres, amplitudes and goodness of fit per plane.
    """
    data = np.asarray(stack, dtype=np.float64)
    if data.ndim != 3 or data.shape[1] != data.shape[2] or data.shape[1] < 5:
        raise ValueError(f"stack must have shape (Z, S, S) with S >= 5, got {data.shape}")
    n, size, _ = data.shape
    target = data.reshape(n, size * size)
    p = _moment_start(data)
    lo = np.array([-np.inf, -size / 2, -size / 2, 0.3, 0.3, -np.inf])
    hi = np.array([np.inf, size / 2, size / 2, size, size, np.inf])
    lam = np.full(n, 1e-3)
    model, jac = _gaussian_model(p, size)
    cost = ((target - model) ** 2).sum(axis=1)
    for _ in range(n_iter):
        resid = target - model
        jac_t = jac.transpose(0, 2, 1)
        jtj = jac_t @ jac
        jtr = (jac_t @ resid[..., None])[..., 0]
        diag = np.einsum("bii->bi", jtj)
        damped = jtj + (lam[:, None] * np.maximum(diag, 1e-12))[:, :, None] * np.eye(6)
        try:
            step = np.linalg.solve(damped, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(p)
        trial = np.clip(p + step, lo, hi)
        t_model, t_jac = _gaussian_model(trial, size)
        t_cost = ((target - t_model) ** 2).sum(axis=1)
        better = np.isfinite(t_cost) & (t_cost < cost)
        p = np.where(better[:, None], trial, p)
        model = np.where(better[:, None], t_model, model)
        jac = np.where(better[:, None, None], t_jac, jac)
        gain = np.where(better, (cost - t_cost) / np.maximum(cost, 1e-300), 0.0)
        cost = np.where(better, t_cost, cost)
        lam = np.where(better, lam / 3, lam * 4).clip(1e-9, 1e9)
        # done: converged (a step gained almost nothing) or stuck (damping grew huge)
        if np.all((better & (gain < 1e-10)) | (lam >= 1e6)):
            break
    norm = np.sqrt((target**2).sum(axis=1))
    rel = np.sqrt(cost) / np.where(norm > 0, norm, 1.0)
    inside = np.all((p[:, 1:5] > lo[1:5] + 1e-6) & (p[:, 1:5] < hi[1:5] - 1e-6), axis=1)
    converged = inside & np.all(np.isfinite(p), axis=1) & (p[:, 0] > 0)
    return GaussianWidths(
        sigma_x_px=p[:, 3],
        sigma_y_px=p[:, 4],
        x_px=p[:, 1],
        y_px=p[:, 2],
        amplitude=p[:, 0],
        offset=p[:, 5],
        relative_residual=rel,
        converged=converged,
    )


# --------------------------------------------------------------------------------------------
# Huang curves
# --------------------------------------------------------------------------------------------


def huang_sigma(
    z_nm: np.ndarray,
    sigma0_px: float,
    focus_nm: float,
    depth_nm: float,
    a3: float = 0.0,
    a4: float = 0.0,
) -> np.ndarray:
    """Width of one axis of the Huang model at `z_nm` (as :class:`AstigmaticPSF` computes it).

    Parameters
    ----------
    z_nm : ndarray of shape (Z,)
        Axial positions, nm.
    sigma0_px, focus_nm, depth_nm, a3, a4 : float
        Parameters of one axis (see the module docstring).

    Returns
    -------
    ndarray of shape (Z,)
        Width in px.
    """
    both = AstigmaticPSF((sigma0_px,) * 2, (focus_nm,) * 2, (depth_nm,) * 2, (a3,) * 2,
                         (a4,) * 2)
    return both.sigmas(torch.from_numpy(np.asarray(z_nm, dtype=np.float64)))[0].numpy()


def _start_values(z_nm: np.ndarray, sigma: np.ndarray) -> tuple[float, float, float]:
    """sigma0, focus and depth guessed from the measured curve."""
    k = int(np.argmin(sigma))
    sigma0, focus = float(sigma[k]), float(z_nm[k])
    above = np.flatnonzero(sigma >= math.sqrt(2) * sigma0)
    left, right = above[above < k], above[above > k]
    widths = []
    if left.size:
        widths.append(focus - z_nm[left[-1]])
    if right.size:
        widths.append(z_nm[right[0]] - focus)
    span = float(z_nm.max() - z_nm.min())
    depth = float(np.mean(widths)) if widths else max(span / 2, 1.0)
    return sigma0, focus, max(depth, 1e-3 * span, 1e-6)


def fit_huang(z_nm: np.ndarray, sigma_px: np.ndarray) -> tuple[float, float, float, float, float]:
    """Fit one axis of the Huang model to measured widths by least squares.

    The fit runs first with ``a3 = a4 = 0``, then with all five parameters from there.

    Parameters
    ----------
    z_nm : ndarray of shape (K,)
        Axial positions of the measurements, nm (K >= 5).
    sigma_px : ndarray of shape (K,)
        Measured widths, px.

    Returns
    -------
    (sigma0_px, focus_nm, depth_nm, a3, a4) : tuple of float
    """
    z = np.asarray(z_nm, dtype=np.float64)
    s = np.asarray(sigma_px, dtype=np.float64)
    if z.shape != s.shape or z.ndim != 1 or z.size < 5:
        raise ValueError(
            f"need at least 5 (z, sigma) pairs of equal length, got {z.shape}, {s.shape}"
        )
    sigma0, focus, depth = _start_values(z, s)
    span = float(z.max() - z.min())
    lo3 = [1e-3, z.min() - span, 1e-3 * span]
    hi3 = [10 * s.max(), z.max() + span, 10 * span]
    x0 = np.clip([sigma0, focus, depth], np.add(lo3, 1e-9), np.subtract(hi3, 1e-9))
    basic = least_squares(lambda p: huang_sigma(z, *p) - s, x0, bounds=(lo3, hi3))
    full = least_squares(
        lambda p: huang_sigma(z, *p) - s,
        np.concatenate([basic.x, [0.0, 0.0]]),
        bounds=([*lo3, -np.inf, -np.inf], [*hi3, np.inf, np.inf]),
    )
    best = full if full.cost <= basic.cost else basic
    params = np.concatenate([best.x, np.zeros(5 - best.x.size)])
    return tuple(float(v) for v in params)  # type: ignore[return-value]


@dataclass(frozen=True)
class AstigmaticFit:
    """Huang-model calibration of an astigmatic PSF stack.

    Attributes
    ----------
    config : AstigmaticConfig
        Fitted parameters (x, y), ready for a :class:`~denseloc.config.PSFConfig`.
    z_nm : ndarray of shape (Z,)
        Axial position of each plane, nm.
    widths : GaussianWidths
        Per-plane Gaussian fits of the stack (the measurements).
    used : ndarray of shape (2, Z), bool
        Planes whose width along x (row 0) and along y (row 1) entered the Huang fit.
    z_range_nm : (float, float)
        z range where both axes were fitted: where the model is valid.
    rms_error_px : (float, float)
        Root-mean-square difference between the Huang curves and the used widths (x, y), px.
    """

    config: AstigmaticConfig
    z_nm: np.ndarray
    widths: GaussianWidths
    used: np.ndarray
    z_range_nm: tuple[float, float]
    rms_error_px: tuple[float, float]

    def psf(self) -> AstigmaticPSF:
        """The fitted model as a PSF (valid over :attr:`z_range_nm`)."""
        return AstigmaticPSF.from_config(self.config, self.z_range_nm)

    def model_sigmas(self, z_nm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fitted widths (sigma_x, sigma_y) in px at `z_nm` (default: the planes)."""
        z = self.z_nm if z_nm is None else np.asarray(z_nm, dtype=np.float64)
        c = self.config
        return tuple(  # type: ignore[return-value]
            huang_sigma(z, c.sigma0_px[a], c.focus_nm[a], c.depth_nm[a], c.a3[a], c.a4[a])
            for a in (0, 1)
        )

    def save(
        self,
        path: str | os.PathLike,
        *,
        pixel_size_nm: float,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the fitted model as YAML (see :func:`save_astigmatic`)."""
        return save_astigmatic(
            path,
            self.config,
            z_range_nm=self.z_range_nm,
            pixel_size_nm=pixel_size_nm,
            source=source,
            extra=extra,
        )


def fit_astigmatic(
    stack: np.ndarray,
    z_nm: np.ndarray,
    *,
    max_sigma_px: float | None = None,
    max_plane_residual: float = 0.25,
) -> AstigmaticFit:
    """Fit the Huang model to a (normalised, centred) PSF stack.

    Parameters
    ----------
    stack : ndarray of shape (Z, S, S)
        PSF stack, emitter at the centre of the central pixel (e.g. the averaged bead stack).
    z_nm : ndarray of shape (Z,)
        Axial position of each plane, nm, increasing.
    max_sigma_px : float, optional
        Widths above this are left out of that axis' curve fit; ``S / 5`` (the Gaussian's
        +-2.5 sigma fit in the stack) if None.
    max_plane_residual : float
        Planes whose Gaussian fit leaves a relative residual ``||plane - fit|| / ||plane||``
        above this are left out (a Gaussian does not describe them).

    Returns
    -------
    AstigmaticFit

    Raises
    ------
    denseloc.errors.DenselocError
        If fewer than 5 planes are usable for one of the axes, or the axes' usable z ranges
        do not overlap.
    """
    data = np.asarray(stack, dtype=np.float64)
    z = np.asarray(z_nm, dtype=np.float64).reshape(-1)
    if data.ndim != 3 or z.shape[0] != data.shape[0]:
        raise ValueError(f"stack (Z, S, S) and z_nm (Z,) disagree: {data.shape}, {z.shape}")
    size = data.shape[1]
    max_sigma = size / 5 if max_sigma_px is None else float(max_sigma_px)
    widths = fit_gaussian_widths(data)
    measured = (widths.sigma_x_px, widths.sigma_y_px)
    good = widths.converged & (widths.relative_residual < max_plane_residual)
    used = np.stack([good & (sigma < max_sigma) for sigma in measured])
    for axis, mask in zip("xy", used, strict=True):
        if mask.sum() < 5:
            raise DenselocError(
                f"astigmatic fit: only {int(mask.sum())} of {len(z)} planes have a Gaussian "
                f"width along {axis} below {max_sigma:.2g} px; need at least 5"
            )
    params = [fit_huang(z[mask], sigma[mask]) for sigma, mask in zip(measured, used, strict=True)]
    config = AstigmaticConfig(
        sigma0_px=(params[0][0], params[1][0]),
        focus_nm=(params[0][1], params[1][1]),
        depth_nm=(params[0][2], params[1][2]),
        a3=(params[0][3], params[1][3]),
        a4=(params[0][4], params[1][4]),
    )
    rms = tuple(
        float(np.sqrt(np.mean((huang_sigma(z[mask], *p) - sigma[mask]) ** 2)))
        for p, sigma, mask in zip(params, measured, used, strict=True)
    )
    lo = max(float(z[mask].min()) for mask in used)
    hi = min(float(z[mask].max()) for mask in used)
    if not lo < hi:
        raise DenselocError(
            "astigmatic fit: the z ranges where x and where y are Gaussian do not overlap"
        )
    fit = AstigmaticFit(
        config=config,
        z_nm=z,
        widths=widths,
        used=used,
        z_range_nm=(lo, hi),
        rms_error_px=rms,  # type: ignore[arg-type]
    )
    logger.info(
        "Huang fit on %d (x) and %d (y) planes: sigma0 %s px, focus %s nm, depth %s nm",
        int(used[0].sum()),
        int(used[1].sum()),
        _fmt(config.sigma0_px),
        _fmt(config.focus_nm),
        _fmt(config.depth_nm),
    )
    return fit


def _fmt(pair: tuple[float, float]) -> str:
    return f"({pair[0]:.4g}, {pair[1]:.4g})"


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_astigmatic(
    path: str | os.PathLike,
    config: AstigmaticConfig,
    *,
    z_range_nm: tuple[float, float],
    pixel_size_nm: float,
    source: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an astigmatic PSF as a small self-describing YAML file (atomically).

    Parameters
    ----------
    path : path-like
        Output file (``.yaml`` or ``.yml``, so that :func:`denseloc.calibration.load_psf`
        recognises it).
    config : AstigmaticConfig
        The Huang parameters.
    z_range_nm : (float, float)
        z range over which the model is valid, nm.
    pixel_size_nm : float
        Camera pixel size the widths (px) refer to, nm.
    source : str, optional
        Where the calibration came from (bead file).
    extra : mapping, optional
        Further plain values (numbers, strings, lists) stored under ``metadata``.

    Returns
    -------
    Path
        The written file.
    """
    if not pixel_size_nm > 0:
        raise ValueError(f"pixel_size_nm must be positive, got {pixel_size_nm}")
    lo, hi = (float(v) for v in z_range_nm)
    if not lo < hi:
        raise ValueError(f"z_range_nm must be increasing, got {z_range_nm}")
    doc: dict[str, Any] = {
        "format": ASTIGMATIC_FORMAT_NAME,
        "format_version": ASTIGMATIC_FORMAT_VERSION,
        "software": "denseloc",
        "software_version": __version__,
        "model": "sigma(z) = sigma0 sqrt(1 + u^2 + a3 u^3 + a4 u^4), u = (z - focus) / depth",
        "pixel_size_nm": float(pixel_size_nm),
        "z_range_nm": [lo, hi],
        "source": "" if source is None else str(source),
        "astigmatic": config.model_dump(mode="json"),
    }
    if extra:
        doc["metadata"] = {str(k): _plain(v) for k, v in extra.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    logger.info("saved astigmatic PSF to %s", path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def read_astigmatic(path: str | os.PathLike) -> tuple[AstigmaticConfig, dict[str, Any]]:
    """Read a file written by :func:`save_astigmatic`.

    Returns
    -------
    config : AstigmaticConfig
        The Huang parameters.
    info : dict
        The other keys (``pixel_size_nm``, ``z_range_nm``, ``source``, ``software_version``,
        ``metadata``, ...).

    Raises
    ------
    denseloc.errors.InputFileError
        If the file is missing, not YAML, not a denseloc astigmatic PSF, from a newer format
        version, or holds invalid values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(path, f"not a readable YAML file ({first})") from None
    if not isinstance(doc, dict) or doc.get("format") != ASTIGMATIC_FORMAT_NAME:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise InputFileError(
            path,
            f"not a denseloc astigmatic PSF (format {fmt!r}, expected {ASTIGMATIC_FORMAT_NAME!r})",
        )
    try:
        version = int(doc.get("format_version", 0))
    except (TypeError, ValueError):
        raise InputFileError(path, f"bad format_version {doc.get('format_version')!r}") from None
    if version > ASTIGMATIC_FORMAT_VERSION:
        raise InputFileError(
            path,
            f"format version {version} is newer than this denseloc ({__version__}) reads "
            f"({ASTIGMATIC_FORMAT_VERSION}); update denseloc",
        )
    try:
        config = AstigmaticConfig.model_validate(doc.get("astigmatic"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "astigmatic"
        raise InputFileError(path, f"astigmatic.{where}: {err['msg']}") from None
    z_range = doc.get("z_range_nm", (-750.0, 750.0))
    try:
        lo, hi = (float(v) for v in z_range)
    except (TypeError, ValueError):
        raise InputFileError(path, f"z_range_nm must be [low, high], got {z_range!r}") from None
    if not lo < hi:
        raise InputFileError(path, f"z_range_nm must be increasing, got {[lo, hi]}")
    info = {k: v for k, v in doc.items() if k != "astigmatic"}
    info["z_range_nm"] = (lo, hi)
    return config, info


def load_astigmatic(path: str | os.PathLike) -> AstigmaticPSF:
    """Load a file written by :func:`save_astigmatic` as an :class:`AstigmaticPSF`."""
    config, info = read_astigmatic(path)
    pixel = info.get("pixel_size_nm")
    return AstigmaticPSF.from_config(config, info["z_range_nm"],
                                     None if pixel is None else float(pixel))
