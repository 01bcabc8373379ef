"""Tests of SMAP ``*_3dcal.mat`` spline calibrations (MATLAB v5 and v7.3).

The reference is a literal port of SMAP's spline model (``kernel_splineMLEFit_z`` with
``kernel_computeDelta3D`` and ``kernel_DerivativeSpline`` in fit3Dcspline's CPUsplineLib, and the
coordinate conventions of SMAP's fitter wrapper: ``ypix = P(:,1)``, ``xpix = P(:,2)``,
``znm = -(P(:,5) - z0) * dz``). It runs on the raw arrays of the file, independently of the
conversions in :mod:`denseloc.calibration.smap`.
"""

from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from denseloc.calibration.smap import (
    psf_from_smap_cspline,
    read_smap_3dcal,
    smap_cspline_from_psf,
    write_smap_3dcal,
)
from denseloc.calibration.spline import CubicSplinePSF, psf_stack_from_model
from denseloc.errors import DenselocWarning, InputFileError
from denseloc.sim.psf import AstigmaticPSF

DZ_NM = 20.0


def smap_model(coeff: np.ndarray, z0: float, dz: float, dx: float, dy: float, z_nm: float, sz: int):
    """SMAP's spline PSF on an sz x sz ROI (rows x columns) for an emitter at (dx, dy) px from
    the centre of the central pixel and z_nm; `coeff` (N1, N2, N3, 64) as MATLAB holds it."""
    n1, n2, n3, _ = coeff.shape
    theta0 = (sz - 1) / 2 + dy  # SMAP's first fit parameter runs along rows (ypix)
    theta1 = (sz - 1) / 2 + dx
    theta4 = z0 - z_nm / dz  # from znm = -(P5 - z0) * dz
    xc = -((theta0 - sz / 2) + 0.5)
    yc = -((theta1 - sz / 2) + 0.5)
    off = math.floor((n1 + 1.0 - sz) / 2)
    xstart, ystart, zstart = math.floor(xc), math.floor(yc), math.floor(theta4)
    xc, yc, zc = xc - xstart, yc - ystart, theta4 - zstart
    delta = np.zeros(64)
    for i in range(4):
        for j in range(4):
            for k in range(4):
                delta[i * 16 + j * 4 + k] = zc**i * yc**j * xc**k
    image = np.zeros((sz, sz))
    for ii in range(sz):
        for jj in range(sz):
            a = min(max(ii + xstart + off, 0), n1 - 1)
            b = min(max(jj + ystart + off, 0), n2 - 1)
            c = min(max(zstart, 0), n3 - 1)
            image[ii, jj] = delta @ coeff[a, b, c]
    return image


@pytest.fixture(scope="module")
def spline() -> CubicSplinePSF:
    astig = AstigmaticPSF(sigma0_px=(1.2, 1.3), focus_nm=(-200.0, 250.0), depth_nm=(400.0, 400.0))
    z_nm = np.arange(-600.0, 600.0 + DZ_NM / 2, DZ_NM)
    return CubicSplinePSF.from_stack(psf_stack_from_model(astig, z_nm, 15), DZ_NM)


def _emitters(n: int, seed: int, z_max: float):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n), rng.uniform(-z_max, z_max, n)


def _evaluate(psf: CubicSplinePSF, dx, dy, z, size: int) -> np.ndarray:
    t = [torch.as_tensor(v, dtype=torch.float64) for v in (dx, dy, z)]
    return psf.evaluate(*t, size).numpy()


def _random_smap_coeff(seed: int, shape=(10, 10, 8)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(*shape, 64)).astype(np.float32)


def test_written_file_follows_smap_conventions(spline: CubicSplinePSF, tmp_path) -> None:
    path = write_smap_3dcal(spline, tmp_path / "psf_3dcal.mat")
    mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    cspline = mat["SXY"].cspline
    coeff = cspline.coeff  # a 1x1 cell squeezes to its content
    assert coeff.shape == (14, 14, 60, 64) and coeff.dtype == np.float32
    assert cspline.x0 == 8  # 1-based centre of a 15 px stack
    dx, dy, z = _emitters(5, seed=0, z_max=580.0)
    want = _evaluate(spline, dx, dy, z, 9)
    for n in range(5):
        got = smap_model(coeff, cspline.z0, cspline.dz, dx[n], dy[n], z[n], 9)
        np.testing.assert_allclose(got, want[n], rtol=0, atol=1e-6 * want[n].max())
    assert mat["SXY"].PSF.shape == (15, 15, 61)  # rows x columns x frames


