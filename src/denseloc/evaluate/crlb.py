"""Cramer-Rao lower bound of single-emitter localization for any PSF model.

For an emitter with photons ``N`` on a uniform background ``b`` (photons/px), the expected
electrons in pixel k are ``mu_k = qe (N f_k(x, y, z) + b) + spurious``. With the camera's
excess-noise factor ``F`` (2 for an EMCCD, 1 otherwise) and read noise ``s`` (electrons, after
the EM gain ``G`` is divided out), the Fisher information is approximated by the Poisson-shift
model (Huang et al., Nat. Methods 2013, for sCMOS; the factor F for EMCCDs, Chao et al. 2013)::

    I_ij = sum_k (d mu_k / d theta_i)(d mu_k / d theta_j) / (F mu_k + s^2 / G^2)

over parameters ``theta = (x, y, z, N, b)`` (z omitted for 2D PSFs). The bound on the standard
deviation of an unbiased estimator is ``sqrt(diag(I^-1))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from denseloc.config import CameraConfig, Config
from denseloc.sim.psf import PSF

__all__ = [
    "NoiseModel",
    "add_crlb_columns",
    "crlb",
    "expected_and_jacobian",
    "fisher_information",
    "information_from_jacobian",
    "std_from_information",
]


@dataclass(frozen=True)
class NoiseModel:
    """What the Fisher information needs of the camera.

    Attributes
    ----------
    qe : float
        Quantum efficiency.
    excess_noise : float
        Variance multiplier of the gain register (2 for EMCCD).
    read_var_e2 : float
        Read-noise variance referred to the input of the gain register, electrons^2.
    spurious_e : float
        Spurious charge per pixel, electrons.
    """

    qe: float = 1.0
    excess_noise: float = 1.0
    read_var_e2: float = 0.0
    spurious_e: float = 0.0

    @classmethod
    def from_camera(cls, camera: CameraConfig) -> NoiseModel:
        """The noise model of a camera configuration."""
        return cls(
            qe=camera.qe,
            excess_noise=camera.excess_noise_factor,
            read_var_e2=(camera.read_noise_e / camera.em_gain) ** 2,
            spurious_e=camera.spurious_charge_e,
        )


def fisher_information(
    psf: PSF,
    z_nm: torch.Tensor,
    photons: torch.Tensor,
    bg: torch.Tensor,
    *,
    dx_px: torch.Tensor | None = None,
    dy_px: torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    size: int | None = None,
) -> torch.Tensor:
    """Fisher information matrices of single emitters.

    Parameters
    ----------
    psf : PSF
        The PSF model.
    z_nm, photons, bg : Tensor of shape (N,)
        Axial position, photons of the emitter, background photons per pixel.
    dx_px, dy_px : Tensor of shape (N,), optional
        Sub-pixel position relative to a pixel centre (0 if omitted).
    noise : NoiseModel
        Camera noise.
    size : int, optional
        Patch size (the PSF's default if None).

    Returns
    -------
    Tensor of shape (N, P, P)
        P = 5 for 3D PSFs, parameters (x [px], y [px], z [nm], photons, bg [photons/px]);
        P = 4 for 2D PSFs, without z.
    """
    size = size or psf.default_patch_size()
    dx_px = torch.zeros_like(z_nm) if dx_px is None else dx_px
    dy_px = torch.zeros_like(z_nm) if dy_px is None else dy_px
    f, df = psf.evaluate(dx_px, dy_px, z_nm, size, derivatives=True)
    mu, jac = expected_and_jacobian(f, df, photons, bg, is_3d=psf.is_3d)
    return information_from_jacobian(mu, jac, noise)


def expected_and_jacobian(
    f: torch.Tensor, df: torch.Tensor, photons: torch.Tensor, bg: torch.Tensor, *, is_3d: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected photons per pixel ``N f + b`` and its Jacobian.

    Parameters
    ----------
    f, df : Tensor of shape (N, S, S) and (N, 3, S, S)
        PSF fractions and their derivatives (x, y, z), from ``PSF.evaluate``.
    photons, bg : Tensor of shape (N,)

    Returns
    -------
    Tensor of shape (N, S*S), Tensor of shape (N, P, S*S)
        Expected photons and derivatives with respect to (x, y, [z,] photons, bg).
    """
    n = photons[:, None, None]
    grads = [n * df[:, 0], n * df[:, 1]]
    if is_3d:
        grads.append(n * df[:, 2])
    grads += [f, torch.ones_like(f)]
    mu = (n * f + bg[:, None, None]).flatten(1)
    return mu, torch.stack(grads, dim=1).flatten(2)


def information_from_jacobian(
    mu: torch.Tensor, jac: torch.Tensor, noise: NoiseModel = NoiseModel()
) -> torch.Tensor:
    """Fisher information (N, P, P) from expected photons (N, K) and Jacobian (N, P, K)."""
    electrons = noise.qe * mu + noise.spurious_e
    weight = noise.qe**2 / (noise.excess_noise * electrons + noise.read_var_e2)
    return torch.einsum("npk,nqk,nk->npq", jac, jac, weight)


def std_from_information(info: torch.Tensor, is_3d: bool) -> torch.Tensor:
    """Standard deviations (N, 5) of (x, y, z, photons, bg); z is NaN for 2D models."""
    var = torch.linalg.inv(info).diagonal(dim1=1, dim2=2)
    std = var.clamp_min(0).sqrt()
    if not is_3d:
        nan = torch.full_like(std[:, :1], float("nan"))
        std = torch.cat([std[:, :2], nan, std[:, 2:]], dim=1)
    return std


def crlb(
    psf: PSF,
    z_nm: torch.Tensor,
    photons: torch.Tensor,
    bg: torch.Tensor,
    *,
    dx_px: torch.Tensor | None = None,
    dy_px: torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    size: int | None = None,
) -> torch.Tensor:
    """Cramer-Rao bound (standard deviations) of (x [px], y [px], z [nm], photons, bg).

    Same parameters as :func:`fisher_information`. Returns a tensor of shape (N, 5); for a 2D
    PSF the z column is NaN.
    """
    info = fisher_information(
        psf, z_nm, photons, bg, dx_px=dx_px, dy_px=dy_px, noise=noise, size=size
    )
    return std_from_information(info, psf.is_3d)


def add_crlb_columns(
    truth: pd.DataFrame, config: Config, *, bg_photons: float | np.ndarray | None = None
) -> pd.DataFrame:
    """Add ``crlb_x_nm, crlb_y_nm, crlb_z_nm`` (per emitter and frame) to a ground truth.

    Each row's bound uses its own photons in that frame, its z, the background and the camera
    of `config` (PSF from ``config.psf``).

    Parameters
    ----------
    truth : DataFrame
        Ground truth with columns ``x_nm, y_nm, z_nm, photons``.
    config : Config
        The simulation's configuration.
    bg_photons : float or array of shape (len(truth),), optional
        Background photons per pixel at each emitter; defaults to the middle of
        ``config.background.level_photons``, or a ``bg`` column when present.
    """
    from denseloc.sim.simulator import psf_from_config

    psf = psf_from_config(config.psf, config.emitters.z_range_nm)
    if bg_photons is None:
        bg_photons = truth["bg"].to_numpy() if "bg" in truth else np.mean(
            config.background.level_photons
        )
    px = config.image.pixel_size_nm
    n = len(truth)
    as_t = lambda a: torch.as_tensor(np.broadcast_to(a, (n,)).copy(), dtype=torch.float64)  # noqa: E731
    x_px = truth["x_nm"].to_numpy() / px - 0.5
    y_px = truth["y_nm"].to_numpy() / px - 0.5
    out = truth.copy()
    if n == 0:
        for col in ("crlb_x_nm", "crlb_y_nm", "crlb_z_nm"):
            out[col] = np.array([], dtype=float)
        return out
    bound = crlb(
        psf,
        as_t(truth["z_nm"].to_numpy()),
        as_t(truth["photons"].to_numpy()).clamp_min(1e-3),
        as_t(bg_photons),
        dx_px=as_t(x_px - np.round(x_px)),
        dy_px=as_t(y_px - np.round(y_px)),
        noise=NoiseModel.from_camera(config.camera),
    ).numpy()
    out["crlb_x_nm"] = bound[:, 0] * px
    out["crlb_y_nm"] = bound[:, 1] * px
    out["crlb_z_nm"] = bound[:, 2]
    return out
