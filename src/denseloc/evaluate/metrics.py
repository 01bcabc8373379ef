"""Detection and localization metrics (SMLM Challenge 2016) and uncertainty calibration.

:func:`evaluate` matches predictions to ground truth (:func:`denseloc.evaluate.match`),
lists the matched pairs and their errors, and summarises them in a :class:`Metrics`.
Conventions:

- Counts are pooled over all frames: precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``,
  Jaccard index ``TP / (TP + FP + FN)``, F1 ``2 TP / (2 TP + FP + FN)``. A ratio whose
  denominator is zero is 1: no predictions give precision 1 (none of them is false; this is
  also the end point of a precision-recall curve), no ground truth gives recall 1, and two
  empty tables give Jaccard and F1 of 1.
- Errors are prediction minus ground truth over matched pairs. RMSE lateral is
  ``sqrt(mean(dx^2 + dy^2))``, axial ``sqrt(mean(dz^2))``, 3D ``sqrt(mean(dx^2 + dy^2 + dz^2))``.
  Without matched pairs the error statistics are None (null in JSON).
- Efficiency ``E = 100 - sqrt((100 (1 - JI))^2 + alpha^2 RMSE^2)`` with ``alpha = 1 /nm``
  (lateral) and ``0.5 /nm`` (axial); without matched pairs the RMSE term is 0, so ``E = 0``
  (or 100 when both tables are empty; axial only for 3D data). E can be negative.
- Uncertainty calibration per axis, when predictions carry ``sigma_{x,y,z}_nm``, over matched
  pairs whose sigma is finite and > 0: ``sigma_ratio = RMSE / RMS(sigma)`` (quadratic means,
  so that calibrated, heteroscedastic Gaussian errors give 1), ``z_score_rms = RMS(error /
  sigma)`` (1 when calibrated) and the fractions of ``|error| <= sigma`` and ``<= 2 sigma``
  (0.683 and 0.954 for calibrated Gaussian errors).
- Against the Cramer-Rao bound, when the ground truth carries ``crlb_{x,y,z}_nm`` (the square
  root of the bound, a standard deviation in nm), per emitter: ``crlb_ratio = RMS(error_i /
  crlb_i)`` over matched pairs with a finite, positive bound (1 for an efficient estimator
  of that frame alone; one that reads neighbouring frames can go below it).
- 2D data (z is 0 in both tables, as denseloc writes it for a 2D PSF, or absent) has no
  axial scores: the fields that involve z, including the 3D RMSE and the axial efficiency,
  are None, rather than an RMSE of 0 that reads as a perfect z. By default the data are 3D
  if and only if a table has a non-zero z (:func:`has_z`); ``is_3d`` overrides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from denseloc.evaluate.match import Matching, MatchMethod, _as_table, _check_args, match

__all__ = [
    "Metrics", "evaluate", "frame_error_correlation", "has_z", "metrics_from_pairs",
    "pairs_have_z", "rms_ratio", "sigma_scale",
]

_AXES = ("x", "y", "z")
_ALPHA_LATERAL_PER_NM = 1.0
_ALPHA_AXIAL_PER_NM = 0.5
_AXIAL_FIELDS = (
    "rmse_axial_nm", "rmse_3d_nm", "mad_axial_nm", "bias_z_nm", "efficiency_axial",
    "sigma_ratio_z", "z_score_rms_z", "within_1sigma_z", "within_2sigma_z", "crlb_ratio_z",
)  # fmt: skip


@dataclass(frozen=True)
class Metrics:
    """Detection, localization and calibration scores of one evaluation.

    Fields that cannot be computed (no matched pairs, no predicted sigmas, no CRLB column)
    are None; :meth:`to_dict` gives them as null in JSON. See the module docstring for the
    definitions and the conventions for empty tables.

    Attributes
    ----------
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched ground-truth emitters.
    precision, recall, jaccard, f1 : float
        Detection scores in [0, 1].
    rmse_lateral_nm, rmse_axial_nm, rmse_3d_nm : float or None
        Root-mean-square localization errors of matched pairs, in nm.
    mad_lateral_nm, mad_axial_nm : float or None
        Mean absolute deviations ``mean(hypot(dx, dy))`` and ``mean(|dz|)``, in nm.
    bias_x_nm, bias_y_nm, bias_z_nm : float or None
        Mean error (prediction minus ground truth) per axis, in nm.
    efficiency_lateral : float
        SMLM Challenge efficiency, at most 100.
    efficiency_axial : float or None
        The same for z; None for 2D data.
    sigma_ratio_x, sigma_ratio_y, sigma_ratio_z : float or None
        ``RMSE / RMS(predicted sigma)`` per axis; 1 when calibrated.
    z_score_rms_x, z_score_rms_y, z_score_rms_z : float or None
        ``RMS(error / predicted sigma)`` per axis; 1 when calibrated.
    within_1sigma_x, within_1sigma_y, within_1sigma_z : float or None
        Fraction of ``|error| <= sigma``; 0.683 for calibrated Gaussian errors.
    within_2sigma_x, within_2sigma_y, within_2sigma_z : float or None
        Fraction of ``|error| <= 2 sigma``; 0.954 for calibrated Gaussian errors.
    crlb_ratio_x, crlb_ratio_y, crlb_ratio_z : float or None
        ``RMS(error_i / crlb_i)`` per axis, with ``crlb_i`` the ground truth's
        ``crlb_*_nm`` (square root of the Cramer-Rao bound); 1 for an efficient estimator
        of single frames.

    Examples
    --------
    >>> import pandas as pd
    >>> gt = pd.DataFrame({"frame": [0, 0], "x_nm": [100.0, 900.0], "y_nm": [100.0, 100.0]})
    >>> pred = pd.DataFrame({"frame": [0], "x_nm": [130.0], "y_nm": [140.0]})
    >>> m, pairs = evaluate(pred, gt)
    >>> m.tp, m.fp, m.fn, m.precision, m.recall, m.jaccard
    (1, 0, 1, 1.0, 0.5, 0.5)
    >>> m.rmse_lateral_nm, m.rmse_axial_nm, m.sigma_ratio_x  # no z: 2D, no axial scores
    (50.0, None, None)
    >>> round(m.efficiency_lateral, 2)  # 100 - sqrt(50^2 + 50^2)
    29.29
    >>> pairs[["frame", "dx_nm", "dy_nm", "dz_nm"]].to_numpy().tolist()
    [[0.0, 30.0, 40.0, 0.0]]
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    jaccard: float
    f1: float
    rmse_lateral_nm: float | None
    rmse_axial_nm: float | None
    rmse_3d_nm: float | None
    mad_lateral_nm: float | None
    mad_axial_nm: float | None
    bias_x_nm: float | None
    bias_y_nm: float | None
    bias_z_nm: float | None
    efficiency_lateral: float
    efficiency_axial: float | None
    sigma_ratio_x: float | None = None
    sigma_ratio_y: float | None = None
    sigma_ratio_z: float | None = None
    z_score_rms_x: float | None = None
    z_score_rms_y: float | None = None
    z_score_rms_z: float | None = None
    within_1sigma_x: float | None = None
    within_1sigma_y: float | None = None
    within_1sigma_z: float | None = None
    within_2sigma_x: float | None = None
    within_2sigma_y: float | None = None
    within_2sigma_z: float | None = None
    crlb_ratio_x: float | None = None
    crlb_ratio_y: float | None = None
    crlb_ratio_z: float | None = None

    def to_dict(self) -> dict[str, int | float | None]:
        """Return the fields as a JSON-serialisable dict (None for missing values)."""
        return asdict(self)


