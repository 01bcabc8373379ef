"""Blinking emitters: positions, brightness and on-times, expanded to per-frame records.

Model (DESIGN section 1). For a movie of T frames with mean ``n`` emitters on per frame
(density x area, or a count) and mean on-time ``tau`` frames, emitters switch on at a
constant rate ``n / (tau + 1)`` per frame over the movie padded by ``ceil(6 tau) + 1`` frames on
both sides; each stays on for an Exponential(tau) time, so an emitter touches on average
``tau + 1`` frames and ``n`` are on (at least partly) in every frame. Photons in a frame are the
emitter's brightness (Normal(mean, std), clamped > 0) times the fraction of the frame it was on.
An emitter keeps its id in every frame it spans.

Positions are uniform over the frame (``structure: uniform``, training) or drawn along random
filaments fixed per movie (``structure: filaments``, a structure to render): worm-like curves
with the configured persistence length whose z follows a slow sinusoid inside the z range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from denseloc.config import EmitterConfig

__all__ = ["Emitters", "mean_on_per_frame", "sample_emitters"]


@dataclass
class Emitters:
    """Per-frame emitter records (one row per emitter and frame it is on in).

    Attributes
    ----------
    frame : Tensor of shape (M,), long
        Global frame index ``movie * n_frames + frame_in_movie``.
    id : Tensor of shape (M,), long
        Emitter identity, constant across the frames an emitter spans.
    x_px, y_px : Tensor of shape (M,)
        Position in pixel index coordinates (centre of pixel (0, 0) at 0.0).
    z_nm : Tensor of shape (M,)
        Axial position.
    photons : Tensor of shape (M,)
        Photons emitted in that frame.
    """

    frame: torch.Tensor
    id: torch.Tensor
    x_px: torch.Tensor
    y_px: torch.Tensor
    z_nm: torch.Tensor
    photons: torch.Tensor

    def __len__(self) -> int:
        return int(self.frame.numel())

    def select(self, mask: torch.Tensor) -> Emitters:
        """Rows where `mask` is True."""
        return Emitters(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def to_table(self, pixel_size_nm: float) -> pd.DataFrame:
        """Ground-truth table (frame, id, x_nm, y_nm, z_nm, photons), sorted by frame."""
        from denseloc.table import px_to_nm, validate

        df = pd.DataFrame(
            {
                "frame": self.frame.cpu().numpy(),
                "id": self.id.cpu().numpy(),
                "x_nm": px_to_nm(self.x_px.double().cpu().numpy(), pixel_size_nm),
                "y_nm": px_to_nm(self.y_px.double().cpu().numpy(), pixel_size_nm),
                "z_nm": self.z_nm.double().cpu().numpy(),
                "photons": self.photons.double().cpu().numpy(),
            }
        )
        df = df.sort_values(["frame", "id"], kind="stable")
        df.attrs["pixel_size_nm"] = pixel_size_nm
        return validate(df, name="ground truth")


def mean_on_per_frame(config: EmitterConfig, area_um2: float) -> float:
    """Mean number of emitters on (at least partly) per frame."""
    if config.count_per_frame is not None:
        return config.count_per_frame
    return config.density_per_um2 * area_um2


def sample_emitters(
    config: EmitterConfig,
    *,
    n_movies: int,
    n_frames: int,
    frame_shape: tuple[int, int],
    pixel_size_nm: float,
    is_3d: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    density_factor: torch.Tensor | None = None,
) -> Emitters:
    """Draw blinking emitters for `n_movies` independent movies of `n_frames` frames.

    Parameters
    ----------
    config : EmitterConfig
        Density, brightness, on-time, z range.
    n_movies, n_frames : int
        Number of movies and frames per movie.
    frame_shape : (H, W)
        Frame size in px; x is uniform in [-0.5, W - 0.5), y in [-0.5, H - 0.5).
    pixel_size_nm : float
        Pixel size, to convert the density to a count.
    is_3d : bool
        Draw z uniformly in ``config.z_range_nm``; otherwise z = 0.
    generator : torch.Generator, optional
        Source of randomness.
    density_factor : Tensor of shape (n_movies,), optional
        Multiplies the density of each movie (training over a range of densities).

    Returns
    -------
    Emitters
        Records with ``photons > 0``, frames in ``[0, n_movies * n_frames)``.
    """
    height, width = frame_shape
    area_um2 = height * width * (pixel_size_nm / 1000.0) ** 2
    tau = config.on_time_frames
    pad = math.ceil(6 * tau) + 1
    span = n_frames + 2 * pad
    rate = mean_on_per_frame(config, area_um2) / (tau + 1.0)
    kw = {"generator": generator, "device": device}
    if density_factor is None:
        count = _poisson_count(rate * span * n_movies, generator)
        movie = torch.randint(0, n_movies, (count,), **kw)
    else:
        means = (rate * span * density_factor).to(device=device, dtype=torch.float64)
        per_movie = torch.poisson(means, generator=generator).long()
        movie = torch.repeat_interleave(torch.arange(n_movies, device=device), per_movie)
        count = int(movie.numel())
    if config.structure == "filaments":
        x, y, z = _on_filaments(config, movie, n_movies, frame_shape, pixel_size_nm, generator)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        z = z.to(device=device, dtype=dtype) if is_3d else torch.zeros_like(x)
    else:
        x = torch.rand(count, dtype=dtype, **kw) * width - 0.5
        y = torch.rand(count, dtype=dtype, **kw) * height - 0.5
        if is_3d:
            z_lo, z_hi = config.z_range_nm
            z = torch.rand(count, dtype=dtype, **kw) * (z_hi - z_lo) + z_lo
        else:
            z = torch.zeros(count, dtype=dtype, device=device)
    brightness = torch.randn(count, dtype=dtype, **kw) * config.photons_std + config.photons_mean
    brightness = brightness.clamp_min(1e-3)
    start = torch.rand(count, dtype=torch.float64, **kw) * span - pad
    duration = torch.empty(count, dtype=torch.float64, device=device).exponential_(
        1.0 / tau, generator=generator
    )
    stop = start + duration
    first = torch.floor(start).long()
    n_touched = torch.floor(stop).long() - first + 1
    row = torch.repeat_interleave(torch.arange(count, device=device), n_touched)
    offset = torch.arange(row.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(n_touched, 0) - n_touched, n_touched
    )
    frame = first[row] + offset
    overlap = torch.minimum(stop[row], frame + 1.0) - torch.maximum(start[row], frame.double())
    keep = (frame >= 0) & (frame < n_frames) & (overlap > 0)
    row, frame, overlap = row[keep], frame[keep], overlap[keep]
    return Emitters(
        frame=movie[row] * n_frames + frame,
        id=row,
        x_px=x[row],
        y_px=y[row],
        z_nm=z[row],
        photons=brightness[row] * overlap.to(dtype),
    )


def filament_paths(
    config: EmitterConfig,
    frame_shape: tuple[int, int],
    pixel_size_nm: float,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Random filaments for one movie: a list of (L, 3) paths (x_px, y_px, z_nm), 0.25 px apart.

    Each starts at a uniform point of the frame with a uniform direction and bends as a 2D
    worm-like chain (angle steps with variance step / persistence length); it is 1.5 frame
    diagonals long and only the part inside the frame is kept. z is a sinusoid along the
    filament (random phase, period one frame diagonal) spanning 80 % of the z range.
    """
    height, width = frame_shape
    step = 0.25
    diagonal = math.hypot(height, width)
    n_steps = int(1.5 * diagonal / step)
    z_lo, z_hi = config.z_range_nm
    persistence_px = config.filament_persistence_nm / pixel_size_nm
    kw = {"generator": generator, "dtype": torch.float64,
          "device": generator.device if generator is not None else "cpu"}
    paths = []
    for _ in range(config.filaments):
        u = torch.rand(4, **kw).cpu()
        start = torch.stack([u[0] * width - 0.5, u[1] * height - 0.5])
        turns = torch.randn(n_steps, **kw).cpu()
        angle = u[2] * 2 * math.pi + torch.cumsum(turns * math.sqrt(step / persistence_px), 0)
        # centre the path on its start point, so the filament crosses the frame there
        xy = torch.cumsum(torch.stack([angle.cos(), angle.sin()], 1) * step, 0)
        xy = xy - xy[n_steps // 2] + start
        arc = torch.arange(n_steps, dtype=torch.float64) * step
        z = (z_lo + z_hi) / 2 + 0.4 * (z_hi - z_lo) * torch.sin(
            2 * math.pi * arc / diagonal + u[3] * 2 * math.pi
        )
        inside = ((xy[:, 0] >= -0.5) & (xy[:, 0] < width - 0.5)
                  & (xy[:, 1] >= -0.5) & (xy[:, 1] < height - 0.5))
        paths.append(torch.column_stack([xy, z])[inside])
    return paths


def _on_filaments(config, movie, n_movies, frame_shape, pixel_size_nm, generator):
    """Positions (x_px, y_px, z_nm) of emitters of each movie, uniform along its filaments."""
    x = torch.empty(len(movie), dtype=torch.float64)
    y, z = torch.empty_like(x), torch.empty_like(x)
    movie = movie.cpu()
    for m in range(n_movies):
        points = torch.cat(filament_paths(config, frame_shape, pixel_size_nm, generator))
        rows = torch.nonzero(movie == m).flatten()
        if not len(points):
            raise ValueError("no filament crosses the frame; use more filaments")
        device = generator.device if generator is not None else "cpu"
        pick = torch.randint(0, len(points), (len(rows),), generator=generator, device=device)
        pick = pick.cpu()
        x[rows], y[rows], z[rows] = points[pick].unbind(1)
    return x, y, z


def _poisson_count(mean: float, generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    rate = torch.tensor([mean], dtype=torch.float64, device=device)
    return int(torch.poisson(rate, generator=generator).item())
