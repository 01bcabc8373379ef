"""From network output maps to localizations (DESIGN section 4).

Spatial integration: candidates are the local maxima of the detection probability p (3x3,
ties broken towards the lower pixel index); each candidate's p is summed with its four
neighbours (clamped to 1), so an emitter split across two pixels counts once. A detection is
kept when the integrated p reaches the threshold. Optional filters on the predicted sigmas
follow.

Mixture readout: the loss (DESIGN section 3) trains the network's prediction for an emitter
as a mixture over pixels, weights p, each component a Normal with its own mean and sigma. The
mixture of the 3x3 pixels around a detection is read out by its mean and its standard
deviation (law of total variance: the p-weighted mean of ``sigma_k^2 + (mu_k - mean)^2``).
Reading the single maximum pixel instead ignores the spread between components and makes
the sigmas 1.2-1.9 times too small, more so at high density; the mixture's are calibrated
(RMS(error / sigma) 0.99-1.04 at 0.1 and 2 emitters/um^2 for the bundled model, as predicted)
and its z more accurate on sparse frames (``training_default_he_60min_final.md``). The background
is read at the detection's pixel (NaN for a model without a background head); ``p`` is the
integrated probability above.

Sigma factors: a model folder records, per readout, the factors by axis that make its sigmas
calibrated on its validation set (RMS(error / sigma) over the matched validation emitters,
:func:`denseloc.train.trainer.fit_readouts`); ``sigma_scale`` applies them. The mixture's
factors are close to 1 for the bundled model, but not for every network: one of ThunderSTORM's
2D setting, trained for 3-9 emitters/um^2, predicts mixture sigmas 1.5-1.6 times too large, at
every density. The model
folder also names the readout to use by default, chosen on the same validation set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from denseloc.nn.model import MIXTURE_CHANNELS, MIXTURE_SIGMA_CHANNELS, Scaling

__all__ = ["SIGMA_AXES", "Readout", "filter_by_sigma", "maps_to_table", "spatial_integration"]

Readout = Literal["mixture", "max"]
"""How a detection's values and sigmas are read from the output maps."""

_CANDIDATE_P = 0.05
SIGMA_AXES = ("photons", "x", "y", "z")
"""The axes of a model's sigma factors, in the column order of :func:`_mixture_readout`."""


def spatial_integration(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of p (B, H, W) and their 4-neighbourhood-integrated probability.

    Returns a boolean map of maxima (p > 0.05) and the integrated probability map.
    """
    _, height, width = p.shape
    # A tiny index-dependent offset breaks ties between equal neighbours deterministically.
    # In float64: in float32 an offset this small would vanish next to p (eps 6e-8).
    tie = torch.arange(height * width, device=p.device, dtype=torch.float64).view(height, width)
    keyed = p.double() - tie * (1e-9 / (height * width))
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
    core: tuple[slice, slice] | None = None,
    readout: Readout = "mixture",
    sigma_scale: Mapping[str, float] | None = None,
    is_3d: bool,
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
        Minimum integrated detection probability. Candidates are local maxima of p above
        0.05, so a threshold below 0.05 keeps only those candidates.
    frames : array of shape (B,), optional
        Frame index of each output (default: 0..B-1).
    origin_px : (row, col)
        Position of the maps' pixel (0, 0) in the full frame (tiles).
    core : (slice, slice), optional
        Keep only detections whose pixel lies in these rows and columns of the maps (the core
        of a tile; the rest of the tile is context).
    readout : {"mixture", "max"}
        Photons, position and their sigmas from the 3x3 mixture around each detection
        (default, see the module docstring) or from its maximum pixel alone (DECODE's
        readout). The background is always read at the maximum.
    sigma_scale : mapping, optional
        Factors for the predicted sigmas by axis (``photons``, ``x``, ``y``, ``z``; missing
        axes 1), as a model folder records them for each readout (``Trainer.finish`` fits them
        on validation data).
    is_3d : bool
        Whether the model is of a 3D PSF (``config.psf.is_3d``; no default, so that no caller
        forgets it). A 2D model's z maps are untrained (see
        :func:`~denseloc.nn.loss.gmm_loss`), so ``z_nm`` is 0 and ``sigma_z_nm`` NaN, as the
        MLE fitter reports 2D fits.
    """
    if readout not in get_args(Readout):
        raise ValueError(f"readout must be one of {get_args(Readout)}, got {readout!r}")
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
    mean, sd = _mixture_readout(output, p, b, row, col, centre_only=readout == "max")
    if sigma_scale:
        sd = sd * np.array([float(sigma_scale.get(axis, 1.0)) for axis in SIGMA_AXES])
    vals = output[b, :, row, col].cpu().double().numpy()  # (N, 10)
    frame_of = np.arange(output.shape[0]) if frames is None else np.asarray(frames)
    x_px = col.cpu().numpy() + mean[:, 1] + origin_px[1]
    y_px = row.cpu().numpy() + mean[:, 2] + origin_px[0]
    table = pd.DataFrame(
        {
            "frame": frame_of[b.cpu().numpy()],
            "x_nm": px_to_nm(x_px, pixel_size_nm),
            "y_nm": px_to_nm(y_px, pixel_size_nm),
            "z_nm": mean[:, 3] * scaling.z_nm if is_3d else 0.0,
            "photons": mean[:, 0] * scaling.photons,
            "bg": vals[:, 9] * scaling.bg_photons,
            "p": integrated[b, row, col].cpu().double().numpy(),
            "sigma_x_nm": sd[:, 1] * pixel_size_nm,
            "sigma_y_nm": sd[:, 2] * pixel_size_nm,
            "sigma_z_nm": sd[:, 3] * scaling.z_nm if is_3d else np.nan,
            "sigma_photons": sd[:, 0] * scaling.photons,
        }
    )
    return validate(table, name="network output")


def _mixture_readout(
    output: torch.Tensor,
    p: torch.Tensor,
    b: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    *,
    centre_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the p-weighted mixture of the 3x3 pixels at each detection.

    Returns two (N, 4) arrays for (photons, x, y, z) in network units, x and y as offsets in
    px from the detection's pixel centre. Pixels outside the maps get no weight;
    `centre_only` gives all the weight to the detection's own pixel.
    """
    _, _, height, width = output.shape
    step = torch.tensor([-1, 0, 1], device=output.device)
    d_row, d_col = (g.flatten() for g in torch.meshgrid(step, step, indexing="ij"))  # (9,)
    rows, cols = row[:, None] + d_row, col[:, None] + d_col  # (N, 9)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    weight = (p[b[:, None], rows, cols] * inside).double()
    if centre_only:
        weight = ((d_row == 0) & (d_col == 0)).double().expand_as(weight)
    weight = weight / weight.sum(1, keepdim=True)  # the centre has p > 0.05
    vals = output[b[:, None], :, rows, cols].double()  # (N, 9, 10)
    zero = torch.zeros_like(d_col, dtype=torch.float64)
    offsets = torch.stack([zero, d_col.double(), d_row.double(), zero], dim=1)  # (9, 4)
    mu = vals[..., list(MIXTURE_CHANNELS)] + offsets  # (N, 9, 4): photons, x, y, z
    sigma = vals[..., list(MIXTURE_SIGMA_CHANNELS)]
    mean = (weight[..., None] * mu).sum(1)
    var = (weight[..., None] * (sigma**2 + (mu - mean[:, None]) ** 2)).sum(1)
    return mean.cpu().numpy(), var.sqrt().cpu().numpy()


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
