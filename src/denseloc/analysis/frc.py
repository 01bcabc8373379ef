"""Fourier ring correlation (FRC) resolution of a localization table.

Nieuwenhuizen et al., Nat. Methods 10, 557 (2013); Banterle et al., J. Struct. Biol. 183, 363
(2013). The localizations are split into two halves by blocks of frames (random blocks, so
that one fluorophore's consecutive localizations do not fall into both halves and correlate
them spuriously); each half is rendered as a histogram, apodised with a Tukey window, and

    FRC(q) = sum_ring Re(F1 F2*) / sqrt(sum_ring |F1|^2 sum_ring |F2|^2)

over rings of spatial frequency q. The curve is smoothed (moving average over
`smoothing_rings` rings) and the resolution is 1 / q at its first crossing of the fixed 1/7
threshold.

The curve is not corrected for repeated localizations (Nieuwenhuizen's Q-correction):
separate blinks of one fluorophore, in different blocks, still fall into both halves and
correlate them, so the resolution measured follows the localization precision more than the
labelling density, and is optimistic for structures sampled by few fluorophores that blink
often. The split is one random draw (`seed`); repeat with other seeds to see its spread.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from denseloc.errors import DenselocError

__all__ = ["FRC_THRESHOLD", "FRCResult", "fourier_ring_correlation", "plot_frc", "split_halves"]

FRC_THRESHOLD = 1.0 / 7.0
MIN_HALF_SHARE = 0.2
"""Each half must hold at least this share of the localizations."""


@dataclass(frozen=True)
class FRCResult:
    """An FRC curve and the resolution read from it."""

    frequency_per_nm: np.ndarray
    frc: np.ndarray
    """Smoothed curve, one value per ring."""
    frc_raw: np.ndarray
    resolution_nm: float
    """1 / frequency of the first crossing of 1/7; NaN when there is none (:attr:`problem`)."""

    @property
    def problem(self) -> str | None:
        """Why there is no resolution: None when there is one."""
        if np.isfinite(self.resolution_nm):
            return None
        if _uncorrelated(self.frc_raw):
            return ("the two halves do not correlate even at the lowest frequencies: too few "
                    "localizations, or no structure that both halves share")
        return "the curve stays above 1/7: render at a finer --pixel-size-nm"

    def to_dict(self) -> dict[str, float | None]:
        finite = bool(np.isfinite(self.resolution_nm))
        return {"resolution_nm": float(self.resolution_nm) if finite else None,
                "threshold": FRC_THRESHOLD}


def split_halves(table: pd.DataFrame, *, n_blocks: int = 20, seed: int = 0) -> np.ndarray:
    """Boolean mask of the first half: `n_blocks` blocks of frames, half of them at random."""
    frames = table["frame"].to_numpy()
    first, last = int(frames.min()), int(frames.max())
    n_blocks = max(2, min(n_blocks, last - first + 1))
    edges = np.linspace(first, last + 1, n_blocks + 1)
    block = np.clip(np.searchsorted(edges, frames, side="right") - 1, 0, n_blocks - 1)
    chosen = np.random.default_rng(seed).permutation(n_blocks)[: n_blocks // 2]
    return np.isin(block, chosen)


def fourier_ring_correlation(
    table: pd.DataFrame,
    *,
    pixel_size_nm: float = 5.0,
    n_blocks: int = 20,
    smoothing_rings: int = 5,
    seed: int = 0,
) -> FRCResult:
    """FRC curve and resolution of a localization table.

    Parameters
    ----------
    table : DataFrame
        Localizations (``frame``, ``x_nm``, ``y_nm``).
    pixel_size_nm : float
        Render pixel; a few times smaller than the expected resolution.
    n_blocks : int
        Blocks of frames distributed at random over the two halves.
    smoothing_rings : int
        Width of the moving average over rings.
    seed : int
        Seed of the random split.
    """
    from scipy import fft
    from scipy.ndimage import uniform_filter1d
    from scipy.signal.windows import tukey

    from denseloc._runtime import available_cores
    from denseloc.analysis.render import data_extent, render

    if len(table) < 100:
        raise DenselocError(f"FRC needs at least 100 localizations, got {len(table)}")
    half = split_halves(table, n_blocks=n_blocks, seed=seed)
    if min(half.mean(), 1 - half.mean()) < MIN_HALF_SHARE:
        raise DenselocError(
            f"the two halves hold {half.sum()} and {(~half).sum()} localizations: FRC needs "
            "localizations spread over many frames (it splits the movie by blocks of frames)"
        )
    # A square around the localizations (not from the camera origin): rings are circles.
    x0, x1, y0, y1 = data_extent(table, pixel_size_nm)
    side = max(x1 - x0, y1 - y0)
    extent = (x0, x0 + side, y0, y0 + side)
    taper = tukey(math.ceil(side / pixel_size_nm - 1e-9), 0.125).astype(np.float32)
    spectra = []
    for mask in (half, ~half):
        image = render(table[mask], pixel_size_nm=pixel_size_nm, extent_nm=extent)
        image = image.astype(np.float32)
        image *= taper[:, None]
        image *= taper[None, :]
        # complex64; the other half of the spectrum is the conjugate of this one
        spectra.append(fft.rfft2(image, workers=available_cores()))
        del image
    f1, f2 = spectra
    n = len(taper)
    ky = np.fft.fftfreq(n, 1 / n).astype(np.float32)
    kx = np.arange(f1.shape[1], dtype=np.float32)
    ring = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int32).ravel()
    # Columns 0 < kx < n / 2 stand for themselves and their conjugate mirror image.
    twice = np.full(f1.shape[1], 2.0, dtype=np.float32)
    twice[0] = 1.0
    if n % 2 == 0:
        twice[-1] = 1.0
    n_rings = n // 2
    sums = [np.bincount(ring, weights=(values * twice).ravel(), minlength=n_rings + 1)[:n_rings]
            for values in ((f1 * np.conj(f2)).real, np.abs(f1) ** 2, np.abs(f2) ** 2)]
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sums[0] / np.sqrt(sums[1] * sums[2])
    raw = np.nan_to_num(raw, nan=0.0)
    # Ring 0 is the mean alone (FRC 1 for any two positive images): kept out of the smoothing,
    # where it would lift the first rings above 1/7 for halves that share nothing.
    smooth = raw.copy()
    smooth[1:] = uniform_filter1d(raw[1:], size=max(1, smoothing_rings), mode="nearest")
    frequency = np.arange(n_rings) / (n * pixel_size_nm)
    resolution = float("nan") if _uncorrelated(raw) else _crossing(frequency, smooth)
    return FRCResult(frequency, smooth, raw, resolution)


_LOW_RINGS = slice(1, 4)
"""The lowest rings beyond the mean: below 1/7 on average, the halves share no structure."""


def _uncorrelated(raw: np.ndarray) -> bool:
    low = raw[_LOW_RINGS]
    return low.size == 0 or float(np.mean(low)) < FRC_THRESHOLD


def _crossing(frequency: np.ndarray, curve: np.ndarray) -> float:
    below = np.flatnonzero(curve[1:] < FRC_THRESHOLD) + 1
    if not len(below):
        return float("nan")
    i = below[0]
    f0, f1, c0, c1 = frequency[i - 1], frequency[i], curve[i - 1], curve[i]
    if c0 <= c1:  # no descent through 1/7 (the curve starts below it)
        return float("nan")
    q = f0 + (c0 - FRC_THRESHOLD) * (f1 - f0) / (c0 - c1)
    return float(1.0 / q) if q > 0 else float("nan")


def plot_frc(result: FRCResult, path: str | os.PathLike) -> Path:
    """PNG of the FRC curve with the 1/7 threshold and the resolution."""
    from denseloc._plotting import new_figure, save_figure

    fig = new_figure(6.0, 3.8)
    ax = fig.subplots()
    q_um = result.frequency_per_nm * 1000
    ax.plot(q_um, result.frc_raw, color="0.75", lw=0.8, label="FRC")
    ax.plot(q_um, result.frc, color="tab:blue", label="smoothed")
    ax.axhline(FRC_THRESHOLD, color="k", ls="--", lw=0.8, label="1/7")
    if np.isfinite(result.resolution_nm):
        ax.axvline(1000 / result.resolution_nm, color="tab:red", lw=0.8)
        ax.set_title(f"FRC resolution {result.resolution_nm:.1f} nm")
    elif _uncorrelated(result.frc_raw):
        ax.set_title("the halves do not correlate: no FRC resolution")
    else:
        ax.set_title("FRC never drops below 1/7: render at a finer pixel")
    ax.set_xlabel("spatial frequency (1/um)")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
