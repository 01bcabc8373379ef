"""Tests of the evaluation metrics, the pair table and the evaluation plots."""

from __future__ import annotations

import doctest
import json
import math
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from denseloc.evaluate import (
    Metrics,
    evaluate,
    frame_error_correlation,
    has_z,
    metrics_from_pairs,
    pairs_have_z,
    plot_evaluation,
    rms_ratio,
    sigma_scale,
)

# Gaussian probabilities P(|Z| <= 1), P(|Z| <= 2), P(|Z| <= 4).
P1, P2, P4 = math.erf(1 / math.sqrt(2)), math.erf(2 / math.sqrt(2)), math.erf(4 / math.sqrt(2))


def hand_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three matched pairs with known errors, one false positive, one false negative.

    Errors (dx, dy, dz) in nm: (30, 40, 0), (0, 0, 100), (-60, 80, -100).
    """
    gt = pd.DataFrame(
        {
            "frame": [0, 0, 0, 0],
            "x_nm": [0.0, 5000.0, 10000.0, 20000.0],
            "y_nm": [0.0, 0.0, 0.0, 0.0],
            "z_nm": [0.0, 0.0, 0.0, 0.0],
            "photons": [1000.0, 2000.0, 3000.0, 4000.0],
            "crlb_x_nm": [10.0, 10.0, 30.0, 1.0],
        }
    )
    pred = pd.DataFrame(
        {
            "frame": [0, 0, 0, 0],
            "x_nm": [30.0, 5000.0, 9940.0, 30000.0],
            "y_nm": [40.0, 0.0, 80.0, 0.0],
            "z_nm": [0.0, 100.0, -100.0, 0.0],
            "sigma_x_nm": [20.0, 10.0, 60.0, 5.0],
        }
    )
    return pred, gt


def test_hand_computed_metrics():
    pred, gt = hand_case()
    m, _ = evaluate(pred, gt)
    assert (m.tp, m.fp, m.fn) == (3, 1, 1)
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(0.75)
    assert m.f1 == pytest.approx(0.75)
    assert m.jaccard == pytest.approx(0.6)
    # Squared lateral errors 2500, 0, 10000; squared axial 0, 10000, 10000.
    assert m.rmse_lateral_nm == pytest.approx(math.sqrt(12500 / 3))
    assert m.rmse_axial_nm == pytest.approx(math.sqrt(20000 / 3))
    assert m.rmse_3d_nm == pytest.approx(math.sqrt(32500 / 3))
    assert m.mad_lateral_nm == pytest.approx(50.0)  # (50 + 0 + 100) / 3
    assert m.mad_axial_nm == pytest.approx(200 / 3)
    assert (m.bias_x_nm, m.bias_y_nm, m.bias_z_nm) == pytest.approx((-10.0, 40.0, 0.0))
    # E = 100 - sqrt((100 (1 - 0.6))^2 + alpha^2 RMSE^2)
    assert m.efficiency_lateral == pytest.approx(100 - math.sqrt(40**2 + 12500 / 3))
    assert m.efficiency_axial == pytest.approx(100 - math.sqrt(40**2 + 0.25 * 20000 / 3))
    assert m.efficiency_lateral == pytest.approx(24.0614, abs=1e-4)


def test_hand_computed_sigma_and_crlb_scores():
    pred, gt = hand_case()
    m, _ = evaluate(pred, gt)
    # dx = 30, 0, -60 with predicted sigma_x 20, 10, 60 (the false positive's 5 is ignored).
    assert m.sigma_ratio_x == pytest.approx(math.sqrt((900 + 3600) / (400 + 100 + 3600)))
    assert m.z_score_rms_x == pytest.approx(math.sqrt((1.5**2 + 0 + 1) / 3))
    assert m.within_1sigma_x == pytest.approx(2 / 3)  # |dx| <= sigma for 0 and -60 (inclusive)
    assert m.within_2sigma_x == pytest.approx(1.0)
    # Per emitter: RMS of dx / crlb_x = 3, 0, -2.
    assert m.crlb_ratio_x == pytest.approx(math.sqrt(13 / 3))
    for axis in "yz":
        for name in ("sigma_ratio", "z_score_rms", "within_1sigma", "within_2sigma", "crlb_ratio"):
            assert getattr(m, f"{name}_{axis}") is None


def test_pair_table():
    pred, gt = hand_case()
    _, pairs = evaluate(pred, gt)
    assert pairs["gt_index"].tolist() == [0, 1, 2]
    assert pairs["pred_index"].tolist() == [0, 1, 2]
    assert pairs["dx_nm"].tolist() == pytest.approx([30.0, 0.0, -60.0])
    assert pairs["dy_nm"].tolist() == pytest.approx([40.0, 0.0, 80.0])
    assert pairs["dz_nm"].tolist() == pytest.approx([0.0, 100.0, -100.0])
    assert pairs["x_pred_nm"].tolist() == pytest.approx([30.0, 5000.0, 9940.0])
    assert pairs["x_gt_nm"].tolist() == pytest.approx([0.0, 5000.0, 10000.0])
    assert pairs["sigma_x_nm"].tolist() == pytest.approx([20.0, 10.0, 60.0])
    assert pairs["photons_gt"].tolist() == pytest.approx([1000.0, 2000.0, 3000.0])
    assert pairs["crlb_x_nm"].tolist() == pytest.approx([10.0, 10.0, 30.0])
    assert "sigma_y_nm" not in pairs and "photons_pred" not in pairs and "crlb_z_nm" not in pairs


def test_metrics_from_a_subset_of_pairs():
    pred, gt = hand_case()
    _, pairs = evaluate(pred, gt)
    m = metrics_from_pairs(pairs.iloc[:1], n_pred=1, n_gt=1)
    assert (m.tp, m.jaccard, m.rmse_lateral_nm) == (1, 1.0, pytest.approx(50.0))
    with pytest.raises(ValueError, match="n_pred"):
        metrics_from_pairs(pairs, n_pred=2, n_gt=5)


def test_2d_data_read_as_3d_has_zero_axial_error():
    gt = pd.DataFrame({"frame": [0, 0, 1], "x_nm": [0.0, 1000.0, 0.0], "y_nm": [0.0] * 3})
    pred = pd.DataFrame({"frame": [0, 1], "x_nm": [6.0, 0.0], "y_nm": [8.0, 0.0]})
    m, pairs = evaluate(pred, gt, is_3d=True)
    assert (m.tp, m.fp, m.fn) == (2, 0, 1)
    assert m.rmse_lateral_nm == pytest.approx(math.sqrt(100 / 2))
    assert m.rmse_axial_nm == 0.0
    assert m.rmse_3d_nm == pytest.approx(m.rmse_lateral_nm)
    assert m.efficiency_axial == pytest.approx(100 * m.jaccard)  # no axial error term
    assert (pairs["z_gt_nm"] == 0).all()
    # Tables without a non-zero z are 2D unless the caller says otherwise.
    assert evaluate(pred, gt)[0].rmse_axial_nm is None
    # Pairs (and their subsets) keep evaluate's decision; pairs from elsewhere are 2D by their z.
    assert metrics_from_pairs(pairs[pairs["frame"] == 1], n_pred=1, n_gt=1).rmse_axial_nm == 0.0
    bare = pairs.copy()
    bare.attrs.clear()
    assert metrics_from_pairs(bare, n_pred=2, n_gt=3).rmse_axial_nm is None
    assert metrics_from_pairs(bare, n_pred=2, n_gt=3, is_3d=True).rmse_axial_nm == 0.0


def test_data_with_a_z_are_3d_by_default():
    gt = pd.DataFrame({"frame": [0, 0], "x_nm": [0.0, 1000.0], "y_nm": [0.0] * 2,
                       "z_nm": [0.0, 0.0]})
    pred = pd.DataFrame({"frame": [0, 0], "x_nm": [0.0, 1000.0], "y_nm": [0.0] * 2,
                         "z_nm": [30.0, -40.0]})
    m, pairs = evaluate(pred, gt)  # the truth alone would read as 2D: pred decides
    assert m.rmse_axial_nm == pytest.approx(math.sqrt((30.0**2 + 40.0**2) / 2))
    assert has_z(pred) and not has_z(gt) and pairs_have_z(pairs)
    assert metrics_from_pairs(pairs, n_pred=2, n_gt=2) == m
    assert pairs_have_z(pairs.iloc[:0])  # evaluate's decision, not the (absent) z of the subset
    bare = pairs.copy()
    bare.attrs.clear()
    assert pairs_have_z(bare) and not pairs_have_z(bare.iloc[:0])
    assert not pairs_have_z(bare.assign(z_pred_nm=np.nan, dz_nm=np.nan))  # NaN is no z


def test_2d_evaluation_has_no_axial_scores_and_refuses_a_z():
    gt = pd.DataFrame({"frame": [0, 0, 1], "x_nm": [0.0, 1000.0, 0.0], "y_nm": [0.0] * 3,
                       "photons": [900.0, 100.0, 900.0], "crlb_x_nm": [2.0] * 3,
                       "crlb_y_nm": [2.0] * 3})
    pred = pd.DataFrame({"frame": [0, 1], "x_nm": [6.0, 0.0], "y_nm": [8.0, 0.0],
                         "z_nm": [0.0, 0.0], "sigma_x_nm": [3.0] * 2, "sigma_y_nm": [4.0] * 2,
                         "sigma_z_nm": [np.nan] * 2})
    for min_photons in (None, 500.0):
        m2, _ = evaluate(pred, gt, is_3d=False, min_photons=min_photons)
        m3, _ = evaluate(pred, gt, is_3d=True, min_photons=min_photons)
        assert evaluate(pred, gt, min_photons=min_photons)[0] == m2  # 2D by default
        d2, d3 = m2.to_dict(), m3.to_dict()
        axial = {k for k in d2 if k.endswith("_z") or "axial" in k or k in ("rmse_3d_nm",
                                                                            "bias_z_nm")}
        assert all(d2[k] is None for k in axial)
        assert d3["rmse_axial_nm"] == 0.0  # what the 3D reading of the same tables says
        assert {k: v for k, v in d2.items() if k not in axial} == {
            k: v for k, v in d3.items() if k not in axial
        }
        assert m2.crlb_ratio_x == pytest.approx(6.0 / 2.0 / math.sqrt(2))  # (6, 0) over 2 pairs
    with pytest.raises(ValueError, match="non-zero z"):
        evaluate(pred.assign(z_nm=[0.0, 50.0]), gt, is_3d=False)


def test_tolerances_and_method_are_passed_to_matching():
    gt = pd.DataFrame({"frame": [0, 0], "x_nm": [0.0, 200.0], "y_nm": [0.0, 0.0]})
    pred = pd.DataFrame({"frame": [0, 0], "x_nm": [110.0, 310.0], "y_nm": [0.0, 0.0]})
    assert evaluate(pred, gt, tol_lateral_nm=150.0)[0].tp == 2
    assert evaluate(pred, gt, tol_lateral_nm=150.0, method="greedy")[0].tp == 1
    assert evaluate(pred, gt, tol_lateral_nm=100.0)[0].tp == 1  # only 110 -> 200 (90 nm)
    pred_z = pred.assign(z_nm=[0.0, 300.0])
    assert evaluate(pred_z, gt, tol_lateral_nm=150.0, tol_axial_nm=200.0)[0].tp == 1
    with pytest.raises(ValueError, match="method"):
        evaluate(pred, gt, method="closest")


# --- empty inputs ----------------------------------------------------------------------------


def _evaluate_without_warnings(pred: pd.DataFrame, gt: pd.DataFrame) -> Metrics:
    """3D scores (tables without a non-zero z would read as 2D), with warnings as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            m, pairs = evaluate(pred, gt, is_3d=True)
    assert len(pairs) == 0 and {"dx_nm", "dy_nm", "dz_nm", "frame"} <= set(pairs.columns)
    json.dumps(m.to_dict())
    return m


