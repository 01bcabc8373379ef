"""Batched single-emitter maximum-likelihood fitting (Levenberg-Marquardt, Poisson model).

The classical baseline: detect spots (:mod:`denseloc.classic.detect`), cut a square region of
interest (ROI) around each, and fit ``mu = N psf(x, y, z) + b`` to the photons in the ROI by
minimising the shifted-Poisson negative log-likelihood ``sum(mu + g - (d + g) log(mu + g))``
with Levenberg-Marquardt steps on the Fisher-scoring Hessian, all ROIs at once in torch. The
uncertainty of each localization is the Cramer-Rao bound at the estimate
(:mod:`denseloc.evaluate.crlb`).

The shift ``g`` (:meth:`NoiseModel.shift_photons`) adds the read noise and spurious charge of
each pixel as if they were photons, so that the variance of ``d + g`` is proportional to its
mean, as the Poisson likelihood assumes (Huang et al., Nat. Methods 2013). With an sCMOS
camera's variance map it is per pixel, and a pixel with large read noise weighs little. Under
an EMCCD the photon counts are over-dispersed by a factor 2, but the variance stays
proportional to the mean, so the likelihood has the same optimum weighting and the estimator
still approaches the (EMCCD) bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from denseloc.classic.detect import detect_spots
from denseloc.errors import DenselocError
from denseloc.evaluate.crlb import (
    NoiseModel,
    expected_and_jacobian,
    information_from_jacobian,
    std_from_information,
)
from denseloc.sim.psf import PSF

__all__ = ["FitResult", "fit_rois", "fitted_z_range", "localize_mle", "psf_width_px"]

Z_BOUND_NM = 1.0
"""Fits within this distance of the end of a spline's calibrated z range, where it ends inside
the requested range, are dropped: the emitter lies beyond what the PSF describes."""


@dataclass
class FitResult:
    """Estimates for N ROIs.

    Attributes
    ----------
    dx_px, dy_px : Tensor of shape (N,)
        Position relative to the centre of the ROI's central pixel.
    z_nm, photons, bg : Tensor of shape (N,)
    std : Tensor of shape (N, 5)
        Cramer-Rao bound at the estimate for (x px, y px, z nm, photons, bg).
    nll : Tensor of shape (N,)
        Final shifted-Poisson negative log-likelihood (up to a data-dependent constant).
    """

    dx_px: torch.Tensor
    dy_px: torch.Tensor
    z_nm: torch.Tensor
    photons: torch.Tensor
    bg: torch.Tensor
    std: torch.Tensor
    nll: torch.Tensor


def psf_width_px(psf: PSF) -> float:
    """Width (px) of the Gaussian with the same peak pixel as the PSF at z = 0.

    ``sigma = 1 / sqrt(2 pi peak)``: robust to the extended tails of measured PSFs, whose
    second moments would overstate the width of the core that detection must match.
    """
    size = psf.default_patch_size()
    zero = torch.zeros(1, dtype=torch.float64)
    peak = float(psf.evaluate(zero, zero, zero, size)[0].max())
    return math.sqrt(1.0 / (2 * math.pi * peak))


def _nll(mu: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return (mu - data * torch.log(mu)).sum(1)


def _evaluate(psf: PSF, theta: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = theta[:, 2] if psf.is_3d else torch.zeros_like(theta[:, 0])
    f, df = psf.evaluate(theta[:, 0], theta[:, 1], z, size, derivatives=True)
    return expected_and_jacobian(f, df, theta[:, -2], theta[:, -1], is_3d=psf.is_3d)


def _initial(
    rois: torch.Tensor, is_3d: bool, z_start: float, centre: torch.Tensor | None = None
) -> torch.Tensor:
    """Start values: the ROI's centroid within 1 px of `centre` (N, 2: dx, dy of the
    candidate from the ROI's central pixel, default 0), photons and edge background."""
    n, size, _ = rois.shape
    edge = torch.cat(
        [rois[:, 0], rois[:, -1], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], dim=1
    )
    bg = edge.median(dim=1).values.clamp_min(0.1)
    signal = (rois - bg[:, None, None]).clamp_min(0)
    photons = signal.sum((1, 2)).clamp_min(10.0)
    coords = torch.arange(size, dtype=rois.dtype) - size // 2
    dx = (signal.sum(1) * coords).sum(1) / photons
    dy = (signal.sum(2) * coords).sum(1) / photons
    cx, cy = (0.0, 0.0) if centre is None else (centre[:, 0], centre[:, 1])
    cols = [torch.clamp(dx, cx - 1, cx + 1), torch.clamp(dy, cy - 1, cy + 1)]
    if is_3d:
        cols.append(torch.full((n,), z_start, dtype=rois.dtype))
    return torch.stack([*cols, photons, bg], dim=1)


