"""The DECODE network: frame-analysis U-Net, temporal-context U-Net and output heads.

Each of the `context_frames` input frames (t-1, t, t+1; t-2 .. t+2; or t alone) goes through
the same frame-analysis U-Net; the feature maps are concatenated and pass through the
temporal-context U-Net; four heads (conv 3x3 + ELU, conv 1x1) predict, per pixel:

====  ==============  =========================================================
ch    name            activation and unit
====  ==============  =========================================================
0     p logit         sigmoid -> detection probability
1     photons         sigmoid, in units of ``scaling.photons``
2,3   dx, dy          tanh, offset from the pixel centre in px
4     z               tanh, in units of ``scaling.z_nm``
5,6   sigma_x, _y     sigmoid x 3 + 0.001, px
7     sigma_z         sigmoid x 3 + 0.001, units of ``scaling.z_nm``
8     sigma_photons   sigmoid x 3 + 0.001, units of ``scaling.photons``
9     background      sigmoid, units of ``scaling.bg_photons``; NaN if no head
====  ==============  =========================================================

Frames of any size are padded to a multiple of ``2**depth`` and cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from denseloc.nn.unet import UNet, he_init, unet_receptive_radius

__all__ = ["CHANNELS", "MIXTURE_CHANNELS", "MIXTURE_SIGMA_CHANNELS", "DecodeNet", "Scaling"]

CHANNELS = (
    "p_logit", "photons", "dx", "dy", "z", "sigma_x", "sigma_y", "sigma_z", "sigma_photons", "bg",
)  # fmt: skip
"""Names of the output channels, in order."""

MIXTURE_CHANNELS = (1, 2, 3, 4)
"""Channels of a mixture component's mean: photons, dx, dy, z (the loss's and the readout's
order; dx and dy are offsets from the pixel centre)."""
MIXTURE_SIGMA_CHANNELS = (8, 5, 6, 7)
"""Channels of their standard deviations, in the same order."""


@dataclass(frozen=True)
class Scaling:
    """Units of the network's inputs and outputs, derived from the simulation config.

    Attributes
    ----------
    input_offset : float
        Subtracted from input frames (photons/px): the mean background.
    input_scale : float
        Divides input frames after the offset (photons/px): a typical emitter peak.
    photons : float
        Largest photon count the photon head can output.
    z_nm : float
        Largest |z| the z head can output.
    bg_photons : float
        Largest background the background head can output, photons/px.
    """

    input_offset: float
    input_scale: float
    photons: float
    z_nm: float
    bg_photons: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _head(features: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        he_init(nn.Conv2d(features, features, 3, padding=1)),
        nn.ELU(),
        nn.Conv2d(features, out_channels, 1),
    )


class DecodeNet(nn.Module):
    """Two-stage U-Net with DECODE's output heads.

    Parameters
    ----------
    filters : int
        Filters of the first U-Net stage (doubled per down stage).
    depth : int
        Down/up stages per U-Net.
    context_frames : int
        1 (single frame), 3 (t-1, t, t+1) or 5 (t-2 .. t+2).
    predict_bg : bool
        Whether to predict the background map.
    context_filters : int, optional
        Filters of the temporal-context U-Net's first stage (and of the heads); default
        `filters`, as in DECODE.
    raw_to_context : bool
        Pass each scaled input frame to the temporal-context U-Net beside its features, so
        that it can sum the frames' pixels where an emitter stays on (DECODE: features only).
    """

    def __init__(
        self, filters: int = 16, depth: int = 2, context_frames: int = 3, predict_bg: bool = True,
        context_filters: int | None = None, raw_to_context: bool = False,
    ) -> None:
        super().__init__()
        if context_frames not in (1, 3, 5):
            raise ValueError(f"context_frames must be 1, 3 or 5, got {context_frames}")
        self.filters = filters
        self.depth = depth
        self.context_frames = context_frames
        self.predict_bg = predict_bg
        self.context_filters = filters if context_filters is None else context_filters
        self.raw_to_context = raw_to_context
        self.features = filters + 1 if raw_to_context else filters  # per frame
        width = self.context_filters
        self.frame_net = UNet(1, 0, filters, depth)
        self.context_net = UNet(context_frames * self.features, 0, width, depth)
        self.head_p = _head(width, 1)
        self.head_mean = _head(width, 4)
        self.head_sigma = _head(width, 4)
        self.head_bg = _head(width, 1) if predict_bg else None
        with torch.no_grad():  # start with few detections: p ~ 0.01 everywhere
            self.head_p[-1].bias.fill_(-4.0)

    @property
    def multiple(self) -> int:
        """Frame sizes are padded to a multiple of this."""
        return 2**self.depth

    @property
    def receptive_radius(self) -> int:
        """Pixels from an output pixel to the farthest input pixel that can change it.

        An upper bound from the architecture: two U-Nets and the heads' 3x3 convolution.
        Tiles that overlap by this much give the same outputs as the whole frame.
        """
        return 2 * unet_receptive_radius(self.depth) + 1

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame-analysis features of single frames (N, 1, H, W) -> (N, F, H, W); with
        `raw_to_context`, the frame itself is the last of F = filters + 1."""
        features = self.frame_net(frames)
        return torch.cat([features, frames], dim=1) if self.raw_to_context else features

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Outputs (B, 10, H, W) from concatenated frame features (B, C*F, H, W)."""
        x = self.context_net(features)
        p_logit = self.head_p(x)
        mean = self.head_mean(x)
        sigma = torch.sigmoid(self.head_sigma(x)) * 3.0 + 0.001
        photons = torch.sigmoid(mean[:, :1])
        offsets = torch.tanh(mean[:, 1:4])
        if self.head_bg is not None:
            bg = torch.sigmoid(self.head_bg(x))
        else:
            bg = torch.full_like(p_logit, float("nan"))  # not predicted: no number to report
        return torch.cat([p_logit, photons, offsets, sigma, bg], dim=1)

    def forward(self, frames: torch.Tensor, *, channels_last: bool | None = None) -> torch.Tensor:
        """Outputs (B, 10, H, W) for scaled input frames (B, context_frames, H, W).

        `channels_last` as in :meth:`forward_windows`; default: the input's memory format (a
        single frame, whose two layouts coincide, counts as channels-last).
        """
        if frames.ndim != 4 or frames.shape[1] != self.context_frames:
            raise ValueError(
                f"expected input of shape (B, {self.context_frames}, H, W), "
                f"got {tuple(frames.shape)}"
            )
        batch, n_ctx, height, width = frames.shape
        if channels_last is None:
            channels_last = frames.is_contiguous(memory_format=torch.channels_last)
        features = self.padded_features(
            frames.reshape(batch * n_ctx, height, width), channels_last=channels_last
        )
        return self.from_windows(features, None, (height, width), channels_last=channels_last)

    def forward_windows(self, frames: torch.Tensor, windows: torch.Tensor, *,
                        channels_last: bool | None = None) -> torch.Tensor:
        """Outputs (B, 10, H, W) for windows of frames sharing frame features.

        Parameters
        ----------
        frames : Tensor of shape (N, H, W)
            Scaled frames of one or more movies, concatenated.
        windows : Tensor of shape (B, context_frames), long
            Indices in `frames` of each window's frames, in time order (usually consecutive;
            a repeated index is a replicated neighbour, as at the ends of a movie).
        channels_last : bool, optional
            Run the convolutions in channels-last memory format; default: on the CPU, where
            it is faster.

        Each frame goes through the frame-analysis U-Net once, however many windows use it.
        """
        if windows.ndim != 2 or windows.shape[1] != self.context_frames:
            raise ValueError(f"expected windows of shape (B, {self.context_frames}), "
                             f"got {tuple(windows.shape)}")
        features = self.padded_features(frames, channels_last=channels_last)
        return self.from_windows(features, windows, frames.shape[-2:], channels_last=channels_last)

    def padded_features(self, frames: torch.Tensor, *,
                        channels_last: bool | None = None) -> torch.Tensor:
        """Frame-analysis features (N, F, H', W') of scaled frames (N, H, W), the frames padded
        (replicating their edges) to a multiple of :attr:`multiple`; `channels_last` as in
        :meth:`forward_windows`."""
        _, height, width = frames.shape
        pad_h = (-height) % self.multiple
        pad_w = (-width) % self.multiple
        x = frames[:, None]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if channels_last is None:
            channels_last = frames.device.type == "cpu"
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.frame_features(x)

    def from_windows(self, features: torch.Tensor, windows: torch.Tensor | None,
                     shape: tuple[int, int], *, channels_last: bool | None = None) -> torch.Tensor:
        """Outputs (B, 10, H, W) for windows (B, context_frames) of indices into the frame
        features (N, F, H', W') of :meth:`padded_features` (None: consecutive groups of
        ``context_frames`` features, no gather), cropped to the frames' `shape` (H, W)."""
        if windows is not None:
            features = features[windows.flatten()]
        stacked = features.reshape(-1, self.context_frames * self.features, *features.shape[-2:])
        if channels_last is None:
            channels_last = features.device.type == "cpu"
        if channels_last:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        height, width = shape
        return self.from_features(stacked)[:, :, :height, :width]

    def config(self) -> dict[str, int | bool]:
        """Constructor arguments (saved with a trained model; `context_filters` only when it
        differs from `filters`, so that versions without the option load the others)."""
        out = {
            "filters": self.filters,
            "depth": self.depth,
            "context_frames": self.context_frames,
            "predict_bg": self.predict_bg,
        }
        if self.context_filters != self.filters:
            out["context_filters"] = self.context_filters
        if self.raw_to_context:
            out["raw_to_context"] = True
        return out