def _assert_no_error_statistics(m: Metrics) -> None:
    for name in ("rmse_lateral_nm", "rmse_axial_nm", "rmse_3d_nm", "mad_lateral_nm",
                 "mad_axial_nm", "bias_x_nm", "bias_y_nm", "bias_z_nm", "sigma_ratio_x",
                 "z_score_rms_x", "within_1sigma_x", "crlb_ratio_x"):  # fmt: skip
        assert getattr(m, name) is None, name


def test_empty_prediction():
    pred, gt = hand_case()
    m = _evaluate_without_warnings(pred.iloc[:0], gt)
    assert (m.tp, m.fp, m.fn) == (0, 0, 4)
    assert (m.precision, m.recall, m.jaccard, m.f1) == (1.0, 0.0, 0.0, 0.0)
    assert (m.efficiency_lateral, m.efficiency_axial) == (0.0, 0.0)
    _assert_no_error_statistics(m)


def test_empty_ground_truth():
    pred, gt = hand_case()
    m = _evaluate_without_warnings(pred, gt.iloc[:0])
    assert (m.tp, m.fp, m.fn) == (0, 4, 0)
    assert (m.precision, m.recall, m.jaccard, m.f1) == (0.0, 1.0, 0.0, 0.0)
    assert (m.efficiency_lateral, m.efficiency_axial) == (0.0, 0.0)
    _assert_no_error_statistics(m)


