"""Tests of the cubic-spline PSF: interpolation, accuracy, derivatives, files, rendering."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

import denseloc
from denseloc.calibration.spline import (
    FORMAT_NAME,
    CubicSplinePSF,
    psf_stack_from_model,
    tricubic_coefficients,
)
from denseloc.errors import InputFileError
from denseloc.sim.psf import PSF, AstigmaticPSF, render_patches

DZ_NM = 10.0
Z_NM = np.arange(-750.0, 750.0 + DZ_NM / 2, DZ_NM)  # 151 planes, focal plane at index 75
STACK_PX = 21


@pytest.fixture(scope="module")
def astig() -> AstigmaticPSF:
    return AstigmaticPSF(sigma0_px=(1.2, 1.3), focus_nm=(-200.0, 250.0), depth_nm=(400.0, 400.0))


@pytest.fixture(scope="module")
def stack(astig: AstigmaticPSF) -> torch.Tensor:
    return psf_stack_from_model(astig, Z_NM, STACK_PX)


@pytest.fixture(scope="module")
def spline(stack: torch.Tensor) -> CubicSplinePSF:
    return CubicSplinePSF.from_stack(stack, DZ_NM, pixel_size_nm=100.0, source="simulated")


def _random_emitters(n: int, seed: int, z_max: float = 740.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    dx = torch.rand(n, generator=g, dtype=dtype) - 0.5
    dy = torch.rand(n, generator=g, dtype=dtype) - 0.5
    z = (2 * torch.rand(n, generator=g, dtype=dtype) - 1) * z_max
    return dx, dy, z


def test_implements_psf_protocol(spline: CubicSplinePSF) -> None:
    assert isinstance(spline, PSF)
    assert spline.is_3d
    assert spline.shape == (150, 20, 20)
    assert spline.default_patch_size() == STACK_PX
    assert spline.z_range_nm == pytest.approx((-750.0, 750.0))


def test_coefficient_layout_reproduces_a_tricubic_polynomial() -> None:
    # not-a-knot splines reproduce cubics exactly, so voxel (0, 0, 0) must hold the product of
    # the 1D coefficients at index 16*pz + 4*py + px
    cx = np.array([1.0, 2.0, 0.0, 0.5])
    cy = np.array([3.0, 0.0, -1.0, 0.1])
    cz = np.array([2.0, 1.0, 0.0, -0.2])
    z, y, x = np.meshgrid(np.arange(6.0), np.arange(5.0), np.arange(7.0), indexing="ij")
    values = np.polyval(cz[::-1], z) * np.polyval(cy[::-1], y) * np.polyval(cx[::-1], x)
    coeff = tricubic_coefficients(values)
    assert coeff.shape == (5, 4, 6, 64)
    expected = np.einsum("k,j,i->kji", cz, cy, cx).reshape(64)
    np.testing.assert_allclose(coeff[0, 0, 0], expected, atol=1e-9)


def test_interpolates_the_samples(spline: CubicSplinePSF, stack: torch.Tensor) -> None:
    z = torch.as_tensor(Z_NM)
    zeros = torch.zeros_like(z)
    out = spline.evaluate(zeros, zeros, z, STACK_PX)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), stack.numpy(), rtol=0, atol=1e-12)
    # an emitter moved by whole pixels lands on samples too, shifted by those pixels
    out = spline.evaluate(zeros + 1, zeros - 2, z, STACK_PX)
    np.testing.assert_allclose(
        out[:, :-2, 1:].numpy(), stack[:, 2:, :-1].numpy(), rtol=0, atol=1e-12
    )
    assert torch.all(out[:, :, 0] == 0) and torch.all(out[:, -2:] == 0)  # outside the spline


def test_reproduces_the_model_between_samples(spline: CubicSplinePSF, astig: AstigmaticPSF) -> None:
    dx, dy, z = _random_emitters(2000, seed=1)
    size = 15  # inside the 21 px stack, so no light is cut by its border
    got = spline.evaluate(dx, dy, z, size)
    want = astig.evaluate(dx, dy, z, size)
    peak = want.amax(dim=(1, 2))
    rel = ((got - want).abs().amax(dim=(1, 2)) / peak).max().item()
    # measured 4.9e-3: lateral sampling at 1 px of a sigma ~1.2 px PSF dominates the error
    assert rel < 1e-2
    # at whole-pixel lateral positions only the z interpolation (10 nm steps) errs: ~1e-8
    got = spline.evaluate(0 * dx, 0 * dy, z, size)
    want = astig.evaluate(0 * dx, 0 * dy, z, size)
    assert ((got - want).abs().amax(dim=(1, 2)) / peak).max().item() < 1e-6


def test_lateral_upsampling_improves_accuracy(astig: AstigmaticPSF) -> None:
    z_nm = np.arange(-400.0, 401.0, 20.0)
    stack2 = psf_stack_from_model(astig, z_nm, 15, upsample=2)
    assert stack2.shape == (len(z_nm), 29, 29)
    spline2 = CubicSplinePSF.from_stack(stack2, 20.0, upsample=2)
    assert spline2.default_patch_size() == 15
    dx, dy, z = _random_emitters(500, seed=2, z_max=390.0)
    got = spline2.evaluate(dx, dy, z, 11)
    want = astig.evaluate(dx, dy, z, 11)
    rel = ((got - want).abs().amax(dim=(1, 2)) / want.amax(dim=(1, 2))).max().item()
    assert rel < 1e-3  # measured 2.7e-4 (1 px sampling: 4.9e-3)
    # half-pixel positions are samples of the upsampled stack
    half = torch.full((len(z_nm),), 0.5, dtype=torch.float64)
    out = spline2.evaluate(half, -half, torch.as_tensor(z_nm), 15)
    np.testing.assert_allclose(
        out[:, :-1, 1:].numpy(), stack2[:, 1::2, 1::2].numpy(), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("derivative_of", [0, 1, 2])
def test_derivatives_match_finite_differences(spline: CubicSplinePSF, derivative_of: int) -> None:
    dx, dy, z = _random_emitters(200, seed=3)
    size = 17
    value, deriv = spline.evaluate(dx, dy, z, size, derivatives=True)
    plain = spline.evaluate(dx, dy, z, size)
    np.testing.assert_allclose(value.numpy(), plain.numpy(), rtol=0, atol=1e-15)
    assert deriv.shape == (200, 3, size, size)
    step = (1e-5, 1e-5, 1e-3)[derivative_of]
    args = [dx, dy, z]
    plus, minus = list(args), list(args)
    plus[derivative_of] = args[derivative_of] + step
    minus[derivative_of] = args[derivative_of] - step
    numeric = (spline.evaluate(*plus, size) - spline.evaluate(*minus, size)) / (2 * step)
    analytic = deriv[:, derivative_of]
    scale = analytic.abs().max().item()
    assert scale > 0
    np.testing.assert_allclose(analytic.numpy(), numeric.numpy(), rtol=0, atol=1e-6 * scale)


def test_z_is_clamped_to_the_calibrated_range(spline: CubicSplinePSF) -> None:
    zeros = torch.zeros(2, dtype=torch.float64)
    z = torch.tensor([-900.0, 1200.0], dtype=torch.float64)
    edge = torch.tensor([-750.0, 750.0], dtype=torch.float64)
    value, deriv = spline.evaluate(zeros + 0.2, zeros, z, 15, derivatives=True)
    at_edge = spline.evaluate(zeros + 0.2, zeros, edge, 15)
    np.testing.assert_allclose(value.numpy(), at_edge.numpy(), rtol=0, atol=1e-15)
    assert torch.all(deriv[:, 2] == 0) and torch.any(deriv[:, 0] != 0)
    narrow = CubicSplinePSF(
        spline.coeff, dz_nm=DZ_NM, x0=10, y0=10, z0=75, z_range_nm=(-500.0, 600.0)
    )
    np.testing.assert_allclose(
        narrow.evaluate(zeros, zeros, z, 15).numpy(),
        spline.evaluate(zeros, zeros, torch.tensor([-500.0, 600.0], dtype=torch.float64), 15),
        rtol=0,
        atol=1e-15,
    )


def test_conserves_photons(spline: CubicSplinePSF, stack: torch.Tensor) -> None:
    # emitters on the sample planes, at random sub-pixel positions; the patch covers the whole
    # spline, so its sum must match the stack's (cardinal splines form a partition of unity)
    g = torch.Generator().manual_seed(4)
    z = torch.as_tensor(Z_NM[20:-20:5])  # where the PSF falls off well inside the 21 px stack
    dx = torch.rand(len(z), generator=g, dtype=torch.float64) - 0.5
    dy = torch.rand(len(z), generator=g, dtype=torch.float64) - 0.5
    total = spline.evaluate(dx, dy, z, STACK_PX + 4).sum(dim=(1, 2))
    expected = stack[20:-20:5].sum(dim=(1, 2))
    np.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=1e-3)  # measured 2.6e-4


def test_float32_follows_inputs(spline: CubicSplinePSF) -> None:
    dx, dy, z = _random_emitters(100, seed=5)
    ref, ref_d = spline.evaluate(dx, dy, z, 15, derivatives=True)
    got, got_d = spline.evaluate(dx.float(), dy.float(), z.float(), 15, derivatives=True)
    assert got.dtype == torch.float32 and got_d.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-6 * ref.max().item())
    scale = ref_d.abs().amax(dim=(0, 2, 3), keepdim=True)
    assert ((got_d - ref_d).abs() / scale).max().item() < 1e-5
    empty = spline.evaluate(dx[:0], dy[:0], z[:0], 15)
    assert empty.shape == (0, 15, 15)


def test_renders_through_render_patches(spline: CubicSplinePSF, astig: AstigmaticPSF) -> None:
    g = torch.Generator().manual_seed(6)
    n = 40
    x = 10 + 40 * torch.rand(n, generator=g, dtype=torch.float64)
    y = 10 + 30 * torch.rand(n, generator=g, dtype=torch.float64)
    z = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * 700
    frame = torch.randint(0, 3, (n,), generator=g)
    photons = torch.full((n,), 1000.0, dtype=torch.float64)
    shape = (3, 50, 60)
    got = render_patches(spline, frame, x, y, z, photons, shape)
    want = render_patches(astig, frame, x, y, z, photons, shape, size=STACK_PX)
    assert got.shape == shape
    assert (got - want).abs().max().item() < 1e-2 * want.max().item()  # measured 3.4e-3
    np.testing.assert_allclose(got.sum().item(), want.sum().item(), rtol=5e-4)  # measured 7e-5


def test_save_load_round_trip(spline: CubicSplinePSF, tmp_path) -> None:
    path = spline.save(tmp_path / "psf.h5", extra_attrs={"beads": 12})
    loaded = CubicSplinePSF.load(path)
    dx, dy, z = _random_emitters(50, seed=7)
    a = spline.evaluate(dx, dy, z, 15, derivatives=True)
    b = loaded.evaluate(dx, dy, z, 15, derivatives=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert loaded.pixel_size_nm == 100.0 and loaded.source == "simulated"
    assert loaded.metadata == {"beads": 12}
    assert (loaded.x0, loaded.y0, loaded.z0, loaded.dz_nm) == (10.0, 10.0, 75.0, DZ_NM)
    np.testing.assert_array_equal(loaded.stack, spline.stack)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME
        assert f.attrs["software_version"] == denseloc.__version__
    assert not list(tmp_path.glob("*.part"))  # atomic write left no temporary file


def test_save_needs_a_pixel_size(stack: torch.Tensor, tmp_path) -> None:
    bare = CubicSplinePSF.from_stack(stack[:10], DZ_NM)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        bare.save(tmp_path / "psf.h5")
    bare.save(tmp_path / "psf.h5", pixel_size_nm=110.0, source="beads.tif")
    assert CubicSplinePSF.load(tmp_path / "psf.h5").pixel_size_nm == 110.0


def test_load_rejects_bad_files(spline: CubicSplinePSF, tmp_path) -> None:
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(InputFileError, match=re.escape("garbage.h5")):
        CubicSplinePSF.load(garbage)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(InputFileError, match="not a denseloc spline PSF"):
        CubicSplinePSF.load(other)
    truncated = tmp_path / "truncated.h5"
    data = spline.save(tmp_path / "good.h5").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=re.escape("truncated.h5")):
        CubicSplinePSF.load(truncated)
    with pytest.raises(InputFileError, match="file not found"):
        CubicSplinePSF.load(tmp_path / "missing.h5")


def test_rejects_bad_stacks() -> None:
    with pytest.raises(ValueError, match="S odd"):
        CubicSplinePSF.from_stack(np.ones((5, 8, 8)), DZ_NM)
    with pytest.raises(ValueError, match="z0_index"):
        CubicSplinePSF.from_stack(np.ones((5, 7, 7)), DZ_NM, z0_index=7)
    with pytest.raises(ValueError, match="NaN"):
        CubicSplinePSF.from_stack(np.full((5, 7, 7), np.nan), DZ_NM)
