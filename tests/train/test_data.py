"""Training batches: windows, targets on the central frame, network units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseloc.config import Config
from denseloc.train.data import TrainingData


@pytest.mark.parametrize("frames_per_movie", [3, 8])
def test_targets_are_the_central_frames_emitters(frames_per_movie: int) -> None:
    cfg = Config.model_validate({
        "camera": {"kind": "ideal", "qe": 1.0, "em_gain": 1.0, "e_per_adu": 1.0,
                   "read_noise_e": 0.0, "spurious_charge_e": 0.0},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 0.5, "photons_std": 0.0},
        "train": {"frame_size_px": 32, "frames_per_movie": frames_per_movie},
    })
    data = TrainingData(cfg)
    batch = data.batch(20, torch.Generator().manual_seed(3))
    assert batch.inputs.shape == (20, 3, 32, 32)
    for b in range(20):
        torch.testing.assert_close(batch.inputs[b], batch.frames[batch.starts[b]:][:3])
    assert len(batch.frames) == int(batch.starts.max()) + 3  # no frame the windows do not use
    photons = batch.targets[..., 0] * data.scaling.photons
    bright = batch.mask & (photons > 3000)
    b_idx, k_idx = torch.nonzero(bright, as_tuple=True)
    rows = batch.targets[b_idx, k_idx, 2].round().long()
    cols = batch.targets[b_idx, k_idx, 1].round().long()
    centre = batch.inputs[:, 1]
    on_target = centre[b_idx, rows, cols] * data.scaling.input_scale
    # A bright in-frame emitter adds hundreds of photons to its pixel above the background.
    assert len(on_target) > 10
    assert np.median(on_target.numpy()) > 300
    # Target lists hold exactly the central frame's emitters above min_target_photons.
    counts = torch.bincount(batch.emitters.frame[batch.emitters.photons >= 100], minlength=20)
    assert torch.equal(counts, batch.mask.sum(1))


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


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"emitters": {"density_per_um2": 0.0}}, r"training needs emitters"),
        ({"emitters": {"count_per_frame": 0.0}}, r"training needs emitters"),
        ({"emitters": {"count_per_frame": 5.0}, "train": {"density_range_per_um2": [0.1, 2]}},
         r"density_range_per_um2 scales emitters\.density_per_um2"),
        ({"emitters": {"density_per_um2": 0.0}, "train": {"density_range_per_um2": [0.1, 2]}},
         r"density_range_per_um2 scales"),
        ({"camera": {"kind": "scmos", "em_gain": 1.0, "offset_map": "offset.tif"}},
         r"per-pixel sCMOS maps"),
    ],
)
def test_untrainable_settings_are_one_line_config_errors(settings: dict, match: str) -> None:
    from denseloc.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        TrainingData(Config.model_validate(settings))
