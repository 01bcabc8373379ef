"""Cubic-spline PSF: a tricubic interpolant of a sampled, pixel-integrated 3D PSF.

A *PSF stack* is an array of shape (Z, S, S), S odd: plane ``k`` holds the pixel-integrated
PSF of an emitter at ``z = (k - z0_index) * dz_nm`` placed exactly on the centre of the
central sample; sample ``(r, c)`` is the fraction of the photons in the pixel whose centre is
``((c - (S - 1) / 2) / upsample, (r - (S - 1) / 2) / upsample)`` px away from the emitter
(x = column, y = row). With ``upsample = 1`` the samples are simply the pixels of an image of
the emitter; ``upsample = u > 1`` samples the same function every ``1/u`` px.

The spline interpolates the stack: it passes through every sample and is C2 continuous. It is
the tensor product of one-dimensional *not-a-knot* cubic splines along z, y and x, the
construction of SMAP's ``Spline3D_interp`` (which fits each voxel's polynomial to MATLAB's
``interp3(..., 'spline')``; SMAP smooths the bead stack before that, this module does not).
Inside each voxel of the sample grid it is a tricubic polynomial with 64 coefficients, the
representation of Lekien & Marsden (2005) and SMAP (their local scheme is only C1; here the
coefficients come from global spline interpolation)::

    f = sum over pz, py, px of coeff[iz, iy, ix, 16*pz + 4*py + px] * tz**pz * ty**py * tx**px

where ``(ix, iy, iz)`` is the voxel and ``(tx, ty, tz)`` in [0, 1] the position inside it, in
voxel units. Voxels are ``1/upsample`` px laterally and ``dz_nm`` axially. ``coeff`` therefore
has shape (Nz, Ny, Nx, 64) = (Z - 1, S - 1, S - 1, 64), and ``coeff.reshape(Nz, Ny, Nx, 4, 4, 4)``
is indexed ``[iz, iy, ix, pz, py, px]``.

Coordinates in spline units: the lateral spline coordinate of a point ``(x, y)`` px from the
emitter is ``(x0 + x * upsample, y0 + y * upsample)``, the axial one of ``z_nm`` is
``z0 + z_nm / dz_nm``. The PSF is zero outside ``[0, Nx] x [0, Ny]`` laterally; z is clamped
to the calibrated range (the z derivative is zero where z was clamped).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from scipy.interpolate import CubicSpline

from denseloc import __version__
from denseloc._atomic import atomic_path
from denseloc.errors import InputFileError
from denseloc.sim.psf import PSF

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CubicSplinePSF",
    "psf_stack_from_model",
    "tricubic_coefficients",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "denseloc.cspline_psf"
"""Value of the ``format`` attribute of a saved spline PSF file."""
FORMAT_VERSION = 1
"""Version of the saved layout; files from a newer version are refused."""

COEFF_LAYOUT = "coeff[iz, iy, ix, 16*pz + 4*py + px] multiplies tz**pz * ty**py * tx**px"

# q(t) = p(t + 1): b_j = sum_{i >= j} binom(i, j) a_i  (continues the last voxel by one voxel)
_SHIFT = np.array([[math.comb(i, j) for i in range(4)] for j in range(4)], dtype=np.float64)


def tricubic_coefficients(stack: np.ndarray | torch.Tensor) -> np.ndarray:
    """Tricubic coefficients of the not-a-knot cubic-spline interpolant of a PSF stack.

    Parameters
    ----------
    stack : array of shape (Z, Y, X)
        Samples on a unit grid (z, y, x), each axis with at least 2 samples.

    Returns
    -------
    ndarray of shape (Z - 1, Y - 1, X - 1, 64), float64
        Coefficients per voxel in the layout of this module (index ``16*pz + 4*py + px``),
        with voxel-local coordinates in [0, 1].
    """
    data = np.asarray(
        stack.detach().cpu().numpy() if isinstance(stack, torch.Tensor) else stack,
        dtype=np.float64,
    )
    if data.ndim != 3 or min(data.shape) < 2:
        raise ValueError(f"stack must have shape (Z, Y, X) with every axis >= 2, got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("stack contains NaN or infinite values")
    # Interpolate along x, then y, then z. Each pass replaces the samples of one axis by its
    # intervals and adds an axis of 4 polynomial coefficients (ascending powers) in front of the
    # coefficient axes of earlier passes, so the result is (Nz, Ny, Nx, pz, py, px). The 1D
    # spline operators are linear and act on separate axes, so this is the tensor-product
    # interpolant.
    out = data
    for axis in (2, 1, 0):
        n = out.shape[axis]
        spline = CubicSpline(np.arange(n, dtype=np.float64), out, axis=axis, bc_type="not-a-knot")
        # spline.c: (4 powers descending, n - 1 intervals, the other axes of `out` in order)
        c = np.moveaxis(spline.c[::-1], 1, axis + 1)  # interval axis back in place of `axis`
        out = np.moveaxis(c, 0, 3)  # power axis after the three grid axes
    nz, ny, nx = out.shape[:3]
    return np.ascontiguousarray(out.reshape(nz, ny, nx, 64))


def _polyvec(t: torch.Tensor) -> torch.Tensor:
    """Powers (1, t, t^2, t^3) -> (N, 4)."""
    one = torch.ones_like(t)
    t2 = t * t
    return torch.stack([one, t, t2, t2 * t], dim=-1)


def _dpolyvec(t: torch.Tensor) -> torch.Tensor:
    """Derivatives of the powers (0, 1, 2t, 3t^2) -> (N, 4)."""
    zero = torch.zeros_like(t)
    one = torch.ones_like(t)
    return torch.stack([zero, one, 2 * t, 3 * t * t], dim=-1)


def _basis(tx: torch.Tensor, ty: torch.Tensor, tz: torch.Tensor, derivatives: bool) -> torch.Tensor:
    """Monomial basis per emitter, (N, K, 64) with K = 1 or 4 (value, d/dtx, d/dty, d/dtz)."""
    px, py, pz = _polyvec(tx), _polyvec(ty), _polyvec(tz)

    def outer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (c[:, :, None, None] * b[:, None, :, None] * a[:, None, None, :]).reshape(-1, 64)

    if not derivatives:
        return outer(px, py, pz)[:, None]
    return torch.stack(
        [
            outer(px, py, pz),
            outer(_dpolyvec(tx), py, pz),
            outer(px, _dpolyvec(ty), pz),
            outer(px, py, _dpolyvec(tz)),
        ],
        dim=1,
    )


def _evaluation_table(coeff: np.ndarray) -> np.ndarray:
    """Coefficients arranged for plane-wise matrix products: (Nz, 64, (Ny + 1) * (Nx + 1)).

    One voxel is appended at the high end of y and x that continues the last voxel's
    polynomial (Taylor shift), so the last sample (local coordinate 1 of the last voxel) is
    reachable at local coordinate 0 of the appended voxel.
    """
    nz, ny, nx, _ = coeff.shape
    c = coeff.reshape(nz, ny, nx, 4, 4, 4)
    last_y = np.einsum("ji,zxpiq->zxpjq", _SHIFT, c[:, -1])
    c = np.concatenate([c, last_y[:, None]], axis=1)
    last_x = np.einsum("ji,zypqi->zypqj", _SHIFT, c[:, :, -1])
    c = np.concatenate([c, last_x[:, :, None]], axis=2)
    table = c.reshape(nz, (ny + 1) * (nx + 1), 64).transpose(0, 2, 1)
    return np.ascontiguousarray(table)


class CubicSplinePSF:
    """Tricubic-spline PSF from a bead calibration (implements :class:`denseloc.sim.psf.PSF`).

    Parameters
    ----------
    coeff : array of shape (Nz, Ny, Nx, 64)
        Tricubic coefficients per voxel; index ``16*pz + 4*py + px`` multiplies
        ``tz**pz * ty**py * tx**px`` (see the module docstring).
    dz_nm : float
        Axial voxel size in nm.
    x0, y0 : float
        Lateral position of the emitter (PSF centre) in spline voxel units, 0-based: the
        spline coordinate where the emitter sits. ``(Nx / 2, Ny / 2)`` for a centred stack.
    z0 : float
        Axial spline coordinate of the focal plane (z = 0 nm), 0-based voxel units.
    upsample : int
        Lateral samples per px: the lateral voxel size is ``1 / upsample`` px.
    z_range_nm : (float, float), optional
        z range to clamp to; the spline's full range ``((0 - z0) dz, (Nz - z0) dz)`` if None.
    stack : array of shape (Nz + 1, Ny + 1, Nx + 1), optional
        The sampled PSF the spline was fitted to (kept for reports and saved with the PSF).
    pixel_size_nm : float, optional
        Camera pixel size (in the sample plane) the calibration belongs to.
    source : str, optional
        Where the calibration came from (bead file, SMAP file).
    metadata : mapping, optional
        Further free-form information, saved with the PSF.
    """

    is_3d: bool = True

    def __init__(
        self,
        coeff: np.ndarray | torch.Tensor,
        *,
        dz_nm: float,
        x0: float,
        y0: float,
        z0: float,
        upsample: int = 1,
        z_range_nm: tuple[float, float] | None = None,
        stack: np.ndarray | torch.Tensor | None = None,
        pixel_size_nm: float | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(coeff, torch.Tensor):
            coeff = coeff.detach().cpu().numpy()
        coeff = np.ascontiguousarray(coeff, dtype=np.float64)
        if coeff.ndim != 4 or coeff.shape[3] != 64 or min(coeff.shape[:3]) < 1:
            raise ValueError(f"coeff must have shape (Nz, Ny, Nx, 64), got {coeff.shape}")
        if not np.all(np.isfinite(coeff)):
            raise ValueError("coeff contains NaN or infinite values")
        if not dz_nm > 0:
            raise ValueError(f"dz_nm must be positive, got {dz_nm}")
        if int(upsample) != upsample or upsample < 1:
            raise ValueError(f"upsample must be a positive integer, got {upsample}")
        nz, ny, nx, _ = coeff.shape
        if not (0 <= x0 <= nx and 0 <= y0 <= ny):
            raise ValueError(
                f"PSF centre (x0, y0) = ({x0}, {y0}) lies outside the spline grid "
                f"[0, {nx}] x [0, {ny}]"
            )
        full = ((0.0 - z0) * dz_nm, (nz - z0) * dz_nm)
        if z_range_nm is None:
            z_range_nm = full
        lo, hi = (float(v) for v in z_range_nm)
        tol = 1e-9 * dz_nm * nz
        if not (full[0] - tol <= lo < hi <= full[1] + tol):
            raise ValueError(
                f"z_range_nm ({lo}, {hi}) must be an increasing range inside the spline's range "
                f"({full[0]}, {full[1]}) nm"
            )
        if stack is not None:
            if isinstance(stack, torch.Tensor):
                stack = stack.detach().cpu().numpy()
            stack = np.asarray(stack)
            if stack.shape != (nz + 1, ny + 1, nx + 1):
                raise ValueError(
                    f"stack must have shape {(nz + 1, ny + 1, nx + 1)} to match coeff, "
                    f"got {stack.shape}"
                )
        self._coeff = coeff
        self.dz_nm = float(dz_nm)
        self.x0 = float(x0)
        self.y0 = float(y0)
        self.z0 = float(z0)
        self.upsample = int(upsample)
        self.z_range_nm = (max(lo, full[0]), min(hi, full[1]))
        self.stack = stack
        self.pixel_size_nm = None if pixel_size_nm is None else float(pixel_size_nm)
        self.source = source
        self.metadata = dict(metadata or {})
        self._w_lo = self.z0 + self.z_range_nm[0] / self.dz_nm
        self._w_hi = self.z0 + self.z_range_nm[1] / self.dz_nm
        self._table64: np.ndarray | None = None
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_stack(
        cls,
        stack: np.ndarray | torch.Tensor,
        dz_nm: float,
        z0_index: float | None = None,
        *,
        upsample: int = 1,
        z_range_nm: tuple[float, float] | None = None,
        pixel_size_nm: float | None = None,
        source: str | None = None,
    ) -> CubicSplinePSF:
        """Fit the interpolating spline to a sampled PSF stack.

        Parameters
        ----------
        stack : array of shape (Z, S, S)
            Pixel-integrated PSF, emitter at the centre of the central sample, S odd; planes
            ``dz_nm`` apart, samples ``1 / upsample`` px apart. Normalise it beforehand (the
            spline reproduces the values as given: photon fractions if each plane sums to ~1).
        dz_nm : float
            Distance between planes in nm.
        z0_index : float, optional
            Index of the focal plane (z = 0); the central plane ``(Z - 1) / 2`` if None.
        upsample : int
            Lateral samples per px.
        z_range_nm, pixel_size_nm, source
            See :class:`CubicSplinePSF`.

        Returns
        -------
        CubicSplinePSF
        """
        if isinstance(stack, torch.Tensor):
            stack = stack.detach().cpu().numpy()
        stack = np.asarray(stack, dtype=np.float64)
        if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[1] % 2 == 0:
            raise ValueError(f"stack must have shape (Z, S, S) with S odd, got {stack.shape}")
        if stack.shape[0] < 2 or stack.shape[1] < 3:
            raise ValueError(f"stack needs at least 2 planes and 3 x 3 samples, got {stack.shape}")
        n_planes, n_lat = stack.shape[0], stack.shape[1]
        if z0_index is None:
            z0_index = (n_planes - 1) / 2
        if not 0 <= z0_index <= n_planes - 1:
            raise ValueError(f"z0_index must lie in [0, {n_planes - 1}], got {z0_index}")
        centre = (n_lat - 1) / 2
        return cls(
            tricubic_coefficients(stack),
            dz_nm=dz_nm,
            x0=centre,
            y0=centre,
            z0=float(z0_index),
            upsample=upsample,
            z_range_nm=z_range_nm,
            stack=stack,
            pixel_size_nm=pixel_size_nm,
            source=source,
        )

    # ------------------------------------------------------------------ properties
    @property
    def coeff(self) -> np.ndarray:
        """Coefficients, (Nz, Ny, Nx, 64) float64 (read-only view)."""
        view = self._coeff.view()
        view.flags.writeable = False
        return view

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of voxels (Nz, Ny, Nx)."""
        nz, ny, nx, _ = self._coeff.shape
        return nz, ny, nx

    @property
    def voxel_size_px(self) -> float:
        """Lateral voxel size in px (``1 / upsample``)."""
        return 1.0 / self.upsample

    def default_patch_size(self) -> int:
        """Largest odd patch whose pixels all lie inside the spline when the emitter is centred."""
        _, ny, nx = self.shape
        half = min(self.x0, nx - self.x0, self.y0, ny - self.y0) / self.upsample
        return 2 * math.floor(half + 1e-9) + 1

    def __repr__(self) -> str:
        nz, ny, nx = self.shape
        return (
            f"CubicSplinePSF(voxels=(z={nz}, y={ny}, x={nx}), dz_nm={self.dz_nm}, "
            f"upsample={self.upsample}, centre=({self.x0}, {self.y0}), z0={self.z0}, "
            f"z_range_nm={self.z_range_nm})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table64"] = None  # caches are rebuilt on first use (keeps pickles small)
        state["_tables"] = {}
        return state

    # ------------------------------------------------------------------ evaluation
    def _table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._tables:
            if self._table64 is None:
                self._table64 = _evaluation_table(self._coeff)
            self._tables[key] = torch.as_tensor(self._table64).to(device=device, dtype=dtype)
        return self._tables[key]

    @staticmethod
    def _planes(basis: torch.Tensor, iz: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Spline on every voxel of each emitter's z plane: (N, K, (Ny+1)*(Nx+1)).

        Emitters are grouped by z voxel so that each group is one dense matrix product.
        """
        n, k, _ = basis.shape
        m = table.shape[2]
        order = torch.argsort(iz)
        planes, counts = torch.unique_consecutive(iz[order], return_counts=True)
        rows = basis[order].reshape(n * k, 64)
        out = basis.new_empty(n * k, m)
        start = 0
        for plane, count in zip(planes.tolist(), counts.tolist(), strict=True):
            block = slice(start * k, (start + count) * k)
            torch.mm(rows[block], table[plane], out=out[block])
            start += count
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=order.device)
        return out.view(n, k, m).index_select(0, inverse)

    def evaluate(
        self,
        dx_px: torch.Tensor,
        dy_px: torch.Tensor,
        z_nm: torch.Tensor,
        size: int,
        *,
        derivatives: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fraction of photons per pixel on a ``size x size`` patch.

        Pixel ``(r, c)`` (rows = y, the centre pixel at ``r = c = size // 2``) of an emitter at
        ``(dx_px, dy_px)`` from the centre of the central pixel holds the spline at
        ``(c - size // 2 - dx_px, r - size // 2 - dy_px)`` px from the PSF centre, or 0 where
        that point is outside the spline. z is clamped to :attr:`z_range_nm`.

        Parameters
        ----------
        dx_px, dy_px : Tensor of shape (N,)
            Emitter position relative to the centre of the patch's central pixel, in px.
            Their floating dtype (float32 or float64) and device set those of the result.
        z_nm : Tensor of shape (N,)
            Axial position in nm.
        size : int
            Odd patch size in px.
        derivatives : bool
            Also return derivatives with respect to (x_px, y_px, z_nm).

        Returns
        -------
        Tensor of shape (N, size, size)
            Expected fraction of the emitter's photons in each pixel.
        Tensor of shape (N, 3, size, size), optional
            Derivatives with respect to x (1/px), y (1/px) and z (1/nm); the z derivative is 0
            where z was clamped.
        """
        if size < 1 or size % 2 == 0:
            raise ValueError(f"size must be a positive odd number, got {size}")
        if not dx_px.dtype.is_floating_point:
            raise TypeError(f"dx_px must be a floating-point tensor, got {dx_px.dtype}")
        dtype, device = dx_px.dtype, dx_px.device
        dy_px = dy_px.to(dtype)
        z_nm = z_nm.to(dtype)
        n = dx_px.shape[0]
        n_k = 4 if derivatives else 1
        if n == 0:
            empty = dx_px.new_zeros(0, size, size)
            return (empty, dx_px.new_zeros(0, 3, size, size)) if derivatives else empty
        nz, ny, nx = self.shape
        u = self.upsample
        half = size // 2

        # spline coordinate of pixel (r, c): (bx + c u, by + r u); the voxel fraction is the
        # same for every pixel because u is an integer
        bx = self.x0 - (half + dx_px) * u
        by = self.y0 - (half + dy_px) * u
        fx, fy = torch.floor(bx), torch.floor(by)
        tx, ty = bx - fx, by - fy
        w_raw = self.z0 + z_nm / self.dz_nm
        w = w_raw.clamp(self._w_lo, self._w_hi)
        iz = torch.floor(w).clamp(0, nz - 1)
        tz = w - iz

        basis = _basis(tx, ty, tz, derivatives)
        planes = self._planes(basis, iz.long(), self._table(dtype, device))

        steps = torch.arange(size, device=device) * u
        iy = fy.long()[:, None] + steps
        ix = fx.long()[:, None] + steps
        # voxel index n (the appended one) is valid only at its local coordinate 0
        ok_y = (iy >= 0) & ((iy < ny) | ((iy == ny) & (ty == 0)[:, None]))
        ok_x = (ix >= 0) & ((ix < nx) | ((ix == nx) & (tx == 0)[:, None]))
        lin = iy.clamp(0, ny)[:, :, None] * (nx + 1) + ix.clamp(0, nx)[:, None, :]
        vals = torch.gather(planes, 2, lin.view(n, 1, size * size).expand(n, n_k, size * size))
        vals = vals.view(n, n_k, size, size) * (ok_y[:, :, None] & ok_x[:, None, :])[:, None]
        if not derivatives:
            return vals[:, 0]
        inside_z = ((w_raw >= self._w_lo) & (w_raw <= self._w_hi)).to(dtype) / self.dz_nm
        d_xyz = torch.stack(
            [-u * vals[:, 1], -u * vals[:, 2], vals[:, 3] * inside_z[:, None, None]], dim=1
        )
        return vals[:, 0], d_xyz

    # ------------------------------------------------------------------ files
    def save(
        self,
        path: str | os.PathLike,
        *,
        pixel_size_nm: float | None = None,
        source: str | None = None,
        extra_attrs: Mapping[str, Any] | None = None,
        coefficients: bool | None = None,
    ) -> Path:
        """Write the PSF to a self-describing HDF5 file (atomically).

        Parameters
        ----------
        path : path-like
            Output file (conventionally ``*.h5``).
        pixel_size_nm : float, optional
            Camera pixel size in nm the calibration belongs to; the PSF's own
            :attr:`pixel_size_nm` if None. Required one way or the other.
        source : str, optional
            Where the calibration came from; the PSF's own :attr:`source` if None.
        extra_attrs : mapping, optional
            Further attributes (str, numbers or arrays), stored in the ``metadata`` group and
            returned in :attr:`metadata` by :meth:`load`.
        coefficients : bool, optional
            Store the 64 coefficients per voxel. By default they are stored only when the PSF
            has no sampled stack: the stack determines them exactly and is 64 times smaller,
            so :meth:`load` recomputes them from it (a calibration file is then a few hundred
            kB instead of tens of MB).

        Returns
        -------
        Path
            The written file.
        """
        pixel_size_nm = self.pixel_size_nm if pixel_size_nm is None else float(pixel_size_nm)
        if pixel_size_nm is None or not pixel_size_nm > 0:
            raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm}")
        source = self.source if source is None else source
        metadata = {**self.metadata, **dict(extra_attrs or {})}
        path = Path(path)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["software"] = "denseloc"
                f.attrs["software_version"] = __version__
                f.attrs["coeff_layout"] = COEFF_LAYOUT
                f.attrs["pixel_size_nm"] = pixel_size_nm
                f.attrs["source"] = "" if source is None else str(source)
                f.attrs["dz_nm"] = self.dz_nm
                f.attrs["upsample"] = self.upsample
                f.attrs["voxel_size_px"] = self.voxel_size_px
                f.attrs["x0"] = self.x0
                f.attrs["y0"] = self.y0
                f.attrs["z0"] = self.z0
                f.attrs["z_range_nm"] = np.asarray(self.z_range_nm, dtype=np.float64)
                if coefficients or (coefficients is None and self.stack is None):
                    f.create_dataset("coeff", data=self._coeff, compression="gzip", shuffle=True)
                if self.stack is not None:
                    f.create_dataset("stack", data=self.stack, compression="gzip", shuffle=True)
                group = f.create_group("metadata")
                for key, value in metadata.items():
                    group.attrs[str(key)] = value
        logger.info("saved spline PSF %s to %s", self.shape, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CubicSplinePSF:
        """Read a PSF written by :meth:`save`.

        Raises
        ------
        denseloc.errors.InputFileError
            If the file is missing, not HDF5, not a denseloc spline PSF, from a newer format
            version, or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "file not found")
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
                if fmt != FORMAT_NAME:
                    raise InputFileError(
                        path,
                        f"not a denseloc spline PSF (format attribute {fmt!r}, "
                        f"expected {FORMAT_NAME!r})",
                    )
                version = int(f.attrs["format_version"])
                if version > FORMAT_VERSION:
                    raise InputFileError(
                        path,
                        f"format version {version} is newer than this denseloc "
                        f"({__version__}) reads ({FORMAT_VERSION}); update denseloc",
                    )
                a = f.attrs
                source = str(a["source"]) or None
                stack = f["stack"][()] if "stack" in f else None
                if "coeff" in f:
                    coeff = f["coeff"][()]
                elif stack is not None:
                    coeff = tricubic_coefficients(stack)
                else:
                    raise InputFileError(path, "holds neither coefficients nor a PSF stack")
                psf = cls(
                    coeff,
                    dz_nm=float(a["dz_nm"]),
                    x0=float(a["x0"]),
                    y0=float(a["y0"]),
                    z0=float(a["z0"]),
                    upsample=int(a["upsample"]),
                    z_range_nm=tuple(float(v) for v in a["z_range_nm"]),
                    stack=stack,
                    pixel_size_nm=float(a["pixel_size_nm"]),
                    source=source,
                    metadata={k: _attr_value(v) for k, v in f["metadata"].attrs.items()}
                    if "metadata" in f
                    else None,
                )
        except InputFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputFileError(path, f"corrupt or unreadable spline PSF file ({exc})") from exc
        return psf


def _attr_value(value: Any) -> Any:
    """HDF5 attribute -> plain Python where possible."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def psf_stack_from_model(
    psf: PSF,
    z_nm: Sequence[float] | np.ndarray | torch.Tensor,
    size: int,
    *,
    upsample: int = 1,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Sample a PSF model on a stack grid (emitter at the centre of the central pixel).

    Parameters
    ----------
    psf : PSF
        Any PSF model.
    z_nm : sequence of float, shape (Z,)
        Axial positions of the planes in nm.
    size : int
        Odd lateral extent in px.
    upsample : int
        Lateral samples per px.
    dtype : torch.dtype
        Floating dtype of the evaluation and the result.

    Returns
    -------
    Tensor of shape (Z, S, S), S = upsample * (size - 1) + 1
        ``stack[k, r, c]`` = fraction of photons in the pixel centred
        ``((c - (S-1)/2) / upsample, (r - (S-1)/2) / upsample)`` px from an emitter at
        ``z_nm[k]`` (the layout :meth:`CubicSplinePSF.from_stack` expects).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number, got {size}")
    if int(upsample) != upsample or upsample < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample}")
    z = torch.as_tensor(np.asarray(z_nm, dtype=np.float64), dtype=dtype).reshape(-1)
    n_lat = upsample * (size - 1) + 1
    stack = torch.zeros(z.shape[0], n_lat, n_lat, dtype=dtype)
    zeros = torch.zeros_like(z)
    # sample offset (c - centre) / u = q + j / u: a pixel q of a patch whose emitter sits at -j/u
    for jy in range(upsample):
        for jx in range(upsample):
            patch = psf.evaluate(zeros - jx / upsample, zeros - jy / upsample, z, size)
            rows = len(range(jy, n_lat, upsample))
            cols = len(range(jx, n_lat, upsample))
            stack[:, jy::upsample, jx::upsample] = patch[:, :rows, :cols]
    return stack