def test_both_empty():
    m = _evaluate_without_warnings(pd.DataFrame(), pd.DataFrame())
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert (m.precision, m.recall, m.jaccard, m.f1) == (1.0, 1.0, 1.0, 1.0)
    assert (m.efficiency_lateral, m.efficiency_axial) == (100.0, 100.0)
    _assert_no_error_statistics(m)


def test_nothing_within_tolerance():
    gt = pd.DataFrame({"frame": [0], "x_nm": [0.0], "y_nm": [0.0]})
    pred = pd.DataFrame({"frame": [0], "x_nm": [1000.0], "y_nm": [0.0], "sigma_x_nm": [10.0]})
    m = _evaluate_without_warnings(pred, gt)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.jaccard) == (0, 1, 1, 0.0, 0.0, 0.0)
    _assert_no_error_statistics(m)


def test_to_dict_is_json_with_nulls():
    pred, gt = hand_case()
    m, _ = evaluate(pred, gt)
    d = json.loads(json.dumps(m.to_dict()))
    required = {"tp", "fp", "fn", "precision", "recall", "jaccard", "rmse_lateral_nm"}
    required |= {"rmse_axial_nm", "rmse_3d_nm", "efficiency_lateral", "efficiency_axial"}
    assert required <= set(d)
    assert d["tp"] == 3 and isinstance(d["tp"], int)
    assert d["jaccard"] == pytest.approx(0.6)
    assert d["sigma_ratio_y"] is None and d["crlb_ratio_z"] is None