def _clamp(theta: torch.Tensor, size: int, is_3d: bool, z_range: tuple[float, float]) -> None:
    half = size / 2
    theta[:, 0].clamp_(-half, half)
    theta[:, 1].clamp_(-half, half)
    if is_3d:
        theta[:, 2].clamp_(*z_range)
    theta[:, -2].clamp_(min=1.0)
    theta[:, -1].clamp_(min=1e-3)


def _fit_from(
    psf: PSF,
    data: torch.Tensor,
    theta: torch.Tensor,
    size: int,
    iterations: int,
    z_range: tuple[float, float],
    shift: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt from `theta`; `data` is the photons plus `shift`."""
    n, p = theta.shape
    lam = torch.full((n,), 1e-2, dtype=data.dtype)
    mu, jac = _evaluate(psf, theta, size)
    mu = mu + shift
    nll = _nll(mu, data)
    # A start where the model is not a valid mean (a spline's negative tail) may still move.
    nll = torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
    eye = torch.eye(p, dtype=data.dtype)
    for _ in range(iterations):
        grad = torch.einsum("nk,npk->np", 1 - data / mu, jac)
        hess = torch.einsum("npk,nqk,nk->npq", jac, jac, 1 / mu)
        damped = hess + lam[:, None, None] * hess.diagonal(dim1=1, dim2=2)[:, :, None] * eye
        # A singular system (e.g. no z information where a spline is flat) takes no step.
        step, failed = torch.linalg.solve_ex(damped, -grad[:, :, None])
        step = torch.where((failed == 0)[:, None], step[:, :, 0], torch.zeros_like(theta))
        trial = theta + step
        _clamp(trial, size, psf.is_3d, z_range)
        mu_t, jac_t = _evaluate(psf, trial, size)
        mu_t = mu_t + shift
        nll_t = _nll(mu_t, data)
        better = torch.isfinite(nll_t) & (nll_t < nll)
        theta = torch.where(better[:, None], trial, theta)
        mu = torch.where(better[:, None], mu_t, mu)
        jac = torch.where(better[:, None, None], jac_t, jac)
        nll = torch.where(better, nll_t, nll)
        lam = torch.where(better, lam * 0.3, lam * 10).clamp(1e-6, 1e6)
    return theta, nll


def fit_rois(
    psf: PSF,
    rois: torch.Tensor,
    *,
    noise: NoiseModel | None = None,
    iterations: int = 30,
    z_range_nm: tuple[float, float] = (-750.0, 750.0),
    z_starts_nm: tuple[float, ...] | None = None,
    centre_px: torch.Tensor | None = None,
) -> FitResult:
    """Fit one emitter per ROI by maximum likelihood.

    Parameters
    ----------
    psf : PSF
        PSF model (Gaussian, astigmatic or spline).
    rois : Tensor of shape (N, S, S)
        Photons per pixel, S odd; the emitter is expected near the central pixel.
    noise : NoiseModel
        Camera noise (default: an ideal camera), for the likelihood's shift and the
        Cramer-Rao bound reported as uncertainty. Its read noise is one number, or one per
        pixel of each ROI, shape (N, S*S) (:meth:`NoiseModel.patches`).
    iterations : int
        Levenberg-Marquardt iterations.
    z_range_nm : (float, float)
        Bounds of z (3D PSFs), narrowed to the range a spline PSF was calibrated over (beyond
        it the spline is constant in z).
    z_starts_nm : tuple of float, optional
        Starting z values tried for 3D PSFs; the fit with the lowest NLL wins. Default:
        the middle and the quarter points of `z_range_nm`.
    centre_px : Tensor of shape (N, 2), optional
        Where each emitter was detected, (dx, dy) px from the ROI's central pixel (not 0
        where a ROI was shifted inside the frame at its edge); the fit starts within 1 px.
    """
    noise = noise or NoiseModel()
    rois = rois.to(torch.float64)
    n, size, _ = rois.shape
    z_range_nm = fitted_z_range(psf, z_range_nm)
    if noise.per_pixel and tuple(noise.read_var_e2.shape) != (n, size * size):
        raise ValueError(f"a read-noise map of shape {tuple(noise.read_var_e2.shape)} for "
                         f"{n} ROIs of {size}x{size} px: cut it with NoiseModel.patches")
    shift = noise.shift_photons()
    data = (rois.flatten(1) + shift).clamp_min(0)
    if z_starts_nm is None:
        lo, hi = z_range_nm
        z_starts_nm = (0.5 * (lo + hi), 0.75 * lo + 0.25 * hi, 0.25 * lo + 0.75 * hi)
    starts = z_starts_nm if psf.is_3d else (0.0,)
    best_theta, best_nll = None, None
    for z0 in starts:
        start = _initial(rois, psf.is_3d, z0, centre_px)
        theta, nll = _fit_from(psf, data, start, size, iterations, z_range_nm, shift)
        if best_theta is None:
            best_theta, best_nll = theta, nll
        else:
            better = nll < best_nll
            best_theta = torch.where(better[:, None], theta, best_theta)
            best_nll = torch.where(better, nll, best_nll)
    mu, jac = _evaluate(psf, best_theta, size)
    std = std_from_information(information_from_jacobian(mu, jac, noise), psf.is_3d)
    z = best_theta[:, 2] if psf.is_3d else torch.zeros(n, dtype=rois.dtype)
    return FitResult(
        best_theta[:, 0], best_theta[:, 1], z, best_theta[:, -2], best_theta[:, -1], std,
        best_nll,
    )


def fitted_z_range(psf: PSF, z_range_nm: tuple[float, float]) -> tuple[float, float]:
    """`z_range_nm` narrowed to the PSF's own z range when it has one (a spline's)."""
    covered = getattr(psf, "z_range_nm", None)
    if covered is None:
        return z_range_nm
    lo, hi = max(z_range_nm[0], covered[0]), min(z_range_nm[1], covered[1])
    if lo >= hi:
        raise DenselocError(f"z range {z_range_nm} nm and the PSF's {covered} nm do not overlap")
    return lo, hi


def cut_rois(
    images: torch.Tensor, frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROIs (N, size, size) around (frame, row, col), shifted inside the frame at edges.

    Returns the ROIs and the row and column of each ROI's central pixel.
    """
    _, height, width = images.shape
    if height < size or width < size:
        raise DenselocError(f"frames of {height}x{width} px are smaller than the fitter's "
                            f"{size} px region of interest")
    half = size // 2
    r0 = (row - half).clamp(0, height - size)
    c0 = (col - half).clamp(0, width - size)
    offs = torch.arange(size, device=images.device)
    rois = images[
        frame[:, None, None], (r0[:, None] + offs)[:, :, None], (c0[:, None] + offs)[:, None, :]
    ]
    return rois, r0 + half, c0 + half