# random coefficients: any amount of light
@pytest.mark.filterwarnings("ignore:.*times an emitter.s light:denseloc.errors.DenselocWarning")
def test_reader_follows_smap_conventions(tmp_path) -> None:
    # random coefficients, written without denseloc's writer: only the conventions link them
    coeff = _random_smap_coeff(seed=1)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = coeff
    path = tmp_path / "random_3dcal.mat"
    z0, dz = 3.0, 25.0
    scipy.io.savemat(path, {"SXY": {"cspline": {"coeff": cell, "x0": 6.0, "z0": z0, "dz": dz}}})
    psf = read_smap_3dcal(path)
    assert psf.shape == (8, 10, 10) and psf.source == str(path)
    assert psf.z_range_nm == pytest.approx((-(8 - z0) * dz, z0 * dz))
    dx, dy, z = _emitters(6, seed=2, z_max=70.0)
    got = _evaluate(psf, dx, dy, z, 5)
    for n in range(6):
        want = smap_model(coeff.astype(np.float64), z0, dz, dx[n], dy[n], z[n], 5)
        np.testing.assert_allclose(got[n], want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_v5_round_trip(spline: CubicSplinePSF, tmp_path) -> None:
    loaded = read_smap_3dcal(write_smap_3dcal(spline, tmp_path / "a_3dcal.mat"))
    dx, dy, z = _emitters(200, seed=3, z_max=600.0)
    want = _evaluate(spline, dx, dy, z, 15)
    got = _evaluate(loaded, dx, dy, z, 15)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * want.max())  # coeff are single
    assert (loaded.x0, loaded.y0, loaded.z0, loaded.dz_nm) == (7.0, 7.0, 30.0, DZ_NM)


def test_layout_conversion_round_trip(spline: CubicSplinePSF) -> None:
    fields = smap_cspline_from_psf(spline)
    back = psf_from_smap_cspline(
        fields["coeff"].astype(np.float64), x0=fields["x0"], z0=fields["z0"], dz_nm=fields["dz"]
    )
    again = smap_cspline_from_psf(back)
    scale = np.abs(fields["coeff"]).max()
    np.testing.assert_allclose(again["coeff"], fields["coeff"], rtol=1e-6, atol=1e-12 * scale)
    assert (again["x0"], again["z0"], again["dz"]) == (fields["x0"], fields["z0"], fields["dz"])
    with pytest.raises(ValueError, match="upsample"):
        smap_cspline_from_psf(CubicSplinePSF(spline.coeff, dz_nm=20, x0=7, y0=7, z0=5, upsample=2))


# random coefficients: any amount of light
@pytest.mark.filterwarnings("ignore:.*times an emitter.s light:denseloc.errors.DenselocWarning")
def test_struct_array_without_cell(tmp_path) -> None:
    # SXY as a 1x2 struct array, coeff stored directly (no cell): index selects the element
    coeffs = [_random_smap_coeff(seed=s, shape=(6, 6, 5)) for s in (4, 5)]
    sxy = np.empty((1, 2), dtype=[("cspline", object)])
    for k, coeff in enumerate(coeffs):
        sxy[0, k]["cspline"] = {"coeff": coeff, "x0": 4.0, "z0": 2.0, "dz": 10.0}
    path = tmp_path / "two_3dcal.mat"
    scipy.io.savemat(path, {"SXY": sxy})
    for k, coeff in enumerate(coeffs):
        psf = read_smap_3dcal(path, index=k)
        got = _evaluate(psf, [0.1], [-0.2], [5.0], 3)[0]
        want = smap_model(coeff.astype(np.float64), 2.0, 10.0, 0.1, -0.2, 5.0, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())


