"""Apply a trained network to a stack of frames (photons), in chunks and tiles.

Each frame goes through the frame-analysis U-Net once; its features are reused by every
window that contains it (for 3-frame windows 1.6-1.8x faster than running each window; DESIGN
section 9). Frames near the start and end of the movie use replicated neighbours (copies of
the movie's first or last frame stand in for the missing ones); a network trained without
``train.edge_windows`` never saw such windows and does worse on these frames
(``benchmarks/bench_edges.py``). Chunks overlap by ``context_frames // 2`` frames on each
side, so results do not depend on the chunk size.

Frames larger than `max_tile_px` are cut into tiles that overlap by the network's receptive
field plus one pixel (:attr:`DecodeNet.receptive_radius` + 1, rounded up to the network's size
multiple) and start on that multiple, so every output pixel of a tile's core, and the ring of
pixels around it that post-processing reads (3x3 maxima, the mixture readout), is computed from
exactly the input the whole frame would give it; a detection is kept by the one tile whose core
holds its pixel. Tiled and whole-frame results therefore agree to floating-point rounding.
A tile at the bottom or right edge ends with the frame; the network pads it to its size
multiple (replicating the last row and column, exactly as padding the whole frame would) and
crops its output back, so post-processing never sees padded pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch

from denseloc.localize.postprocess import Readout, maps_to_table
from denseloc.train.artifact import TrainedModel
from denseloc.train.data import scale_frames

__all__ = [
    "Tile",
    "auto_batch_size",
    "iter_network_outputs",
    "network_outputs",
    "predict_frames",
    "tile_grid",
]

MAX_TILE_PX = 640
"""Default largest tile side, px; larger frames are tiled (bounds memory per forward pass)."""
_PIXELS_PER_PASS = 2**18


def auto_batch_size(height: int, width: int) -> int:
    """Frames per forward pass for frames of this size: about 260k pixels per pass."""
    return max(1, min(64, _PIXELS_PER_PASS // (height * width)))


@dataclass(frozen=True)
class Tile:
    """A tile: input region (padded-frame coordinates) and the core it is responsible for."""

    rows: slice
    cols: slice
    core_rows: slice
    core_cols: slice


def _spans(size: int, padded: int, multiple: int, overlap: int, max_tile: int):
    if padded <= max_tile:
        return [(0, padded, 0, size)]
    core_max = (max_tile - 2 * overlap) // multiple * multiple
    if core_max < multiple:
        raise ValueError(
            f"tiles of {max_tile} px cannot hold the network's overlap of {overlap} px per side"
        )
    n = -(-size // core_max)
    core = -(-size // (n * multiple)) * multiple
    spans = []
    for start in range(0, size, core):
        stop = min(start + core, size)
        spans.append((max(0, start - overlap), min(padded, stop + overlap), start, stop))
    return spans


def tile_grid(
    height: int, width: int, *, multiple: int, overlap: int, max_tile: int = MAX_TILE_PX
) -> list[Tile]:
    """Tiles covering a frame of `height` x `width` px (padded up to `multiple`).

    Cores partition the frame; each tile extends its core by `overlap` px where the frame
    allows. Tile starts and `overlap` are multiples of `multiple`, so the pooling grid of the
    network is the same as for the whole frame.
    """
    if overlap % multiple:
        raise ValueError(f"overlap {overlap} is not a multiple of {multiple}")
    pad_h, pad_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    return [
        Tile(slice(r0, r1), slice(c0, c1), slice(cr0, cr1), slice(cc0, cc1))
        for r0, r1, cr0, cr1 in _spans(height, pad_h, multiple, overlap, max_tile)
        for c0, c1, cc0, cc1 in _spans(width, pad_w, multiple, overlap, max_tile)
    ]


def network_overlap(model: TrainedModel) -> int:
    """Tile overlap for `model`: its receptive radius + 1 rounded up to its size multiple."""
    multiple = model.net.multiple
    return -(-(model.net.receptive_radius + 1) // multiple) * multiple


@torch.no_grad()
def iter_network_outputs(
    model: TrainedModel,
    photons: torch.Tensor,
    *,
    before: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Output maps for frames (T, H, W) in photons, one batch at a time.

    Yields ``(start, outputs)`` with outputs of shape (B, 10, H, W) for frames
    ``start .. start + B - 1``. Frame features are computed once per frame and kept only
    while a window still needs them, so memory is bounded by the batch, not by T.

    Parameters
    ----------
    model : TrainedModel
        The network and its units.
    photons : Tensor of shape (T, H, W)
        Frames in photons.
    before, after : Tensor of shape (K, H, W), optional
        The movie's frames just before and just after these frames, in time order, up to
        ``context_frames // 2`` of each (more are ignored); where there are fewer (start or
        end of the movie), the movie's first / last frame is replicated in their place.
    batch_size : int, optional
        Frames per forward pass (default: :func:`auto_batch_size`).
    """
    net = model.net
    device = next(net.parameters()).device
    n, height, width = photons.shape
    batch_size = batch_size or auto_batch_size(height, width)
    ctx = net.context_frames
    frames = photons
    for name, given in (("before", before), ("after", after)):
        if given is not None and (given.ndim != 3 or given.shape[1:] != photons.shape[1:]):
            raise ValueError(f"`{name}` must be frames (K, {height}, {width}), "
                             f"got {tuple(given.shape)}")
    if ctx > 1:
        half = ctx // 2
        before = photons[:0] if before is None else before[max(len(before) - half, 0) :]
        after = photons[:0] if after is None else after[:half]
        first = torch.cat([before, photons[:1]])[:1]  # the movie's first and last frames
        last = torch.cat([photons[-1:], after])[-1:]
        frames = torch.cat([first.expand(half - len(before), -1, -1), before, photons, after,
                            last.expand(half - len(after), -1, -1)])

    def features_of(a: int, b: int) -> torch.Tensor:
        x = scale_frames(frames[a:b].to(device=device, dtype=torch.float32), model.scaling)
        return net.padded_features(x)

    offsets = torch.arange(ctx, device=device)
    cached = features_of(0, ctx - 1) if ctx > 1 else None  # features of frames[start:start+ctx-1]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        fresh = features_of(start + ctx - 1, stop + ctx - 1)
        features = fresh if cached is None else torch.cat([cached, fresh])
        windows = torch.arange(stop - start, device=device)[:, None] + offsets
        yield start, net.from_windows(features, windows, (height, width)).float().cpu()
        cached = features[len(features) - (ctx - 1) :] if ctx > 1 else None