def localize_mle(
    images: torch.Tensor,
    psf: PSF,
    *,
    pixel_size_nm: float,
    noise: NoiseModel | None = None,
    threshold: float = 5.0,
    roi_size: int | None = None,
    frame_offset: int = 0,
    z_range_nm: tuple[float, float] = (-750.0, 750.0),
    iterations: int = 30,
) -> pd.DataFrame:
    """Detect and fit emitters in frames (T, H, W) given in photons; return a table.

    `noise` is the camera's (default: an ideal camera); its read noise may be a map of the
    frames (H, W), from ``NoiseModel.from_camera`` of a loaded sCMOS camera.

    The table has the schema of :mod:`denseloc.table` with ``sigma_*`` from the Cramer-Rao
    bound at each estimate. Fits that wander more than 1.5 px from where their spot was
    detected (it belongs to a neighbour) or end with non-finite values are dropped. Fits
    that end at an end of `z_range_nm` are kept, at that end (on 200-frame test movies 3 of
    500-1200 fits, mostly emitters within 100 nm of it); their ``sigma_z_nm`` is the bound
    there, not the error of a clamped estimate.
    """
    from denseloc.table import px_to_nm, validate

    width = psf_width_px(psf)
    if roi_size is None:
        roi_size = 15 if psf.is_3d else 2 * math.ceil(3 * width) + 1
    images = images.to(torch.float64)
    noise = noise or NoiseModel()
    if noise.per_pixel and noise.read_var_e2.shape != images.shape[1:]:
        raise ValueError(f"a read-noise map of shape {tuple(noise.read_var_e2.shape)} "
                         f"for frames of {tuple(images.shape[1:])} px")
    cand = detect_spots(images, sigma_px=width, threshold=threshold,
                        read_var=noise.read_var_e2 / noise.qe**2 if noise.per_pixel else None)
    if len(cand) == 0:
        return validate(pd.DataFrame({"frame": [], "x_nm": [], "y_nm": []}))
    rois, row_c, col_c = cut_rois(images, cand.frame, cand.row, cand.col, roi_size)
    if noise.per_pixel:  # the ROIs' pixels, where cut_rois placed them
        offsets = torch.arange(roi_size) - roi_size // 2
        noise = noise.patches(row_c[:, None] + offsets, col_c[:, None] + offsets)
    centre = torch.stack([cand.col - col_c, cand.row - row_c], dim=1).to(torch.float64)
    fit = fit_rois(psf, rois, noise=noise, iterations=iterations, z_range_nm=z_range_nm,
                   centre_px=centre)
    checked = fit.std if psf.is_3d else fit.std[:, [0, 1, 3, 4]]
    ok = (
        torch.isfinite(checked).all(1)
        & torch.isfinite(fit.nll)
        & ((fit.dx_px - centre[:, 0]).abs() < 1.5)
        & ((fit.dy_px - centre[:, 1]).abs() < 1.5)
    )
    if psf.is_3d:  # a fit stopped where the PSF's calibration ends: an emitter beyond it
        lo, hi = fitted_z_range(psf, z_range_nm)
        if lo > z_range_nm[0]:
            ok &= fit.z_nm > lo + Z_BOUND_NM
        if hi < z_range_nm[1]:
            ok &= fit.z_nm < hi - Z_BOUND_NM
    std = fit.std.numpy()
    x_px = (col_c + fit.dx_px).numpy()
    y_px = (row_c + fit.dy_px).numpy()
    table = pd.DataFrame(
        {
            "frame": cand.frame.numpy() + frame_offset,
            "x_nm": px_to_nm(x_px, pixel_size_nm),
            "y_nm": px_to_nm(y_px, pixel_size_nm),
            "z_nm": fit.z_nm.numpy(),
            "photons": fit.photons.numpy(),
            "bg": fit.bg.numpy(),
            "p": 1 - np.exp(-cand.score.double().numpy() / threshold),
            "sigma_x_nm": std[:, 0] * pixel_size_nm,
            "sigma_y_nm": std[:, 1] * pixel_size_nm,
            "sigma_z_nm": std[:, 2],
            "sigma_photons": std[:, 3],
        }
    )[ok.numpy()]
    return validate(table.sort_values(["frame", "y_nm", "x_nm"]), name="MLE localizations")
