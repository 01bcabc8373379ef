"""Diagnostic plots of matched pairs from :func:`denseloc.evaluate.evaluate`.

Figures are drawn on matplotlib's Agg canvas directly (no :mod:`matplotlib.pyplot`), so
plotting neither needs a display nor changes the backend of a running notebook or GUI, and
matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from denseloc._plotting import new_figure, save_figure
from denseloc.evaluate.metrics import pairs_have_z

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_evaluation"]

logger = logging.getLogger(__name__)

_AXES = ("x", "y", "z")


def plot_evaluation(
    pairs: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    n_bins: int = 20,
    dpi: int = 120,
    is_3d: bool | None = None,
) -> list[Path]:
    """Write PNG figures that show the localization errors of matched pairs.

    Files written to `out_dir` (created if needed), each atomically:

    - ``error_histograms.png``: histograms of dx, dy, dz (nm; dz only in 3D), with mean and
      RMSE.
    - ``error_vs_z.png``: RMSE of x, y and z (nm) in `n_bins` equal-width bins of the
      ground-truth z; skipped in 2D and when all ground-truth z are equal.
    - ``sigma_vs_error.png``: per axis with a predicted ``sigma_*_nm`` column, the RMS error
      against the RMS predicted sigma in `n_bins` bins of equal count (quantiles of sigma),
      with the identity line that calibrated sigmas follow; skipped without sigma columns.

    Parameters
    ----------
    pairs : DataFrame
        Matched pairs as returned by :func:`denseloc.evaluate.evaluate`.
    out_dir : str or PathLike
        Output folder.
    n_bins : int
        Number of bins of the binned plots.
    dpi : int
        Resolution of the PNG files.
    is_3d : bool, optional
        False for 2D data (z 0 in both tables, as :func:`denseloc.evaluate.evaluate` with
        ``is_3d=False``): no panel shows z, whose errors of 0 were never measured. Default:
        :func:`denseloc.evaluate.pairs_have_z`.

    Returns
    -------
    list of Path
        The files written, in the order above; empty when there are no pairs.
    """
    if n_bins < 1:
        raise ValueError(f"`n_bins` must be >= 1, got {n_bins}")
    out_dir = Path(out_dir)
    if len(pairs) == 0:
        logger.warning("no matched pairs: no evaluation plots written to %s", out_dir)
        return []
    if is_3d is None:
        is_3d = pairs_have_z(pairs)
    axes = _AXES if is_3d else _AXES[:2]
    figures = {"error_histograms.png": _error_histograms(pairs, axes)}
    if is_3d and np.ptp(pairs["z_gt_nm"].to_numpy(dtype=float)) > 0:
        figures["error_vs_z.png"] = _error_vs_z(pairs, n_bins)
    sigma_axes = [a for a in axes if f"sigma_{a}_nm" in pairs.columns]
    if sigma_axes:
        figures["sigma_vs_error.png"] = _sigma_vs_error(pairs, sigma_axes, n_bins)
    return [save_figure(fig, out_dir / name, dpi=dpi) for name, fig in figures.items()]


def _figure(n_panels: int) -> Figure:
    """A row of `n_panels` axes."""
    fig = new_figure(4.0 * n_panels, 3.4)
    fig.subplots(1, n_panels, squeeze=False)
    return fig


def _error_histograms(pairs: pd.DataFrame, axes: tuple[str, ...]) -> Figure:
    fig = _figure(len(axes))
    for ax, axis in zip(fig.axes, axes, strict=True):
        err = pairs[f"d{axis}_nm"].to_numpy(dtype=float)
        ax.hist(err, bins=60, color="C0")
        ax.axvline(0.0, color="k", lw=0.8)
        rmse = float(np.sqrt(np.mean(err**2)))
        ax.set_title(f"d{axis}: mean {np.mean(err):.1f} nm, RMSE {rmse:.1f} nm", fontsize=9)
        ax.set_xlabel(f"d{axis} = prediction - ground truth (nm)")
        ax.set_ylabel("matched pairs")
    return fig


def _binned_rms(
    key: np.ndarray, values: dict[str, np.ndarray], edges: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Count and RMS of each array in `values` per bin of `key` (NaN in empty bins)."""
    n_bins = edges.size - 1
    idx = np.clip(np.searchsorted(edges, key, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    rms = {}
    for name, v in values.items():
        total = np.bincount(idx, weights=v**2, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            rms[name] = np.sqrt(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return count, rms


def _error_vs_z(pairs: pd.DataFrame, n_bins: int) -> Figure:
    z = pairs["z_gt_nm"].to_numpy(dtype=float)
    edges = np.linspace(z.min(), z.max(), n_bins + 1)
    errors = {a: pairs[f"d{a}_nm"].to_numpy(dtype=float) for a in _AXES}
    count, rms = _binned_rms(z, errors, edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig = _figure(1)
    ax = fig.axes[0]
    for axis in _AXES:
        ax.plot(centres, rms[axis], "o-", ms=3, label=f"RMSE {axis}")
    ax.set_xlabel("ground-truth z (nm)")
    ax.set_ylabel("RMSE (nm)")
    ax.set_title(f"error vs z ({int(count.sum())} pairs)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def _sigma_vs_error(pairs: pd.DataFrame, axes: list[str], n_bins: int) -> Figure:
    fig = _figure(len(axes))
    for ax, axis in zip(fig.axes, axes, strict=True):
        sigma = pairs[f"sigma_{axis}_nm"].to_numpy(dtype=float)
        err = pairs[f"d{axis}_nm"].to_numpy(dtype=float)
        ok = np.isfinite(sigma) & (sigma > 0)
        ax.set_xlabel(f"RMS predicted sigma {axis} (nm)")
        ax.set_ylabel(f"RMS error d{axis} (nm)")
        if not ok.any():
            ax.set_title(f"{axis}: no finite sigma", fontsize=9)
            continue
        sigma, err = sigma[ok], err[ok]
        edges = np.unique(np.quantile(sigma, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.size < 2:
            edges = np.array([sigma[0], sigma[0] + 1.0])
        count, rms = _binned_rms(sigma, {"sigma": sigma, "error": err}, edges)
        filled = count > 0
        ax.plot(rms["sigma"][filled], rms["error"][filled], "o-", ms=3, label="binned")
        top = float(np.nanmax([rms["sigma"][filled].max(), rms["error"][filled].max()]))
        ax.plot([0.0, top], [0.0, top], "k--", lw=0.8, label="identity")
        ax.set_xlim(0, 1.05 * top)
        ax.set_ylim(0, 1.05 * top)
        ax.set_title(f"{axis}: observed vs predicted error", fontsize=9)
        ax.legend(fontsize=8)
    return fig
