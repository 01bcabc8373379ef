"""Drift correction by redundant cross-correlation recovers a known drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from denseloc.analysis.drift import correct_drift, estimate_drift, plot_drift
from denseloc.errors import DenselocError


def true_drift(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = frame / 5000.0
    return 60 * np.sin(2 * np.pi * t) + 80 * t, -120 * t + 25 * t**2


def drifting_structure(seed: int = 0, n_frames: int = 5000) -> pd.DataFrame:
    """400 binding sites in 8 x 8 um, 40 localizations per frame, precision 10 nm, drifting."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(500, 7500, (400, 2))
    frame = np.repeat(np.arange(n_frames), 40)
    site = rng.integers(0, len(sites), len(frame))
    dx, dy = true_drift(frame)
    return pd.DataFrame({
        "frame": frame,
        "x_nm": sites[site, 0] + rng.normal(0, 10, len(frame)) + dx,
        "y_nm": sites[site, 1] + rng.normal(0, 10, len(frame)) + dy,
    })


def test_rcc_recovers_a_known_drift_within_a_few_nm(tmp_path) -> None:
    table = drifting_structure()
    estimate = estimate_drift(table, n_segments=12, pixel_size_nm=20.0)
    dx, dy = true_drift(estimate.frames.astype(float))
    dx, dy = dx - dx[0], dy - dy[0]  # drift is reported relative to the first frame
    assert np.sqrt(np.mean((estimate.x_nm - dx) ** 2)) < 4.0
    assert np.sqrt(np.mean((estimate.y_nm - dy) ** 2)) < 4.0
    corrected = correct_drift(table, estimate)
    frame = table["frame"].to_numpy()
    np.testing.assert_allclose(corrected["x_nm"], table["x_nm"] - estimate.x_nm[frame])
    np.testing.assert_allclose(corrected["y_nm"], table["y_nm"] - estimate.y_nm[frame])
    png = plot_drift(estimate, tmp_path / "drift.png")
    assert png.stat().st_size > 10_000


def test_a_movie_starting_late_with_a_wrong_pair_is_corrected(monkeypatch) -> None:
    # Frames 500-4499 of the drifting movie (a table from --frames 500:4500), and one pair of
    # blocks whose correlation peak is 10 px off: the pair is dropped, the drift recovered.
    from denseloc.analysis import drift as drift_module

    table = drifting_structure()
    table = table[table["frame"].between(500, 4499)].reset_index(drop=True)
    real_peak, calls = drift_module._peak, {"n": 0}

    def one_wrong_peak(corr, reach):
        calls["n"] += 1
        peak = real_peak(corr, reach)
        return peak + 10.0 if calls["n"] == 7 else peak

    monkeypatch.setattr(drift_module, "_peak", one_wrong_peak)
    estimate = estimate_drift(table, n_segments=10, pixel_size_nm=20.0)
    assert estimate.frames[0] == 500 and estimate.pairs_used == estimate.pairs_total - 1
    dx, dy = true_drift(estimate.frames.astype(float))
    dx, dy = dx - dx[0], dy - dy[0]
    assert np.sqrt(np.mean((estimate.x_nm - dx) ** 2)) < 4.0
    assert np.sqrt(np.mean((estimate.y_nm - dy) ** 2)) < 4.0
    # the drift of a localization is that of its own frame, not of frame - 500
    x, _ = estimate.at(np.array([500, 3000]))
    np.testing.assert_allclose(x, [0.0, estimate.x_nm[2500]])
    corrected = correct_drift(table, estimate)
    late = table["frame"].to_numpy() == 4000
    np.testing.assert_allclose(corrected["x_nm"][late], table["x_nm"][late] - estimate.x_nm[3500])


def test_drift_needs_enough_segments_and_localizations() -> None:
    table = drifting_structure(n_frames=50)
    with pytest.raises(DenselocError, match=r"n_segments \(--segments\) >= 3"):
        estimate_drift(table, n_segments=2)
    with pytest.raises(DenselocError, match="cannot be split"):
        estimate_drift(table.iloc[:40 * 5], n_segments=10)
    with pytest.raises(DenselocError, match="only"):
        estimate_drift(table.iloc[:40 * 10:10], n_segments=10)
    with pytest.raises(DenselocError, match="must be > 0 nm"):
        estimate_drift(table, n_segments=3, max_shift_nm=-100.0)
    for pixel in (0.0, float("nan")):
        with pytest.raises(DenselocError, match="pixel size must be > 0"):
            estimate_drift(table, n_segments=3, pixel_size_nm=pixel)
    with pytest.raises(DenselocError, match="empty"):
        estimate_drift(table.iloc[:0], n_segments=3)


def test_three_segments_give_a_drift_curve() -> None:
    # The fewest segments allowed: a cubic spline through 3 points is not defined.
    table = drifting_structure(n_frames=3000)
    estimate = estimate_drift(table, n_segments=3, pixel_size_nm=20.0)
    dx, _ = true_drift(estimate.block_frames)
    dx -= true_drift(np.array([0.0]))[0]
    assert np.all(np.isfinite(estimate.x_nm))
    # At the blocks' centres the estimate is the blocks' mean drift, within a few nm.
    np.testing.assert_allclose(np.interp(estimate.block_frames, estimate.frames, estimate.x_nm),
                               dx, atol=15.0)
