"""Point-spread functions: expected fraction of an emitter's photons in each pixel.

Every PSF model implements one method, :meth:`evaluate`, on a square patch of odd size
centred on the pixel nearest to the emitter. Positions inside the package are pixel index
coordinates: the centre of pixel ``(row, col)`` is at ``(y, x) = (row, col)``, so a pixel
spans ``[col - 0.5, col + 0.5)``. Convert from nm with :func:`denseloc.table.nm_to_px`.

The Gaussian models are integrated over each pixel exactly (differences of error functions)
and return analytic derivatives with respect to x, y (px) and z (nm), which the Cramer-Rao
bound and the maximum-likelihood fitter use. The cubic-spline PSF from a bead calibration
(:mod:`denseloc.calibration.spline`) implements the same interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from denseloc.config import AstigmaticConfig

__all__ = [
    "PSF",
    "AstigmaticPSF",
    "GaussianPSF",
    "patch_origin",
    "place_patches",
    "render_patches",
]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@runtime_checkable
class PSF(Protocol):
    """The interface every PSF model implements."""

    is_3d: bool
    """Whether the PSF depends on z (False: z is ignored and simulated as 0)."""

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

        Parameters
        ----------
        dx_px, dy_px : Tensor of shape (N,)
            Emitter position relative to the centre of the patch's central pixel, in px.
        z_nm : Tensor of shape (N,)
            Axial position in nm.
        size : int
            Odd patch size in px.
        derivatives : bool
            Also return derivatives with respect to (x_px, y_px, z_nm).

        Returns
        -------
        Tensor of shape (N, size, size)
            Expected fraction of the emitter's photons in each pixel (rows = y).
        Tensor of shape (N, 3, size, size), optional
            Derivatives of that fraction with respect to x (1/px), y (1/px), z (1/nm).
        """
        ...

    def default_patch_size(self) -> int:
        """An odd patch size holding all but a negligible fraction of the photons."""
        ...


