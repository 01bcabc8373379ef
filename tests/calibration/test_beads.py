"""Tests of the bead z-stack calibration: simulated beads with a known PSF, the real EPFL 2016
bead stacks, simulation with the calibrated PSF, and clear errors for bad input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from scipy.special import erf

import denseloc
from denseloc.calibration import load_psf
from denseloc.calibration.beads import (
    FALLBACK_Z_SMOOTHING_NM,
    BeadCalibration,
    _choose_z_smoothing,
    _leave_one_out,
    _smooth_z,
    calibrate_bead_file,
    calibrate_beads,
)
from denseloc.calibration.spline import CubicSplinePSF
from denseloc.config import CameraConfig, Config
from denseloc.errors import DenselocError, DenselocWarning, InputFileError
from denseloc.sim.camera import Camera
from denseloc.sim.emitters import Emitters
from denseloc.sim.psf import PSF, AstigmaticPSF, GaussianPSF, render_patches
from denseloc.sim.simulator import Simulator

CAMERA = CameraConfig()  # the EMCCD of the EPFL 2016 challenge (the defaults)
TRUE_PSF = AstigmaticPSF(
    sigma0_px=(1.3, 1.4),
    focus_nm=(-200.0, 250.0),
    depth_nm=(400.0, 450.0),
    a3=(0.05, -0.05),
    a4=(0.02, 0.01),
)
Z_NM = np.arange(-750.0, 751.0, 10.0)  # 151 slices, z = 0 at slice 75, as the EPFL stacks
ROI = 25


@dataclass(frozen=True)
class HaloPSF:
    """An astigmatic core plus a wide, z-independent halo that reaches beyond the ROI."""

    core: AstigmaticPSF
    halo_weight: float = 0.2
    halo_sigma_px: float = 10.0
    is_3d: bool = True

    def evaluate(self, dx_px, dy_px, z_nm, size, *, derivatives=False):
        halo = GaussianPSF(self.halo_sigma_px).evaluate(dx_px, dy_px, z_nm, size)
        core = self.core.evaluate(dx_px, dy_px, z_nm, size)
        return (1 - self.halo_weight) * core + self.halo_weight * halo

    def default_patch_size(self) -> int:
        return 81


def simulate_beads(
    x_px: np.ndarray,
    y_px: np.ndarray,
    *,
    z_nm: np.ndarray = Z_NM,
    z_offset_nm: np.ndarray | None = None,
    photons: float | np.ndarray = 40000.0,
    bg_photons: float = 10.0,
    shape: tuple[int, int] = (120, 120),
    seed: int = 0,
    psf: PSF = TRUE_PSF,
    patch_px: int = 31,
    brightness: np.ndarray | None = None,
) -> np.ndarray:
    """A bead z-stack in ADU: slice t shows bead i as an emitter at z_nm[t] + z_offset_nm[i].

    `brightness` (T,) scales every bead's photons per slice (bleaching, flicker).
    """
    n, t = len(x_px), len(z_nm)
    offsets = np.zeros(n) if z_offset_nm is None else np.asarray(z_offset_nm, dtype=np.float64)
    per_bead = np.broadcast_to(np.asarray(photons, dtype=np.float64), (n,))
    scale = np.ones(t) if brightness is None else np.asarray(brightness, dtype=np.float64)
    stack = torch.full((t, *shape), float(bg_photons), dtype=torch.float64)
    render_patches(
        psf,
        torch.arange(t).repeat_interleave(n),
        torch.tensor(np.tile(x_px, t), dtype=torch.float64),
        torch.tensor(np.tile(y_px, t), dtype=torch.float64),
        torch.tensor((z_nm[:, None] + offsets[None, :]).ravel()),
        torch.tensor((scale[:, None] * per_bead[None, :]).ravel()),
        stack.shape,
        size=patch_px,
        out=stack,
    )
    generator = torch.Generator().manual_seed(seed)
    adu = Camera.from_config(CAMERA, shape).photons_to_adu(stack, generator)
    return adu.numpy().astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Simulated beads with a known PSF
# --------------------------------------------------------------------------------------------

rng = np.random.default_rng(1)
GRID = np.array([(25, 25), (60, 25), (95, 25), (25, 60), (60, 60), (95, 95), (25, 95)], float)
SIM_X = GRID[:, 0] + rng.uniform(-0.5, 0.5, len(GRID))
SIM_Y = GRID[:, 1] + rng.uniform(-0.5, 0.5, len(GRID))
SIM_Z_OFFSET = np.array([-30.0, 20.0, 0.0, 15.0, -10.0, 25.0, -20.0])  # mean 0: the convention
# 40 % bleaching over the stack and a 3 % slice-to-slice flicker, as in real bead stacks
SIM_BRIGHTNESS = (1 - 0.4 * np.arange(len(Z_NM)) / len(Z_NM)) * (
    1 + 0.03 * rng.standard_normal(len(Z_NM))
)


@pytest.fixture(scope="module")
def sim_calibration() -> BeadCalibration:
    stack = simulate_beads(
        SIM_X, SIM_Y, z_offset_nm=SIM_Z_OFFSET, brightness=SIM_BRIGHTNESS, seed=3
    )
    return calibrate_beads(stack, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


def _random_emitters(n: int, seed: int, z_max_nm: float = 740.0):
    g = torch.Generator().manual_seed(seed)
    dx = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    dy = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    z = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * z_max_nm
    return dx, dy, z


def test_simulated_beads_recover_the_true_psf(sim_calibration: BeadCalibration) -> None:
    cal = sim_calibration
    assert cal.n_beads_used == 7 and cal.n_beads_rejected == 0
    assert isinstance(cal.psf, CubicSplinePSF) and cal.psf.shape == (150, ROI - 1, ROI - 1)
    assert cal.reference_slice == 75 and cal.z_nm[75] == 0
    dx, dy, z = _random_emitters(1000, seed=5)
    fitted = cal.psf.evaluate(dx, dy, z, ROI)
    truth = TRUE_PSF.evaluate(dx, dy, z, ROI)
    error = (fitted - truth).abs()
    # noise-limited (it halves with 4x the photons); over seeds 0-5 measured 0.035-0.056
    # relative to each image's own peak (worst at the defocused ends), 0.018-0.023 relative to
    # the in-focus peak
    assert (error.amax(dim=(1, 2)) / truth.amax(dim=(1, 2))).max() < 0.08
    assert error.max() / truth.max() < 0.03
    # Gaussian PSF: all light within the ROI; bleaching and flicker divided out per plane
    np.testing.assert_allclose(cal.encircled_fraction, 1.0, atol=1e-9)
    assert cal.relative_residual < 0.03


def _z_derivative_error(psf: PSF) -> float:
    """Relative RMS error of d psf / dz against the true PSF's, over emitters in +-600 nm."""
    dx, dy, z = _random_emitters(500, seed=8, z_max_nm=600.0)
    _, d_fit = psf.evaluate(dx, dy, z, ROI, derivatives=True)
    _, d_true = TRUE_PSF.evaluate(dx, dy, z, ROI, derivatives=True)
    return float((d_fit[:, 2] - d_true[:, 2]).norm() / d_true[:, 2].norm())


