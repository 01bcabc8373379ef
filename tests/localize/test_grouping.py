"""Grouping of one emitter's localizations over consecutive frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from denseloc.localize.grouping import group_consecutive, link_consecutive


def _blinking(n_emitters: int, rng: np.random.Generator,
              rho: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Emitters on a 2 um grid, each on for 1-6 consecutive frames with sigma 5-30 nm; the
    errors / sigma of one emitter's frames correlate with `rho`."""
    truth = pd.DataFrame({
        "x_nm": (np.arange(n_emitters) % 50) * 2000.0 + 500,
        "y_nm": (np.arange(n_emitters) // 50) * 2000.0 + 500,
        "z_nm": rng.uniform(-400, 400, n_emitters),
        "start": rng.integers(0, 50, n_emitters),
        "length": rng.integers(1, 7, n_emitters),
    })
    rows = []
    for i, t in truth.iterrows():
        shared = rng.standard_normal(3)
        for f in range(int(t["start"]), int(t["start"] + t["length"])):
            sigma = rng.uniform(5, 30, 3)
            error = sigma * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(3))
            rows.append({"frame": f, "x_nm": t["x_nm"] + error[0],
                         "y_nm": t["y_nm"] + error[1],
                         "z_nm": t["z_nm"] + error[2],
                         "sigma_x_nm": sigma[0], "sigma_y_nm": sigma[1], "sigma_z_nm": sigma[2],
                         "photons": 1000.0, "sigma_photons": 30.0, "p": 0.9, "truth": i})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # any row order
    return table, truth


def test_groups_follow_emitters_and_sigmas_shrink_as_theory_says() -> None:
    rng = np.random.default_rng(3)
    table, truth = _blinking(1000, rng)
    groups = link_consecutive(table, radius_nm=150.0)
    # one group per emitter, and every group holds one emitter only
    assert len(np.unique(groups)) == len(truth)
    assert (pd.Series(table["truth"].to_numpy()).groupby(groups).nunique() == 1).all()
    merged = group_consecutive(table.drop(columns="truth"), radius_nm=150.0)
    assert len(merged) == len(truth)
    assert merged["n_frames"].sum() == len(table)
    assert merged["photons"].sum() == pytest.approx(table["photons"].sum())
    # match merged rows back to emitters by position (emitters are 2 um apart)
    index = (np.round((merged["y_nm"] - 500) / 2000) * 50 + np.round((merged["x_nm"] - 500) / 2000))
    true = truth.loc[index.astype(int).to_numpy()]
    assert (merged["n_frames"].to_numpy() == true["length"].to_numpy()).all()
    assert (merged["frame"].to_numpy() == true["start"].to_numpy()).all()
    for axis in "xyz":
        z_scores = (merged[f"{axis}_nm"].to_numpy() - true[f"{axis}_nm"].to_numpy()) / merged[
            f"sigma_{axis}_nm"
        ].to_numpy()
        # inverse-variance weighting: the merged sigma is the true standard error
        assert np.sqrt(np.mean(z_scores**2)) == pytest.approx(1.0, abs=0.07)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_merged_sigmas_of_correlated_frames_use_their_correlation(rho: float) -> None:
    # A context network's frames share photons: their errors correlate (rho ~0.9 measured).
    table, truth = _blinking(1000, np.random.default_rng(4), rho=rho)
    table = table.drop(columns="truth")
    index = None
    for correlation, expected in ((rho, (0.93, 1.07)), (0.0, (1.2, 9.0))):
        merged = group_consecutive(table, radius_nm=150.0, error_correlation=correlation)
        if index is None:
            index = (np.round((merged["y_nm"] - 500) / 2000) * 50
                     + np.round((merged["x_nm"] - 500) / 2000)).astype(int).to_numpy()
        several = merged["n_frames"].to_numpy() >= 2
        for axis in "xyz":
            z = ((merged[f"{axis}_nm"].to_numpy() - truth[f"{axis}_nm"].to_numpy()[index])
                 / merged[f"sigma_{axis}_nm"].to_numpy())[several]
            assert expected[0] < np.sqrt(np.mean(z**2)) < expected[1], (rho, correlation, axis)
    # rho 1: the sigma of the weighted mean is the weighted mean of the sigmas
    one = pd.DataFrame({"frame": [0, 1], "x_nm": [0.0, 1.0], "y_nm": [0.0, 0.0],
                        "sigma_x_nm": [10.0, 20.0], "sigma_y_nm": [5.0, 5.0],
                        "sigma_photons": [3.0, 4.0], "photons": [100.0, 100.0]})
    merged = group_consecutive(one, error_correlation={"x": 1.0, "photons": 1.0})
    assert merged["sigma_x_nm"].item() == pytest.approx(0.8 * 10 + 0.2 * 20)
    assert merged["sigma_y_nm"].item() == pytest.approx(5 / np.sqrt(2))  # y: independent
    assert merged["sigma_photons"].item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="unknown axes"):
        group_consecutive(one, error_correlation={"w": 0.5})
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        group_consecutive(one, error_correlation=1.5)