def axis_profile(
    d_px: torch.Tensor, sigma_px: torch.Tensor, size: int, derivatives: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pixel-integrated 1D Gaussian along one axis, and its derivatives.

    Returns the fractions (N, size), their derivative with respect to the emitter position,
    and with respect to sigma (both None unless `derivatives`).
    """
    pix = torch.arange(size, dtype=d_px.dtype, device=d_px.device) - size // 2
    sigma = sigma_px[:, None]
    upper = (pix + 0.5 - d_px[:, None]) / sigma
    lower = (pix - 0.5 - d_px[:, None]) / sigma
    frac = 0.5 * (torch.erf(upper / _SQRT2) - torch.erf(lower / _SQRT2))
    if not derivatives:
        return frac, None, None
    pdf_up = torch.exp(-0.5 * upper**2) * _INV_SQRT_2PI
    pdf_lo = torch.exp(-0.5 * lower**2) * _INV_SQRT_2PI
    d_pos = -(pdf_up - pdf_lo) / sigma
    d_sigma = -(pdf_up * upper - pdf_lo * lower) / sigma
    return frac, d_pos, d_sigma


def _separable(
    dx_px: torch.Tensor,
    dy_px: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    dsx_dz: torch.Tensor | None,
    dsy_dz: torch.Tensor | None,
    size: int,
    derivatives: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    fx, fx_pos, fx_sig = axis_profile(dx_px, sigma_x, size, derivatives)
    fy, fy_pos, fy_sig = axis_profile(dy_px, sigma_y, size, derivatives)
    image = fy[:, :, None] * fx[:, None, :]
    if not derivatives:
        return image
    d_x = fy[:, :, None] * fx_pos[:, None, :]
    d_y = fy_pos[:, :, None] * fx[:, None, :]
    if dsx_dz is None:
        d_z = torch.zeros_like(image)
    else:
        d_z = (fy[:, :, None] * fx_sig[:, None, :]) * dsx_dz[:, None, None] + (
            fy_sig[:, :, None] * fx[:, None, :]
        ) * dsy_dz[:, None, None]
    return image, torch.stack([d_x, d_y, d_z], dim=1)


def _odd(n: float) -> int:
    n = math.ceil(n)
    return n if n % 2 == 1 else n + 1


@dataclass(frozen=True)
class GaussianPSF:
    """Pixel-integrated isotropic 2D Gaussian (no z dependence).

    Parameters
    ----------
    sigma_px : float
        Standard deviation in px.
    """

    sigma_px: float
    is_3d: bool = False

    def __post_init__(self) -> None:
        if not self.sigma_px > 0:
            raise ValueError(f"sigma_px must be positive, got {self.sigma_px}")

    def evaluate(self, dx_px, dy_px, z_nm, size, *, derivatives=False):
        sigma = torch.full_like(dx_px, self.sigma_px)
        return _separable(dx_px, dy_px, sigma, sigma, None, None, size, derivatives)

    def default_patch_size(self) -> int:
        return _odd(2 * 4.5 * self.sigma_px + 1)


@dataclass(frozen=True)
class AstigmaticPSF:
    """Pixel-integrated elliptical Gaussian whose widths depend on z (Huang et al. 2008).

    ``sigma_a(z) = sigma0_a * sqrt(1 + u^2 + a3_a u^3 + a4_a u^4)`` with
    ``u = (z - focus_a) / depth_a`` for each axis ``a`` in (x, y).

    Parameters
    ----------
    sigma0_px : (float, float)
        In-focus widths (x, y) in px.
    focus_nm : (float, float)
        z at which the PSF is narrowest along x and along y.
    depth_nm : (float, float)
        Focal depth d per axis: the width grows by sqrt(2) at ``focus +- depth``.
    a3, a4 : (float, float)
        Higher-order coefficients per axis (0 for the ideal astigmatic model).
    z_range_nm : (float, float)
        z range over which the model is meant to be used (sets the default patch size); for
        a fit to beads, the range it was fitted over.
    pixel_size_nm : float, optional
        Pixel size the widths were calibrated at (None for a model not fitted to data).
    """

    sigma0_px: tuple[float, float]
    focus_nm: tuple[float, float]
    depth_nm: tuple[float, float]
    a3: tuple[float, float] = (0.0, 0.0)
    a4: tuple[float, float] = (0.0, 0.0)
    z_range_nm: tuple[float, float] = (-750.0, 750.0)
    is_3d: bool = True
    pixel_size_nm: float | None = None

    def __post_init__(self) -> None:
        if min(self.sigma0_px) <= 0 or min(self.depth_nm) <= 0:
            raise ValueError("sigma0_px and depth_nm must be positive")

    @classmethod
    def from_config(
        cls,
        config: AstigmaticConfig,
        z_range_nm: tuple[float, float],
        pixel_size_nm: float | None = None,
    ) -> AstigmaticPSF:
        """The model a configuration's (or a fit file's) astigmatic section describes."""
        return cls(
            sigma0_px=tuple(config.sigma0_px),
            focus_nm=tuple(config.focus_nm),
            depth_nm=tuple(config.depth_nm),
            a3=tuple(config.a3),
            a4=tuple(config.a4),
            z_range_nm=(float(z_range_nm[0]), float(z_range_nm[1])),
            pixel_size_nm=pixel_size_nm,
        )

    def sigmas(
        self, z_nm: torch.Tensor, *, derivatives: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Widths (sigma_x, sigma_y) in px at `z_nm`, and optionally d(sigma)/dz per nm."""
        out = []
        for a in (0, 1):
            u = (z_nm - self.focus_nm[a]) / self.depth_nm[a]
            raw = 1 + u**2 + self.a3[a] * u**3 + self.a4[a] * u**4
            poly = raw.clamp_min(1e-3)
            sigma = self.sigma0_px[a] * torch.sqrt(poly)
            out.append(sigma)
            if derivatives:
                dpoly = (2 * u + 3 * self.a3[a] * u**2 + 4 * self.a4[a] * u**3) / self.depth_nm[a]
                dpoly = torch.where(raw > 1e-3, dpoly, torch.zeros_like(dpoly))  # width clamped
                out.append(self.sigma0_px[a] * 0.5 * dpoly / torch.sqrt(poly))
        if derivatives:
            return out[0], out[2], out[1], out[3]
        return out[0], out[1]

    def evaluate(self, dx_px, dy_px, z_nm, size, *, derivatives=False):
        if derivatives:
            sx, sy, dsx, dsy = self.sigmas(z_nm, derivatives=True)
            return _separable(dx_px, dy_px, sx, sy, dsx, dsy, size, True)
        sx, sy = self.sigmas(z_nm)
        return _separable(dx_px, dy_px, sx, sy, None, None, size, False)

    def default_patch_size(self) -> int:
        z = torch.linspace(*self.z_range_nm, 301, dtype=torch.float64)
        sx, sy = self.sigmas(z)
        return _odd(2 * 4.0 * float(torch.maximum(sx, sy).max()) + 1)