def evaluate(
    pred: pd.DataFrame,
    gt: pd.DataFrame,
    *,
    tol_lateral_nm: float = 250.0,
    tol_axial_nm: float = 500.0,
    method: MatchMethod = "hungarian",
    min_photons: float | None = None,
    is_3d: bool | None = None,
) -> tuple[Metrics, pd.DataFrame]:
    """Match predictions to ground truth and score them.

    Parameters
    ----------
    pred : DataFrame
        Predicted localizations (:mod:`denseloc.table`); optional ``sigma_x_nm``,
        ``sigma_y_nm``, ``sigma_z_nm`` enable the calibration scores.
    gt : DataFrame
        Ground-truth emitters, one row per emitter and frame; optional ``crlb_x_nm``,
        ``crlb_y_nm``, ``crlb_z_nm`` (square roots of the Cramer-Rao bound, in nm) enable the
        CRLB ratios.
    tol_lateral_nm, tol_axial_nm : float
        Matching tolerances in nm, see :func:`denseloc.evaluate.match`.
    method : {"hungarian", "greedy"}
        Matching method, see :func:`denseloc.evaluate.match`.
    min_photons : float, optional
        Ground-truth emitters with fewer photons (column ``photons``) are optional: matching
        one is neither a true nor a false positive, missing one is not a false negative
        (a partly-on emitter with a few photons is not a fair target). The matching runs over
        all emitters, so that a prediction goes to the emitter it localizes, and the pairs
        with optional emitters are dropped afterwards. A prediction near a dim emitter
        therefore does not count for a bright one further away (measured on the benchmark's
        crowded frames, such predictions were all about three times closer to the dim one:
        the bright one had been missed). As the matching maximises the number of pairs
        before it minimises their distances, a dim emitter can also take the prediction
        nearest a bright one when a farther prediction within the tolerances is left for
        the bright one: a true positive with a larger error, where matching the bright
        emitters alone would give the near pair and a false positive.
    is_3d : bool, optional
        False for 2D data: z must be 0 in both tables, and the scores that involve z are None.
        Default: 3D if either table has a non-zero z (:func:`has_z`).

    Returns
    -------
    metrics : Metrics
        The scores.
    pairs : DataFrame
        One row per matched pair, sorted by ground-truth row: ``frame``, ``gt_index``,
        ``pred_index`` (positional rows of `gt` and `pred`), ``{x,y,z}_gt_nm``,
        ``{x,y,z}_pred_nm``, errors ``d{x,y,z}_nm`` (prediction minus ground truth), then,
        when present in the inputs, ``sigma_{x,y,z}_nm`` (predicted), ``photons_gt``,
        ``photons_pred``, ``sigma_photons`` (predicted) and ``crlb_{x,y,z}_nm`` (ground
        truth).

    Raises
    ------
    ValueError
        For bad tolerances or method, a missing ``photons`` column with `min_photons`, or a
        non-zero z with ``is_3d=False``.
    """
    _check_args(tol_lateral_nm, tol_axial_nm, method)
    pred = _as_table(pred, "pred")
    gt = _as_table(gt, "gt")
    if is_3d is None:
        is_3d = has_z(pred) or has_z(gt)
    elif not is_3d:
        for name, table in (("pred", pred), ("gt", gt)):
            if has_z(table):
                raise ValueError(f"`is_3d=False` is for 2D data, but `{name}` has a non-zero z")
    matching = match(
        pred, gt, tol_lateral_nm=tol_lateral_nm, tol_axial_nm=tol_axial_nm, method=method
    )
    pairs = _pair_table(pred, gt, matching)
    pairs.attrs["is_3d"] = is_3d  # for subsets scored or plotted later (see pairs_have_z)
    if min_photons is None:
        return metrics_from_pairs(pairs, n_pred=len(pred), n_gt=len(gt), is_3d=is_3d), pairs
    if "photons" not in gt.columns:
        raise ValueError("`min_photons` needs a `photons` column in the ground truth")
    optional = gt["photons"].to_numpy() < min_photons
    optional_pairs = optional[pairs["gt_index"].to_numpy()]
    pairs = pairs[~optional_pairs].reset_index(drop=True)
    n_pred = len(pred) - int(optional_pairs.sum())
    metrics = metrics_from_pairs(pairs, n_pred=n_pred, n_gt=int((~optional).sum()), is_3d=is_3d)
    return metrics, pairs