def test_merged_sigma_is_inverse_variance_sum() -> None:
    table = pd.DataFrame({"frame": [3, 4, 5], "x_nm": [0.0, 30.0, 10.0], "y_nm": [0.0, 0.0, 0.0],
                          "sigma_x_nm": [10.0, 20.0, 10.0], "sigma_y_nm": [5.0, 5.0, 5.0],
                          "sigma_z_nm": [40.0, 40.0, 40.0]})
    merged = group_consecutive(table, radius_nm=50.0)
    w = np.array([1 / 100, 1 / 400, 1 / 100])
    assert merged["x_nm"].item() == pytest.approx((w * [0, 30, 10]).sum() / w.sum())
    assert merged["sigma_x_nm"].item() == pytest.approx(w.sum() ** -0.5)
    assert merged["sigma_y_nm"].item() == pytest.approx(5 / np.sqrt(3))
    assert merged["frame"].item() == 3 and merged["n_frames"].item() == 3


def test_a_missing_sigma_falls_back_to_the_plain_mean() -> None:
    # A 2D PSF fit has no z sigma (NaN); one lost x sigma makes that group unweighted in x.
    table = pd.DataFrame({"frame": [3, 4, 8, 9], "x_nm": [0.0, 30.0, 500.0, 520.0],
                          "y_nm": [0.0, 0.0, 0.0, 0.0], "z_nm": [0.0, 0.0, 0.0, 0.0],
                          "sigma_x_nm": [10.0, 20.0, np.nan, 10.0],
                          "sigma_y_nm": [5.0, 5.0, 5.0, 5.0],
                          "sigma_z_nm": [np.nan] * 4})
    merged = group_consecutive(table, radius_nm=50.0)
    assert len(merged) == 2
    assert merged["x_nm"].tolist() == pytest.approx([(0.0 * 4 + 30.0) / 5, 510.0])
    assert merged["sigma_x_nm"].iloc[0] == pytest.approx((1 / 100 + 1 / 400) ** -0.5)
    assert np.isnan(merged["sigma_x_nm"].iloc[1])
    assert merged["sigma_y_nm"].tolist() == pytest.approx([5 / np.sqrt(2)] * 2)
    assert merged["z_nm"].tolist() == [0.0, 0.0] and merged["sigma_z_nm"].isna().all()


def test_gaps_radius_and_one_to_one_linking() -> None:
    table = pd.DataFrame({"frame": [0, 2, 0, 1], "x_nm": [0.0, 5.0, 500.0, 510.0],
                          "y_nm": [0.0] * 4})
    groups = link_consecutive(table, radius_nm=20.0)
    assert groups[0] != groups[1]  # frame 2 follows frame 0 after a dark frame
    assert groups[2] == groups[3]
    groups = link_consecutive(table, radius_nm=20.0, max_gap_frames=1)
    assert groups[0] == groups[1]
    assert link_consecutive(table, radius_nm=5.0).tolist() == [0, 3, 1, 2]
    # two emitters close together in the same frame are never merged with each other
    pair = pd.DataFrame({"frame": [0, 0, 1, 1], "x_nm": [0.0, 30.0, 2.0, 31.0],
                         "y_nm": [0.0] * 4})
    groups = link_consecutive(pair, radius_nm=40.0)
    assert groups.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="radius_nm"):
        link_consecutive(pair, radius_nm=0.0)


def test_grouping_an_empty_table() -> None:
    empty = pd.DataFrame({"frame": [], "x_nm": [], "y_nm": []})
    assert group_consecutive(empty).empty
