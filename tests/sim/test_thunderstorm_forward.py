"""denseloc's forward model against frames another program simulated (ThunderSTORM).

Given ThunderSTORM's ground truth, denseloc's pixel-integrated Gaussian PSF must reproduce its
frames: at the same place (the pixel convention), with the residual noise an EMCCD gives. The
fit also pins down the camera and PSF of ``benchmarks/configs/thunderstorm.yaml``, with which a
network is trained for these frames (``benchmarks/bench_thunderstorm.py``), so the test checks
that configuration too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.config import load_config
from denseloc.io import open_movie, read_table
from denseloc.sim.psf import GaussianPSF, render_patches
from denseloc.table import nm_to_px

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "thunderstorm.yaml"
PIXEL_SIZE_NM = 100.0


@pytest.fixture(scope="module")
def thunderstorm(shared_data: Path) -> tuple[np.ndarray, pd.DataFrame]:
    folder = shared_data / "thunderstorm_sim"
    with open_movie(folder / "frames.tif") as movie:
        adu = movie[:].astype(np.float64)
    truth = read_table(folder / "ground_truth.csv", pixel_size_nm=PIXEL_SIZE_NM)
    return adu, truth


def expected_photons(
    truth: pd.DataFrame, shape: tuple[int, int, int], *, shift_px=(0.0, 0.0), sigma_scale=1.0
) -> np.ndarray:
    """Expected photons per pixel from the ground truth, each emitter with its own sigma."""
    out = torch.zeros(shape, dtype=torch.float64)
    # The ground truth's sigmas (106-115 nm) rounded to 0.002 px: one PSF per group.
    sigma_px = (truth["psf_sigma_nm"].to_numpy() / PIXEL_SIZE_NM / 0.002).round() * 0.002
    for sigma in np.unique(sigma_px):
        rows = truth[sigma_px == sigma]
        x_px, y_px = (
            torch.tensor(nm_to_px(rows[name].to_numpy(), PIXEL_SIZE_NM), dtype=torch.float64)
            for name in ("x_nm", "y_nm")
        )
        photons = torch.tensor(rows["photons"].to_numpy(), dtype=torch.float64)
        render_patches(
            GaussianPSF(float(sigma) * sigma_scale),
            torch.tensor(rows["frame"].to_numpy()),
            x_px + shift_px[0],
            y_px + shift_px[1],
            torch.zeros_like(x_px),
            photons,
            shape,
            size=11,
            out=out,
        )
    return out.numpy()


def linear_fit(adu: np.ndarray, mu: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least squares ``adu = level + gain * mu``: (level, gain, residuals)."""
    design = np.stack([np.ones(mu.size), mu.ravel()], axis=1)
    (level, gain), *_ = np.linalg.lstsq(design, adu.ravel(), rcond=None)
    return float(level), float(gain), adu.ravel() - design @ [level, gain]


def best_of_three(values: tuple[float, float, float], errors: tuple[float, float, float]) -> float:
    """Vertex of the parabola through three (value, error) points with equal spacing."""
    (_, mid, hi), (e_lo, e_mid, e_hi) = values, errors
    assert e_mid < min(e_lo, e_hi), "the minimum is not bracketed"
    return mid + (hi - mid) * (e_lo - e_hi) / (2 * (e_lo - 2 * e_mid + e_hi))


def mean_square(adu: np.ndarray, truth: pd.DataFrame, **kwargs) -> float:
    return float(np.mean(linear_fit(adu, expected_photons(truth, adu.shape, **kwargs))[2] ** 2))


@pytest.mark.parametrize("axis", [0, 1])
def test_positions_follow_the_same_pixel_convention(thunderstorm, axis: int) -> None:
    # A half-pixel disagreement (pixel corner against pixel centre) would put the best shift
    # at 0.5 px; a shift of 0.1 px already raises the residual clearly.
    adu, truth = thunderstorm
    shifts = (-0.1, 0.0, 0.1)
    errors = tuple(
        mean_square(adu, truth, shift_px=(s, 0.0) if axis == 0 else (0.0, s)) for s in shifts
    )
    assert abs(best_of_three(shifts, errors)) < 0.02


def test_psf_width_is_the_pixel_integrated_equivalent(thunderstorm) -> None:
    # The frames fit best with a pixel-integrated Gaussian narrower than the ground truth's
    # sigma by the width of a pixel, sqrt(sigma^2 - 1/12): the configuration's 1.066 px.
    adu, truth = thunderstorm
    scales = (0.93, 0.965, 1.0)
    errors = tuple(mean_square(adu, truth, sigma_scale=s) for s in scales)
    median_sigma_px = truth["psf_sigma_nm"].median() / PIXEL_SIZE_NM
    best_sigma_px = best_of_three(scales, errors) * median_sigma_px
    assert best_sigma_px == pytest.approx(np.sqrt(median_sigma_px**2 - 1 / 12), abs=0.01)
    assert load_config(CONFIG).psf.sigma_px == pytest.approx(best_sigma_px, abs=0.01)


def test_camera_gain_noise_and_background_match_the_configuration(thunderstorm) -> None:
    adu, truth = thunderstorm
    config = load_config(CONFIG)
    assert config.image.pixel_size_nm == PIXEL_SIZE_NM
    camera = config.camera
    median_sigma_px = truth["psf_sigma_nm"].median() / PIXEL_SIZE_NM
    mu = expected_photons(truth, adu.shape, sigma_scale=config.psf.sigma_px / median_sigma_px)
    level, gain, residual = linear_fit(adu, mu)
    assert gain == pytest.approx(camera.qe * camera.em_gain / camera.e_per_adu, rel=0.02)

    # Residual variance against the expected signal, in 20 bins of equal count: a line of slope
    # excess_noise * gain (Poisson photons, amplified), which is 0 at the baseline.
    model = (level + gain * mu).ravel()
    edges = np.quantile(model, np.linspace(0, 1, 21))
    bins = np.digitize(model, edges[1:-1])
    mean = np.array([model[bins == k].mean() for k in range(20)])
    var = np.array([residual[bins == k].var() for k in range(20)])
    # The brightest bins (PSF peaks) are left out: there the model's small PSF mismatch adds
    # to the variance.
    slope, intercept = np.polyfit(mean[:15], var[:15], 1)
    assert slope / gain == pytest.approx(camera.excess_noise_factor, rel=0.05)
    assert camera.read_noise_e == 0.0
    baseline = -intercept / slope
    assert baseline == pytest.approx(camera.baseline_adu, abs=3.0)
    background_photons = (level - camera.baseline_adu) / gain
    assert background_photons == pytest.approx(config.background.level_photons[0], rel=0.05)