def has_z(table: pd.DataFrame) -> bool:
    """Whether a localization table is 3D: it has a ``z_nm`` column with a non-zero value.

    denseloc writes z 0 for 2D data, and other programs' 2D tables have no z column.
    """
    return _any_nonzero(table, ["z_nm"])


def pairs_have_z(pairs: pd.DataFrame) -> bool:
    """Whether matched pairs are 3D.

    Pairs from :func:`evaluate`, and the subsets pandas makes of them, carry its decision
    (``pairs.attrs["is_3d"]``), so that a subset whose z happen to be all 0 stays 3D. Other
    pairs are 3D if ``z_gt_nm``, ``z_pred_nm`` or ``dz_nm`` has a finite non-zero value.
    """
    if "is_3d" in pairs.attrs:
        return bool(pairs.attrs["is_3d"])
    return _any_nonzero(pairs, ["z_gt_nm", "z_pred_nm", "dz_nm"])


def _any_nonzero(table: pd.DataFrame, columns: list[str]) -> bool:
    values = table[[c for c in columns if c in table.columns]].to_numpy(dtype=float)
    return bool((np.isfinite(values) & (values != 0)).any())


def metrics_from_pairs(
    pairs: pd.DataFrame, *, n_pred: int, n_gt: int, is_3d: bool | None = None
) -> Metrics:
    """Score a table of matched pairs, e.g. a subset of the pairs from :func:`evaluate`.

    Parameters
    ----------
    pairs : DataFrame
        Matched pairs with at least ``dx_nm``, ``dy_nm``, ``dz_nm`` (nm); optional
        ``sigma_{x,y,z}_nm`` and ``crlb_{x,y,z}_nm`` columns as in :func:`evaluate`.
    n_pred, n_gt : int
        Number of predictions and of ground-truth emitters the pairs were drawn from.
    is_3d : bool, optional
        False for 2D data: the scores that involve z are None. Default:
        :func:`pairs_have_z`.

    Returns
    -------
    Metrics

    Raises
    ------
    ValueError
        If `n_pred` or `n_gt` is smaller than the number of pairs.
    """
    tp, n_pred, n_gt = len(pairs), int(n_pred), int(n_gt)
    if n_pred < tp or n_gt < tp:
        raise ValueError(
            f"`n_pred` ({n_pred}) and `n_gt` ({n_gt}) must be >= the number of pairs ({tp})"
        )
    if is_3d is None:
        is_3d = pairs_have_z(pairs)
    fp, fn = n_pred - tp, n_gt - tp
    jaccard = _ratio(tp, tp + fp + fn)
    err = {axis: pairs[f"d{axis}_nm"].to_numpy(dtype=float) for axis in _AXES}
    lateral = np.hypot(err["x"], err["y"])
    rmse_lateral = _rms(lateral)
    rmse_axial = _rms(err["z"])
    fields: dict[str, float | None] = {}
    for axis in _AXES:
        ratio, z_rms, within_1, within_2 = _calibration(err[axis], pairs, f"sigma_{axis}_nm")
        fields[f"sigma_ratio_{axis}"] = ratio
        fields[f"z_score_rms_{axis}"] = z_rms
        fields[f"within_1sigma_{axis}"] = within_1
        fields[f"within_2sigma_{axis}"] = within_2
        fields[f"crlb_ratio_{axis}"] = _calibration(err[axis], pairs, f"crlb_{axis}_nm")[1]
    metrics = Metrics(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        jaccard=jaccard,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        rmse_lateral_nm=rmse_lateral,
        rmse_axial_nm=rmse_axial,
        rmse_3d_nm=_rms(np.hypot(lateral, err["z"])),
        mad_lateral_nm=_mean(lateral),
        mad_axial_nm=_mean(np.abs(err["z"])),
        bias_x_nm=_mean(err["x"]),
        bias_y_nm=_mean(err["y"]),
        bias_z_nm=_mean(err["z"]),
        efficiency_lateral=_efficiency(jaccard, rmse_lateral, _ALPHA_LATERAL_PER_NM),
        efficiency_axial=_efficiency(jaccard, rmse_axial, _ALPHA_AXIAL_PER_NM),
        **fields,
    )
    return metrics if is_3d else replace(metrics, **dict.fromkeys(_AXIAL_FIELDS))


