"""Diagnostic figures of a bead calibration (PNG, written atomically).

:func:`write_report` draws, from a :class:`~denseloc.calibration.beads.BeadCalibration`:

``psf_sections.png``
    xz and yz sections through the PSF centre of the measured average, the spline model and
    their difference (z vertical, nm; x or y horizontal, px).
``psf_planes.png``
    Measured and model planes at a few z positions, with their difference.
``psf_widths.png``
    Gaussian widths sigma_x(z), sigma_y(z) measured per plane (filled: used by the Huang fit)
    with the fitted Huang curves, the fraction of the photons inside the ROI per plane, and
    the leave-one-bead-out error of each smoothing length along z (when it was chosen so).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, so the global
matplotlib backend is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from denseloc._plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from denseloc.calibration.beads import BeadCalibration

__all__ = ["write_report"]


def write_report(calibration: BeadCalibration, out_dir: str | os.PathLike) -> list[Path]:
    """Write the calibration's diagnostic PNGs into `out_dir` (created).

    Parameters
    ----------
    calibration : BeadCalibration
        Result of :func:`denseloc.calibration.beads.calibrate_beads`.
    out_dir : path-like
        Output folder.

    Returns
    -------
    list of Path
        The written files.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from denseloc.errors import DenselocError

        raise DenselocError(f"{out}: exists and is not a folder")
    figures = {
        "psf_sections.png": _sections_figure(calibration),
        "psf_planes.png": _planes_figure(calibration),
        "psf_widths.png": _widths_figure(calibration),
    }
    return [save_figure(fig, out / name) for name, fig in figures.items()]


def _title(calibration: BeadCalibration) -> str:
    return (
        f"{calibration.source or 'bead stack'}: {calibration.n_beads_used} beads, "
        f"relative residual {calibration.relative_residual:.4f}"
    )


def _sections_figure(calibration: BeadCalibration) -> Figure:
    measured, model = calibration.measured, calibration.model
    centre = measured.shape[1] // 2
    half = centre
    z = calibration.z_nm
    step = abs(calibration.z_step_nm)  # z_nm rises whatever the stack's order
    extent = (-half - 0.5, half + 0.5, z[0] - step / 2, z[-1] + step / 2)
    sections = {
        "xz": (measured[:, centre, :], model[:, centre, :]),
        "yz": (measured[:, :, centre], model[:, :, centre]),
    }
    vmax = max(float(measured.max()), float(model.max()))
    dmax = max(float(np.abs(m - f).max()) for m, f in sections.values()) or 1.0
    fig = new_figure(10, 8)
    axes = fig.subplots(2, 3, sharey=True)
    for row, (name, (meas, fit)) in enumerate(sections.items()):
        axis = name[0]
        panels = [
            (meas, f"measured, {name}", "magma", 0.0, vmax),
            (fit, f"model, {name}", "magma", 0.0, vmax),
            (meas - fit, f"measured - model, {name}", "RdBu_r", -dmax, dmax),
        ]
        for col, (image, title, cmap, lo, hi) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(
                image,
                origin="lower",
                aspect="auto",
                extent=extent,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"{axis} (px)")
            if col == 0:
                ax.set_ylabel("z (nm)")
            fig.colorbar(im, ax=ax, shrink=0.8, label="photon fraction" if col < 2 else None)
    fig.suptitle(_title(calibration), fontsize=11)
    return fig


