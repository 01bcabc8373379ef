"""Tests of the one-to-one matching of predictions to ground truth."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching

from denseloc.evaluate import Matching, match
from denseloc.table import TableError

METHODS = ["hungarian", "greedy"]


def table(x, y=None, z=None, frame=None) -> pd.DataFrame:
    """A localization table from positions in nm (y, z default 0; frame defaults 0)."""
    x = np.asarray(x, dtype=float)
    return pd.DataFrame(
        {
            "frame": np.zeros(x.size, int) if frame is None else np.asarray(frame),
            "x_nm": x,
            "y_nm": np.zeros(x.size) if y is None else np.asarray(y, dtype=float),
            "z_nm": np.zeros(x.size) if z is None else np.asarray(z, dtype=float),
        }
    )


def pairs(m: Matching) -> set[tuple[int, int]]:
    """Matched (prediction row, ground-truth row) pairs."""
    return set(zip(m.pred_index.tolist(), m.gt_index.tolist(), strict=True))


# --- empty inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_empty_prediction_leaves_all_ground_truth_unmatched(method):
    m = match(table([]), table([0.0, 1000.0]), method=method)
    assert (m.tp, m.fp, m.fn) == (0, 0, 2)
    assert m.gt_unmatched.tolist() == [0, 1]
    assert m.pred_index.dtype == np.int64 and m.gt_index.size == 0


@pytest.mark.parametrize("method", METHODS)
def test_empty_ground_truth_leaves_all_predictions_unmatched(method):
    m = match(table([5.0, 10.0, 15.0]), table([]), method=method)
    assert (m.tp, m.fp, m.fn) == (0, 3, 0)
    assert m.pred_unmatched.tolist() == [0, 1, 2]


@pytest.mark.parametrize("method", METHODS)
def test_both_empty_and_tables_without_columns(method):
    m = match(pd.DataFrame(), pd.DataFrame(), method=method)
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    m = match(pd.DataFrame(), table([0.0]), method=method)
    assert (m.tp, m.fp, m.fn) == (0, 0, 1)


# --- tolerances ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("dx", "dy", "matched"),
    [
        (249.9, 0.0, True),
        (250.0, 0.0, True),  # inclusive bound
        (250.1, 0.0, False),
        (0.0, -249.9, True),
        (0.0, -250.1, False),
        (150.0, 200.0, True),  # hypot exactly 250
        (150.0, 200.1, False),
        (200.0, 200.0, False),  # each axis within 250, but Euclidean 283
    ],
)
def test_lateral_tolerance_is_euclidean_and_inclusive(method, dx, dy, matched):
    gt = table([1000.0], [2000.0], [30.0])
    pred = table([1000.0 + dx], [2000.0 + dy], [30.0])
    assert match(pred, gt, method=method).tp == int(matched)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("dz", "tol_axial_nm", "matched"),
    [
        (499.9, 500.0, True),
        (-500.0, 500.0, True),
        (500.1, 500.0, False),
        (-500.1, 500.0, False),
        (99.0, 100.0, True),
        (101.0, 100.0, False),
    ],
)
def test_axial_tolerance(method, dz, tol_axial_nm, matched):
    gt = table([0.0], [0.0], [-200.0])
    pred = table([10.0], [0.0], [-200.0 + dz])
    m = match(pred, gt, tol_axial_nm=tol_axial_nm, method=method)
    assert m.tp == int(matched)


@pytest.mark.parametrize("method", METHODS)
def test_custom_lateral_tolerance(method):
    gt, pred = table([0.0]), table([120.0])
    assert match(pred, gt, tol_lateral_nm=100.0, method=method).tp == 0
    assert match(pred, gt, tol_lateral_nm=130.0, method=method).tp == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nearest"}, "`method`"),
        ({"tol_lateral_nm": -1.0}, "`tol_lateral_nm`"),
        ({"tol_axial_nm": float("nan")}, "`tol_axial_nm`"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        match(table([0.0]), table([0.0]), **kwargs)


def test_missing_column_raises_table_error():
    with pytest.raises(TableError, match="x_nm"):
        match(pd.DataFrame({"frame": [0], "y_nm": [0.0]}), table([0.0]))


# --- frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_frames_are_kept_separate(method):
    gt = table([100.0, 100.0, 100.0], frame=[0, 2, 100_000])
    pred = table([100.0, 100.0, 100.0], frame=[1, 2, 100_001])
    m = match(pred, gt, method=method)
    assert pairs(m) == {(1, 1)}
    assert m.pred_unmatched.tolist() == [0, 2]
    assert m.gt_unmatched.tolist() == [0, 2]


@pytest.mark.parametrize("method", METHODS)
def test_indices_are_positional_not_labels(method):
    gt = table([0.0, 1000.0]).set_axis([10, 5])
    pred = table([1010.0, 5.0]).set_axis([7, 3])
    m = match(pred, gt, method=method)
    assert pairs(m) == {(0, 1), (1, 0)}
    assert m.gt_index.tolist() == [0, 1]  # sorted by ground-truth row


# --- hungarian versus greedy -----------------------------------------------------------------


def test_hungarian_finds_more_pairs_than_greedy():
    # GT at 0 and 200 nm, predictions at 110 and 310 nm, tolerance 150 nm. Admissible:
    # p0-g0 110, p0-g1 90, p1-g1 110 (p1-g0 is 310). Greedy takes the nearest p0-g1 first and
    # leaves p1 and g0 unpaired; the optimum pairs p0-g0 and p1-g1.
    gt, pred = table([0.0, 200.0]), table([110.0, 310.0])
    greedy = match(pred, gt, tol_lateral_nm=150.0, method="greedy")
    optimal = match(pred, gt, tol_lateral_nm=150.0, method="hungarian")
    assert (greedy.tp, greedy.fp, greedy.fn) == (1, 1, 1)
    assert pairs(greedy) == {(0, 1)}
    assert (optimal.tp, optimal.fp, optimal.fn) == (2, 0, 0)
    assert pairs(optimal) == {(0, 0), (1, 1)}


def test_hungarian_finds_smaller_total_distance_than_greedy():
    # GT at 0 and 100, predictions at 51 and 151, tolerance 200: greedy takes p0-g1 (49)
    # then p1-g0 (151), total 200; the optimum is p0-g0 + p1-g1 = 51 + 51 = 102.
    gt, pred = table([0.0, 100.0]), table([51.0, 151.0])
    assert pairs(match(pred, gt, tol_lateral_nm=200.0, method="greedy")) == {(0, 1), (1, 0)}
    assert pairs(match(pred, gt, tol_lateral_nm=200.0, method="hungarian")) == {(0, 0), (1, 1)}


def test_hungarian_minimises_3d_distance_not_lateral():
    # Laterally p0 is nearer g0, but in 3D p0-g1 + p1-g0 is shorter (z separates them).
    gt = table([0.0, 60.0], z=[0.0, 300.0])
    pred = table([10.0, 50.0], z=[300.0, 0.0])
    assert pairs(match(pred, gt, method="hungarian")) == {(0, 1), (1, 0)}
    assert pairs(match(pred, gt, method="greedy")) == {(0, 1), (1, 0)}


@pytest.mark.parametrize("method", METHODS)
def test_ties_match_one_and_greedy_prefers_lower_rows(method):
    one_pred_two_gt = match(table([0.0]), table([-100.0, 100.0]), method=method)
    assert (one_pred_two_gt.tp, one_pred_two_gt.fn) == (1, 1)
    two_pred_one_gt = match(table([-100.0, 100.0]), table([0.0]), method=method)
    assert (two_pred_one_gt.tp, two_pred_one_gt.fp) == (1, 1)
    if method == "greedy":
        assert pairs(one_pred_two_gt) == {(0, 0)}
        assert pairs(two_pred_one_gt) == {(0, 0)}


def _brute_force(admissible: np.ndarray, dist: np.ndarray) -> tuple[int, float]:
    """Most pairs, then least total distance, over every partial one-to-one matching."""
    n_gt, n_pred = admissible.shape
    best = (0, 0.0)
    for choice in itertools.product(range(-1, n_gt), repeat=n_pred):
        used = [g for g in choice if g >= 0]
        if len(used) != len(set(used)):
            continue
        if any(g >= 0 and not admissible[g, p] for p, g in enumerate(choice)):
            continue
        total = sum(dist[g, p] for p, g in enumerate(choice) if g >= 0)
        if len(used) > best[0] or (len(used) == best[0] and total < best[1]):
            best = (len(used), total)
    return best


def test_hungarian_is_optimal_on_small_random_frames():
    rng = np.random.default_rng(7)
    gts, preds, cases = [], [], []
    for frame in range(80):
        n_gt, n_pred = rng.integers(0, 5, size=2)
        g = rng.uniform([0, 0, -300], [400, 400, 300], size=(n_gt, 3))
        p = rng.uniform([0, 0, -300], [400, 400, 300], size=(n_pred, 3))
        diff = p[None, :, :] - g[:, None, :]
        admissible = (np.hypot(diff[..., 0], diff[..., 1]) <= 150.0) & (
            np.abs(diff[..., 2]) <= 200.0
        )
        cases.append(_brute_force(admissible, np.linalg.norm(diff, axis=-1)))
        gts.append(table(*g.T, frame=np.full(n_gt, frame)))
        preds.append(table(*p.T, frame=np.full(n_pred, frame)))
    gt, pred = pd.concat(gts, ignore_index=True), pd.concat(preds, ignore_index=True)
    m = match(pred, gt, tol_lateral_nm=150.0, tol_axial_nm=200.0)
    assert sum(c[0] for c in cases) > 40  # the draw has plenty of pairs to get wrong
    g_xyz = gt[["x_nm", "y_nm", "z_nm"]].to_numpy()[m.gt_index]
    p_xyz = pred[["x_nm", "y_nm", "z_nm"]].to_numpy()[m.pred_index]
    dist = np.linalg.norm(p_xyz - g_xyz, axis=1)
    frames = gt["frame"].to_numpy()[m.gt_index]
    for frame, (tp, total) in enumerate(cases):
        in_frame = frames == frame
        assert in_frame.sum() == tp, frame
        assert dist[in_frame].sum() == pytest.approx(total, abs=1e-9), frame


def _dense_frame(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """500 emitters in 5 x 5 um (20 per um^2): many overlapping candidate pairs."""
    g = rng.uniform([0, 0, -400], [5000, 5000, 400], size=(500, 3))
    kept = g[rng.random(500) < 0.9]
    kept = kept + rng.normal(0, [80, 80, 150], size=kept.shape)
    extra = rng.uniform([0, 0, -400], [5000, 5000, 400], size=(100, 3))
    p = rng.permutation(np.vstack([kept, extra]))
    return table(*p.T), table(*g.T)


def test_dense_frame_hungarian_has_maximum_cardinality_and_minimum_distance():
    pred, gt = _dense_frame(np.random.default_rng(3))
    g = gt[["x_nm", "y_nm", "z_nm"]].to_numpy()
    p = pred[["x_nm", "y_nm", "z_nm"]].to_numpy()
    diff = p[None, :, :] - g[:, None, :]
    admissible = (np.hypot(diff[..., 0], diff[..., 1]) <= 250.0) & (np.abs(diff[..., 2]) <= 500)
    dist = np.linalg.norm(diff, axis=-1)
    assert admissible.sum() > 2 * len(gt)  # dense: most emitters have several candidates

    m = match(pred, gt)
    assert admissible[m.gt_index, m.pred_index].all()
    assert np.unique(m.gt_index).size == m.tp and np.unique(m.pred_index).size == m.tp
    best = maximum_bipartite_matching(csr_array(admissible.astype(np.int8)), perm_type="column")
    assert m.tp == int((best >= 0).sum())
    # Same optimum from one dense assignment (no k-d tree, no components).
    cost = np.where(admissible, dist, 1e9)
    r, c = linear_sum_assignment(cost)
    keep = admissible[r, c]
    assert keep.sum() == m.tp
    assert dist[m.gt_index, m.pred_index].sum() == pytest.approx(dist[r[keep], c[keep]].sum())


def test_dense_frame_greedy_is_maximal_and_not_better_than_hungarian():
    pred, gt = _dense_frame(np.random.default_rng(4))
    greedy, optimal = match(pred, gt, method="greedy"), match(pred, gt)
    assert greedy.tp <= optimal.tp
    assert greedy.tp > 0.7 * len(gt)
    # No admissible pair is left between unmatched rows (greedy stops only when none is left).
    rest = match(pred.iloc[greedy.pred_unmatched], gt.iloc[greedy.gt_unmatched])
    assert rest.tp == 0


def test_large_well_separated_case_is_fast_and_methods_agree():
    rng = np.random.default_rng(11)
    n_frames, nx, ny, spacing = 3000, 5, 4, 3000.0
    cx, cy = np.meshgrid(np.arange(nx) * spacing, np.arange(ny) * spacing)
    cx, cy = np.tile(cx.ravel(), n_frames), np.tile(cy.ravel(), n_frames)
    frame = np.repeat(np.arange(n_frames), nx * ny)
    n = frame.size  # 60 000 emitters: index arithmetic beyond int32
    gt = table(
        cx + rng.uniform(-500, 500, n),
        cy + rng.uniform(-500, 500, n),
        rng.uniform(-600, 600, n),
        frame=frame,
    )
    found = rng.random(n) < 0.9
    noise = rng.normal(0, [40, 40, 80], size=(n, 3))
    pos = gt[["x_nm", "y_nm", "z_nm"]].to_numpy() + noise
    false = rng.random(n) < 0.1  # false positives midway between grid points
    pred = pd.concat(
        [
            table(*pos[found].T, frame=frame[found]),
            table(cx[false] + spacing / 2, cy[false] + spacing / 2, frame=frame[false]),
        ],
        ignore_index=True,
    )
    shuffle = rng.permutation(len(pred))
    pred = pred.iloc[shuffle].reset_index(drop=True)
    true_gt_of_pred = np.r_[np.flatnonzero(found), np.full(false.sum(), -1)][shuffle]

    results = {}
    for method in METHODS:
        start = time.perf_counter()
        results[method] = match(pred, gt, method=method)
        assert time.perf_counter() - start < 2.0, method
    h, g = results["hungarian"], results["greedy"]
    assert h.tp == g.tp == found.sum()
    assert np.array_equal(h.gt_index, g.gt_index) and np.array_equal(h.pred_index, g.pred_index)
    assert np.array_equal(true_gt_of_pred[h.pred_index], h.gt_index)
    assert h.fp == false.sum() and h.fn == n - found.sum()
