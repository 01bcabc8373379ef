"""Tests of the astigmatic (Huang) calibration: per-plane Gaussian widths, curve fit, YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from denseloc.calibration import load_psf
from denseloc.calibration.astigmatic import (
    ASTIGMATIC_FORMAT_NAME,
    fit_astigmatic,
    fit_gaussian_widths,
    fit_huang,
    huang_sigma,
    read_astigmatic,
    save_astigmatic,
)
from denseloc.calibration.spline import psf_stack_from_model
from denseloc.config import AstigmaticConfig, Config
from denseloc.errors import DenselocError, InputFileError
from denseloc.sim.psf import AstigmaticPSF
from denseloc.sim.simulator import Simulator

TRUE_PSF = AstigmaticPSF(
    sigma0_px=(1.2, 1.35),
    focus_nm=(-180.0, 230.0),
    depth_nm=(380.0, 450.0),
    a3=(0.05, -0.03),
    a4=(0.02, 0.01),
)
Z_NM = np.arange(-750.0, 751.0, 10.0)


@pytest.fixture(scope="module")
def model_stack() -> np.ndarray:
    return psf_stack_from_model(TRUE_PSF, Z_NM, 25).numpy()


def test_gaussian_widths_of_an_exact_gaussian_stack(model_stack: np.ndarray) -> None:
    widths = fit_gaussian_widths(model_stack)
    sx, sy = (s.numpy() for s in TRUE_PSF.sigmas(torch.as_tensor(Z_NM)))
    assert widths.converged.all()
    np.testing.assert_allclose(widths.sigma_x_px, sx, rtol=1e-6)
    np.testing.assert_allclose(widths.sigma_y_px, sy, rtol=1e-6)
    np.testing.assert_allclose(widths.x_px, 0.0, atol=1e-6)
    np.testing.assert_allclose(widths.amplitude, model_stack.sum(axis=(1, 2)), rtol=1e-3)


def test_gaussian_widths_follow_an_off_centre_emitter() -> None:
    z = torch.as_tensor(Z_NM[::10])
    shifted = TRUE_PSF.evaluate(torch.full_like(z, 0.3), torch.full_like(z, -0.2), z, 21)
    widths = fit_gaussian_widths(shifted.numpy())
    np.testing.assert_allclose(widths.x_px, 0.3, atol=1e-6)
    np.testing.assert_allclose(widths.y_px, -0.2, atol=1e-6)


def test_huang_fit_recovers_the_model(model_stack: np.ndarray) -> None:
    fit = fit_astigmatic(model_stack, Z_NM)
    c = fit.config
    for name in ("sigma0_px", "focus_nm", "depth_nm", "a3", "a4"):
        np.testing.assert_allclose(getattr(c, name), getattr(TRUE_PSF, name), atol=1e-5)
    assert fit.used.shape == (2, len(Z_NM))
    assert max(fit.rms_error_px) < 1e-6
    sx, sy = fit.model_sigmas()
    np.testing.assert_allclose(sx, fit.widths.sigma_x_px, rtol=1e-6)
    np.testing.assert_allclose(sy, fit.widths.sigma_y_px, rtol=1e-6)
    assert fit.psf() == AstigmaticPSF(
        c.sigma0_px, c.focus_nm, c.depth_nm, c.a3, c.a4, z_range_nm=fit.z_range_nm
    )


def test_huang_fit_of_noisy_widths() -> None:
    rng = np.random.default_rng(0)
    z = np.arange(-600.0, 601.0, 20.0)
    sigma = huang_sigma(z, 1.3, 120.0, 420.0) * (1 + 0.01 * rng.standard_normal(z.size))
    sigma0, focus, depth, _, _ = fit_huang(z, sigma)
    assert sigma0 == pytest.approx(1.3, rel=0.02)
    assert focus == pytest.approx(120.0, abs=15.0)
    assert depth == pytest.approx(420.0, rel=0.05)


def test_wide_planes_are_left_out(model_stack: np.ndarray) -> None:
    fit = fit_astigmatic(model_stack, Z_NM, max_sigma_px=2.5)
    sx, sy = fit.widths.sigma_x_px, fit.widths.sigma_y_px
    np.testing.assert_array_equal(fit.used[0], sx < 2.5)
    np.testing.assert_array_equal(fit.used[1], sy < 2.5)
    both = fit.used.all(axis=0)
    assert fit.z_range_nm == (Z_NM[both].min(), Z_NM[both].max())
    with pytest.raises(DenselocError, match="need at least 5"):
        fit_astigmatic(model_stack, Z_NM, max_sigma_px=1.0)


def test_yaml_round_trip_through_load_psf(tmp_path: Path) -> None:
    config = AstigmaticConfig(
        sigma0_px=(1.1, 1.2), focus_nm=(-100.0, 150.0), depth_nm=(300.0, 350.0), a3=(0.1, 0.0)
    )
    for suffix in (".yaml", ".yml"):
        path = save_astigmatic(
            tmp_path / f"psf_astig{suffix}",
            config,
            z_range_nm=(-500.0, 600.0),
            pixel_size_nm=100.0,
            source="beads.tif",
            extra={"n_beads_used": 6, "rms_px": np.array([0.01, 0.02])},
        )
        psf = load_psf(path)
        assert psf == AstigmaticPSF(
            (1.1, 1.2), (-100.0, 150.0), (300.0, 350.0), (0.1, 0.0), (0.0, 0.0), (-500.0, 600.0),
            pixel_size_nm=100.0,
        )
    read, info = read_astigmatic(path)
    assert read == config
    assert info["format"] == ASTIGMATIC_FORMAT_NAME and info["pixel_size_nm"] == 100.0
    assert info["source"] == "beads.tif" and info["metadata"]["rms_px"] == [0.01, 0.02]


def test_simulator_accepts_an_astigmatic_yaml(tmp_path: Path) -> None:
    path = save_astigmatic(
        tmp_path / "psf_astig.yaml",
        AstigmaticConfig(),
        z_range_nm=(-750.0, 750.0),
        pixel_size_nm=100.0,
    )
    config = Config.model_validate(
        {"image": {"size_px": 32}, "psf": {"kind": "file", "path": str(path)}}
    )
    sim = Simulator(config)
    assert isinstance(sim.psf, AstigmaticPSF)
    assert sim.sample(1, 2, sim.generator(0)).adu.shape == (1, 2, 32, 32)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("format: something.else\n", "not a denseloc astigmatic PSF"),
        ("- a\n- list\n", "not a denseloc astigmatic PSF"),
        ("format: [unclosed\n", "not a readable YAML file"),
        (
            f"format: {ASTIGMATIC_FORMAT_NAME}\nformat_version: 99\nastigmatic: {{}}\n",
            "format version 99 is newer",
        ),
        (
            f"format: {ASTIGMATIC_FORMAT_NAME}\nastigmatic: {{sigma0_px: [-1.0, 1.0]}}\n",
            "astigmatic.sigma0_px",
        ),
        (
            f"format: {ASTIGMATIC_FORMAT_NAME}\nz_range_nm: [5, 1]\nastigmatic: {{}}\n",
            "z_range_nm must be increasing",
        ),
    ],
)
def test_bad_yaml_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(InputFileError, match=rf"bad\.yaml: .*{message}"):
        load_psf(path)


def test_saved_yaml_is_plain_and_versioned(tmp_path: Path) -> None:
    path = save_astigmatic(
        tmp_path / "a.yaml", AstigmaticConfig(), z_range_nm=(-1.0, 1.0), pixel_size_nm=160.0
    )
    doc = yaml.safe_load(path.read_text())
    assert doc["format"] == ASTIGMATIC_FORMAT_NAME and doc["format_version"] == 1
    assert doc["astigmatic"]["focus_nm"] == [-200.0, 200.0]
    assert "software_version" in doc