def sigma_scale(
    pairs: pd.DataFrame, axes: tuple[str, ...] = ("photons", "x", "y", "z")
) -> dict[str, float]:
    """The factors that calibrate predicted sigmas: ``RMS(error / sigma)`` per axis.

    Multiplying every predicted sigma of an axis by its factor makes ``RMS(error / sigma)``
    exactly 1 on `pairs`; for Normal errors whose standard deviations are proportional to the
    predicted ones, it is the maximum-likelihood estimate of that proportion.

    Parameters
    ----------
    pairs : DataFrame
        Matched pairs from :func:`evaluate`: ``d{x,y,z}_nm`` and ``sigma_{x,y,z}_nm``; for
        ``photons``, ``photons_pred``, ``photons_gt`` and ``sigma_photons``.
    axes : tuple of str
        Any of ``photons``, ``x``, ``y``, ``z``.

    Returns
    -------
    dict
        One factor per axis, over the pairs with a finite, positive sigma and a finite
        error / sigma; 1 for an axis without such a pair, or whose errors are all 0.
    """
    factors = {}
    for axis in axes:
        if axis == "photons":
            columns = ("photons_pred", "photons_gt", "sigma_photons")
        elif axis in _AXES:
            columns = (f"d{axis}_nm", f"sigma_{axis}_nm")
        else:
            raise ValueError(f"unknown axis {axis!r}; expected photons, x, y or z")
        z_rms = None
        if all(name in pairs.columns for name in columns):
            error = pairs[columns[0]].to_numpy(dtype=float)
            if axis == "photons":
                error = error - pairs["photons_gt"].to_numpy(dtype=float)
            z_rms = _calibration(error, pairs, columns[-1])[1]
        factors[axis] = z_rms if z_rms is not None and 0 < z_rms < math.inf else 1.0
    return factors


