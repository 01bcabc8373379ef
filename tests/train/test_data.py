"""Training batches: windows, targets on the central frame, network units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseloc.config import Config
from denseloc.train.data import TrainingData


@pytest.mark.parametrize(("context", "frames_per_movie"), [(3, 3), (3, 8), (5, 16)])
def test_targets_are_the_central_frames_emitters(context: int, frames_per_movie: int) -> None:
    cfg = Config.model_validate({
        "camera": {"kind": "ideal", "qe": 1.0, "em_gain": 1.0, "e_per_adu": 1.0,
                   "read_noise_e": 0.0, "spurious_charge_e": 0.0},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 0.5, "photons_std": 0.0},
        "model": {"context_frames": context},
        "train": {"frame_size_px": 32, "frames_per_movie": frames_per_movie},
    })
    data = TrainingData(cfg)
    batch = data.batch(20, torch.Generator().manual_seed(3))
    assert batch.inputs.shape == (20, context, 32, 32)
    starts = batch.windows[:, 0]
    torch.testing.assert_close(batch.windows,
                               starts[:, None] + torch.arange(context))  # consecutive
    for b in range(20):
        torch.testing.assert_close(batch.inputs[b], batch.frames[starts[b]:][:context])
    assert len(batch.frames) == int(starts.max()) + context  # no frame the windows do not use
    photons = batch.targets[..., 0] * data.scaling.photons
    bright = batch.mask & (photons > 3000)
    b_idx, k_idx = torch.nonzero(bright, as_tuple=True)
    rows = batch.targets[b_idx, k_idx, 2].round().long()
    cols = batch.targets[b_idx, k_idx, 1].round().long()
    centre = batch.inputs[:, context // 2]
    on_target = centre[b_idx, rows, cols] * data.scaling.input_scale
    # A bright in-frame emitter adds hundreds of photons to its pixel above the background.
    assert len(on_target) > 10
    assert np.median(on_target.numpy()) > 300
    # Target lists hold exactly the central frame's emitters above min_target_photons.
    counts = torch.bincount(batch.emitters.frame[batch.emitters.photons >= 100], minlength=20)
    assert torch.equal(counts, batch.mask.sum(1))
    # Each target sits where its light is: an MLE fit of the central frame around isolated
    # bright targets lands on them (a target off by a pixel, or by half of one, would not).
    from denseloc.classic.mle import fit_rois
    from denseloc.sim.simulator import psf_from_config

    xy = batch.targets[..., 1:3]
    others = torch.cdist(xy, xy) + torch.where(batch.mask, 0.0, 1e3)[:, None, :]
    others = others + torch.eye(xy.shape[1]) * 1e3  # not the target itself
    lone = bright & (others.min(2).values > 6) & (xy >= 6).all(2) & (xy <= 25).all(2)
    b_idx, k_idx = torch.nonzero(lone, as_tuple=True)
    rows = batch.targets[b_idx, k_idx, 2].round().long()
    cols = batch.targets[b_idx, k_idx, 1].round().long()
    offs = torch.arange(-5, 6)
    photons_in = centre * data.scaling.input_scale + data.scaling.input_offset
    rois = photons_in[b_idx[:, None, None], (rows[:, None] + offs)[:, :, None],
                      (cols[:, None] + offs)[:, None, :]]
    fit = fit_rois(psf_from_config(cfg.psf, cfg.emitters.z_range_nm), rois.double())
    assert len(b_idx) >= 3
    x_err = cols + fit.dx_px - batch.targets[b_idx, k_idx, 1].double()
    y_err = rows + fit.dy_px - batch.targets[b_idx, k_idx, 2].double()
    assert x_err.abs().median() < 0.05 and y_err.abs().median() < 0.05, (x_err, y_err)


def test_network_units() -> None:
    data = TrainingData(Config())
    batch = data.batch(8, torch.Generator().manual_seed(0))
    # Background-subtracted, scaled frames: median near 0, emitter peaks near 1.
    assert abs(batch.inputs.median().item()) < 0.1
    assert 0.3 < batch.inputs.amax((1, 2, 3)).median().item() < 5
    assert (batch.targets[batch.mask][:, 0] <= 1).all()
    assert (batch.targets[batch.mask][:, 3].abs() <= 1).all()
    assert ((batch.bg > 0) & (batch.bg < 1)).all()


@pytest.mark.parametrize("z_margin", [1.0, 1.25])
def test_z_targets_span_the_range_over_the_margin(z_margin: float) -> None:
    # The z head outputs tanh x scaling.z_nm; with a margin, the simulated range maps inside
    # +-1 / z_margin, away from where tanh saturates.
    cfg = Config.model_validate({
        "psf": {"kind": "astigmatic"},
        "emitters": {"density_per_um2": 2.0, "z_range_nm": [-400.0, 600.0]},
        "train": {"frame_size_px": 32, "z_margin": z_margin},
    })
    data = TrainingData(cfg)
    assert data.scaling.z_nm == pytest.approx(600.0 * z_margin)
    batch = data.batch(64, torch.Generator().manual_seed(0))
    z = batch.targets[..., 3][batch.mask]
    assert len(z) > 100
    assert z.max() <= 1.0 / z_margin + 1e-6
    assert z.min() >= -400.0 / (600.0 * z_margin) - 1e-6
    assert z.max() > 0.95 / z_margin and z.min() < -0.95 * 400.0 / (600.0 * z_margin)


@pytest.mark.parametrize(("context", "frames_per_movie", "movies"), [(3, 1, 6), (5, 7, 2),
                                                                    (5, None, 1)])
def test_frames_per_movie_overrides_the_training_movies(context, frames_per_movie, movies) -> None:
    cfg = Config.model_validate({"psf": {"kind": "gaussian"}, "model": {"context_frames": context},
                                 "train": {"frame_size_px": 16, "frames_per_movie": 16}})
    data = TrainingData(cfg)
    batch = data.batch(6, torch.Generator().manual_seed(0), frames_per_movie=frames_per_movie)
    length = max(frames_per_movie or 16, context)
    per_movie = length - context + 1
    # Movies of `length` frames (at least the context), each giving its windows in order.
    starts = torch.tensor([m * length + k for m in range(movies) for k in range(per_movie)][:6])
    assert torch.equal(batch.windows, starts[:, None] + torch.arange(context))
    with pytest.raises(ValueError, match="frames_per_movie must be >= 1, got 0"):
        data.batch(6, torch.Generator().manual_seed(0), frames_per_movie=0)


@pytest.mark.parametrize("context", [3, 5])
def test_edge_windows_are_padded_as_localization_pads_a_movies_ends(context) -> None:
    cfg = Config.model_validate({"psf": {"kind": "gaussian"}, "model": {"context_frames": context},
                                 "train": {"frame_size_px": 16, "edge_windows": 0.5}})
    n = 800
    batch = TrainingData(cfg).batch(n, torch.Generator().manual_seed(0))
    half = context // 2
    centre = batch.windows[:, half]
    consecutive = centre[:, None] + torch.arange(-half, half + 1)
    # Each side is cut with probability 0.25: k of its frames (k uniform in 1 .. half) are
    # copies of the nearest frame left, as localization pads frame k-1 of a movie (or the
    # k-th from its end); otherwise the window is consecutive on that side.
    for side in ("before", "after"):
        found = []
        for k in range(half + 1):
            expected = consecutive.clone()
            if side == "before":
                expected[:, :k] = consecutive[:, k : k + 1]
            else:
                expected[:, context - k :] = consecutive[:, context - 1 - k : context - k]
            if side == "before":  # the other side may be cut too
                this = (batch.windows[:, : half + 1] == expected[:, : half + 1]).all(1)
            else:
                this = (batch.windows[:, half:] == expected[:, half:]).all(1)
            found.append(this)
            if k:
                copies = slice(0, k) if side == "before" else slice(context - k, context)
                nearest = k if side == "before" else context - 1 - k
                for j in range(copies.start, copies.stop):
                    torch.testing.assert_close(batch.inputs[this, j], batch.inputs[this, nearest])
        found = torch.stack(found, 1)
        assert (found.sum(1) == 1).all()  # every window is one of these
        cut = int(found[:, 1:].sum())
        assert abs(cut - n / 4) < 3 * (n * 0.25 * 0.75) ** 0.5
        for k in range(1, half + 1):
            p = 0.25 / half
            assert abs(int(found[:, k].sum()) - n * p) < 3 * (n * p * (1 - p)) ** 0.5
    # The targets stay the central frame's, whatever its neighbours.
    plain = TrainingData(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"edge_windows": 0.0})})).batch(n, torch.Generator().manual_seed(0))
    assert torch.equal(plain.windows[:, half], centre) and torch.equal(plain.targets, batch.targets)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"emitters": {"density_per_um2": 0.0}}, r"training needs emitters"),
        ({"emitters": {"count_per_frame": 0.0}}, r"training needs emitters"),
        ({"emitters": {"count_per_frame": 5.0}, "train": {"density_range_per_um2": [0.1, 2]}},
         r"density_range_per_um2 scales emitters\.density_per_um2"),
        ({"emitters": {"density_per_um2": 0.0}, "train": {"density_range_per_um2": [0.1, 2]}},
         r"density_range_per_um2 scales"),
        ({"image": {"size_px": [32, 64]},
          "camera": {"kind": "scmos", "em_gain": 1.0, "offset_map": "offset.tif"}},
         r"cuts 40 px frames from the sCMOS maps, which are image\.size_px = \[32, 64\]"),
        ({"model": {"context_frames": 1}, "train": {"edge_windows": 0.1}},
         r"edge_windows needs neighbouring frames"),
        ({"camera": {"kind": "scmos", "em_gain": 1.0, "roi_origin_px": [8, 0]}},
         r"roi_origin_px places a localized movie on the chip"),
        ({"emitters": {"z_range_nm": [200.0, 200.0]}},
         r"z_range_nm is a single z \(200 nm\) for a 3D PSF"),
    ],
)
def test_untrainable_settings_are_one_line_config_errors(settings: dict, match: str) -> None:
    from denseloc.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        TrainingData(Config.model_validate(settings))


def test_scmos_maps_are_cut_at_random_places_on_the_chip(tmp_path) -> None:
    # A 16 x 64 px chip whose right half has 400 ADU^2 of read noise and the left half none,
    # with an offset that jumps by 500 ADU every 8 columns. Each 16 px movie is cut at its own
    # place: some movies see only the quiet half, some only the noisy one, and the offsets
    # are removed wherever they are.
    chip = (16, 64)
    columns = np.arange(chip[1])
    np.save(tmp_path / "offset.npy", np.broadcast_to(100.0 + 500.0 * (columns // 8 % 2), chip))
    np.save(tmp_path / "variance.npy", np.broadcast_to(400.0 * (columns >= 32), chip))
    bg = 20.0
    cfg = Config.model_validate({
        "image": {"size_px": list(chip)},
        "camera": {"kind": "scmos", "qe": 0.8, "em_gain": 1.0, "e_per_adu": 0.5,
                   "spurious_charge_e": 0.0, "read_noise_e": 0.0,
                   "offset_map": str(tmp_path / "offset.npy"),
                   "variance_map": str(tmp_path / "variance.npy")},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 1e-4},
        "background": {"level_photons": [bg, bg], "structured_amplitude_photons": 0.0},
        "train": {"frame_size_px": 16, "frames_per_movie": 3},
    })
    data = TrainingData(cfg)
    batch = data.batch(64, torch.Generator().manual_seed(0))  # one movie per sample
    photons = batch.inputs[:, 1].double() * data.scaling.input_scale + data.scaling.input_offset
    residual = photons - bg
    assert abs(residual.mean().item()) < 0.3  # offsets removed at every place
    cam = cfg.camera
    shot = bg / cam.qe + (cam.e_per_adu / cam.qe) ** 2 / 12  # Poisson and ADC rounding
    read = 400.0 * (cam.e_per_adu / cam.qe) ** 2
    variance = np.sort(residual.var(dim=(1, 2)).numpy())
    # Crop columns start anywhere in 0..48: a third of the movies lie within each half.
    np.testing.assert_allclose(variance[:8].mean(), shot, rtol=0.15)
    np.testing.assert_allclose(variance[-8:].mean(), shot + read, rtol=0.15)
    assert np.mean(variance > shot + read / 2) == pytest.approx(0.5, abs=0.2)


def test_validation_bounds_use_the_chips_read_noise_not_the_crops_camera(tmp_path) -> None:
    # The crops' camera drops the maps (the simulator applies them per movie); its
    # read_noise_e of 0 is not the read noise of the data. The map's median is: 300 ADU^2.
    from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns
    from denseloc.train.trainer import _validation_truth

    np.save(tmp_path / "variance.npy", np.full((32, 32), 300.0))
    cfg = Config.model_validate({
        "image": {"size_px": 32},
        "camera": {"kind": "scmos", "e_per_adu": 0.5, "read_noise_e": 0.0,
                   "variance_map": str(tmp_path / "variance.npy")},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 2.0},
        "train": {"frame_size_px": 16, "frames_per_movie": 3},
    })
    data = TrainingData(cfg)
    truth = _validation_truth([data.batch(8, torch.Generator().manual_seed(1))], data)
    assert len(truth) > 5
    plain = truth.drop(columns=[c for c in truth if c.startswith("crlb_")])
    expected = add_crlb_columns(plain, data.config, frame_shape=(16, 16),
                                noise=NoiseModel(qe=0.82, read_var_e2=300.0 * 0.5**2))
    np.testing.assert_allclose(truth["crlb_x_nm"], expected["crlb_x_nm"], rtol=1e-9)
    quiet = add_crlb_columns(plain, data.config, frame_shape=(16, 16))
    assert (truth["crlb_x_nm"] > 1.05 * quiet["crlb_x_nm"]).mean() > 0.5


def test_validation_truth_takes_each_emitters_background_at_its_own_pixel() -> None:
    from denseloc.train.trainer import _validation_truth

    cfg = Config.model_validate({
        "image": {"size_px": 32},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 4.0},
        "background": {"level_photons": (100.0, 100.0), "structured_amplitude_photons": 200.0,
                       "structured_scale_nm": 800.0},
        "train": {"frame_size_px": 32, "frames_per_movie": 3},
    })
    data = TrainingData(cfg)
    truth = _validation_truth([data.batch(4, torch.Generator().manual_seed(2))], data)
    assert truth["bg"].between(100.0, 300.0).all()
    # A structured background varies within a crop: one mean per sample would not.
    assert truth.groupby("frame")["bg"].std().min() > 5.0