def network_outputs(
    model: TrainedModel,
    photons: torch.Tensor,
    *,
    before: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """All output maps (T, 10, H, W) for frames (T, H, W); see :func:`iter_network_outputs`."""
    return torch.cat([out for _, out in iter_network_outputs(
        model, photons, before=before, after=after, batch_size=batch_size)])


def predict_frames(
    model: TrainedModel,
    photons: torch.Tensor,
    *,
    pixel_size_nm: float,
    frame_offset: int = 0,
    threshold: float | None = None,
    before: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
    batch_size: int | None = None,
    max_tile_px: int = MAX_TILE_PX,
    readout: Readout | None = None,
) -> pd.DataFrame:
    """Localizations in frames (T, H, W) given in photons, with the model's threshold.

    `before` and `after` are the movie's frames (K, H, W) just before and after these, as in
    :func:`iter_network_outputs`; None at the movie's start and end.
    Frames larger than `max_tile_px` are processed in overlapping tiles (see the module
    docstring). `readout` (default: the model's) is passed to
    :func:`~denseloc.localize.postprocess.maps_to_table`, with the model's factors that
    calibrate the sigmas for that readout.
    Rows are sorted by frame, then y, then x.
    """
    _, height, width = photons.shape
    multiple = model.net.multiple
    tiles = tile_grid(height, width, multiple=multiple, overlap=network_overlap(model),
                      max_tile=max_tile_px)
    threshold = model.threshold if threshold is None else threshold
    readout = readout or model.readout
    frames = torch.arange(len(photons)) + frame_offset
    tables = []
    for tile in tiles:
        window = (tile.rows, tile.cols)
        row0, col0 = tile.rows.start, tile.cols.start
        core = (slice(tile.core_rows.start - row0, tile.core_rows.stop - row0),
                slice(tile.core_cols.start - col0, tile.core_cols.stop - col0))
        batches = iter_network_outputs(
            model,
            photons[(slice(None), *window)],
            before=None if before is None else before[(slice(None), *window)],
            after=None if after is None else after[(slice(None), *window)],
            batch_size=batch_size,
        )
        for start, out in batches:
            tables.append(
                maps_to_table(
                    out,
                    model.scaling,
                    pixel_size_nm=pixel_size_nm,
                    threshold=threshold,
                    frames=frames[start : start + len(out)],
                    origin_px=(row0, col0),
                    core=core,
                    readout=readout,
                    sigma_scale=model.sigma_scale.get(readout),
                    is_3d=model.config.psf.is_3d,
                )
            )
    table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
    return table.sort_values(["frame", "y_nm", "x_nm"], kind="stable", ignore_index=True)
