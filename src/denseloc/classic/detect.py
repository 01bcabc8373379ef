"""Spot detection for the classical fitter: filter, local maxima, noise-relative threshold.

The image (in photons) is band-pass filtered with a difference of Gaussians matched to the
PSF width (which removes the background), candidate pixels are local maxima of the filtered
image, and a candidate is kept when its filtered value exceeds `threshold` times the noise of
the filtered image, estimated per frame from the spread of its lower half (median minus lower
quartile), which emitter light barely touches even in dense frames. Pixels with more read
noise than most (an sCMOS camera's hot pixels, given as a variance map) raise the noise of the
filtered pixels around them by what the filter passes of their excess variance, so that they
are not taken for spots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Candidates", "detect_spots"]


@dataclass
class Candidates:
    """Detected spots: frame, row and column of the peak pixel, and a score (in noise std)."""

    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    score: torch.Tensor

    def __len__(self) -> int:
        return int(self.frame.numel())


def _gaussian_kernel(sigma_px: float, dtype: torch.dtype) -> torch.Tensor:
    half = max(1, round(3 * sigma_px))
    x = torch.arange(-half, half + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def _blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    k = _gaussian_kernel(sigma_px, images.dtype).to(images.device)
    pad = k.numel() // 2
    x = F.pad(images[:, None], (pad, pad, pad, pad), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def band_pass(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Difference of Gaussians (sigma, 2.5 sigma) of images (T, H, W)."""
    return _blur(images, sigma_px) - _blur(images, 2.5 * sigma_px)


def detect_spots(
    images: torch.Tensor,
    *,
    sigma_px: float,
    threshold: float = 5.0,
    min_distance_px: int = 2,
    border_px: int = 0,
    read_var: torch.Tensor | None = None,
) -> Candidates:
    """Find spots in images (T, H, W) given in photons.

    Parameters
    ----------
    images : Tensor of shape (T, H, W)
        Frames in photons.
    sigma_px : float
        Approximate PSF standard deviation, px (in focus).
    threshold : float
        Minimum filtered peak value in units of the filtered image's noise std.
    min_distance_px : int
        Peaks closer than this (Chebyshev distance) are merged into the brightest.
    border_px : int
        Ignore peaks this close to the frame edge.
    read_var : Tensor of shape (H, W), optional
        Read-noise variance of each pixel in photons^2 (an sCMOS variance map). Only its
        excess over the median matters: the frame's own noise estimate holds the rest.
    """
    if images.ndim != 3:
        raise ValueError(f"images must have shape (T, H, W), got {tuple(images.shape)}")
    if read_var is not None and read_var.shape != images.shape[1:]:
        raise ValueError(f"read_var has shape {tuple(read_var.shape)}, the frames "
                         f"{tuple(images.shape[1:])}")
    filtered = band_pass(images.to(torch.float32), sigma_px)
    flat = filtered.flatten(1)
    median = flat.median(dim=1).values
    # Emitters add light above the median; the half below it is mostly noise, so its spread
    # estimates the noise even in dense frames (for a normal: median - 25th pct = 0.674 sd).
    lower_quartile = flat.quantile(0.25, dim=1)
    noise = ((median - lower_quartile) / 0.6745).clamp_min(1e-6)[:, None, None]
    if read_var is not None:
        noise = (noise**2 + _filtered_excess(read_var, sigma_px)).sqrt()
    size = 2 * min_distance_px + 1
    pooled = F.max_pool2d(filtered[:, None], size, stride=1, padding=min_distance_px)[:, 0]
    score = (filtered - median[:, None, None]) / noise
    peak = (filtered == pooled) & (score > threshold)
    if border_px > 0:
        peak[:, :border_px] = False
        peak[:, -border_px:] = False
        peak[:, :, :border_px] = False
        peak[:, :, -border_px:] = False
    frame, row, col = torch.nonzero(peak, as_tuple=True)
    return Candidates(frame, row, col, score[frame, row, col])


def _filtered_excess(read_var: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Variance (H, W) that the band-pass filter passes of each pixel's excess read variance.

    Independent pixels add their variances times the filter's weights squared: the excess
    map convolved with the squared kernel of :func:`band_pass` (at the frame's edges, where
    the filter replicates pixels, this is approximate).
    """
    excess = (read_var - read_var.median()).clamp_min(0).to(torch.float32)
    half = max(1, round(3 * 2.5 * sigma_px))
    impulse = torch.zeros((1, 2 * half + 1, 2 * half + 1), dtype=torch.float32)
    impulse[0, half, half] = 1.0
    kernel = band_pass(impulse, sigma_px)[0] ** 2  # the filter's weights, squared
    return F.conv2d(excess[None, None], kernel[None, None], padding=half)[0, 0]