# --- uncertainty calibration -----------------------------------------------------------------


def calibrated_case(n_frames: int = 40, per_frame: int = 100, seed: int = 5):
    """Errors drawn from N(0, sigma_i) with the true sigma_i given as the prediction.

    Emitters sit on a 2 um grid, so every prediction can only match its own emitter; with
    sigma <= 40 nm laterally and <= 80 nm axially, an error beyond the tolerances (250 nm,
    500 nm) has probability < 1e-8 per emitter.
    """
    rng = np.random.default_rng(seed)
    n = n_frames * per_frame
    gx, gy = np.meshgrid(np.arange(10) * 2000.0, np.arange(per_frame // 10) * 2000.0)
    gt = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(n_frames), per_frame),
            "x_nm": np.tile(gx.ravel(), n_frames),
            "y_nm": np.tile(gy.ravel(), n_frames),
            "z_nm": rng.uniform(-500, 500, n),
        }
    )
    sigma = {
        "x": rng.uniform(2, 40, n),
        "y": rng.uniform(2, 40, n),
        "z": rng.uniform(5, 80, n),
    }
    pred = gt.copy()
    for axis, s in sigma.items():
        pred[f"{axis}_nm"] += rng.normal(0.0, s)
        pred[f"sigma_{axis}_nm"] = s
    return pred, gt, sigma


