"""Cramer-Rao bound against closed forms and its noise-model scalings."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.config import Config
from denseloc.errors import DenselocWarning
from denseloc.evaluate.crlb import (
    NoiseModel,
    add_crlb_columns,
    add_crowded_bounds,
    add_crowded_window_bounds,
    add_window_crlb_columns,
    crlb,
    fisher_information,
)
from denseloc.sim.camera import Camera
from denseloc.sim.psf import AstigmaticPSF, GaussianPSF
from denseloc.sim.simulator import psf_from_config


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def rieger_stallinga_px(sigma_px: float, photons: float, bg: float) -> float:
    """Rieger & Stallinga (ChemPhysChem 2014) localization precision, pixel size 1."""
    sa2 = sigma_px**2 + 1 / 12
    tau = 2 * math.pi * sa2 * bg / photons
    return math.sqrt(sa2 / photons * (1 + 4 * tau + math.sqrt(2 * tau / (1 + 4 * tau))))


@pytest.mark.parametrize("photons", [500.0, 2000.0, 10000.0])
@pytest.mark.parametrize("bg", [1.0, 10.0, 100.0])
def test_gaussian_crlb_matches_rieger_stallinga(photons: float, bg: float) -> None:
    bound = crlb(GaussianPSF(1.3), t(0), t(photons), t(bg), size=31)[0]
    expected = rieger_stallinga_px(1.3, photons, bg)
    assert bound[0].item() == pytest.approx(expected, rel=0.03)
    assert bound[1].item() == pytest.approx(expected, rel=0.03)
    assert math.isnan(bound[2].item())


def test_photon_bound_without_background_is_poisson() -> None:
    bound = crlb(GaussianPSF(1.0), t(0), t(4000), t(1e-6), size=31)[0]
    assert bound[3].item() == pytest.approx(math.sqrt(4000), rel=0.01)


def test_a_dark_pixel_of_a_noiseless_camera_carries_no_information_not_nan() -> None:
    # With no background on an ideal camera, the patch's outer pixels expect exactly 0
    # photons in float64 (erf rounds to 1 beyond ~8 sigma): variance 0, derivative 0.
    dark = crlb(GaussianPSF(1.0), t(0), t(4000), t(0.0), size=31)[0]
    nearly = crlb(GaussianPSF(1.0), t(0), t(4000), t(1e-6), size=31)[0]
    assert torch.isfinite(dark[[0, 1, 3]]).all()
    torch.testing.assert_close(dark[:2], nearly[:2], rtol=1e-3, atol=0)
    assert dark[3].item() == pytest.approx(math.sqrt(4000), rel=0.01)


def test_without_a_bg_column_the_bound_takes_the_mean_background_structure_included() -> None:
    cfg = Config.model_validate({
        "psf": {"kind": "gaussian"},
        "background": {"level_photons": (90.0, 110.0), "structured_amplitude_photons": 60.0},
    })
    truth = pd.DataFrame({"frame": [0], "x_nm": [1000.0], "y_nm": [1000.0], "z_nm": [0.0],
                          "photons": [2000.0]})
    default = add_crlb_columns(truth, cfg)
    explicit = add_crlb_columns(truth, cfg, bg_photons=130.0)
    assert default["crlb_x_nm"].item() == pytest.approx(explicit["crlb_x_nm"].item(), rel=1e-12)


def test_emccd_excess_noise_scales_bound_by_sqrt2_and_qe_by_inverse_sqrt() -> None:
    args = (AstigmaticPSF((1.1, 1.1), (-200.0, 200.0), (400.0, 400.0)), t(100), t(3000), t(50))
    base = crlb(*args)
    emccd = crlb(*args, noise=NoiseModel(excess_noise=2.0))
    half_qe = crlb(*args, noise=NoiseModel(qe=0.5))
    torch.testing.assert_close(emccd, base * math.sqrt(2), rtol=1e-10, atol=0)
    torch.testing.assert_close(half_qe, base * math.sqrt(2), rtol=1e-10, atol=0)


def test_read_noise_and_spurious_charge_act_as_background_after_the_excess_factor() -> None:
    # Pixel variance F (qe mu + s) + r = F qe (mu + s / qe + r / (F qe)): the bound is that of
    # an ideal camera with that much more background, times sqrt(F / qe), on every parameter.
    psf = AstigmaticPSF((1.1, 1.2), (-200.0, 250.0), (400.0, 400.0))
    qe, excess, read_var, spurious, bg = 0.8, 2.0, 30.0, 0.5, 20.0
    noise = NoiseModel(qe=qe, excess_noise=excess, read_var_e2=read_var, spurious_e=spurious)
    z, photons = t(-150.0, 320.0), t(800.0, 4000.0)
    shifted = bg + spurious / qe + read_var / (excess * qe)
    expected = crlb(psf, z, photons, t(shifted, shifted)) * math.sqrt(excess / qe)
    torch.testing.assert_close(crlb(psf, z, photons, t(bg, bg), noise=noise), expected,
                               rtol=1e-10, atol=0)


def test_astigmatic_z_bound_is_finite_and_worse_for_dimmer() -> None:
    psf = AstigmaticPSF((1.1, 1.1), (-200.0, 200.0), (400.0, 400.0))
    bright, dim = crlb(psf, t(0, 0), t(5000, 1000), t(100, 100))
    assert 5 < bright[2].item() < 100
    assert dim[2].item() > bright[2].item() * 1.5


def test_add_crlb_columns_in_nm() -> None:
    cfg = Config.model_validate(
        {
            "psf": {"kind": "gaussian", "sigma_px": 1.3},
            "camera": {
                "kind": "ideal",
                "qe": 1.0,
                "em_gain": 1.0,
                "read_noise_e": 0.0,
                "spurious_charge_e": 0.0,
                "e_per_adu": 1.0,
            },
        }
    )
    truth = pd.DataFrame(
        {
            "frame": [0, 0],
            "x_nm": [1050.0, 2050.0],
            "y_nm": [550.0, 550.0],
            "z_nm": [0.0, 0.0],
            "photons": [2000.0, 500.0],
            "bg": [10.0, 10.0],
        }
    )
    out = add_crlb_columns(truth, cfg)
    expected = [rieger_stallinga_px(1.3, p, 10.0) * 100 for p in (2000.0, 500.0)]
    np.testing.assert_allclose(out["crlb_x_nm"], expected, rtol=0.03)
    assert out["crlb_z_nm"].isna().all()


def test_spline_crlb_matches_the_model_it_was_built_from() -> None:
    from denseloc.calibration.spline import CubicSplinePSF, psf_stack_from_model

    model = AstigmaticPSF((1.2, 1.3), (-200.0, 250.0), (400.0, 400.0))
    z_grid = torch.arange(-750.0, 751.0, 10.0, dtype=torch.float64)
    stack = psf_stack_from_model(model, z_grid, 21)
    spline = CubicSplinePSF.from_stack(stack.numpy(), dz_nm=10.0, pixel_size_nm=100.0)
    z = t(-400, -105, 0, 233, 500)
    n = len(z)
    dx, dy = t(0.1, -0.3, 0.0, 0.25, -0.45), t(-0.2, 0.4, 0.0, -0.1, 0.3)
    args = dict(dx_px=dx, dy_px=dy, noise=NoiseModel(excess_noise=2.0), size=21)
    photons, bg = torch.full((n,), 3000.0, dtype=torch.float64), torch.full((n,), 80.0,
                                                                           dtype=torch.float64)
    expected = crlb(model, z, photons, bg, **args)
    got = crlb(spline, z, photons, bg, **args)
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0)


def emitters(xs_px, ys_px, photons=3000.0, z_nm=150.0, frame=0) -> pd.DataFrame:
    """Ground truth on 100 nm pixels from pixel-index positions."""
    xs_px, ys_px = np.atleast_1d(xs_px), np.atleast_1d(ys_px)
    return pd.DataFrame({"frame": frame, "x_nm": (xs_px + 0.5) * 100.0,
                         "y_nm": (ys_px + 0.5) * 100.0, "z_nm": z_nm, "photons": photons})


def _blinking_truth() -> pd.DataFrame:
    """Emitter 1 on in frames 0-2 at 3000 photons; emitter 2 elsewhere, bright in frame 1
    only and dim in frame 2."""
    return pd.DataFrame({
        "frame": [0, 1, 2, 1, 2], "id": [1, 1, 1, 2, 2],
        "x_nm": [1530.0] * 3 + [3010.0] * 2, "y_nm": [1270.0] * 3 + [2950.0] * 2,
        "z_nm": [150.0] * 3 + [-300.0] * 2, "photons": [3000.0] * 3 + [4000.0, 1000.0],
        "bg": [100.0] * 5,
    })


def test_the_window_bound_sums_the_information_of_the_frames_an_emitter_is_on() -> None:
    cfg = Config.model_validate({"psf": {"kind": "astigmatic"}})
    truth = _blinking_truth()
    single = add_crlb_columns(truth, cfg)
    axes = ["x", "y", "z"]
    one = add_window_crlb_columns(truth, cfg, 1)
    for axis in axes:  # one frame: the single-frame bound
        np.testing.assert_allclose(one[f"crlb_window_{axis}_nm"], single[f"crlb_{axis}_nm"],
                                   rtol=1e-9)
    for context in (3, 5):
        window = add_window_crlb_columns(truth, cfg, context)
        for axis in axes:
            got = window[f"crlb_window_{axis}_nm"].to_numpy()
            alone = single[f"crlb_{axis}_nm"].to_numpy()
            # emitter 1, the same light in each frame: 1 / sqrt(frames in the window)
            frames_seen = [2, 3, 2] if context == 3 else [3, 3, 3]
            np.testing.assert_allclose(got[:3], alone[:3] / np.sqrt(frames_seen), rtol=1e-9)
            # emitter 2: its dim frame adds a little to its bright one, not a frame's worth
            assert alone[3] / np.sqrt(2) < got[3] < alone[3]
            assert got[4] == pytest.approx(got[3], rel=1e-9)
        expected_frames = [2, 3, 2, 2, 2] if context == 3 else [3, 3, 3, 2, 2]
        assert window["window_frames"].tolist() == expected_frames


def test_the_window_bound_marginalises_each_frames_photons_and_background() -> None:
    # Emitter 2 of _blinking_truth: 4000 then 1000 photons. Its window bound, built here from
    # the two frames' Fisher matrices with numpy, drops each frame's photons and background
    # (Schur complement) before summing; summing the whole matrices would share them.
    cfg = Config.model_validate({"psf": {"kind": "astigmatic"}})
    truth = _blinking_truth()
    window = add_window_crlb_columns(truth, cfg, 3)
    psf = psf_from_config(cfg.psf, cfg.emitters.z_range_nm)
    info = fisher_information(psf, t(-300, -300), t(4000, 1000), t(100, 100),
                              dx_px=t(-0.4, -0.4), dy_px=t(0, 0),
                              noise=NoiseModel.from_camera(cfg.camera)).numpy()
    marginal = [m[:3, :3] - m[:3, 3:] @ np.linalg.solve(m[3:, 3:], m[3:, :3]) for m in info]
    expected = np.sqrt(np.diag(np.linalg.inv(marginal[0] + marginal[1])))
    got = window.loc[3, ["crlb_window_x_nm", "crlb_window_y_nm", "crlb_window_z_nm"]]
    np.testing.assert_allclose(got.to_numpy(float), expected * [100, 100, 1], rtol=1e-9)
    shared = np.sqrt(np.diag(np.linalg.inv(info[0] + info[1]))[:3])
    assert not np.allclose(expected, shared, rtol=1e-3)


def test_the_window_bound_of_a_2d_psf_leaves_z_empty() -> None:
    cfg = Config.model_validate({"psf": {"kind": "gaussian"}})
    truth = _blinking_truth()
    single = add_crlb_columns(truth, cfg)
    window = add_window_crlb_columns(truth, cfg, 3)
    np.testing.assert_allclose(window["crlb_window_x_nm"][:3],
                               single["crlb_x_nm"][:3] / np.sqrt([2, 3, 2]), rtol=1e-9)
    assert window["crlb_window_z_nm"].isna().all()


def test_the_window_bound_refuses_what_it_cannot_mean() -> None:
    cfg = Config.model_validate({"psf": {"kind": "astigmatic"}})
    truth = _blinking_truth()
    with pytest.raises(ValueError, match="odd"):
        add_window_crlb_columns(truth, cfg, 4)
    twice = pd.concat([truth, truth.iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match="twice in one frame"):
        add_window_crlb_columns(twice, cfg, 3)
    with pytest.raises(ValueError, match="missing: id"):
        add_window_crlb_columns(truth.drop(columns="id"), cfg, 3)
    empty = add_window_crlb_columns(truth.iloc[:0], cfg, 3)
    assert len(empty) == 0 and {"crlb_window_z_nm", "window_frames"} <= set(empty)
    per_row = truth.assign(id=range(len(truth)))  # ids that number rows, not emitters
    with pytest.warns(DenselocWarning, match="per row rather than per emitter"):
        add_window_crlb_columns(per_row, cfg, 3)


def test_crowded_bound_of_a_lone_emitter_is_the_single_emitter_bound() -> None:
    # Same pixels (a frame the size of the patch) and the same parameters: the same bound.
    cfg = Config()  # astigmatic Gaussian PSF, EMCCD camera
    psf = psf_from_config(cfg.psf, cfg.emitters.z_range_nm)
    size = psf.default_patch_size()
    truth = emitters(size // 2 + 0.2, size // 2 - 0.3, photons=2500.0, z_nm=-230.0)
    out = add_crowded_bounds(truth, cfg, frame_shape=(size, size), bg_photons=40.0)
    single = add_crlb_columns(truth, cfg, bg_photons=40.0)
    for axis in "xyz":
        np.testing.assert_allclose(out[f"crlb_crowded_{axis}_nm"], single[f"crlb_{axis}_nm"],
                                   rtol=1e-9)
    # Detection SNR: the photons' bound with the position known, background still fitted.
    info = fisher_information(psf, t(-230.0), t(2500.0), t(40.0), dx_px=t(0.2),
                              dy_px=t(-0.3), noise=NoiseModel.from_camera(cfg.camera))[0]
    amplitude_info = info[3, 3] - info[3, 4] ** 2 / info[4, 4]
    np.testing.assert_allclose(out["detection_snr"], 2500.0 * amplitude_info.sqrt().item(),
                               rtol=1e-9)
    np.testing.assert_allclose(out["detection_snr_known_neighbours"], out["detection_snr"],
                               rtol=1e-9)


def test_distant_emitters_keep_their_single_emitter_bounds() -> None:
    cfg = Config()
    truth = emitters([12.3, 50.1], [12.6, 47.8])
    out = add_crowded_bounds(truth, cfg, frame_shape=(64, 64), bg_photons=40.0)
    single = add_crlb_columns(truth, cfg, bg_photons=40.0)
    for axis in "xyz":
        ratio = out[f"crlb_crowded_{axis}_nm"] / single[f"crlb_{axis}_nm"]
        # A background shared by the whole frame is known a little better than per patch.
        assert ((ratio > 0.95) & (ratio <= 1.0 + 1e-9)).all(), ratio


def test_a_faint_neighbour_costs_as_much_as_a_bright_one_unless_it_is_known() -> None:
    # A neighbour 1.5 px away at 30 photons (on for a sliver of the frame): fitted, its place
    # spans the same directions as at 5000 photons, and the bright emitter's bounds are many
    # times its lone ones; known (below the floor), they are the lone ones, but for its light.
    cfg = Config()
    pair = pd.concat([emitters(30.0, 30.0, photons=5000.0), emitters(31.5, 30.3, photons=30.0)],
                     ignore_index=True)
    lone = add_crowded_bounds(pair.iloc[:1], cfg, frame_shape=(64, 64), bg_photons=40.0)
    exact = add_crowded_bounds(pair, cfg, frame_shape=(64, 64), bg_photons=40.0)
    floored = add_crowded_bounds(pair, cfg, frame_shape=(64, 64), bg_photons=40.0,
                                 known_below_photons=500.0)
    for axis in "xyz":
        column = f"crlb_crowded_{axis}_nm"
        assert exact[column][0] > 2.0 * lone[column][0]
        assert floored[column][0] == pytest.approx(lone[column][0], rel=0.02)
        assert floored[column][0] >= lone[column][0]  # its light is noise
        # The faint one's own bounds fit its own parameters: here, with nothing else known,
        # the exact ones.
        assert floored[column][1] == pytest.approx(exact[column][1], rel=1e-9)
    assert exact["detection_snr"][0] < 0.5 * lone["detection_snr"][0]
    assert floored["detection_snr"][0] == pytest.approx(lone["detection_snr"][0], rel=0.02)
    # A frame of faint emitters alone still gets their own bounds.
    alone = add_crowded_bounds(pair.iloc[1:], cfg, frame_shape=(64, 64), bg_photons=40.0,
                               known_below_photons=500.0)
    assert np.isfinite(alone["crlb_crowded_x_nm"]).all()
    with pytest.raises(ValueError, match="known_below_photons"):
        add_crowded_bounds(pair, cfg, frame_shape=(64, 64), known_below_photons=float("nan"))


def _on_in(frames, id_, x_px, y_px, photons=3000.0, z_nm=150.0) -> pd.DataFrame:
    """One emitter (`id_`) at one place, on in `frames` with `photons` (one or one per frame)."""
    frames = list(frames)
    rows = emitters([x_px] * len(frames), [y_px] * len(frames), photons=photons, z_nm=z_nm)
    return rows.assign(frame=frames, id=id_)


def test_the_crowded_window_bound_of_one_frame_is_the_crowded_bound() -> None:
    cfg = Config()
    rng = np.random.default_rng(3)
    truth = pd.concat([emitters(rng.uniform(5, 27, 12), rng.uniform(5, 27, 12),
                                photons=rng.uniform(200, 6000, 12), frame=f) for f in (0, 1)],
                      ignore_index=True)
    truth["id"] = np.arange(len(truth))
    crowded = add_crowded_bounds(truth, cfg, frame_shape=(32, 32), bg_photons=40.0,
                                 known_below_photons=500.0)
    window = add_crowded_window_bounds(truth, cfg, 1, frame_shape=(32, 32), bg_photons=40.0,
                                       known_below_photons=500.0)
    fitted = truth["photons"] >= 500.0
    for axis in "xyz":
        np.testing.assert_allclose(window[f"crlb_crowded_window_{axis}_nm"][fitted],
                                   crowded[f"crlb_crowded_{axis}_nm"][fitted], rtol=1e-7)
        assert window[f"crlb_crowded_window_{axis}_nm"][~fitted].isna().all()


def test_the_crowded_window_bound_pools_the_frames_and_counts_the_neighbours() -> None:
    cfg = Config()
    kwargs = dict(frame_shape=(64, 64), bg_photons=40.0)
    lone = _on_in([0, 1, 2], 1, 30.0, 30.0)
    alone = add_crowded_window_bounds(lone, cfg, 3, **kwargs)
    one_frame = add_crowded_bounds(lone, cfg, **kwargs)
    pooled = add_window_crlb_columns(lone, cfg, 3, **kwargs)
    for axis in "xyz":
        column = alone[f"crlb_crowded_window_{axis}_nm"]
        # Three frames of the same light: the bound of one over sqrt(3), in the middle frame.
        assert column[1] == pytest.approx(one_frame[f"crlb_crowded_{axis}_nm"][1] / math.sqrt(3),
                                          rel=1e-9)
        # The first frame's window lacks frame -1: two frames.
        assert column[0] == pytest.approx(one_frame[f"crlb_crowded_{axis}_nm"][0] / math.sqrt(2),
                                          rel=1e-9)
        # The single-emitter window bound, to the background that the whole frame knows better.
        assert 0.95 < column[1] / pooled[f"crlb_window_{axis}_nm"][1] <= 1.0 + 1e-9
    # A bright neighbour 1.5 px away, on in the middle frame only.
    pair = pd.concat([lone, _on_in([1], 2, 31.5, 30.3, photons=5000.0)], ignore_index=True)
    crowded = add_crowded_bounds(pair, cfg, **kwargs)
    window = add_crowded_window_bounds(pair, cfg, 3, **kwargs)
    for axis in "xyz":
        column = f"crlb_crowded_window_{axis}_nm"
        # Alone in frames 0 and 2, emitter 1 loses little to the neighbour...
        assert alone[column][1] <= window[column][1] < 1.3 * alone[column][1]
        # ... far less than from its middle frame alone,
        assert window[column][1] < 0.5 * crowded[f"crlb_crowded_{axis}_nm"][1]
        # and its place, known from the other frames, helps the neighbour's.
        assert window[column][3] < 0.9 * crowded[f"crlb_crowded_{axis}_nm"][3]
    # A third frame away from the middle one is outside a three-frame window.
    far = pd.concat([pair, _on_in([3], 2, 31.5, 30.3, photons=5000.0)], ignore_index=True)
    assert add_crowded_window_bounds(far, cfg, 3, **kwargs)["crlb_crowded_window_x_nm"][1] \
        == pytest.approx(window["crlb_crowded_window_x_nm"][1], rel=1e-12)


def test_the_crowded_window_bound_knows_only_emitters_faint_in_every_frame() -> None:
    cfg = Config()
    kwargs = dict(frame_shape=(64, 64), bg_photons=40.0, known_below_photons=500.0)
    lone = _on_in([0, 1, 2], 1, 30.0, 30.0)
    faint = pd.concat([lone, _on_in([0, 1, 2], 2, 31.5, 30.3, photons=30.0)],
                      ignore_index=True)
    alone = add_crowded_window_bounds(lone, cfg, 3, **kwargs)
    out = add_crowded_window_bounds(faint, cfg, 3, **kwargs)
    exact = add_crowded_window_bounds(faint, cfg, 3, **{**kwargs, "known_below_photons": 0.0})
    for axis in "xyz":
        column = f"crlb_crowded_window_{axis}_nm"
        assert out[column][:3].to_numpy() == pytest.approx(alone[column].to_numpy(), rel=0.02)
        assert (out[column][:3].to_numpy() >= alone[column].to_numpy()).all()  # its light
        assert out[column][3:].isna().all()  # known: no bound
        assert exact[column][1] > 2.0 * out[column][1]  # fitted, its place costs fully
    # A sliver (30 photons) of an emitter bright in the frame before is fitted, not known:
    # its place is pinned by that frame, so it costs its neighbour far less than a sliver
    # of another emitter, whose place that frame alone must give.
    sliver = pd.concat([lone, _on_in([0, 1], 2, 31.5, 30.3, photons=[5000.0, 30.0])],
                       ignore_index=True)
    out = add_crowded_window_bounds(sliver, cfg, 3, **kwargs)
    assert np.isfinite(out["crlb_crowded_window_x_nm"]).all()
    exact = add_crowded_window_bounds(sliver, cfg, 3, **{**kwargs, "known_below_photons": 0.0})
    pinned = [0, 1, 3, 4]  # rows whose window holds the bright frame 0 (not frame 2's)
    np.testing.assert_allclose(out["crlb_crowded_window_x_nm"][pinned],
                               exact["crlb_crowded_window_x_nm"][pinned], rtol=1e-9)
    other = sliver.copy()
    other.loc[4, "id"] = 3
    other = add_crowded_window_bounds(other, cfg, 3, **{**kwargs, "known_below_photons": 0.0})
    without = add_crowded_window_bounds(sliver.iloc[:4], cfg, 3, **kwargs)
    x = "crlb_crowded_window_x_nm"
    assert out[x][0] < 0.5 * other[x][0]  # window of frames 0 and 1
    assert without[x][1] < out[x][1] < other[x][1]  # frames 0-2


def test_the_crowded_window_bound_follows_ids_not_row_order_and_skips_gaps() -> None:
    cfg = Config()
    kwargs = dict(frame_shape=(64, 64), bg_photons=40.0)
    truth = pd.concat([
        _on_in([0, 1, 2, 4, 5], 7, 30.0, 30.0),  # off in frame 3
        _on_in([1, 2, 3], 3, 31.2, 30.5, photons=4000.0),
        _on_in([0, 5], 9, 12.0, 40.0, photons=2000.0),
    ], ignore_index=True).assign(row=lambda d: np.arange(len(d)))
    out = add_crowded_window_bounds(truth, cfg, 3, **kwargs)
    shuffled = truth.sample(frac=1.0, random_state=1)
    shuffled.index = np.random.default_rng(5).permutation(1000)[:len(truth)]  # not positions
    again = add_crowded_window_bounds(shuffled, cfg, 3, **kwargs).sort_values("row")
    columns = [f"crlb_crowded_window_{axis}_nm" for axis in "xyz"]
    np.testing.assert_allclose(again[columns].to_numpy(), out[columns].to_numpy(), rtol=1e-12)
    # Emitter 7 in frame 4: its window (3-5) has it in frame 5 only besides, with emitter 9
    # far away: the lone crowded bound of two frames.
    pair = truth[(truth["id"] == 7) & truth["frame"].isin([4, 5])]
    lone = add_crowded_bounds(pair, cfg, **kwargs)
    row = truth.index[(truth["id"] == 7) & (truth["frame"] == 4)][0]
    assert out["crlb_crowded_window_x_nm"][row] == pytest.approx(
        lone["crlb_crowded_x_nm"].iloc[0] / math.sqrt(2), rel=0.01)
    # A 2D PSF: no z; nothing to bound: no rows; a window of faint emitters only: NaN.
    flat = Config.model_validate({"psf": {"kind": "gaussian", "sigma_px": 1.3}})
    out2d = add_crowded_window_bounds(truth, flat, 3, **kwargs)
    assert out2d["crlb_crowded_window_z_nm"].isna().all()
    assert (out2d["crlb_crowded_window_x_nm"] > 0).all()
    assert len(add_crowded_window_bounds(truth.iloc[:0], cfg, 3, **kwargs)) == 0
    faint = add_crowded_window_bounds(truth, cfg, 3, **kwargs, known_below_photons=1e6)
    assert faint[columns].isna().all().all()


def test_the_crowded_window_bound_refuses_bad_input_and_warns_when_singular() -> None:
    cfg = Config()
    truth = _on_in([0, 1, 2], 1, 30.0, 30.0)
    kwargs = dict(frame_shape=(64, 64), bg_photons=40.0)
    with pytest.raises(ValueError, match="odd"):
        add_crowded_window_bounds(truth, cfg, 2, **kwargs)
    with pytest.raises(ValueError, match="missing: id"):
        add_crowded_window_bounds(truth.drop(columns="id"), cfg, 3, **kwargs)
    with pytest.raises(ValueError, match="twice in one frame"):
        add_crowded_window_bounds(pd.concat([truth, truth.iloc[:1]]), cfg, 3, **kwargs)
    with pytest.raises(ValueError, match="known_below_photons"):
        add_crowded_window_bounds(truth, cfg, 3, **kwargs, known_below_photons=float("nan"))
    # A second emitter at the same place in frame 2: the windows of frames 1 and 2 (centre)
    # are singular, frame 0's (frames 0 and 1) is not.
    twin = pd.concat([truth, _on_in([2], 2, 30.0, 30.0)], ignore_index=True)
    with pytest.warns(DenselocWarning, match=r"2 windows centred on frame\(s\) \(1, 2\)"):
        out = add_crowded_window_bounds(twin, cfg, 3, **kwargs)
    assert np.isfinite(out["crlb_crowded_window_x_nm"][0])
    assert out["crlb_crowded_window_x_nm"][1:].isna().all()


def test_an_emitter_at_the_frame_edge_gets_the_bound_of_the_light_that_reaches_it() -> None:
    cfg = Config()
    truth = emitters([0.1, 30.2, 30.0], [30.4, 63.0, 30.0])  # left edge, bottom edge, inside
    crowded = add_crowded_bounds(truth, cfg, frame_shape=(64, 64), bg_photons=40.0)
    edge = add_crlb_columns(truth, cfg, bg_photons=40.0, frame_shape=(64, 64))
    free = add_crlb_columns(truth, cfg, bg_photons=40.0)
    for axis in "xyz":
        # The crowded bound counts only the frame's pixels too (and knows the background a
        # little better, from the whole frame).
        ratio = crowded[f"crlb_crowded_{axis}_nm"] / edge[f"crlb_{axis}_nm"]
        assert ((ratio > 0.95) & (ratio <= 1.0 + 1e-9)).all(), (axis, ratio)
    # Across the edge half the light is lost, and with it much of the position information.
    assert edge["crlb_x_nm"][0] > 1.3 * free["crlb_x_nm"][0]
    assert edge["crlb_y_nm"][1] > 1.3 * free["crlb_y_nm"][1]
    for axis in "xyz":  # far from the edges nothing changes
        assert edge[f"crlb_{axis}_nm"][2] == pytest.approx(free[f"crlb_{axis}_nm"][2], rel=1e-12)


def test_the_bound_uses_an_scmos_variance_map_not_read_noise_e(tmp_path) -> None:
    variance_adu2 = np.full((8, 8), 12.0)
    variance_adu2[0, 0] = 1e4  # a hot pixel does not move the median
    np.save(tmp_path / "var.npy", variance_adu2)
    camera = Config().with_camera_preset("scmos").camera.model_copy(
        update={"variance_map": tmp_path / "var.npy", "read_noise_e": 74.4})
    noise = NoiseModel.from_camera(camera)
    assert noise.read_var_e2 == pytest.approx(12.0 * camera.e_per_adu**2)


def test_a_read_noise_map_is_read_at_each_emitters_own_pixels() -> None:
    cfg = Config().with_camera_preset("scmos")
    psf = psf_from_config(cfg.psf, cfg.emitters.z_range_nm)
    size, half = psf.default_patch_size(), psf.default_patch_size() // 2
    truth = emitters([30.0, 12.0], [20.0, 45.0], z_nm=300.0)  # astigmatic: x and y differ
    scalar = NoiseModel.from_camera(cfg.camera)
    flat = torch.full((64, 64), float(scalar.read_var_e2), dtype=torch.float64)
    hot = flat.clone()
    hot[22, 33] = 1e12  # 2 rows below, 3 columns right of emitter 0: that pixel tells nothing
    kwargs = dict(bg_photons=40.0, frame_shape=(64, 64))
    same = add_crlb_columns(truth, cfg, **kwargs, noise=replace(scalar, read_var_e2=flat))
    out = add_crlb_columns(truth, cfg, **kwargs, noise=replace(scalar, read_var_e2=hot))
    reference = add_crlb_columns(truth, cfg, **kwargs)
    inside = torch.ones(1, size, size, dtype=torch.bool)
    inside[0, half + 2, half + 3] = False  # the same pixel left out, (row, column) of the patch
    without = crlb(psf, t(300.0), t(3000.0), t(40.0), noise=scalar, size=size, inside=inside)
    for col, axis in enumerate("xyz"):
        name = f"crlb_{axis}_nm"
        assert same[name].to_numpy() == pytest.approx(reference[name].to_numpy(), rel=1e-12)
        assert out[name][1] == pytest.approx(reference[name][1], rel=1e-12)  # far away
        expected = without[0, col].item() * (100.0 if axis != "z" else 1.0)
        assert out[name][0] == pytest.approx(expected, rel=1e-6)
        assert out[name][0] > reference[name][0]
    # The frame's bound reads the same map: a lone emitter's two bounds agree.
    crowded = add_crowded_bounds(truth, cfg, frame_shape=(64, 64), bg_photons=40.0,
                                 noise=replace(scalar, read_var_e2=hot))
    ratio = crowded["crlb_crowded_x_nm"] / out["crlb_x_nm"]
    assert ((ratio > 0.95) & (ratio <= 1.0 + 1e-9)).all(), ratio
    with pytest.raises(ValueError, match="needs frames of that shape"):
        add_crlb_columns(truth, cfg, bg_photons=40.0, frame_shape=(32, 64),
                         noise=replace(scalar, read_var_e2=hot))


def test_a_loaded_scmos_camera_gives_its_read_noise_per_pixel_in_electrons(tmp_path) -> None:
    variance_adu2 = np.full((8, 8), 12.0)
    variance_adu2[2, 5] = 900.0
    np.save(tmp_path / "var.npy", variance_adu2)
    config = Config().with_camera_preset("scmos").camera.model_copy(
        update={"variance_map": tmp_path / "var.npy"})
    noise = NoiseModel.from_camera(Camera.from_config(config, (8, 8)))
    expected = torch.as_tensor(variance_adu2) * config.e_per_adu**2
    torch.testing.assert_close(noise.read_var_e2, expected)
    # The shift that makes a Poisson likelihood fit: read variance (and spurious charge)
    # counted as photons.
    torch.testing.assert_close(noise.shift_photons(),
                               (config.spurious_charge_e + expected) / config.qe)
    # With a gain map the variance map (ADU^2) is converted with each pixel's own gain.
    gain = np.full((8, 8), 0.5)
    gain[2, 5] = 2.0
    np.save(tmp_path / "gain.npy", gain)
    with_gain = NoiseModel.from_camera(Camera.from_config(
        config.model_copy(update={"gain_map": tmp_path / "gain.npy"}), (8, 8)))
    torch.testing.assert_close(with_gain.read_var_e2, torch.as_tensor(variance_adu2 * gain**2))
    # A camera cut into movies has a map per movie: not a map of the frames.
    cut = Camera.from_config(config, (8, 8)).crop(torch.tensor([0, 1]), torch.tensor([0, 2]),
                                                  (4, 4))
    with pytest.raises(ValueError, match="not shape"):
        NoiseModel.from_camera(cut)


def test_the_likelihood_shift_counts_read_noise_after_the_excess_factor() -> None:
    # d = photons has variance (F (qe mu + s) + r) / qe^2 = (F / qe) (mu + (s + r / F) / qe).
    noise = NoiseModel(qe=0.8, excess_noise=2.0, read_var_e2=30.0, spurious_e=0.5)
    assert noise.shift_photons() == pytest.approx((0.5 + 30.0 / 2.0) / 0.8, rel=1e-12)


def test_neighbours_raise_the_bound_and_lower_the_detection_snr() -> None:
    cfg = Config()
    separations = [6.0, 3.0, 1.5, 0.8, 0.3]
    rows = []
    for k, sep in enumerate(separations):
        pair = emitters([30.0, 30.0 + sep], [30.2, 30.2], frame=k)
        rows.append(add_crowded_bounds(pair, cfg, frame_shape=(64, 64), bg_photons=40.0))
    first = pd.concat(rows).groupby("frame").first()
    assert np.all(np.diff(first["crlb_crowded_x_nm"]) > 0)
    assert np.all(np.diff(first["detection_snr"]) < 0)
    # Nearly coincident twins: their photons can hardly be told apart.
    assert first["detection_snr"].iloc[-1] < 0.3 * first["detection_snr"].iloc[0]
    # Knowing where the neighbour is helps, most when it is close.
    gain = first["detection_snr_known_neighbours"] / first["detection_snr"]
    assert (gain >= 1 - 1e-9).all() and gain.iloc[-1] > gain.iloc[0]
    # Frames are independent: each pair was bounded in its own frame.
    both = add_crowded_bounds(pd.concat([emitters([30.0, 36.0], [30.2, 30.2], frame=0),
                                         emitters([30.0, 30.3], [30.2, 30.2], frame=1)]),
                              cfg, frame_shape=(64, 64), bg_photons=40.0)
    np.testing.assert_allclose(both["detection_snr"].iloc[[0, 2]],
                               first["detection_snr"].iloc[[0, -1]], rtol=1e-9)


def test_a_frame_with_coincident_emitters_gets_nan_bounds_and_a_warning() -> None:
    truth = pd.concat([emitters([30.0, 30.0, 40.0], [30.2, 30.2, 30.0], frame=0),  # a twin row
                       emitters([30.0, 36.0], [30.2, 30.2], frame=1)])
    with pytest.warns(DenselocWarning, match=r"1 frame\(s\) \(0\) is singular"):
        out = add_crowded_bounds(truth, Config(), frame_shape=(64, 64), bg_photons=40.0)
    new = [c for c in out.columns if c.startswith(("crlb_crowded", "detection_snr"))]
    assert len(new) == 5 and out.iloc[:3][new].isna().all().all()
    alone = add_crowded_bounds(truth.iloc[3:], Config(), frame_shape=(64, 64), bg_photons=40.0)
    pd.testing.assert_frame_equal(out.iloc[3:][new], alone[new])  # other frames unaffected
    # A faint emitter (known to the others) on top of a bright one: only its own bounds are
    # lost, the bright one's and the frame's other emitters' stay.
    faint = pd.concat([emitters([30.0, 40.0], [30.2, 30.0]),
                       emitters(30.0, 30.2, photons=100.0)], ignore_index=True)
    with pytest.warns(DenselocWarning, match=r"1 frame\(s\) \(0\) is singular"):
        out = add_crowded_bounds(faint, Config(), frame_shape=(64, 64), bg_photons=40.0,
                                 known_below_photons=500.0)
    assert out.iloc[2][new].isna().all()
    without = add_crowded_bounds(faint.iloc[:2], Config(), frame_shape=(64, 64),
                                 bg_photons=40.0)
    assert np.isfinite(out.iloc[:2][new].to_numpy()).all()
    # Known, the faint one's light is only noise to the others.
    assert (out["crlb_crowded_x_nm"][:2] >= without["crlb_crowded_x_nm"]).all()
    assert out["crlb_crowded_x_nm"][0] < 1.05 * without["crlb_crowded_x_nm"][0]


def test_crowded_bounds_for_a_2d_psf_leave_z_empty_and_refuse_huge_frames() -> None:
    cfg = Config.model_validate({"psf": {"kind": "gaussian", "sigma_px": 1.3}})
    out = add_crowded_bounds(emitters([10.0, 20.0], [10.0, 10.0]), cfg, frame_shape=(32, 32))
    assert out["crlb_crowded_z_nm"].isna().all()
    assert (out["crlb_crowded_x_nm"] > 0).all()
    with pytest.raises(ValueError, match="smaller frames"):
        add_crowded_bounds(emitters([10.0], [10.0]), cfg, frame_shape=(32, 32),
                           max_elements=1000)


def test_crowded_bounds_match_an_independent_finite_difference_fisher_matrix() -> None:
    # Three overlapping emitters (one cut by the frame's edge) in frame 1, one in frame 0,
    # rows out of order; the Jacobian by central differences of the rendered frame.
    from denseloc.evaluate.crlb import information_from_jacobian
    from denseloc.sim.psf import render_patches

    cfg = Config()
    psf = psf_from_config(cfg.psf, cfg.emitters.z_range_nm)
    noise = NoiseModel.from_camera(cfg.camera)
    shape, bg = (24, 20), 30.0
    truth = pd.concat([emitters([8.2, 9.9, 0.3], [10.2, 11.6, 9.7], frame=1),
                       emitters([12.2], [5.3], frame=0)], ignore_index=True)
    truth["z_nm"] = [-310.0, 120.0, 40.0, 250.0]
    truth["photons"] = [2500.0, 1200.0, 4000.0, 3000.0]
    out = add_crowded_bounds(truth.iloc[[2, 0, 3, 1]], cfg, frame_shape=shape, bg_photons=bg)
    out = out.sort_index()

    frame = truth[truth["frame"] == 1]
    theta = np.concatenate([np.stack([frame["x_nm"] / 100 - 0.5, frame["y_nm"] / 100 - 0.5,
                                      frame["z_nm"], frame["photons"]], axis=1).ravel(), [bg]])

    def expected(th: np.ndarray) -> torch.Tensor:
        p = torch.tensor(th[:-1]).reshape(-1, 4)
        image = render_patches(psf, torch.zeros(len(p), dtype=torch.long), p[:, 0], p[:, 1],
                               p[:, 2], p[:, 3], (1, *shape))
        return (image + th[-1]).flatten()

    steps = [*np.tile([1e-4, 1e-4, 1e-2, 1e-2], 3).tolist(), 1e-3]
    jac = torch.stack([(expected(theta + h * e) - expected(theta - h * e)) / (2 * h)
                       for h, e in zip(steps, np.eye(len(theta)), strict=True)])
    info = information_from_jacobian(expected(theta)[None], jac[None], noise)[0]
    cov = torch.linalg.inv(info).numpy()
    std = np.sqrt(np.diag(cov))[:-1].reshape(3, 4)
    got = out[out["frame"] == 1]
    np.testing.assert_allclose(got["crlb_crowded_x_nm"], std[:, 0] * 100, rtol=1e-5)
    np.testing.assert_allclose(got["crlb_crowded_y_nm"], std[:, 1] * 100, rtol=1e-5)
    np.testing.assert_allclose(got["crlb_crowded_z_nm"], std[:, 2], rtol=1e-5)
    info = info.numpy()
    for k in range(3):
        rest = [i for i in range(13) if i not in (4 * k, 4 * k + 1, 4 * k + 2)]
        var = np.linalg.inv(info[np.ix_(rest, rest)])[rest.index(4 * k + 3)][rest.index(4 * k + 3)]
        np.testing.assert_allclose(got["detection_snr"].iloc[k],
                                   frame["photons"].iloc[k] / np.sqrt(var), rtol=1e-5)
        linear = [3, 7, 11, 12]
        var = np.linalg.inv(info[np.ix_(linear, linear)])[k, k]
        np.testing.assert_allclose(got["detection_snr_known_neighbours"].iloc[k],
                                   frame["photons"].iloc[k] / np.sqrt(var), rtol=1e-5)
    # The emitter alone in frame 0 is untouched by the others.
    alone = add_crowded_bounds(truth.iloc[[3]], cfg, frame_shape=shape, bg_photons=bg)
    np.testing.assert_allclose(out.loc[3, "detection_snr"], alone["detection_snr"].iloc[0],
                               rtol=1e-12)


def test_a_variance_that_rounding_made_negative_is_nan_not_zero() -> None:
    from denseloc.evaluate.crlb import std_from_information

    # Not singular, but indefinite, as rounding can leave a nearly singular matrix: the
    # inverse's diagonal is -1/3 for x and y. A bound of 0 nm there would be a lie.
    info = torch.eye(5, dtype=torch.float64)
    info[:2, :2] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    std = std_from_information(info[None], is_3d=True)[0]
    assert torch.isnan(std[:2]).all()
    torch.testing.assert_close(std[2:], torch.ones(3, dtype=torch.float64))
