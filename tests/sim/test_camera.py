"""Camera statistics against theory for a flat photon image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseloc.config import CAMERA_PRESETS, CameraConfig
from denseloc.sim.camera import Camera

PHOTONS = 50.0
SHAPE = (100, 64, 64)  # 409,600 pixels: relative standard error of a variance ~ 0.3 %


def flat_adu(kind: str, seed: int = 0) -> tuple[Camera, torch.Tensor]:
    camera = Camera.from_config(CameraConfig(**CAMERA_PRESETS[kind]))
    generator = torch.Generator().manual_seed(seed)
    photons = torch.full(SHAPE, PHOTONS, dtype=torch.float64)
    return camera, camera.photons_to_adu(photons, generator)


def theory(cfg: CameraConfig, excess: float) -> tuple[float, float]:
    electrons = PHOTONS * cfg.qe + cfg.spurious_charge_e
    mean = electrons * cfg.em_gain / cfg.e_per_adu + cfg.baseline_adu
    var = (excess * electrons * cfg.em_gain**2 + cfg.read_noise_e**2) / cfg.e_per_adu**2
    return mean, var


@pytest.mark.parametrize("kind", ["emccd", "scmos", "ideal"])
def test_mean_and_variance_match_theory(kind: str) -> None:
    camera, adu = flat_adu(kind)
    cfg = camera.config
    excess = 2.0 if kind == "emccd" else 1.0
    mean, var = theory(cfg, excess)
    # Rounding to integers adds 1/12 ADU^2 to a continuous signal; an ideal camera with
    # 1 e-/ADU outputs integers already.
    if kind != "ideal":
        var += 1 / 12
    assert adu.mean().item() == pytest.approx(mean, rel=2e-3)
    assert adu.var().item() == pytest.approx(var, rel=0.02)


def test_an_emccd_dark_frame_shows_read_noise_and_spurious_charge() -> None:
    # Without light the read noise (74.4 e- at the output, 2.7 ADU^2) and the spurious charge
    # (0.002 e- amplified 300 times with excess factor 2: 0.18 ADU^2) are the whole variance.
    cfg = CameraConfig(**CAMERA_PRESETS["emccd"])
    camera = Camera.from_config(cfg)
    adu = camera.photons_to_adu(torch.zeros(SHAPE, dtype=torch.float64),
                                torch.Generator().manual_seed(7))
    spurious_var = 2 * cfg.spurious_charge_e * cfg.em_gain**2 / cfg.e_per_adu**2
    var = cfg.read_noise_e**2 / cfg.e_per_adu**2 + spurious_var + 1 / 12
    mean = cfg.baseline_adu + cfg.spurious_charge_e * cfg.em_gain / cfg.e_per_adu
    n = adu.numel()
    # Spurious events are rare and large (heavy tails): the variance's standard error is
    # about 0.55 %, so 3 % is five of them, while leaving out the spurious charge moves it
    # by 6 % and the read noise by 91 %.
    assert adu.var().item() == pytest.approx(var, rel=0.03)
    assert abs(adu.mean().item() - mean) < 5 * np.sqrt(var / n)


def test_emccd_excess_noise_factor_is_two() -> None:
    camera, adu = flat_adu("emccd")
    cfg = camera.config
    _, var_without_excess = theory(cfg, 1.0)
    ratio = (adu.var().item() - cfg.read_noise_e**2 / cfg.e_per_adu**2) / (
        var_without_excess - cfg.read_noise_e**2 / cfg.e_per_adu**2
    )
    assert ratio == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("kind", ["emccd", "scmos", "ideal"])
def test_adu_to_photons_recovers_the_photon_mean(kind: str) -> None:
    camera, adu = flat_adu(kind, seed=1)
    assert camera.adu_to_photons(adu).mean().item() == pytest.approx(PHOTONS, rel=3e-3)


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    _, a = flat_adu("emccd", seed=3)
    _, b = flat_adu("emccd", seed=3)
    _, c = flat_adu("emccd", seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_adc_clips_to_its_range() -> None:
    cfg = CameraConfig(**{**CAMERA_PRESETS["ideal"], "adc_max_adu": 200})
    adu = Camera.from_config(cfg).photons_to_adu(torch.full((10, 10), 1000.0))
    assert adu.max().item() == 200


def test_scmos_per_pixel_maps(tmp_path) -> None:
    shape = (32, 48)
    rng = np.random.default_rng(0)
    offset = rng.uniform(90, 110, shape)
    variance = rng.uniform(1, 30, shape)
    gain = rng.uniform(0.4, 0.6, shape)
    for name, arr in [("offset", offset), ("variance", variance), ("gain", gain)]:
        np.save(tmp_path / f"{name}.npy", arr)
    cfg = CameraConfig(
        **CAMERA_PRESETS["scmos"],
        offset_map=tmp_path / "offset.npy",
        variance_map=tmp_path / "variance.npy",
        gain_map=tmp_path / "gain.npy",
    )
    camera = Camera.from_config(cfg, shape)
    photons = torch.zeros((4000, *shape), dtype=torch.float64)  # read noise only
    adu = camera.photons_to_adu(photons, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(adu.mean(0), offset, atol=0.35)
    np.testing.assert_allclose(adu.var(0), variance + 1 / 12, rtol=0.12)
    lit = torch.full((400, *shape), 2000.0, dtype=torch.float64)
    adu = camera.photons_to_adu(lit, torch.Generator().manual_seed(1))
    recovered = camera.adu_to_photons(adu).mean(0).numpy()
    np.testing.assert_allclose(recovered, 2000.0, rtol=0.01)


def test_crop_cuts_each_movies_maps(tmp_path) -> None:
    shape = (12, 20)
    rng = np.random.default_rng(1)
    offset, gain = rng.uniform(90, 110, shape), rng.uniform(0.4, 0.6, shape)
    np.save(tmp_path / "offset.npy", offset)
    np.save(tmp_path / "gain.npy", gain)
    cfg = CameraConfig(**CAMERA_PRESETS["scmos"], offset_map=tmp_path / "offset.npy",
                       gain_map=tmp_path / "gain.npy")
    camera = Camera.from_config(cfg, shape)
    assert cfg.has_maps and not CameraConfig().has_maps
    top, left = torch.tensor([0, 5, 8]), torch.tensor([3, 0, 14])
    crop = camera.crop(top, left, (4, 6))
    assert crop.offset_adu.shape == crop.e_per_adu.shape == (3, 1, 4, 6)
    for i, (t, c) in enumerate(zip(top.tolist(), left.tolist(), strict=True)):
        np.testing.assert_array_equal(crop.offset_adu[i, 0].numpy(), offset[t:t + 4, c:c + 6])
        np.testing.assert_array_equal(crop.e_per_adu[i, 0].numpy(), gain[t:t + 4, c:c + 6])
        # No variance map: read_noise_e electrons in every pixel, so in ADU it follows the gain.
        np.testing.assert_allclose(crop.read_var_adu2[i, 0].numpy(),
                                   (cfg.read_noise_e / gain[t:t + 4, c:c + 6]) ** 2)
    # The crops broadcast over the frames of their movie: each movie has its own offsets.
    adu = crop.photons_to_adu(torch.zeros(3, 2000, 4, 6, dtype=torch.float64),
                              torch.Generator().manual_seed(0))
    np.testing.assert_allclose(adu.mean(1).numpy(), crop.offset_adu[:, 0].numpy(), atol=0.3)
    for top, left in ((9, 0), (0, 15)):
        with pytest.raises(ValueError, match="does not fit"):
            camera.crop(torch.tensor([top]), torch.tensor([left]), (4, 6))


def test_maps_of_the_whole_chip_serve_a_region_of_interest(tmp_path) -> None:
    from denseloc.errors import InputFileError

    chip = np.arange(12 * 20, dtype=float).reshape(12, 20)
    np.save(tmp_path / "offset.npy", chip)
    cfg = CameraConfig(**CAMERA_PRESETS["scmos"], offset_map=tmp_path / "offset.npy")
    roi = Camera.from_config(cfg.model_copy(update={"roi_origin_px": (5, 10)}), (4, 6))
    np.testing.assert_array_equal(roi.offset_adu.numpy(), chip[5:9, 10:16])
    with pytest.raises(InputFileError, match=r"shape \(12, 20\), the frames are \(4, 6\).*"
                       r"roi_origin_px"):
        Camera.from_config(cfg, (4, 6))
    with pytest.raises(InputFileError, match="do not fit"):
        Camera.from_config(cfg.model_copy(update={"roi_origin_px": (9, 0)}), (4, 6))
    with pytest.raises(ValueError, match="roi_origin_px must be >= 0"):
        CameraConfig(**CAMERA_PRESETS["scmos"], roi_origin_px=(-1, 0))


def test_bad_map_shape_is_reported(tmp_path) -> None:
    from denseloc.errors import InputFileError

    np.save(tmp_path / "offset.npy", np.zeros((5, 5)))
    cfg = CameraConfig(**CAMERA_PRESETS["scmos"], offset_map=tmp_path / "offset.npy")
    with pytest.raises(InputFileError, match=r"offset\.npy.*shape"):
        Camera.from_config(cfg, (8, 8))
