"""Blinking statistics: on-time, emitters on per frame, persistent ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.config import EmitterConfig
from denseloc.sim.emitters import sample_emitters

PIXEL_NM = 100.0
SHAPE = (50, 40)  # 20 um^2


def long_movie(on_time: float, density: float, n_frames: int = 4000) -> pd.DataFrame:
    cfg = EmitterConfig(
        density_per_um2=density, photons_mean=1000.0, photons_std=0.0, on_time_frames=on_time
    )
    emitters = sample_emitters(
        cfg,
        n_movies=1,
        n_frames=n_frames,
        frame_shape=SHAPE,
        pixel_size_nm=PIXEL_NM,
        is_3d=True,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    return emitters.to_table(PIXEL_NM)


@pytest.mark.parametrize(("on_time", "density"), [(2.0, 1.0), (0.5, 0.3), (5.0, 0.5)])
def test_mean_number_on_per_frame(on_time: float, density: float) -> None:
    n_frames = 4000
    table = long_movie(on_time, density, n_frames)
    per_frame = table.groupby("frame").size().reindex(range(n_frames), fill_value=0)
    expected = density * SHAPE[0] * SHAPE[1] * (PIXEL_NM / 1000) ** 2
    # Counts in nearby frames are correlated over ~(on_time + 1) frames.
    se = np.sqrt(expected * (on_time + 1) / n_frames) * 2
    assert abs(per_frame.mean() - expected) < 4 * se


@pytest.mark.parametrize(("on_time", "density"), [(2.0, 1.0), (5.0, 0.5)])
def test_no_ramp_up_or_down_at_the_ends_of_a_movie(on_time: float, density: float) -> None:
    # Many 4-frame movies: without emitters switched on before the first frame, frame 0
    # would hold about 1 / (on_time + 1) of the steady count.
    n_movies, n_frames = 2000, 4
    cfg = EmitterConfig(
        density_per_um2=density, photons_mean=1000.0, photons_std=0.0, on_time_frames=on_time
    )
    emitters = sample_emitters(
        cfg, n_movies=n_movies, n_frames=n_frames, frame_shape=SHAPE, pixel_size_nm=PIXEL_NM,
        is_3d=True, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
    )
    frame_in_movie = emitters.to_table(PIXEL_NM)["frame"].to_numpy() % n_frames
    per_frame = np.bincount(frame_in_movie, minlength=n_frames) / n_movies
    expected = density * SHAPE[0] * SHAPE[1] * (PIXEL_NM / 1000) ** 2
    se = np.sqrt(expected / n_movies)  # counts of different movies are independent
    np.testing.assert_allclose(per_frame, expected, atol=4 * se)


@pytest.mark.parametrize("on_time", [0.5, 2.0, 5.0])
def test_mean_on_time(on_time: float) -> None:
    n_frames = 6000
    table = long_movie(on_time, 0.5, n_frames)
    spans = table.groupby("id").agg(first=("frame", "min"), last=("frame", "max"),
                                    photons=("photons", "sum"))
    inside = spans[(spans["first"] > 0) & (spans["last"] < n_frames - 1)]
    on_times = inside["photons"] / 1000.0  # brightness is exactly 1000 photons per frame
    se = on_time / np.sqrt(len(on_times))  # exponential: std = mean
    assert abs(on_times.mean() - on_time) < 4 * se
    assert on_times.std() == pytest.approx(on_time, rel=0.1)


def test_ids_persist_over_consecutive_frames_at_fixed_position() -> None:
    table = long_movie(3.0, 0.5, 500)
    groups = table.groupby("id")
    spans = groups["frame"].agg(["min", "max", "size"])
    assert (spans["max"] - spans["min"] + 1 == spans["size"]).all()
    assert (groups["x_nm"].nunique() == 1).all() and (groups["z_nm"].nunique() == 1).all()
    assert (spans["size"] > 1).mean() > 0.5
    assert (table["photons"] > 0).all() and (table["photons"] <= 1000.0 + 1e-9).all()


def test_positions_cover_the_frame_and_z_range() -> None:
    table = long_movie(2.0, 1.0, 300)
    x_px = table["x_nm"] / PIXEL_NM - 0.5
    assert x_px.min() == pytest.approx(-0.5, abs=0.1) and x_px.max() == pytest.approx(39.5, abs=0.1)
    y_px = table["y_nm"] / PIXEL_NM - 0.5  # the frames are 50 rows by 40 columns
    assert y_px.min() == pytest.approx(-0.5, abs=0.1) and y_px.max() == pytest.approx(49.5, abs=0.1)
    assert table["z_nm"].min() == pytest.approx(-750, abs=20)
    assert table["z_nm"].max() == pytest.approx(750, abs=20)


def test_2d_emitters_have_zero_z_and_count_overrides_density() -> None:
    cfg = EmitterConfig(density_per_um2=100.0, count_per_frame=7.0)
    emitters = sample_emitters(
        cfg, n_movies=400, n_frames=3, frame_shape=SHAPE, pixel_size_nm=PIXEL_NM, is_3d=False,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.all(emitters.z_nm == 0)
    assert len(emitters) / 1200 == pytest.approx(7.0, rel=0.06)
    assert emitters.frame.max().item() < 1200


def test_density_factor_scales_each_movie() -> None:
    cfg = EmitterConfig(count_per_frame=10.0)
    factor = torch.tensor([0.0, 1.0, 3.0]).repeat(300)
    emitters = sample_emitters(
        cfg, n_movies=900, n_frames=2, frame_shape=SHAPE, pixel_size_nm=PIXEL_NM, is_3d=True,
        generator=torch.Generator().manual_seed(2), density_factor=factor,
    )
    per_movie = torch.bincount(emitters.frame // 2, minlength=900).double() / 2
    assert per_movie[0::3].sum().item() == 0
    assert per_movie[1::3].mean().item() == pytest.approx(10.0, rel=0.05)
    assert per_movie[2::3].mean().item() == pytest.approx(30.0, rel=0.05)


def test_filament_structure_puts_emitters_on_smooth_3d_curves() -> None:
    from scipy.spatial import cKDTree

    cfg = EmitterConfig(density_per_um2=1.0, structure="filaments", filaments=3,
                        z_range_nm=(-600.0, 600.0))
    emitters = sample_emitters(cfg, n_movies=1, n_frames=2000, frame_shape=SHAPE,
                               pixel_size_nm=PIXEL_NM, is_3d=True,
                               generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x, y, z = (t.numpy() for t in (emitters.x_px, emitters.y_px, emitters.z_nm))
    assert len(x) / 2000 == pytest.approx(20.0, rel=0.1)  # the density holds on a structure
    assert x.min() >= -0.5 and x.max() < SHAPE[1] - 0.5 and z.min() >= -600 and z.max() <= 600
    occupied = np.unique(np.floor(np.column_stack([x, y]) + 0.5), axis=0)
    assert len(occupied) < 0.25 * SHAPE[0] * SHAPE[1]  # uniform emitters would fill the frame
    # neighbours along a filament have nearly the same z (smooth profile), unlike uniform z
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(0.2, output_type="ndarray")
    assert len(pairs) > 1000
    assert np.median(np.abs(z[pairs[:, 0]] - z[pairs[:, 1]])) < 30.0
    assert np.ptp(z) > 700  # and z spans most of the range


def test_brightness_is_normal_with_the_configured_mean_and_spread() -> None:
    cfg = EmitterConfig(density_per_um2=0.5, photons_mean=2000.0, photons_std=200.0,
                        on_time_frames=5.0)
    table = sample_emitters(cfg, n_movies=1, n_frames=3000, frame_shape=SHAPE,
                            pixel_size_nm=PIXEL_NM, is_3d=True,
                            generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64).to_table(PIXEL_NM)
    groups = table.groupby("id")["photons"]
    # An emitter on for 3 frames or more is on for the whole of its middle ones: there its
    # photons are its brightness.
    brightness = groups.max()[groups.size() >= 3]
    n = len(brightness)
    assert n > 1000
    assert abs(brightness.mean() - 2000.0) < 4 * 200.0 / np.sqrt(n)
    assert brightness.std() == pytest.approx(200.0, rel=4 / np.sqrt(2 * n))
