"""Fourier ring correlation: the resolution tracks the localization precision of a structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from denseloc.analysis.frc import (
    FRC_THRESHOLD,
    FRCResult,
    fourier_ring_correlation,
    plot_frc,
    split_halves,
)
from denseloc.errors import DenselocError


def structure(precision_nm: float, seed: int = 0) -> pd.DataFrame:
    """Densely labelled random structure in 5 x 5 um; each site seen 10 times, in 10 frames."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(0, 5000, (20000, 2))
    site = np.repeat(np.arange(len(sites)), 10)
    frame = rng.integers(0, 2000, len(site))
    xy = sites[site] + rng.normal(0, precision_nm, (len(site), 2))
    return pd.DataFrame({"frame": frame, "x_nm": xy[:, 0], "y_nm": xy[:, 1]})


def test_frc_resolution_follows_the_localization_precision(tmp_path) -> None:
    fine = fourier_ring_correlation(structure(8.0), pixel_size_nm=4.0)
    coarse = fourier_ring_correlation(structure(20.0), pixel_size_nm=4.0)
    # For Gaussian errors of sd s the signal of a pair of localizations of one site decays as
    # E = exp(-4 pi^2 s^2 q^2). Each site has E[n1 n2] = 22.5 pairs across the halves and
    # E[n1 (n1 - 1)] = 22.5 within one, against n1 = 5 self terms, so FRC = 4.5 E / (1 + 4.5 E)
    # crosses 1/7 at E = 1/27: R = 2 pi s_eff / sqrt(ln 27), with s_eff^2 = s^2 + (4 nm)^2 / 12
    # for the binning. Seeds 0-2 gave 0.96-1.05 times that.
    for precision, result in ((8.0, fine), (20.0, coarse)):
        expected = 2 * np.pi * np.hypot(precision, 4.0 / 12**0.5) / np.sqrt(np.log(27))
        assert result.resolution_nm == pytest.approx(expected, rel=0.1)
    assert fine.frc[1] > 0.9 and fine.frc[-1] < FRC_THRESHOLD
    png = plot_frc(fine, tmp_path / "frc.png")
    assert png.stat().st_size > 10_000


def test_frc_far_from_the_camera_origin_and_without_a_resolution() -> None:
    far = structure(8.0).assign(x_nm=lambda t: t["x_nm"] + 200_000.0,
                                y_nm=lambda t: t["y_nm"] + 150_000.0)
    # rendered around the data, not from (0, 0): the same curve as near the origin
    near, shifted = (fourier_ring_correlation(t, pixel_size_nm=4.0)
                     for t in (structure(8.0), far))
    assert shifted.resolution_nm == pytest.approx(near.resolution_nm, rel=0.02)
    assert near.problem is None
    # halves that share no structure (each in its own corner): no resolution, and it says why
    # (the mean, ring 0, correlates any two images and must not count)
    rng = np.random.default_rng(3)
    apart = pd.DataFrame({"frame": np.arange(4000), "x_nm": rng.uniform(0, 1000, 4000),
                          "y_nm": rng.uniform(0, 1000, 4000)})
    apart.loc[split_halves(apart), ["x_nm", "y_nm"]] += 9000.0
    result = fourier_ring_correlation(apart, pixel_size_nm=20.0)
    assert np.isnan(result.resolution_nm) and "do not correlate" in result.problem
    flat = np.full(50, 0.05)
    assert "do not correlate" in FRCResult(np.arange(50) / 1e3, flat, flat, np.nan).problem
    # a curve that stays above 1/7 asks for finer pixels
    coarse = fourier_ring_correlation(structure(8.0), pixel_size_nm=200.0)
    assert np.isnan(coarse.resolution_nm) and "finer" in coarse.problem


def test_halves_are_blocks_of_frames() -> None:
    table = structure(10.0)
    half = split_halves(table, n_blocks=20, seed=1)
    assert 0.4 < half.mean() < 0.6
    per_frame = pd.Series(half).groupby(table["frame"].to_numpy()).nunique()
    assert (per_frame == 1).all()  # a frame is never split between the halves


def test_frc_of_too_few_localizations() -> None:
    with pytest.raises(DenselocError, match="at least 100"):
        fourier_ring_correlation(structure(10.0).iloc[:50])


def test_frc_of_localizations_in_one_frame_is_a_clear_error() -> None:
    single = structure(10.0).assign(frame=7)  # both halves cannot hold frames
    with pytest.raises(DenselocError, match="spread over many frames"):
        fourier_ring_correlation(single)
