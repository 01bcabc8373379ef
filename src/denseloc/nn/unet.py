"""A small U-Net: 3x3 convolutions with ELU, max-pool down, nearest-neighbour up, skips.

Convolutions followed by ELU start from He-normal weights (std ``sqrt(2 / fan_in)``) and zero
biases. PyTorch's default initialisation shrinks the signal by about ``sqrt(3)`` per layer;
through the two U-Nets of :class:`~denseloc.nn.model.DecodeNet` the heads then see feature maps
whose spatial variation is about 1/30 of the input's for simulated frames (1/150 for white
noise), and training starts with a plateau of a hundred or more steps with p uniform over the
frame (on some seeds it never leaves it).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet", "conv_block", "he_init", "unet_receptive_radius"]


def he_init(conv: nn.Conv2d) -> nn.Conv2d:
    """He-normal weights and zero bias for a convolution followed by ELU (in place)."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def conv_block(in_channels: int, out_channels: int, n_convs: int = 2) -> nn.Sequential:
    """`n_convs` 3x3 convolutions with 'same' padding, each followed by ELU."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        conv = nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)
        layers += [he_init(conv), nn.ELU()]
    return nn.Sequential(*layers)


def unet_receptive_radius(depth: int) -> int:
    """Upper bound on the receptive-field radius (px) of :class:`UNet` with `depth` stages.

    Two 3x3 convolutions at full resolution; per stage l down: the 2x2 pool (2**(l-1) px)
    and two convolutions at scale 2**l; per stage up: the nearest-neighbour upsampling
    (2**(l-1) px), the up-convolution and two merge convolutions at scale 2**(l-1).
    """
    radius = 2
    for level in range(1, depth + 1):
        half = 2 ** (level - 1)
        radius += half + 2 * 2**level  # down
        radius += half + half + 2 * half  # up
    return radius


class UNet(nn.Module):
    """U-Net with `depth` down/up stages; `filters` in the first, doubled per stage.

    Input (B, in_channels, H, W) with H and W multiples of ``2**depth``; output
    (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, filters: int, depth: int = 2):
        super().__init__()
        widths = [filters * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = conv_block(in_channels, widths[0])
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1]) for i in range(depth))
        self.up_conv = nn.ModuleList(
            he_init(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)) for i in range(depth)
        )
        self.merge = nn.ModuleList(conv_block(2 * widths[i], widths[i]) for i in range(depth))
        self.outc = nn.Conv2d(widths[0], out_channels, 1) if out_channels else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.act(self.up_conv[i](x))
            x = self.merge[i](torch.cat([skips.pop(), x], dim=1))
        return self.outc(x)
