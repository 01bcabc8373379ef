"""Cramer-Rao bound against closed forms and its noise-model scalings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.config import Config
from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns, crlb
from denseloc.sim.psf import AstigmaticPSF, GaussianPSF


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


def test_emccd_excess_noise_scales_bound_by_sqrt2_and_qe_by_inverse_sqrt() -> None:
    args = (AstigmaticPSF((1.1, 1.1), (-200.0, 200.0), (400.0, 400.0)), t(100), t(3000), t(50))
    base = crlb(*args)
    emccd = crlb(*args, noise=NoiseModel(excess_noise=2.0))
    half_qe = crlb(*args, noise=NoiseModel(qe=0.5))
    torch.testing.assert_close(emccd, base * math.sqrt(2), rtol=1e-10, atol=0)
    torch.testing.assert_close(half_qe, base * math.sqrt(2), rtol=1e-10, atol=0)


def test_read_noise_increases_the_bound() -> None:
    args = (GaussianPSF(1.2), t(0), t(1000), t(5))
    base = crlb(*args)[0, 0]
    noisy = crlb(*args, noise=NoiseModel(read_var_e2=25.0))[0, 0]
    assert noisy > base * 1.2


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