def test_cross_validated_z_smoothing_recovers_the_z_derivative(
    sim_calibration: BeadCalibration,
) -> None:
    """The length left-out beads choose estimates the PSF's z derivative (what z is fitted
    from, and what the Cramer-Rao bound in z comes from) better than none or far more."""
    cal = sim_calibration
    assert 0.0 < cal.z_smoothing_nm < max(cal.z_smoothing_scores)

    def refit(length_nm: float) -> CubicSplinePSF:
        smoothed = _smooth_z(cal.measured, length_nm, 10.0)
        return CubicSplinePSF.from_stack(smoothed, 10.0, cal.reference_slice)

    errors = {length: _z_derivative_error(refit(length)) for length in (0.0, 60.0, 1000.0)}
    chosen = _z_derivative_error(cal.psf)
    # measured: 450 nm chosen, error 0.077; none 2.1, 60 nm 0.64, 1000 nm 0.17
    assert chosen < 0.15 and chosen < 0.5 * errors[60.0] and chosen < errors[1000.0]


def _noisy_beads(truth: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """`n` copies of `truth` (T, S, S) with independent Gaussian noise, planes at unit sum."""
    rng = np.random.default_rng(seed)
    beads = truth[None] + noise * rng.standard_normal((n, *truth.shape))
    return beads / beads.sum(axis=(2, 3), keepdims=True)


def test_the_smoothing_follows_how_fast_the_psf_changes_with_z() -> None:
    t = np.arange(101)[:, None, None]
    c = np.arange(7)[None, None, :] - 3
    still = np.exp(-(c**2) / 4.0) * np.exp(-(c.transpose(0, 2, 1) ** 2) / 4.0) + 0 * t
    width = 4.0 * (1 + 0.5 * np.sin(2 * np.pi * t / 6.0))  # a period of 6 planes
    wobbly = np.exp(-(c**2 + c.transpose(0, 2, 1) ** 2) / width)
    valid = np.ones((5, 101), dtype=bool)
    fraction = np.ones(101)
    still_length, scores = _choose_z_smoothing(
        _noisy_beads(still, 5, 0.02, seed=0), valid, fraction, 10.0
    )
    assert still_length == max(scores) > 900.0  # constant in z: smooth all the noise away
    length, _ = _choose_z_smoothing(_noisy_beads(wobbly, 5, 0.02, seed=0), valid, fraction, 10.0)
    assert length <= 50.0  # the same noise, but structure on a 60 nm scale to keep


def test_a_left_out_bead_never_predicts_itself() -> None:
    """What predicts a left-out bead does not depend on it: planes only it has are copies of
    the others' nearest plane, so smoothing cannot carry the bead into its own prediction."""
    beads = _noisy_beads(np.ones((40, 5, 5)), 3, 0.05, seed=1)
    valid = np.ones((3, 40), dtype=bool)
    valid[1:, 30:] = False  # beads 1 and 2 end at plane 29; bead 0 goes on
    others, scored = next(_leave_one_out(beads, valid))
    changed = beads.copy()
    changed[0] *= 50.0
    others_changed, scored_changed = next(_leave_one_out(changed, valid))
    np.testing.assert_allclose(others_changed, others, rtol=1e-10)  # (rounding: total - own)
    np.testing.assert_array_equal(scored, np.arange(40) < 30)
    np.testing.assert_array_equal(scored_changed, scored)
    np.testing.assert_array_equal(others[30:], np.broadcast_to(others[29], (10, 5, 5)))
    np.testing.assert_allclose(others[:30], beads[1:, :30].mean(axis=0))


def test_z_smoothing_without_enough_beads_or_slices() -> None:
    truth = np.ones((30, 5, 5))
    fraction = np.ones(30)
    one = _noisy_beads(truth, 1, 0.05, seed=2)
    assert _choose_z_smoothing(one, np.ones((1, 30), bool), fraction, 10.0) == (
        FALLBACK_Z_SMOOTHING_NM, {})
    two = _noisy_beads(truth, 2, 0.05, seed=2)
    length, scores = _choose_z_smoothing(two, np.ones((2, 30), bool), fraction, 10.0)
    assert scores and length == max(scores)  # each predicts the other
    short = _noisy_beads(np.ones((4, 5, 5)), 4, 0.05, seed=2)
    assert _choose_z_smoothing(short, np.ones((4, 4), bool), np.ones(4), 10.0) == (0.0, {})


def test_fewer_than_two_beads_fall_back_to_a_fixed_z_smoothing() -> None:
    stack = simulate_beads(SIM_X[:1], SIM_Y[:1], seed=4)
    cal = calibrate_beads(stack, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)
    assert cal.n_beads_used == 1
    assert cal.z_smoothing_nm == FALLBACK_Z_SMOOTHING_NM and cal.z_smoothing_scores == {}
    assert any("not cross-validated" in note for note in cal.notes)


def test_a_stack_acquired_with_the_focus_moving_up_needs_a_negative_step() -> None:
    # Focus up by 10 nm per slice: the beads fall 10 nm relative to the focal plane.
    stack = simulate_beads(SIM_X[:3], SIM_Y[:3], z_nm=Z_NM[::-1].copy(), seed=4)
    falling = calibrate_beads(stack, z_step_nm=-10.0, pixel_size_nm=100.0, camera=CAMERA,
                              z_range_nm=(750.0, -750.0))
    assert falling.z_step_nm == -10.0 and falling.reference_slice == 75
    assert falling.z_nm[0] == -750 and falling.z_nm[-1] == 750  # the PSF's z rises
    dx, dy, z = _random_emitters(500, seed=6)
    truth = TRUE_PSF.evaluate(dx, dy, z, ROI)

    def worst_error(cal: BeadCalibration) -> float:
        error = (cal.psf.evaluate(dx, dy, z, ROI) - truth).abs()
        return float((error.amax(dim=(1, 2)) / truth.amax(dim=(1, 2))).max())

    assert worst_error(falling) < 0.08
    # An off-centre z = 0: slices from +600 down to -900 nm, z = 0 at slice 60.
    part = simulate_beads(SIM_X[:3], SIM_Y[:3], z_nm=np.arange(600.0, -901.0, -10.0), seed=5)
    off = calibrate_beads(part, z_step_nm=-10.0, pixel_size_nm=100.0, camera=CAMERA,
                          z_range_nm=(600.0, -900.0))
    assert off.reference_slice == 60 and off.psf.z_range_nm == pytest.approx((-900.0, 600.0))
    inside = (z > -880) & (z < 580)
    error = (off.psf.evaluate(dx, dy, z, ROI) - truth).abs()[inside]
    assert (error.amax(dim=(1, 2)) / truth[inside].amax(dim=(1, 2))).max() < 0.1
    # Read with a positive step, the same stack gives the PSF mirrored in z.
    mirrored = calibrate_beads(stack, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)
    assert worst_error(mirrored) > 0.3  # 5x the error of the right sign
    with pytest.raises(DenselocError, match="falling with a negative one"):
        calibrate_beads(stack, z_step_nm=-10.0, pixel_size_nm=100.0, camera=CAMERA,
                        z_range_nm=(-750.0, 750.0))


def test_simulated_beads_recover_the_huang_parameters(sim_calibration: BeadCalibration) -> None:
    fit = sim_calibration.astigmatic
    assert fit is not None
    c = fit.config
    np.testing.assert_allclose(c.focus_nm, TRUE_PSF.focus_nm, atol=10.0)  # measured < 2 nm
    np.testing.assert_allclose(c.sigma0_px, TRUE_PSF.sigma0_px, rtol=0.02)  # measured 0.3 %
    np.testing.assert_allclose(c.depth_nm, TRUE_PSF.depth_nm, rtol=0.03)  # measured 0.6 %


def test_registration_finds_sub_pixel_positions_and_z_offsets(
    sim_calibration: BeadCalibration,
) -> None:
    found = np.array([[b.x_px, b.y_px, b.z_offset_nm] for b in sim_calibration.beads])
    nearest = [int(np.argmin((SIM_X - x) ** 2 + (SIM_Y - y) ** 2)) for x, y, _ in found]
    assert sorted(nearest) == list(range(len(SIM_X)))
    truth = np.stack([SIM_X[nearest], SIM_Y[nearest], SIM_Z_OFFSET[nearest]], axis=1)
    np.testing.assert_allclose(found[:, :2], truth[:, :2], atol=0.03)  # measured < 0.01 px
    np.testing.assert_allclose(found[:, 2], truth[:, 2], atol=5.0)  # measured < 2.5 nm


def test_encircled_fraction_keeps_light_beyond_the_roi_and_ignores_bleaching() -> None:
    psf = HaloPSF(TRUE_PSF)
    z_nm = np.arange(-500.0, 501.0, 20.0)
    x = np.array([37.3, 112.2, 37.8, 112.5])
    y = np.array([37.6, 37.9, 111.6, 112.1])
    bleaching = 1 - 0.4 * np.arange(len(z_nm)) / len(z_nm)
    stack = simulate_beads(
        x, y, z_nm=z_nm, shape=(150, 150), seed=1, psf=psf, patch_px=81, brightness=bleaching
    )
    cal = calibrate_beads(stack, z_step_nm=20.0, pixel_size_nm=100.0, camera=CAMERA)
    assert cal.normalisation.startswith("encircled fraction")
    # truth: photons in the 25 px ROI / photons in the 49 px normalisation window
    zero = torch.zeros(len(z_nm), dtype=torch.float64)
    z = torch.as_tensor(z_nm)
    core = [TRUE_PSF.evaluate(zero, zero, z, s).sum(dim=(1, 2)).numpy() for s in (ROI, 49)]
    halo = [erf((s / 2) / (psf.halo_sigma_px * np.sqrt(2))) ** 2 for s in (ROI, 49)]
    w = psf.halo_weight
    truth = ((1 - w) * core[0] + w * halo[0]) / ((1 - w) * core[1] + w * halo[1])
    assert truth.max() < 0.94  # the halo makes the test meaningful
    np.testing.assert_allclose(cal.encircled_fraction, truth, atol=0.015)  # measured 0.008
    np.testing.assert_allclose(cal.measured.sum(axis=(1, 2)), cal.encircled_fraction)


def test_unusable_beads_are_rejected_with_reasons() -> None:
    z_nm = np.arange(-750.0, 751.0, 50.0)
    good_x, good_y = np.array([40.2, 40.7, 120.4]), np.array([40.6, 120.1, 40.3])
    others = {
        "edge": ([5.0], [80.0], 30000.0),
        "close": ([120.0, 128.0], [110.0, 118.0], 30000.0),
        "saturated": ([80.0], [80.0], 3e6),
        "dim": ([140.0], [80.0], 3000.0),
    }
    x = np.concatenate([good_x, *[v[0] for v in others.values()]])
    y = np.concatenate([good_y, *[v[1] for v in others.values()]])
    photons = np.concatenate(
        [np.full(3, 30000.0), *[np.full(len(v[0]), v[2]) for v in others.values()]]
    )
    stack = simulate_beads(x, y, z_nm=z_nm, photons=photons, shape=(160, 160), seed=2)
    # a bead with another PSF (not astigmatic): its shape differs from the others
    odd = simulate_beads(
        np.array([80.0]),
        np.array([120.0]),
        z_nm=z_nm,
        photons=30000.0,
        bg_photons=0.0,
        shape=(160, 160),
        seed=4,
        psf=GaussianPSF(1.6),
    )
    light = (odd.astype(np.int64) - int(CAMERA.baseline_adu)).clip(0)
    stack = (stack + light).clip(0, CAMERA.adc_max_adu).astype(np.uint16)
    cal = calibrate_beads(stack, z_step_nm=50.0, pixel_size_nm=100.0, camera=CAMERA)
    assert cal.rejection_counts == {"edge": 1, "close": 2, "saturated": 1, "dim": 1, "shape": 1}
    assert cal.n_beads_used == 3
    used = sorted((round(b.x_px), round(b.y_px)) for b in cal.beads)
    assert used == sorted(zip(np.round(good_x), np.round(good_y), strict=True))
    rejected = {(r.reason, round(r.x_px), round(r.y_px)) for r in cal.rejected}
    assert ("shape", 80, 120) in rejected and ("saturated", 80, 80) in rejected
    assert "1 saturated" in cal.summary()


# --------------------------------------------------------------------------------------------
# Simulating with the calibrated PSF
# --------------------------------------------------------------------------------------------


def test_simulator_with_the_calibrated_psf_puts_light_where_the_truth_says(
    sim_calibration: BeadCalibration, tmp_path: Path
) -> None:
    path = sim_calibration.save(tmp_path / "psf.h5")
    config = Config.model_validate(
        {"image": {"size_px": 64}, "psf": {"kind": "file", "path": str(path)}}
    )
    sim = Simulator(config, dtype=torch.float64)
    assert isinstance(sim.psf, CubicSplinePSF)
    g = torch.Generator().manual_seed(7)
    n = 9  # one emitter per frame, away from the edges
    emitters = Emitters(
        frame=torch.arange(n),
        id=torch.arange(n),
        x_px=20 + 24 * torch.rand(n, generator=g, dtype=torch.float64),
        y_px=20 + 24 * torch.rand(n, generator=g, dtype=torch.float64),
        z_nm=torch.linspace(-700.0, 700.0, n, dtype=torch.float64),
        photons=torch.full((n,), 5000.0, dtype=torch.float64),
    )
    background = torch.full((1, 64, 64), 50.0, dtype=torch.float64)
    rendered = sim.render(emitters, background, n)[0] - 50.0
    truth = render_patches(
        TRUE_PSF,
        emitters.frame,
        emitters.x_px,
        emitters.y_px,
        emitters.z_nm,
        emitters.photons,
        (n, 64, 64),
        size=ROI,
    )
    peak = truth.amax(dim=(1, 2))
    assert ((rendered - truth).abs().amax(dim=(1, 2)) / peak).max() < 0.06
    rows = torch.arange(64, dtype=torch.float64)
    total = rendered.sum(dim=(1, 2))
    cx = (rendered.sum(dim=1) * rows).sum(dim=1) / total
    cy = (rendered.sum(dim=2) * rows).sum(dim=1) / total
    torch.testing.assert_close(cx, emitters.x_px, atol=0.05, rtol=0)
    torch.testing.assert_close(cy, emitters.y_px, atol=0.05, rtol=0)
    torch.testing.assert_close(total, emitters.photons, rtol=0.01, atol=0)


# --------------------------------------------------------------------------------------------
# The real EPFL 2016 bead stacks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_as(shared_data: Path) -> BeadCalibration:
    path = shared_data / "beads_epfl2016" / "beads_as.tif"
    return calibrate_beads(path, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


@pytest.fixture(scope="module")
def real_2d(shared_data: Path) -> BeadCalibration:
    path = shared_data / "beads_epfl2016" / "beads_2d.tif"
    return calibrate_beads(path, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


def _moment_widths(psf: CubicSplinePSF, z_nm: np.ndarray, radius_px: float = 8.0):
    """Second-moment widths (sigma_x, sigma_y) of the PSF within a disc, per z."""
    z = torch.as_tensor(z_nm, dtype=torch.float64)
    images = psf.evaluate(torch.zeros_like(z), torch.zeros_like(z), z, ROI).numpy()
    c = np.arange(ROI) - ROI // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    w = images * (yy**2 + xx**2 <= radius_px**2)
    total = w.sum(axis=(1, 2))
    mx = (w * xx).sum(axis=(1, 2)) / total
    my = (w * yy).sum(axis=(1, 2)) / total
    sx = np.sqrt((w * (xx - mx[:, None, None]) ** 2).sum(axis=(1, 2)) / total)
    sy = np.sqrt((w * (yy - my[:, None, None]) ** 2).sum(axis=(1, 2)) / total)
    return sx, sy


def test_real_astigmatic_beads_calibrate(real_as: BeadCalibration) -> None:
    cal = real_as
    assert cal.n_beads_used == 6 and cal.n_beads_rejected == 0
    assert cal.relative_residual < 0.05  # measured 0.028 (0.024 with 60 nm of z smoothing)
    assert cal.normalisation.startswith("encircled fraction")
    # the left-out beads' errors: a flat minimum at 110-210 nm, 0.873 of no smoothing's
    assert 100.0 <= cal.z_smoothing_nm <= 250.0  # measured 150
    assert cal.z_smoothing_scores[cal.z_smoothing_nm] < 0.9
    # the bundled calibration is this one (make default-psf)
    bundled = load_psf("denseloc:psf_epfl_beads_as_v2.h5")
    np.testing.assert_allclose(bundled.coeff, cal.psf.coeff, rtol=0, atol=1e-12)
    assert bundled.metadata["z_smoothing_nm"] == cal.z_smoothing_nm
    # light beyond the 25 px ROI: more when defocused (measured 0.77 at the ends, 0.93 at best)
    assert 0.6 < cal.encircled_fraction.min() < cal.encircled_fraction.max() < 1.0
    # the data's README: narrowest along x near slice 70 (z = -50 nm), along y near slice 100
    z = np.arange(-600.0, 601.0, 5.0)
    sx, sy = _moment_widths(cal.psf, z)
    assert abs(z[np.argmin(sx)] - -50.0) <= 60.0  # measured -50 (-55 with 60 nm smoothing)
    assert abs(z[np.argmin(sy)] - 250.0) <= 60.0  # measured +245 (+265)
    fit = cal.astigmatic
    assert fit is not None
    assert abs(fit.config.focus_nm[0] - -50.0) <= 60.0  # measured -43
    # the Gaussian core is narrowest further out than the second moments (measured +328)
    assert abs(fit.config.focus_nm[1] - 250.0) <= 100.0
    assert fit.config.focus_nm[1] - fit.config.focus_nm[0] > 250.0
    assert max(fit.rms_error_px) < 0.15


def test_real_2d_beads_are_not_astigmatic(
    real_2d: BeadCalibration, real_as: BeadCalibration
) -> None:
    assert real_2d.n_beads_used == 6
    assert real_2d.relative_residual < 0.05  # measured 0.028 (smoothed by 370 nm)
    c2d = real_2d.astigmatic.config
    assert abs(c2d.focus_nm[0] - c2d.focus_nm[1]) < 100.0  # measured 31 nm (AS: 370 nm)
    assert abs(c2d.sigma0_px[0] / c2d.sigma0_px[1] - 1) < 0.05
    z = np.arange(-400.0, 401.0, 10.0)
    sx, sy = _moment_widths(real_2d.psf, z)
    sx_as, sy_as = _moment_widths(real_as.psf, z)
    assert np.abs(sx / sy - 1).max() < 0.15  # measured 0.057
    assert np.abs(sx_as / sy_as - 1).max() > 0.25  # measured 0.35


def test_calibration_file_is_self_describing(tmp_path: Path) -> None:
    z_nm = np.arange(-750.0, 751.0, 50.0)
    stack = simulate_beads(
        np.array([30.4, 70.2]), np.array([35.7, 64.1]), z_nm=z_nm, shape=(100, 100), seed=6
    )
    source = _write(tmp_path / "my_beads.tif", stack)
    out, report, astig = tmp_path / "psf.h5", tmp_path / "report", tmp_path / "psf_astig.yaml"
    cal = calibrate_bead_file(
        source,
        out,
        z_step_nm=50.0,
        pixel_size_nm=110.0,
        camera=CAMERA,
        z_range_nm=(-750.0, 750.0),
        report_dir=report,
        astigmatic_path=astig,
    )
    psf = load_psf(out)
    assert isinstance(psf, CubicSplinePSF)
    assert psf.pixel_size_nm == 110.0 and psf.dz_nm == 50.0 and psf.z0 == 15.0
    assert psf.z_range_nm == (-750.0, 750.0) and psf.source == "my_beads.tif"
    meta = psf.metadata
    assert meta["n_beads_used"] == 2 and meta["n_beads_rejected"] == 0
    assert meta["z_step_nm"] == 50.0 and meta["roi_size_px"] == ROI
    assert meta["relative_residual"] == pytest.approx(cal.relative_residual)
    np.testing.assert_allclose(meta["astigmatic_focus_nm"], TRUE_PSF.focus_nm, atol=30.0)
    with h5py.File(out, "r") as f:
        assert f.attrs["software_version"] == denseloc.__version__
    np.testing.assert_allclose(psf.stack.sum(axis=(1, 2)), cal.encircled_fraction, atol=2e-3)
    astig_psf = load_psf(astig)
    assert isinstance(astig_psf, AstigmaticPSF)
    assert astig_psf.focus_nm == pytest.approx(cal.astigmatic.config.focus_nm)
    assert sorted(p.name for p in report.iterdir()) == [
        "psf_planes.png",
        "psf_sections.png",
        "psf_widths.png",
    ]
    assert f"{cal.relative_residual:.4f}" in cal.summary()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _write(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data)
    return path


def test_pure_noise_has_no_beads(tmp_path: Path) -> None:
    noise = simulate_beads(np.array([]), np.array([]), bg_photons=20.0, shape=(80, 80))
    path = _write(tmp_path / "noise.tif", noise)
    with pytest.raises(InputFileError, match=r"noise\.tif: no beads found"):
        calibrate_beads(path, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


def test_only_saturated_beads(tmp_path: Path) -> None:
    stack = simulate_beads(
        np.array([30.0, 70.0]), np.array([40.0, 40.0]), photons=3e6, z_nm=Z_NM[::5], shape=(80, 110)
    )
    assert stack.max() == CAMERA.adc_max_adu
    path = _write(tmp_path / "bright.tif", stack)
    with pytest.raises(InputFileError, match=r"bright\.tif: no usable beads .*2 saturated"):
        calibrate_beads(path, z_step_nm=50.0, pixel_size_nm=100.0, camera=CAMERA)


def test_a_flat_top_counts_as_saturated() -> None:
    # a 14-bit camera reporting through a 16-bit file: the tops clip below adc_max_adu
    stack = simulate_beads(
        np.array([30.0]), np.array([40.0]), photons=2e5, z_nm=Z_NM[::5], shape=(80, 80)
    )
    clipped = np.minimum(stack, 16383)
    with pytest.raises(DenselocError, match="1 saturated"):
        calibrate_beads(clipped, z_step_nm=50.0, pixel_size_nm=100.0, camera=CAMERA)


def test_z_step_inconsistent_with_the_z_range(tmp_path: Path) -> None:
    stack = simulate_beads(np.array([40.0]), np.array([40.0]), shape=(80, 80))
    path = _write(tmp_path / "beads.tif", stack)
    with pytest.raises(InputFileError, match=r"beads\.tif: z step does not match the stack"):
        calibrate_beads(
            path, z_step_nm=20.0, pixel_size_nm=100.0, camera=CAMERA, z_range_nm=(-750, 750)
        )
    with pytest.raises(DenselocError, match="reference_slice"):
        calibrate_beads(
            path,
            z_step_nm=10.0,
            pixel_size_nm=100.0,
            camera=CAMERA,
            z_range_nm=(-750, 750),
            reference_slice=70,
        )


def test_z_sampled_too_coarsely(shared_data: Path, tmp_path: Path) -> None:
    stack = tifffile.imread(shared_data / "beads_epfl2016" / "beads_as.tif")
    path = _write(tmp_path / "coarse.tif", stack[::30])  # 300 nm steps: 6 slices
    with pytest.raises(InputFileError, match=r"coarse\.tif: z sampled too coarsely"):
        calibrate_beads(path, z_step_nm=300.0, pixel_size_nm=100.0, camera=CAMERA)


def test_a_2d_image_is_not_a_stack(tmp_path: Path) -> None:
    image = simulate_beads(np.array([40.0]), np.array([40.0]), z_nm=Z_NM[:1], shape=(80, 80))
    path = _write(tmp_path / "image.tif", image[0])
    with pytest.raises(InputFileError, match=r"image\.tif: a single 2D image 80 x 80 px"):
        calibrate_beads(path, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)
    with pytest.raises(DenselocError, match=r"^bead stack: a single 2D image"):
        calibrate_beads(image[0], z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


def test_bad_parameters_are_named() -> None:
    stack = np.zeros((20, 60, 60), dtype=np.uint16)
    with pytest.raises(DenselocError, match="`roi_size_px` must be an odd integer"):
        calibrate_beads(stack, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA, roi_size_px=24)
    with pytest.raises(DenselocError, match="`z_step_nm` must be a non-zero number, got 0"):
        calibrate_beads(stack, z_step_nm=0.0, pixel_size_nm=100.0, camera=CAMERA)
    for wrong in (0.0, 0.1, math.inf, math.nan):  # 0.1: um typed as nm
        with pytest.raises(DenselocError, match=r"`pixel_size_nm` is .* is it in um"):
            calibrate_beads(stack, z_step_nm=10.0, pixel_size_nm=wrong, camera=CAMERA)
    with pytest.raises(DenselocError, match="`z_smoothing_nm` must be >= 0 nm"):
        calibrate_beads(
            stack, z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA, z_smoothing_nm=-5.0
        )
    with pytest.raises(InputFileError, match=r"missing\.tif: file not found"):
        calibrate_beads("missing.tif", z_step_nm=10.0, pixel_size_nm=100.0, camera=CAMERA)


def test_an_implausible_focal_depth_warns_about_the_z_step() -> None:
    z_nm = np.arange(-600.0, 601.0, 20.0)
    stack = simulate_beads(
        np.array([30.0, 70.0]), np.array([40.0, 40.0]), z_nm=z_nm, shape=(80, 110), seed=8
    )
    with pytest.warns(DenselocWarning, match="check z_step_nm"):
        cal = calibrate_beads(stack, z_step_nm=200.0, pixel_size_nm=100.0, camera=CAMERA)
    assert any("focal depth" in note for note in cal.notes)


@pytest.mark.parametrize(("out", "astig"), [("psf.mat", None), ("psf.h5", "fit.txt")])
def test_calibration_outputs_need_suffixes_they_can_be_read_back_by(tmp_path, out, astig) -> None:
    # Refused before the bead stack is even read (it does not exist here).
    with pytest.raises(DenselocError, match="is written as"):
        calibrate_bead_file(tmp_path / "missing.tif", tmp_path / out, z_step_nm=50.0,
                            pixel_size_nm=100.0, camera=CAMERA,
                            astigmatic_path=None if astig is None else tmp_path / astig)
    assert not list(tmp_path.iterdir())