def _write_matlab_v73(path, cspline_list: list[dict]) -> None:
    """A MATLAB v7.3 file holding SXY, a 1xK struct array whose cspline.coeff are 1x1 cells.

    As MATLAB does: 512-byte user block with the MAT header, arrays stored with reversed
    dimensions, struct -> group, struct-array fields and cells -> object references into
    ``#refs#``, MATLAB_class attributes.
    """
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        counter = iter(range(10_000))

        def matlab_class(obj, name: str) -> None:
            obj.attrs["MATLAB_class"] = np.bytes_(name)

        def put_array(group, name: str, value) -> h5py.Dataset:
            arr = np.asarray(value)
            arr = arr.reshape(1, 1) if arr.ndim == 0 else arr
            ds = group.create_dataset(name, data=arr.T)
            matlab_class(ds, "single" if arr.dtype == np.float32 else "double")
            return ds

        def put_refs(group, name: str, targets: list, cls: str | None) -> None:
            data = np.array([t.ref for t in targets], dtype=h5py.ref_dtype).reshape(-1, 1)
            ds = group.create_dataset(name, data=data)  # MATLAB 1xK -> HDF5 (K, 1)
            if cls:
                matlab_class(ds, cls)

        sxy = f.create_group("SXY")
        matlab_class(sxy, "struct")
        elements = []
        for fields in cspline_list:
            cs = refs.create_group(f"c{next(counter)}")
            matlab_class(cs, "struct")
            coeff = put_array(refs, f"a{next(counter)}", fields["coeff"])
            put_refs(cs, "coeff", [coeff], "cell")
            for key in ("x0", "z0", "dz"):
                put_array(cs, key, float(fields[key]))
            elements.append(cs)
        put_refs(sxy, "cspline", elements, None)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
    header += b"HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


# random coefficients: any amount of light
@pytest.mark.filterwarnings("ignore:.*times an emitter.s light:denseloc.errors.DenselocWarning")
def test_v73_struct_array_with_cells(spline: CubicSplinePSF, tmp_path) -> None:
    fields = smap_cspline_from_psf(spline)
    other = {"coeff": _random_smap_coeff(seed=6, shape=(6, 6, 5)), "x0": 4, "z0": 2, "dz": 10}
    path = tmp_path / "v73_3dcal.mat"
    _write_matlab_v73(path, [fields, other])
    with pytest.raises(NotImplementedError):  # really a v7.3 file for scipy
        scipy.io.loadmat(path)
    loaded = read_smap_3dcal(path)
    dx, dy, z = _emitters(100, seed=7, z_max=600.0)
    want = _evaluate(spline, dx, dy, z, 15)
    np.testing.assert_allclose(_evaluate(loaded, dx, dy, z, 15), want, atol=1e-6 * want.max())
    second = read_smap_3dcal(path, index=1)
    got = _evaluate(second, [0.3], [0.1], [-7.0], 3)[0]
    expected = smap_model(other["coeff"].astype(np.float64), 2, 10, 0.3, 0.1, -7.0, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_a_spline_with_more_light_than_an_emitter_is_warned_of(spline, tmp_path) -> None:
    fields = smap_cspline_from_psf(spline)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = fields["coeff"] * np.float32(1.3)  # as if the beads were brighter there
    path = tmp_path / "bright_3dcal.mat"
    scipy.io.savemat(path, {"SXY": {"cspline": {**fields, "coeff": cell}}})
    with pytest.warns(DenselocWarning, match=r"holds 1\.[23]\d times an emitter's light"):
        read_smap_3dcal(path)


def test_rejects_files_without_a_spline(tmp_path) -> None:
    no_sxy = tmp_path / "other.mat"
    scipy.io.savemat(no_sxy, {"x": np.ones(3)})
    with pytest.raises(InputFileError, match="no variable SXY"):
        read_smap_3dcal(no_sxy)
    text = tmp_path / "notes_3dcal.mat"
    text.write_text("this is not a MATLAB file")
    with pytest.raises(InputFileError, match=re.escape("notes_3dcal.mat")):
        read_smap_3dcal(text)
    no_cspline = tmp_path / "gauss_3dcal.mat"
    scipy.io.savemat(no_cspline, {"SXY": {"gauss_zfit": np.ones(3)}})
    with pytest.raises(InputFileError, match=re.escape("gauss_3dcal.mat")):
        read_smap_3dcal(no_cspline)
    with pytest.raises(InputFileError, match="file not found"):
        read_smap_3dcal(tmp_path / "missing.mat")