def test_calibrated_sigmas_score_as_calibrated():
    pred, gt, sigma = calibrated_case()
    m, _ = evaluate(pred, gt)
    n = len(gt)
    assert m.tp == n
    for axis in "xyz":
        # z^2 has variance 2, so RMS(z) has standard error 1 / sqrt(2 n).
        assert getattr(m, f"z_score_rms_{axis}") == pytest.approx(1, abs=4 / math.sqrt(2 * n))
        assert getattr(m, f"within_1sigma_{axis}") == pytest.approx(
            P1, abs=4 * math.sqrt(P1 * (1 - P1) / n)
        )
        assert getattr(m, f"within_2sigma_{axis}") == pytest.approx(
            P2, abs=4 * math.sqrt(P2 * (1 - P2) / n)
        )
        # RMSE / RMS(sigma): standard error of mean(e^2) / mean(s^2) is
        # sqrt(2 mean(s^4) / n) / mean(s^2); halve it for the square root.
        s = sigma[axis]
        se = 0.5 * math.sqrt(2 * np.mean(s**4) / n) / np.mean(s**2)
        assert getattr(m, f"sigma_ratio_{axis}") == pytest.approx(1, abs=4 * se)
        # The quadratic mean matters: the arithmetic mean of sigma is > 4 se away.
        assert abs(np.sqrt(np.mean(s**2)) / np.mean(s) - 1) > 6 * se


def test_doubled_sigmas_score_as_overestimated():
    pred, gt, _ = calibrated_case()
    for axis in "xyz":
        pred[f"sigma_{axis}_nm"] *= 2
    m, _ = evaluate(pred, gt)
    n = len(gt)
    for axis in "xyz":
        assert getattr(m, f"z_score_rms_{axis}") == pytest.approx(0.5, abs=2 / math.sqrt(2 * n))
        assert getattr(m, f"sigma_ratio_{axis}") == pytest.approx(0.5, abs=0.03)
        # |error| <= 2 sigma_true now counts as within "1 sigma".
        assert getattr(m, f"within_1sigma_{axis}") == pytest.approx(
            P2, abs=4 * math.sqrt(P2 * (1 - P2) / n)
        )
        assert getattr(m, f"within_2sigma_{axis}") == pytest.approx(P4, abs=2e-3)


def test_sigma_scale_recovers_a_miscalibration_and_removes_it():
    # Sigmas predicted 2.5 times too small in x, 0.6 times in y (too large), right in z; the
    # photon errors are drawn with sd 40 against a predicted 20.
    pred, gt, _ = calibrated_case(seed=8)
    pred["sigma_x_nm"] /= 2.5
    pred["sigma_y_nm"] /= 0.6
    rng = np.random.default_rng(9)
    gt["photons"] = rng.uniform(1000, 5000, len(gt))
    pred["photons"] = gt["photons"] + rng.normal(0, 40.0, len(gt))
    pred["sigma_photons"] = 20.0
    _, pairs = evaluate(pred, gt)
    factors = sigma_scale(pairs)
    n = len(pairs)
    # RMS(z) of calibrated errors has standard error 1 / sqrt(2 n), times the factor.
    for axis, truth in (("x", 2.5), ("y", 0.6), ("z", 1.0), ("photons", 2.0)):
        assert factors[axis] == pytest.approx(truth, abs=4 * truth / math.sqrt(2 * n))
    for axis in "xyz":
        pred[f"sigma_{axis}_nm"] *= factors[axis]
    m, _ = evaluate(pred, gt)
    assert (m.z_score_rms_x, m.z_score_rms_y, m.z_score_rms_z) == pytest.approx((1, 1, 1))
    # Without the columns an axis needs, its factor is 1; unknown axes are refused.
    assert sigma_scale(pairs.drop(columns=["sigma_photons", "sigma_z_nm"])) == pytest.approx(
        {"photons": 1.0, "x": factors["x"], "y": factors["y"], "z": 1.0})
    with pytest.raises(ValueError, match="unknown axis"):
        sigma_scale(pairs, axes=("r",))
    # A pair with a non-finite error, or an error / sigma that overflows (sigma 1e-320), is
    # left out rather than making the factor NaN or infinite.
    broken = pairs.copy()
    broken.loc[0, "dx_nm"] = np.nan
    broken.loc[1, "sigma_x_nm"] = 1e-320
    assert sigma_scale(broken, ("x",))["x"] == pytest.approx(
        sigma_scale(pairs.iloc[2:], ("x",))["x"])