def _planes_figure(calibration: BeadCalibration) -> Figure:
    measured, model, z = calibration.measured, calibration.model, calibration.z_nm
    picks = np.unique(np.linspace(0, len(z) - 1, 7).round().astype(int))
    fig = new_figure(1.7 * len(picks) + 1, 6)
    axes = fig.subplots(3, len(picks), squeeze=False)
    for col, k in enumerate(picks):
        vmax = max(float(measured[k].max()), float(model[k].max()))
        diff = measured[k] - model[k]
        dmax = float(np.abs(diff).max()) or 1.0
        rows = [
            (measured[k], "magma", 0.0, vmax),
            (model[k], "magma", 0.0, vmax),
            (diff, "RdBu_r", -dmax, dmax),
        ]
        for row, (image, cmap, lo, hi) in enumerate(rows):
            ax = axes[row, col]
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"z = {z[k]:.0f} nm", fontsize=9)
        axes[2, col].set_xlabel(f"|diff| <= {dmax / vmax:.1%}\nof peak", fontsize=8)
    for row, label in enumerate(("measured", "model", "difference")):
        axes[row, 0].set_ylabel(label)
    fig.suptitle(_title(calibration), fontsize=11)
    return fig


def _widths_figure(calibration: BeadCalibration) -> Figure:
    fig = new_figure(14, 4.2)
    ax_w, ax_f, ax_s = fig.subplots(1, 3, width_ratios=(2, 1, 1))
    fit = calibration.astigmatic
    if fit is None:
        ax_w.text(0.5, 0.5, "Huang fit failed", ha="center", va="center", transform=ax_w.transAxes)
    else:
        z = fit.z_nm
        dense = np.linspace(z[0], z[-1], 400)
        model_x, model_y = fit.model_sigmas(dense)
        c = fit.config
        for values, model, colour, axis, a in (
            (fit.widths.sigma_x_px, model_x, "tab:blue", "x", 0),
            (fit.widths.sigma_y_px, model_y, "tab:red", "y", 1),
        ):
            used = fit.used[a]
            ax_w.plot(
                z[used], values[used], "o", ms=3, color=colour, label=f"sigma_{axis} measured"
            )
            ax_w.plot(z[~used], values[~used], "o", ms=3, mfc="none", color=colour, alpha=0.5)
            ax_w.plot(
                dense,
                model,
                "-",
                color=colour,
                label=f"Huang: focus {c.focus_nm[a]:.0f} nm, sigma0 {c.sigma0_px[a]:.2f} px, "
                f"depth {c.depth_nm[a]:.0f} nm",
            )
        fitted = fit.widths.sigma_x_px[fit.used[0]], fit.widths.sigma_y_px[fit.used[1]]
        top = 1.2 * max(float(u.max()) for u in fitted)
        ax_w.set_ylim(0, top)
        ax_w.axvspan(*fit.z_range_nm, color="0.9", zorder=0, label="both axes fitted")
        ax_w.legend(fontsize=8, loc="upper center")
    ax_w.set_xlabel("z (nm)")
    ax_w.set_ylabel("Gaussian width (px)")
    ax_w.set_title("widths per plane (hollow: not fitted)", fontsize=10)
    ax_f.plot(calibration.z_nm, calibration.encircled_fraction, "-", color="k")
    ax_f.set_ylim(0, 1.05)
    ax_f.set_xlabel("z (nm)")
    ax_f.set_ylabel("fraction of photons in the ROI")
    ax_f.set_title(calibration.normalisation, fontsize=9)
    _smoothing_axes(ax_s, calibration)
    fig.suptitle(_title(calibration), fontsize=11)
    return fig


def _smoothing_axes(ax, calibration: BeadCalibration) -> None:
    scores = calibration.z_smoothing_scores
    ax.set_title(f"smoothing along z: {calibration.z_smoothing_nm:g} nm", fontsize=9)
    if not scores:
        ax.text(0.5, 0.5, "not cross-validated", ha="center", va="center",
                transform=ax.transAxes)
        return
    lengths = np.array(list(scores))
    ax.plot(lengths, list(scores.values()), "o-", ms=3, color="k")
    ax.axvline(calibration.z_smoothing_nm, color="tab:green", label="used")
    ax.set_xlabel("smoothing length (nm)")
    ax.set_ylabel("left-out beads' error (1 = none)")
    ax.legend(fontsize=8)
