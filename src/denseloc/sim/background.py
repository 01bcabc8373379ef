"""Background: a uniform level per movie plus an optional smooth structured component.

The structured part is Perlin-like value noise: uniform random values on coarse grids at
three octaves (cell sizes ``scale``, ``scale / 2``, ``scale / 4``; weights 4:2:1), smoothly
interpolated (bicubic) to the frame, averaged with those weights and clipped to [0, 1], times
the amplitude. The average is not stretched to [0, 1]: its mean is 0.5 and its standard
deviation about 0.16 (measured on 64x64 px frames with a 20 px scale, whose minimum and
maximum were on average 0.13 and 0.87), so an amplitude ``A`` raises a movie's mean
background by ``A / 2`` above its uniform level. It is static over a movie, as
autofluorescence and out-of-focus light are over a few frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from denseloc.config import BackgroundConfig

__all__ = ["sample_background", "smooth_noise"]


def smooth_noise(
    n: int,
    frame_shape: tuple[int, int],
    scale_px: float,
    *,
    octaves: int = 3,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Multi-octave smooth noise with values in [0, 1] (mean 0.5), shape (n, H, W)."""
    height, width = frame_shape
    total = torch.zeros((n, 1, height, width), dtype=dtype, device=device)
    weights = [2.0 ** (octaves - 1 - k) for k in range(octaves)]
    for k, weight in enumerate(weights):
        cell = max(scale_px / 2**k, 1.0)
        gh, gw = math.ceil(height / cell) + 2, math.ceil(width / cell) + 2
        grid = torch.rand((n, 1, gh, gw), generator=generator, dtype=dtype, device=device)
        size = (round((gh - 1) * cell) + 1, round((gw - 1) * cell) + 1)
        fine = F.interpolate(grid, size=size, mode="bicubic", align_corners=True)
        total += weight * fine[:, :, :height, :width]
    return (total[:, 0] / sum(weights)).clamp_(0.0, 1.0)


def sample_background(
    config: BackgroundConfig,
    *,
    n_movies: int,
    frame_shape: tuple[int, int],
    pixel_size_nm: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Background in photons/px for each movie, shape (n_movies, H, W)."""
    lo, hi = config.level_photons
    level = torch.rand((n_movies, 1, 1), generator=generator, dtype=dtype, device=device)
    background = (lo + (hi - lo) * level).expand(n_movies, *frame_shape).clone()
    if config.structured_amplitude_photons > 0:
        noise = smooth_noise(
            n_movies,
            frame_shape,
            config.structured_scale_nm / pixel_size_nm,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        background += config.structured_amplitude_photons * noise
    return background