def test_crlb_ratio_of_an_efficient_estimator_is_one():
    pred, gt, sigma = calibrated_case(seed=6)
    for axis in "xyz":
        gt[f"crlb_{axis}_nm"] = sigma[axis]  # errors are exactly at the bound
    m, pairs = evaluate(pred.drop(columns=[f"sigma_{a}_nm" for a in "xyz"]), gt)
    n = len(gt)
    assert m.sigma_ratio_x is None and "sigma_x_nm" not in pairs
    for axis in "xyz":
        assert getattr(m, f"crlb_ratio_{axis}") == pytest.approx(1, abs=4 / math.sqrt(2 * n))


def test_non_positive_or_missing_sigma_is_ignored():
    pred, gt = hand_case()
    pred.loc[1, "sigma_x_nm"] = 0.0
    pred.loc[2, "sigma_x_nm"] = np.nan
    m, _ = evaluate(pred, gt)
    # Only the first pair is left: dx = 30, sigma 20.
    assert m.z_score_rms_x == pytest.approx(1.5)
    assert (m.within_1sigma_x, m.within_2sigma_x) == (0.0, 1.0)


# --- doctests and plots ----------------------------------------------------------------------


@pytest.mark.parametrize("module", ["denseloc.evaluate.match", "denseloc.evaluate.metrics"])
def test_doctests(module):
    result = doctest.testmod(sys.modules[module])
    assert result.attempted > 0 and result.failed == 0


