"""The simulator end to end: batches, determinism, movies on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from denseloc.config import Config, load_config
from denseloc.sim.simulator import Simulator, simulate_movie
from denseloc.table import nm_to_px


def small_config(**sections) -> Config:
    base = {"image": {"size_px": 32}, "simulation": {"n_frames": 12, "seed": 5}}
    base.update(sections)
    return Config.model_validate(base)


def test_batch_shapes_and_determinism() -> None:
    sim = Simulator(small_config())
    a = sim.sample(4, 3, sim.generator(0))
    b = sim.sample(4, 3, sim.generator(0))
    c = sim.sample(4, 3, sim.generator(1))
    assert a.adu.shape == (4, 3, 32, 32)
    assert torch.equal(a.adu, b.adu) and torch.equal(a.emitters.x_px, b.emitters.x_px)
    assert not torch.equal(a.adu, c.adu)
    assert a.emitters.frame.max().item() < 12


@pytest.mark.parametrize("psf", [{"kind": "gaussian"}, {"kind": "astigmatic"}])
def test_expected_photons_are_signal_plus_background(psf: dict) -> None:
    sim = Simulator(small_config(psf=psf, background={"level_photons": (100.0, 100.0)}))
    batch = sim.sample(8, 3, sim.generator(2))
    signal = batch.expected_photons.sum() - 100.0 * batch.expected_photons.numel()
    # Patches hold > 99.9 % of the light; some falls outside the frame for edge emitters.
    assert signal.item() <= batch.emitters.photons.sum().item() * 1.0001
    assert signal.item() > 0.9 * batch.emitters.photons.sum().item()
    # In frames whose emitters all lie 20 px or more from the edges, the simulator's own
    # expected photons hold every emitter photon (a PSF or patch losing 1 % would fail).
    sparse = Simulator(small_config(psf=psf, image={"size_px": 64},
                                    emitters={"density_per_um2": 0.03},
                                    background={"level_photons": (100.0, 100.0)}))
    batch = sparse.sample(200, 3, sparse.generator(3))
    em = batch.emitters
    inner = ((em.x_px > 20) & (em.x_px < 43) & (em.y_px > 20) & (em.y_px < 43)).numpy()
    frame = em.frame.numpy()
    clean = np.setdiff1d(np.unique(frame[inner]), np.unique(frame[~inner]))
    assert len(clean) >= 10
    signal = batch.expected_photons.flatten(0, 1)[torch.from_numpy(clean)] - 100.0
    photons = np.bincount(frame, weights=em.photons.numpy(), minlength=600)[clean]
    np.testing.assert_allclose(signal.sum(dim=(1, 2)).numpy(), photons, rtol=1e-3)


def test_structured_background_is_smooth_and_bounded() -> None:
    cfg = small_config(
        background={"level_photons": (50.0, 50.0), "structured_amplitude_photons": 80.0,
                    "structured_scale_nm": 1500.0},
        emitters={"density_per_um2": 0.0},
    )
    sim = Simulator(cfg)
    bg = sim.sample_background(16, sim.generator(0))
    assert bg.min().item() >= 50.0 and bg.max().item() <= 130.0
    assert bg.std().item() > 5.0
    # Smooth: neighbouring pixels differ far less than the overall spread.
    assert (bg[:, 1:] - bg[:, :-1]).abs().mean().item() < 0.2 * bg.std().item()
    # Structure within each movie on the scale of 15 px cells (11-12 photons rms here; cells
    # 100 times too large, a unit error, leave 0.2).
    assert bg.flatten(1).std(1).mean().item() > 5.0


def test_background_level_is_uniform_over_its_range_and_flat_in_each_movie() -> None:
    from denseloc.config import BackgroundConfig
    from denseloc.sim.background import sample_background

    n, (lo, hi) = 4000, (90.0, 150.0)
    bg = sample_background(BackgroundConfig(level_photons=(lo, hi)), n_movies=n,
                           frame_shape=(4, 4), pixel_size_nm=100.0,
                           generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (bg == bg[:, :1, :1]).all()  # no structure configured: one level per movie
    level = bg[:, 0, 0]
    sd = (hi - lo) / 12**0.5  # of a uniform distribution
    assert abs(level.mean().item() - (lo + hi) / 2) < 4 * sd / n**0.5
    assert level.std().item() == pytest.approx(sd, rel=0.05)
    assert lo <= level.min().item() and level.max().item() <= hi


def test_ground_truth_gives_each_emitter_the_background_at_its_pixel(tmp_path) -> None:
    cfg = small_config(background={"level_photons": (50.0, 50.0),
                                   "structured_amplitude_photons": 80.0,
                                   "structured_scale_nm": 1500.0})
    truth = pd.read_csv(simulate_movie(cfg, tmp_path / "sim")["ground_truth"])
    sim = Simulator(cfg)  # the same draws as simulate_movie: emitters, then the background
    generator = sim.generator(cfg.simulation.seed)
    sim.sample_emitters(1, cfg.simulation.n_frames, generator)
    background = sim.sample_background(1, generator)[0].numpy()
    row = np.round(nm_to_px(truth["y_nm"], 100.0)).astype(int).clip(0, 31)
    col = np.round(nm_to_px(truth["x_nm"], 100.0)).astype(int).clip(0, 31)
    assert truth["bg"].nunique() > 10  # structured: the emitters' backgrounds differ
    np.testing.assert_allclose(truth["bg"], background[row, col])


def test_simulated_movie_files(tmp_path) -> None:
    cfg = small_config(camera={"kind": "ideal", "qe": 1.0, "em_gain": 1.0, "e_per_adu": 1.0,
                               "read_noise_e": 0.0, "spurious_charge_e": 0.0})
    paths = simulate_movie(cfg, tmp_path / "sim", chunk_frames=5)
    frames = tifffile.imread(paths["frames"])
    truth = pd.read_csv(paths["ground_truth"])
    assert frames.shape == (12, 32, 32) and frames.dtype == np.uint16
    assert list(truth.columns) == ["frame", "id", "x_nm", "y_nm", "z_nm", "photons", "bg"]
    assert truth["frame"].between(0, 11).all()
    # The background the movie was drawn with (one level, no structure here), not the middle
    # of the configured range: the photons of an ideal camera's pixels away from emitters.
    lo, hi = cfg.background.level_photons
    assert truth["bg"].nunique() == 1 and lo <= truth["bg"].iloc[0] <= hi
    assert np.percentile(frames, 25) - 100.0 == pytest.approx(truth["bg"].iloc[0], rel=0.1)
    assert load_config(paths["config"]) == cfg
    # Light lands where the ground truth says: bright emitters sit on bright pixels.
    bright = truth[truth["photons"] > 3000]
    col = np.round(nm_to_px(bright["x_nm"], 100.0)).astype(int).clip(0, 31)
    row = np.round(nm_to_px(bright["y_nm"], 100.0)).astype(int).clip(0, 31)
    at_truth = frames[bright["frame"], row, col].astype(float) - 100.0
    background = np.median(frames) - 100.0
    assert np.median(at_truth) > background + 100
    assert not any(p.name.endswith(".part") for p in (tmp_path / "sim").iterdir())


def test_an_interrupted_simulation_leaves_the_folders_old_files(tmp_path, monkeypatch) -> None:
    from denseloc.sim import simulator

    cfg = small_config()
    paths = simulate_movie(cfg, tmp_path / "sim")
    before = {name: path.read_bytes() for name, path in paths.items()}
    other = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"seed": 9})})

    def interrupt(*args, **kwargs):  # the movie is written, its ground truth not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(simulator, "background_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        simulate_movie(other, tmp_path / "sim", chunk_frames=5)
    assert {name: path.read_bytes() for name, path in paths.items()} == before
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == sorted(
        p.name for p in paths.values())


def test_same_seed_same_movie(tmp_path) -> None:
    cfg = small_config()
    a = simulate_movie(cfg, tmp_path / "a")
    b = simulate_movie(cfg, tmp_path / "b")
    assert np.array_equal(tifffile.imread(a["frames"]), tifffile.imread(b["frames"]))
    assert a["ground_truth"].read_text() == b["ground_truth"].read_text()


@pytest.mark.parametrize("kind", ["gaussian", "astigmatic"])
def test_z_is_simulated_only_for_3d_psfs(kind: str) -> None:
    sim = Simulator(small_config(psf={"kind": kind}))
    z = sim.sample(8, 3, sim.generator(0)).emitters.z_nm
    assert (z.abs().max().item() > 100) == (kind == "astigmatic")


@pytest.mark.parametrize(
    "psf", [{"kind": "gaussian"}, {"kind": "astigmatic"},
            {"kind": "file", "path": "denseloc:psf_epfl_beads_as.h5"},
            {"kind": "file", "path": "denseloc:psf_epfl_beads_as_astigmatic.yaml"}],
)
def test_the_config_knows_whether_its_psf_is_3d(psf: dict) -> None:
    # Models read is_3d from their config without building the PSF (a file to load).
    config = small_config(psf=psf, emitters={"z_range_nm": [-350.0, 650.0]})
    assert config.psf.is_3d == Simulator(config).psf.is_3d


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"emitters": {"z_range_nm": [-800.0, 700.0]}}, r"beyond .* calibration \(-750, 750\)"),
        ({"image": {"pixel_size_nm": 160.0}}, r"calibrated for 100 nm pixels"),
    ],
)
def test_a_spline_calibration_must_cover_the_simulated_setting(settings, match) -> None:
    from denseloc.config import ConfigError

    psf = {"psf": {"kind": "file", "path": "denseloc:psf_epfl_beads_as.h5"}}
    with pytest.raises(ConfigError, match=match):
        Simulator(Config.model_validate({**psf, **settings}))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({}, r"\(-750, 750\) reaches beyond .* calibration \(-360, 660\)"),
        ({"emitters": {"z_range_nm": [-350.0, 650.0]}, "image": {"pixel_size_nm": 160.0}},
         r"calibrated for 100 nm pixels"),
    ],
)
def test_an_astigmatic_fit_must_cover_the_simulated_setting(settings, match) -> None:
    # Beyond its beads' range the Huang polynomial is extrapolated (sigma_y doubles at -750).
    from denseloc.config import ConfigError

    psf = {"psf": {"kind": "file", "path": "denseloc:psf_epfl_beads_as_astigmatic.yaml"}}
    with pytest.raises(ConfigError, match=match):
        Simulator(Config.model_validate({**psf, **settings}))
    inside = Simulator(Config.model_validate({**psf, "emitters": {"z_range_nm": [-350, 650]}}))
    assert inside.psf.pixel_size_nm == 100.0
