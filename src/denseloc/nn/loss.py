"""DECODE's Gaussian-mixture loss (DESIGN section 3), vectorised over the batch.

For one frame with true emitters e_1..e_M and the network output (see
:mod:`denseloc.nn.model`):

- count term: the number of detections is Normal with mean ``sum(p)`` and variance
  ``sum(p (1 - p))``; the loss is the negative log-likelihood of M;
- localization term: a mixture over all pixels k with weights ``p_k / sum(p)``; component k
  is an independent 4D Normal with mean ``(photons_k, x_k + dx_k, y_k + dy_k, z_k)`` and
  standard deviations ``(sigma_photons_k, sigma_x_k, sigma_y_k, sigma_z_k)``; the loss is the
  negative log-likelihood of every true emitter, computed with log-sum-exp. For a 2D PSF
  (``is_3d=False``) the components are 3D Normals over (photons, x, y);
- background: mean squared error of the background map, when predicted.

Targets are given in the network's units: photons / ``scaling.photons``, x and y in pixel
index coordinates of the frame (centre of pixel (0, 0) at 0.0), z / ``scaling.z_nm``. Target
lists are padded to a common length with a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from denseloc.nn.model import MIXTURE_CHANNELS, MIXTURE_SIGMA_CHANNELS

__all__ = ["LossParts", "detection_bce", "gmm_loss"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class LossParts:
    """Per-sample loss terms (B,) and their batch mean as the total."""

    total: torch.Tensor
    count: torch.Tensor
    localization: torch.Tensor
    background: torch.Tensor


def gmm_loss(
    output: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    bg_target: torch.Tensor | None = None,
    *,
    bg_weight: float = 1.0,
    count_by_emitters: bool = False,
    is_3d: bool = True,
) -> LossParts:
    """Gaussian-mixture likelihood loss.

    Parameters
    ----------
    output : Tensor of shape (B, 10, H, W)
        Network output (channels as in :data:`denseloc.nn.model.CHANNELS`).
    targets : Tensor of shape (B, K, 4)
        True emitters (photons, x_px, y_px, z) in network units, padded.
    mask : Tensor of shape (B, K), bool
        Which target rows are real emitters.
    bg_target : Tensor of shape (B, H, W), optional
        True background in units of ``scaling.bg_photons``.
    bg_weight : float
        Weight of the background term.
    count_by_emitters : bool
        Multiply each frame's count term by its number of true emitters (at least 1), as
        DECODE does (which multiplies by the number itself, so that frames without emitters
        add no count term), instead of weighting it 1. The mixture term has one summand per
        emitter; this gives the count term the same scale in crowded frames.
    is_3d : bool
        Include z in the mixture's components. For a 2D PSF (False) the z and sigma_z
        channels get no gradient and the targets' z column is ignored: with z targets of 0
        everywhere, sigma_z shrank to its floor and differences between the components' z of
        a thousandth of ``scaling.z_nm`` decided which component explained an emitter.

    Returns
    -------
    LossParts
        ``total`` is the scalar batch mean; the parts are per sample.
    """
    _, _, height, width = output.shape
    out = output.flatten(2) if output.dtype == torch.float64 else output.float().flatten(2)
    p_logit = out[:, 0]
    p = torch.sigmoid(p_logit)
    mask_f = mask.to(out.dtype)

    # Count term: Normal(M | sum p, sum p(1-p)).
    mean = p.sum(1)
    var = (p * (1 - p)).sum(1).clamp_min(1e-6)
    n_true = mask_f.sum(1)
    count = 0.5 * torch.log(var) + _LOG_SQRT_2PI + (n_true - mean) ** 2 / (2 * var)
    if count_by_emitters:
        count = count * n_true.clamp_min(1.0)

    # Mixture term. sum_d ((t_d - mu_d) / s_d)^2 expands into t^2 a - 2 t b + c with
    # a = 1/s^2, b = mu/s^2, c = mu^2/s^2: one batched matrix product instead of a
    # (B, K, 4, HW) tensor. Float64 keeps the cancellation between the terms harmless.
    rows = torch.arange(height, dtype=torch.float64, device=out.device)
    cols = torch.arange(width, dtype=torch.float64, device=out.device)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    o64 = out.double()
    grid = torch.stack([torch.zeros_like(grid_x), grid_x, grid_y, torch.zeros_like(grid_x)])
    mu = o64[:, list(MIXTURE_CHANNELS)] + grid.flatten(1)  # (B, 4, HW): photons, x, y, z
    sigma = o64[:, list(MIXTURE_SIGMA_CHANNELS)]
    t = targets.double()  # (B, K, 4)
    if not is_3d:
        mu, sigma, t = mu[:, :3], sigma[:, :3], t[..., :3]
    inv_var = sigma**-2
    lhs = torch.cat([t**2, -2 * t], dim=2)  # (B, K, 2D)
    rhs = torch.cat([inv_var, mu * inv_var], dim=1)  # (B, 2D, HW)
    const = (mu**2 * inv_var).sum(1) + 2 * torch.log(sigma).sum(1)  # (B, HW)
    log_weight = (F.logsigmoid(p_logit) - torch.log(mean.clamp_min(1e-6))[:, None]).double()
    log_normal = -0.5 * (torch.bmm(lhs, rhs) + const[:, None]) - mu.shape[1] * _LOG_SQRT_2PI
    log_lik = torch.logsumexp(log_weight[:, None] + log_normal, dim=2)  # (B, K)
    localization = -(log_lik * mask.to(log_lik.dtype)).sum(1).to(out.dtype)

    if bg_target is not None:
        background = ((out[:, 9] - bg_target.flatten(1).to(out.dtype)) ** 2).mean(1)
    else:
        background = torch.zeros_like(count)
    total = (count + localization + bg_weight * background).mean()
    return LossParts(total, count, localization, background)


def detection_bce(output: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of p against the pixels holding a target, summed per sample.

    An auxiliary term for the start of training only (``train.detection_warmup_steps``): from
    a uniform p the mixture loss first learns offsets and widths at every pixel and only
    slowly concentrates p on the emitters, a plateau of hundreds of steps that costs minutes
    on a CPU. This term breaks the symmetry at once; its weight decays to 0.
    """
    batch, _, height, width = output.shape
    label = torch.zeros_like(output[:, 0])
    b, k = torch.nonzero(mask, as_tuple=True)
    rows = targets[b, k, 2].round().long().clamp(0, height - 1)
    cols = targets[b, k, 1].round().long().clamp(0, width - 1)
    label[b, rows, cols] = 1.0
    return F.binary_cross_entropy_with_logits(output[:, 0], label, reduction="sum") / batch