def test_plot_evaluation_writes_pngs(tmp_path):
    pred, gt, _ = calibrated_case(n_frames=3)
    _, pairs = evaluate(pred, gt)
    paths = plot_evaluation(pairs, tmp_path / "plots", n_bins=8)
    names = [p.name for p in paths]
    assert names == ["error_histograms.png", "error_vs_z.png", "sigma_vs_error.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temps


def test_plot_evaluation_without_sigma_or_z(tmp_path):
    gt = pd.DataFrame({"frame": [0, 0], "x_nm": [0.0, 1000.0], "y_nm": [0.0, 0.0]})
    pred = pd.DataFrame({"frame": [0, 0], "x_nm": [10.0, 980.0], "y_nm": [5.0, 0.0]})
    _, pairs = evaluate(pred, gt)
    assert [p.name for p in plot_evaluation(pairs, tmp_path)] == ["error_histograms.png"]
    assert plot_evaluation(pairs.iloc[:0], tmp_path / "empty") == []


def test_2d_plots_have_no_z_panel(tmp_path):
    from matplotlib.image import imread

    pred, gt, _ = calibrated_case(n_frames=3)
    pred["sigma_z_nm"] = np.nan  # as a 2D network writes it
    pred["z_nm"] = gt["z_nm"] = 0.0
    _, pairs = evaluate(pred, gt, is_3d=False)
    paths = {p.name: p for p in plot_evaluation(pairs, tmp_path / "2d", is_3d=False, dpi=50)}
    assert sorted(paths) == ["error_histograms.png", "sigma_vs_error.png"]
    widths = {name: imread(path).shape[1] for name, path in paths.items()}
    assert sorted(p.name for p in plot_evaluation(pairs, tmp_path / "auto")) == sorted(paths)
    three = {p.name: imread(p).shape[1]
             for p in plot_evaluation(pairs, tmp_path / "3d", is_3d=True, dpi=50)}
    for name, width in widths.items():  # panels of 4 inches: two (x, y), not three
        assert width == pytest.approx(2 / 3 * three[name], abs=2)


def test_dim_ground_truth_is_optional_with_min_photons() -> None:
    gt = pd.DataFrame({"frame": [0, 0, 0], "x_nm": [0.0, 1000.0, 2000.0],
                       "y_nm": [0.0, 0.0, 0.0], "photons": [5000.0, 50.0, 80.0]})
    pred = pd.DataFrame({"frame": [0, 0, 0], "x_nm": [10.0, 1010.0, 5000.0],
                         "y_nm": [0.0, 0.0, 0.0]})
    plain, _ = evaluate(pred, gt)
    assert (plain.tp, plain.fp, plain.fn) == (2, 1, 1)
    # The match with the 50-photon emitter no longer counts, nor does missing the 80-photon one.
    metrics, pairs = evaluate(pred, gt, min_photons=100.0)
    assert (metrics.tp, metrics.fp, metrics.fn) == (1, 1, 0)
    assert pairs["gt_index"].tolist() == [0]



def test_optional_ground_truth_keeps_the_prediction_it_explains() -> None:
    # One prediction, 10 nm from a dim (optional) emitter and 200 nm from a bright one: it
    # localizes the dim one, so it is neutral and the bright one counts as missed, rather than
    # as found with a 200 nm error.
    gt = pd.DataFrame({"frame": [0, 0], "x_nm": [10.0, 200.0], "y_nm": [0.0, 0.0],
                       "photons": [50.0, 5000.0]})
    pred = pd.DataFrame({"frame": [0], "x_nm": [0.0], "y_nm": [0.0]})
    metrics, pairs = evaluate(pred, gt, min_photons=100.0)
    assert (metrics.tp, metrics.fp, metrics.fn) == (0, 0, 1)
    assert pairs.empty
    # Without the dim emitter in the ground truth the prediction is the bright one's.
    alone, _ = evaluate(pred, gt.iloc[[1]], min_photons=100.0)
    assert (alone.tp, alone.fp, alone.fn) == (1, 0, 0)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_frame_error_correlation_recovers_the_correlation_of_an_emitters_errors(rho) -> None:
    # 800 emitters 2 um apart, each on for 1-6 frames; errors / sigma of one emitter's frames
    # correlate with rho (a shared part and a part of each frame).
    rng = np.random.default_rng(11)
    truth_rows, pred_rows = [], []
    for i in range(800):
        x, y, z = (i % 40) * 2000.0 + 500, (i // 40) * 2000.0 + 500, rng.uniform(-300, 300)
        shared = rng.standard_normal(4)
        for frame in range(int(rng.integers(0, 30)), int(rng.integers(31, 37))):
            sigma = rng.uniform(5, 30, 4) * [1, 1, 2, 10]
            err = sigma * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(4))
            truth_rows.append({"frame": frame, "id": i, "x_nm": x, "y_nm": y, "z_nm": z,
                               "photons": 1000.0})
            pred_rows.append({"frame": frame, "x_nm": x + err[0], "y_nm": y + err[1],
                              "z_nm": z + err[2], "photons": 1000.0 + err[3],
                              "sigma_x_nm": sigma[0], "sigma_y_nm": sigma[1],
                              "sigma_z_nm": sigma[2], "sigma_photons": sigma[3]})
    truth, pred = pd.DataFrame(truth_rows), pd.DataFrame(pred_rows)
    _, pairs = evaluate(pred, truth)
    measured = frame_error_correlation(pairs, truth)
    assert set(measured) == {"x", "y", "z", "photons"}
    for value in measured.values():
        assert value == pytest.approx(rho, abs=0.05)
    # an emitter's frames must be consecutive: shuffling the ids breaks every pair
    scrambled = truth.assign(id=rng.permutation(len(truth)))
    assert frame_error_correlation(pairs, scrambled) == {}


def test_rms_ratio_counts_the_pairs_evaluate_counts() -> None:
    # (3/1, 4/2) count; a zero, NaN or infinite scale and a NaN error do not, as in evaluate.
    error = [3.0, 4.0, 1.0, 1.0, 1.0, float("nan")]
    scale = [1.0, 2.0, 0.0, float("nan"), float("inf"), 1.0]
    assert rms_ratio(error, scale) == pytest.approx(math.sqrt((9 + 4) / 2))
    assert rms_ratio([1.0], [0.0]) is None