def patch_origin(
    x_px: torch.Tensor, y_px: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split positions into patch origins and offsets from the central pixel.

    Returns ``(row0, col0, dx_px, dy_px)``: the top-left pixel of each patch (long) and the
    position relative to the centre of the patch's central pixel, in ``[-0.5, 0.5]``.
    """
    col_c = torch.round(x_px)
    row_c = torch.round(y_px)
    half = size // 2
    return (row_c.long() - half, col_c.long() - half, x_px - col_c, y_px - row_c)


def render_patches(
    psf: PSF,
    frame: torch.Tensor,
    x_px: torch.Tensor,
    y_px: torch.Tensor,
    z_nm: torch.Tensor,
    photons: torch.Tensor,
    shape: tuple[int, int, int],
    *,
    size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render emitters into a stack of frames (expected photons per pixel).

    Parameters
    ----------
    psf : PSF
        The PSF model.
    frame : Tensor of shape (N,), long
        Index of the frame each emitter is drawn into.
    x_px, y_px, z_nm, photons : Tensor of shape (N,)
        Position (pixel index coordinates, nm) and photon count of each emitter.
    shape : (T, H, W)
        Shape of the stack.
    size : int, optional
        Patch size; the PSF's default if None. Light outside the patch is dropped.
    out : Tensor of shape (T, H, W), optional
        Stack to add to (in place).

    Returns
    -------
    Tensor of shape (T, H, W)
    """
    if out is None:
        out = torch.zeros(shape, dtype=x_px.dtype, device=x_px.device)
    if frame.numel() == 0:
        return out
    size = size or psf.default_patch_size()
    row0, col0, dx, dy = patch_origin(x_px, y_px, size)
    patches = psf.evaluate(dx, dy, z_nm, size) * photons[:, None, None]
    out += place_patches(patches.to(out.dtype), frame, row0, col0, shape)
    return out


def place_patches(
    patches: torch.Tensor,
    frame: torch.Tensor,
    row0: torch.Tensor,
    col0: torch.Tensor,
    shape: tuple[int, int, int],
) -> torch.Tensor:
    """Add square patches (N, S, S) into a stack of frames (T, H, W), clipped to the frames.

    Patch ``n`` goes to frame ``frame[n]`` with its top-left pixel at ``(row0[n], col0[n])``
    (any integers, e.g. from :func:`patch_origin`); overlapping patches add up.
    """
    n_frames, height, width = shape
    size = patches.shape[-1]
    # Render into a stack padded by a patch on every side, so no patch needs clipping; light
    # falling outside the frame (and patches of emitters far outside) lands in the margin.
    pad = size
    padded_w = width + 2 * pad
    padded = torch.zeros(
        (n_frames, height + 2 * pad, padded_w), dtype=patches.dtype, device=patches.device
    )
    if frame.numel() == 0:
        return padded[:, pad : pad + height, pad : pad + width]
    row0 = (row0 + pad).clamp(0, height + pad)
    col0 = (col0 + pad).clamp(0, width + pad)
    offs = torch.arange(size, device=patches.device)
    start = (frame * (height + 2 * pad) + row0) * padded_w + col0
    flat = start[:, None, None] + offs[None, :, None] * padded_w + offs[None, None, :]
    padded.view(-1).index_add_(0, flat.reshape(-1), patches.reshape(-1))
    return padded[:, pad : pad + height, pad : pad + width]
