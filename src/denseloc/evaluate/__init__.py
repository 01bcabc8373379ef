"""Evaluation against ground truth with the SMLM Challenge 2016 conventions.

Match predictions to ground truth per frame (:func:`match`), score detection, localization
and uncertainty calibration (:func:`evaluate`, :class:`Metrics`) and plot the errors
(:func:`plot_evaluation`; matplotlib is imported only when plotting).
"""

from denseloc.evaluate.match import Matching, MatchMethod, match
from denseloc.evaluate.metrics import (
    Metrics,
    evaluate,
    frame_error_correlation,
    has_z,
    metrics_from_pairs,
    pairs_have_z,
    rms_ratio,
    sigma_scale,
)
from denseloc.evaluate.plots import plot_evaluation

__all__ = [
    "MatchMethod",
    "Matching",
    "Metrics",
    "evaluate",
    "frame_error_correlation",
    "has_z",
    "match",
    "metrics_from_pairs",
    "pairs_have_z",
    "plot_evaluation",
    "rms_ratio",
    "sigma_scale",
]