def frame_error_correlation(
    pairs: pd.DataFrame, truth: pd.DataFrame, *, min_pairs: int = 30
) -> dict[str, float]:
    """How one emitter's errors in consecutive frames correlate, per axis.

    For every emitter matched in two consecutive frames, the normalised errors
    ``z = error / sigma`` of the two localizations; the result is the uncentred correlation
    ``E[z_t z_t+1] / sqrt(E[z_t^2] E[z_t+1^2])`` (a bias shared by an emitter's frames counts,
    as it does in their mean), clipped to [0, 1]. It is what
    :func:`denseloc.localize.grouping.group_consecutive` needs to merge sigmas.

    Parameters
    ----------
    pairs : DataFrame
        Matched pairs from :func:`evaluate`, with ``sigma_*`` columns.
    truth : DataFrame
        The ground truth given to :func:`evaluate`, with emitter ``id`` (constant over the
        frames of one emitter).
    min_pairs : int
        Axes with fewer pairs of consecutive frames are left out.

    Returns
    -------
    dict
        Correlation by axis (``x``, ``y``, ``z``, ``photons``) for the axes with sigmas.
    """
    ids = truth["id"].to_numpy()[pairs["gt_index"].to_numpy()]
    frames = pairs["frame"].to_numpy()
    order = np.lexsort((frames, ids))
    ids, frames = ids[order], frames[order]
    follows = (ids[1:] == ids[:-1]) & (frames[1:] == frames[:-1] + 1)
    out = {}
    for axis in ("x", "y", "z", "photons"):
        if axis == "photons":
            if not {"photons_pred", "photons_gt", "sigma_photons"} <= set(pairs.columns):
                continue
            error = pairs["photons_pred"].to_numpy(float) - pairs["photons_gt"].to_numpy(float)
            sigma = pairs["sigma_photons"].to_numpy(float)
        else:
            if f"sigma_{axis}_nm" not in pairs.columns:
                continue
            error = pairs[f"d{axis}_nm"].to_numpy(float)
            sigma = pairs[f"sigma_{axis}_nm"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (error / sigma)[order]
        a, b = z[:-1][follows], z[1:][follows]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < min_pairs:
            continue
        a, b = a[ok], b[ok]
        rho = float(np.mean(a * b) / math.sqrt(float(np.mean(a**2)) * float(np.mean(b**2))))
        out[axis] = min(max(rho, 0.0), 1.0)
    return out


def _pair_table(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching) -> pd.DataFrame:
    """List matched pairs with positions, errors and the optional per-pair columns."""
    g = gt.iloc[matching.gt_index].reset_index(drop=True)
    p = pred.iloc[matching.pred_index].reset_index(drop=True)
    out: dict[str, pd.Series | np.ndarray] = {
        "frame": g["frame"],
        "gt_index": matching.gt_index,
        "pred_index": matching.pred_index,
    }
    for axis in _AXES:
        out[f"{axis}_gt_nm"] = g[f"{axis}_nm"]
    for axis in _AXES:
        out[f"{axis}_pred_nm"] = p[f"{axis}_nm"]
    for axis in _AXES:
        out[f"d{axis}_nm"] = p[f"{axis}_nm"] - g[f"{axis}_nm"]
    for axis in _AXES:
        if f"sigma_{axis}_nm" in p.columns:
            out[f"sigma_{axis}_nm"] = p[f"sigma_{axis}_nm"]
    if "photons" in g.columns:
        out["photons_gt"] = g["photons"]
    if "photons" in p.columns:
        out["photons_pred"] = p["photons"]
    if "sigma_photons" in p.columns:
        out["sigma_photons"] = p["sigma_photons"]
    for axis in _AXES:
        if f"crlb_{axis}_nm" in g.columns:
            out[f"crlb_{axis}_nm"] = pd.to_numeric(g[f"crlb_{axis}_nm"]).astype(float)
    return pd.DataFrame(out)


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, and 1 when there is nothing to count."""
    return numerator / denominator if denominator else 1.0


def _rms(values: np.ndarray) -> float | None:
    """Root mean square, None for no values."""
    return math.sqrt(float(np.mean(np.square(values)))) if values.size else None


def _mean(values: np.ndarray) -> float | None:
    """Arithmetic mean, None for no values."""
    return float(np.mean(values)) if values.size else None


def _efficiency(jaccard: float, rmse_nm: float | None, alpha_per_nm: float) -> float:
    """SMLM Challenge efficiency; the RMSE term is 0 when nothing was matched."""
    return 100.0 - math.hypot(100.0 * (1.0 - jaccard), alpha_per_nm * (rmse_nm or 0.0))


def rms_ratio(error, scale) -> float | None:
    """``RMS(error / scale)`` over the pairs :func:`evaluate` counts (a finite, positive scale,
    a finite error and ratio), e.g. per-emitter error / sqrt(CRLB); None if none qualifies."""
    error, scale = np.asarray(error, dtype=float), np.asarray(scale, dtype=float)
    ok = _usable(error, scale)
    return math.sqrt(float(np.mean((error[ok] / scale[ok]) ** 2))) if ok.any() else None


def _usable(error: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Pairs with a finite, positive scale, a finite error and a finite error / scale."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.isfinite(scale) & (scale > 0) & np.isfinite(error / scale)


def _calibration(
    error_nm: np.ndarray, pairs: pd.DataFrame, scale_column: str
) -> tuple[float | None, float | None, float | None, float | None]:
    """Compare errors with a per-pair scale (predicted sigma or sqrt(CRLB)), in nm.

    Returns ``RMS(error) / RMS(scale)``, ``RMS(error / scale)`` and the fractions of
    ``|error| <= scale`` and ``<= 2 scale``, over pairs with a finite, positive scale, a
    finite error and a finite error / scale; all None when the column is missing or no pair
    qualifies.
    """
    if scale_column not in pairs.columns:
        return None, None, None, None
    scale = pairs[scale_column].to_numpy(dtype=float)
    ok = _usable(error_nm, scale)
    if not ok.any():
        return None, None, None, None
    e, s = error_nm[ok], scale[ok]
    ratio = math.sqrt(float(np.mean(e**2)) / float(np.mean(s**2)))
    z_rms = math.sqrt(float(np.mean((e / s) ** 2)))
    within_1 = float(np.mean(np.abs(e) <= s))
    within_2 = float(np.mean(np.abs(e) <= 2 * s))
    return ratio, z_rms, within_1, within_2
