"""From network output maps to localizations (DESIGN section 4).

Spatial integration: candidates are the local maxima of the detection probability p (3x3,
ties broken towards the lower pixel index); each candidate's p is summed with its four
neighbours (clamped to 1), so an emitter split across two pixels counts once; the other
channels are read at the maximum. A detection is kept when the integrated p reaches the
threshold. Optional filters on the predicted sigmas follow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from denseloc.nn.model import Scaling

__all__ = ["filter_by_sigma", "maps_to_table", "spatial_integration"]

_CANDIDATE_P = 0.05


def spatial_integration(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of p (B, H, W) and their 4-neighbourhood-integrated probability.

    Returns a boolean map of maxima (p > 0.05) and the integrated probability map.
    """
    _, height, width = p.shape
    # A tiny index-dependent offset breaks ties between equal neighbours deterministically.
    tie = torch.arange(height * width, device=p.device, dtype=p.dtype).view(height, width)
    keyed = p - tie * (1e-9 / (height * width))
    pooled = F.max_pool2d(keyed[:, None], 3, stride=1, padding=1)[:, 0]
    is_max = (keyed == pooled) & (p > _CANDIDATE_P)
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=p.dtype, device=p.device)
    integrated = F.conv2d(p[:, None], cross.view(1, 1, 3, 3), padding=1)[:, 0].clamp_max(1.0)
    return is_max, integrated


def maps_to_table(
    output: torch.Tensor,
    scaling: Scaling,
    *,
    pixel_size_nm: float,
    threshold: float = 0.5,
    frames: torch.Tensor | np.ndarray | None = None,
    origin_px: tuple[int, int] = (0, 0),
    sigma_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    core: tuple[slice, slice] | None = None,
) -> pd.DataFrame:
    """Localizations from network output (B, 10, H, W).

    Parameters
    ----------
    output : Tensor of shape (B, 10, H, W)
        Network output (see :mod:`denseloc.nn.model`).
    scaling : Scaling
        The model's units.
    pixel_size_nm : float
        Pixel size.
    threshold : float
        Minimum integrated detection probability.
    frames : array of shape (B,), optional
        Frame index of each output (default: 0..B-1).
    origin_px : (row, col)
        Position of the maps' pixel (0, 0) in the full frame (tiles).
    sigma_scale : (float, float, float)
        Calibration factors of the predicted sigmas (x, y, z), from validation data.
    core : (slice, slice), optional
        Keep only detections whose pixel lies in these rows and columns of the maps (the core
        of a tile; the rest of the tile is context).
    """
    from denseloc.table import px_to_nm, validate

    output = output.detach().float()
    p = torch.sigmoid(output[:, 0])
    is_max, integrated = spatial_integration(p)
    keep = is_max & (integrated >= threshold)
    if core is not None:
        inside = torch.zeros_like(keep)
        inside[:, core[0], core[1]] = True
        keep &= inside
    b, row, col = torch.nonzero(keep, as_tuple=True)
    vals = output[b, :, row, col].cpu().double().numpy()  # (N, 10)
    rows, cols = row.cpu().numpy(), col.cpu().numpy()
    frame_of = np.arange(output.shape[0]) if frames is None else np.asarray(frames)
    x_px = cols + vals[:, 2] + origin_px[1]
    y_px = rows + vals[:, 3] + origin_px[0]
    table = pd.DataFrame(
        {
            "frame": frame_of[b.cpu().numpy()],
            "x_nm": px_to_nm(x_px, pixel_size_nm),
            "y_nm": px_to_nm(y_px, pixel_size_nm),
            "z_nm": vals[:, 4] * scaling.z_nm,
            "photons": vals[:, 1] * scaling.photons,
            "bg": vals[:, 9] * scaling.bg_photons,
            "p": integrated[b, row, col].cpu().double().numpy(),
            "sigma_x_nm": vals[:, 5] * pixel_size_nm * sigma_scale[0],
            "sigma_y_nm": vals[:, 6] * pixel_size_nm * sigma_scale[1],
            "sigma_z_nm": vals[:, 7] * scaling.z_nm * sigma_scale[2],
            "sigma_photons": vals[:, 8] * scaling.photons,
        }
    )
    return validate(table, name="network output")


def filter_by_sigma(
    table: pd.DataFrame,
    *,
    max_sigma_nm: float | None = None,
    quantile: float | None = None,
) -> pd.DataFrame:
    """Drop localizations with large predicted lateral uncertainty.

    `max_sigma_nm` is an absolute cut on ``sqrt(sigma_x^2 + sigma_y^2)``; `quantile` keeps the
    given fraction with the smallest uncertainty.
    """
    if table.empty or (max_sigma_nm is None and quantile is None):
        return table
    lateral = np.hypot(table["sigma_x_nm"], table["sigma_y_nm"])
    keep = np.ones(len(table), dtype=bool)
    if max_sigma_nm is not None:
        keep &= lateral <= max_sigma_nm
    if quantile is not None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        keep &= lateral <= np.quantile(lateral, quantile)
    return table[keep].reset_index(drop=True)
