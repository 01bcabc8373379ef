"""Training curves: loss, detection and localization quality against training time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from denseloc._plotting import new_figure, save_figure

__all__ = ["plot_training_curves"]


def plot_training_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Save a PNG with train/validation loss, Jaccard, RMSE, CRLB ratios and the gradient's
    norm per epoch."""
    minutes = [r["minutes"] for r in rows]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    fig = new_figure(15, 3.4)
    axes = fig.subplots(1, 5)
    axes[0].plot(minutes, series("train_loss"), label="train")
    axes[0].plot(minutes, series("val_loss"), label="validation")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(minutes, series("jaccard"), color="tab:green")
    axes[1].set_ylabel("Jaccard (threshold 0.5)")
    # a 2D model has no axial scores (None in every row): no empty line in the legend; the
    # axial efficiency is a number in every 3D row, even before anything is matched
    is_3d = any(r.get("efficiency_axial") is not None for r in rows)
    axes[2].plot(minutes, series("rmse_lateral_nm"), label="lateral")
    if is_3d:
        axes[2].plot(minutes, series("rmse_axial_nm"), label="axial")
    axes[2].set_ylabel("RMSE (nm)")
    axes[2].legend()
    for axis in "xyz" if is_3d else "xy":
        axes[3].plot(minutes, series(f"crlb_ratio_{axis}"), label=f"error/CRLB {axis}")
        axes[3].plot(minutes, series(f"z_score_rms_{axis}"), ls="--", label=f"error/sigma {axis}")
    axes[3].axhline(1.0, color="k", lw=0.5)
    axes[3].set_ylabel("RMS ratio")
    axes[3].legend(fontsize=7)
    # logs of older versions have no gradient columns: an empty panel
    norms = series("grad_norm")
    axes[4].plot(minutes, norms, color="tab:purple")
    if any(n > 0 for n in norms):  # NaN compares False
        axes[4].set_yscale("log")
    axes[4].set_ylabel("gradient norm before clipping (median)")
    clipped = axes[4].twinx()
    clipped.plot(minutes, series("clipped"), color="tab:gray", ls=":")
    clipped.set_ylim(-0.03, 1.05)  # a line at 0 or 1 stays visible
    clipped.set_ylabel("fraction of steps clipped (dotted)")
    for ax in axes:
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=90)
