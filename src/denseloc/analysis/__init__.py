"""Analysis of localization tables: super-resolution rendering, drift correction, FRC."""

from denseloc.analysis.drift import DriftEstimate, correct_drift, estimate_drift
from denseloc.analysis.frc import FRCResult, fourier_ring_correlation
from denseloc.analysis.render import render, render_extent, save_image

__all__ = [
    "DriftEstimate",
    "FRCResult",
    "correct_drift",
    "estimate_drift",
    "fourier_ring_correlation",
    "render",
    "render_extent",
    "save_image",
]
