"""PSF models: normalisation, the analytic erf form, derivatives, astigmatism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denseloc.sim.psf import AstigmaticPSF, GaussianPSF, render_patches

ASTIG = AstigmaticPSF(
    sigma0_px=(1.1, 1.2), focus_nm=(-200.0, 250.0), depth_nm=(350.0, 420.0), a3=(0.05, -0.02)
)


def supersampled_gaussian(dx: float, dy: float, sx: float, sy: float, size: int) -> np.ndarray:
    """Pixel integrals by brute force: the Gaussian density averaged over 60x60 points."""
    n = 60
    half = size // 2
    sub = (np.arange(n) + 0.5) / n - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    gx = np.exp(-0.5 * ((coords - dx) / sx) ** 2) / (np.sqrt(2 * np.pi) * sx)
    gy = np.exp(-0.5 * ((coords - dy) / sy) ** 2) / (np.sqrt(2 * np.pi) * sy)
    density = gy[:, None] * gx[None, :]
    return density.reshape(size, n, size, n).mean(axis=(1, 3))


@pytest.mark.parametrize(("dx", "dy"), [(0.0, 0.0), (0.31, -0.42), (-0.5, 0.5)])
def test_gaussian_matches_pixel_integral(dx: float, dy: float) -> None:
    psf = GaussianPSF(1.3)
    t = torch.tensor([dx], dtype=torch.float64)
    image = psf.evaluate(t, torch.tensor([dy], dtype=torch.float64), t * 0, 11)[0].numpy()
    np.testing.assert_allclose(image, supersampled_gaussian(dx, dy, 1.3, 1.3, 11), atol=2e-5)


def test_astigmatic_matches_pixel_integral_with_its_widths() -> None:
    z = torch.tensor([400.0], dtype=torch.float64)
    sx, sy = (float(s) for s in ASTIG.sigmas(z))
    d = torch.tensor([0.2], dtype=torch.float64)
    image = ASTIG.evaluate(d, -d, z, 15)[0].numpy()
    np.testing.assert_allclose(image, supersampled_gaussian(0.2, -0.2, sx, sy, 15), atol=2e-5)


@pytest.mark.parametrize("psf", [GaussianPSF(1.0), ASTIG])
def test_patch_holds_all_photons(psf) -> None:
    z = torch.linspace(-750, 750, 31, dtype=torch.float64)
    zeros = torch.zeros_like(z)
    total = psf.evaluate(zeros + 0.3, zeros - 0.2, z, psf.default_patch_size()).sum((1, 2))
    assert torch.all(total > 0.999)
    assert torch.all(total <= 1.0 + 1e-12)


@pytest.mark.parametrize("psf", [GaussianPSF(1.2), ASTIG])
def test_derivatives_match_finite_differences(psf) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 16
    dx = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    dy = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    z = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 1400
    _, grads = psf.evaluate(dx, dy, z, 13, derivatives=True)
    for axis, step in enumerate([1e-5, 1e-5, 1e-3]):
        shift = [torch.zeros(n, dtype=torch.float64) for _ in range(3)]
        shift[axis] += step
        plus = psf.evaluate(dx + shift[0], dy + shift[1], z + shift[2], 13)
        minus = psf.evaluate(dx - shift[0], dy - shift[1], z - shift[2], 13)
        numeric = (plus - minus) / (2 * step)
        torch.testing.assert_close(grads[:, axis], numeric, atol=1e-7, rtol=1e-5)


def measured_widths(image: np.ndarray) -> tuple[float, float]:
    """Widths (x, y) from the second moments of an image."""
    rows, cols = np.indices(image.shape)
    total = image.sum()
    cx, cy = (image * cols).sum() / total, (image * rows).sum() / total
    sx = np.sqrt((image * (cols - cx) ** 2).sum() / total)
    sy = np.sqrt((image * (rows - cy) ** 2).sum() / total)
    return sx, sy


def test_astigmatism_swaps_across_focus() -> None:
    zero = torch.zeros(2, dtype=torch.float64)
    z = torch.tensor([-600.0, 600.0], dtype=torch.float64)
    images = ASTIG.evaluate(zero, zero, z, 31).numpy()
    (sx_lo, sy_lo), (sx_hi, sy_hi) = measured_widths(images[0]), measured_widths(images[1])
    # Below focus the x focus (-200 nm) is closer: narrower in x; above, narrower in y.
    assert sx_lo < sy_lo
    assert sx_hi > sy_hi
    # The narrowest x width is near focus_x, the narrowest y width near focus_y.
    zs = torch.arange(-700.0, 701.0, 10.0, dtype=torch.float64)
    widths = np.array([measured_widths(im) for im in ASTIG.evaluate(
        torch.zeros_like(zs), torch.zeros_like(zs), zs, 31).numpy()])
    assert zs[widths[:, 0].argmin()].item() == pytest.approx(-200, abs=30)
    assert zs[widths[:, 1].argmin()].item() == pytest.approx(250, abs=30)


def test_render_conserves_photons_and_places_light() -> None:
    psf = GaussianPSF(1.0)
    shape = (3, 32, 40)
    frame = torch.tensor([0, 1, 2, 2])
    x = torch.tensor([10.0, 20.3, 0.0, 100.0])  # the last one is far outside the frame
    y = torch.tensor([12.0, 5.7, 16.0, 16.0])
    photons = torch.tensor([1000.0, 2000.0, 4000.0, 5000.0])
    stack = render_patches(psf, frame, x, y, torch.zeros(4), photons, shape)
    assert stack[0].sum().item() == pytest.approx(1000.0, rel=1e-4)
    assert stack[1].sum().item() == pytest.approx(2000.0, rel=1e-4)
    # An emitter on the centre of the edge column keeps half its light plus half a pixel.
    kept = 0.5 + 0.5 * float(torch.erf(torch.tensor(0.5 / np.sqrt(2))))
    assert stack[2].sum().item() == pytest.approx(4000.0 * kept, rel=1e-3)
    assert stack[0].argmax().item() == 12 * 40 + 10
    assert np.unravel_index(stack[1].argmax().item(), (32, 40)) == (6, 20)


def test_a_width_held_at_its_floor_has_no_z_derivative() -> None:
    # A Huang fit whose polynomial turns negative inside the z range: the width is clamped
    # there, so it does not change with z, and neither may its derivative.
    psf = AstigmaticPSF((1.1, 1.2), (-200.0, 250.0), (400.0, 400.0), a3=(-0.3, 0.0))
    z = torch.tensor([-200.0 + 4.0 * 400.0], dtype=torch.float64)  # u = 4: 1 + 16 - 19.2 < 0
    sx, _, dsx, _ = psf.sigmas(z, derivatives=True)
    step = 1e-3
    assert psf.sigmas(z + step)[0] == sx
    assert dsx.item() == 0.0
