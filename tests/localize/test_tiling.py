"""Tiles and streaming: tiled/chunked inference equals whole-frame inference, reads are bounded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from denseloc.io import open_movie
from denseloc.io.movie import Movie
from denseloc.localize.network import tile_grid
from denseloc.localize.pipeline import auto_chunk_frames, localize_movie_network
from denseloc.nn.model import DecodeNet
from denseloc.sim.simulator import simulate_movie


@pytest.mark.parametrize("height,width", [(200, 150), (64, 64), (1030, 515), (37, 400)])
@pytest.mark.parametrize("multiple,overlap,max_tile", [(4, 60, 184), (8, 64, 640), (4, 8, 40)])
def test_tile_cores_partition_the_frame(height, width, multiple, overlap, max_tile) -> None:
    tiles = tile_grid(height, width, multiple=multiple, overlap=overlap, max_tile=max_tile)
    owner = np.zeros((height, width), dtype=int)
    padded_h, padded_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    for t in tiles:
        owner[t.core_rows, t.core_cols] += 1
        for span, core, size in ((t.rows, t.core_rows, padded_h), (t.cols, t.core_cols, padded_w)):
            assert span.start % multiple == 0 and (span.stop - span.start) % multiple == 0
            assert span.stop - span.start <= max(max_tile, size if size <= max_tile else 0)
            # the tile holds its core plus `overlap` context wherever the frame has it
            assert span.start == max(0, core.start - overlap)
            assert span.stop == min(size, core.stop + overlap)
    assert (owner == 1).all()  # every pixel belongs to exactly one core


def test_receptive_radius_bounds_the_network_support() -> None:
    torch.manual_seed(0)
    for depth in (1, 2, 3):
        net = DecodeNet(filters=4, depth=depth).double()
        size = 2 * net.receptive_radius + 2 * net.multiple + 8
        size += (-size) % net.multiple
        x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
        centre = size // 2
        net(x)[0, :, centre, centre].sum().backward()
        rows, cols = torch.nonzero(x.grad.abs().sum((0, 1)) > 0, as_tuple=True)
        reach = max((rows - centre).abs().max(), (cols - centre).abs().max()).item()
        assert reach <= net.receptive_radius
        assert reach >= 0.7 * net.receptive_radius  # the bound is not wildly loose


@pytest.fixture(scope="module")
def bundled_model():
    from denseloc.calibration import resolve_builtin
    from denseloc.cli import DEFAULT_MODEL
    from denseloc.train.artifact import TrainedModel

    return TrainedModel.load(resolve_builtin(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def wide_movie(bundled_model, tmp_path_factory):
    cfg = bundled_model.config
    cfg = cfg.model_copy(update={
        "image": cfg.image.model_copy(update={"size_px": (200, 150)}),
        "emitters": cfg.emitters.model_copy(update={"density_per_um2": 0.5}),
        "simulation": cfg.simulation.model_copy(update={"n_frames": 5, "seed": 11}),
    })
    paths = simulate_movie(cfg, tmp_path_factory.mktemp("wide"))
    return paths["frames"], cfg


def test_tiled_and_chunked_inference_equal_whole_frames(bundled_model, wide_movie) -> None:
    path, cfg = wide_movie
    with open_movie(path) as movie:
        whole = localize_movie_network(movie, bundled_model, cfg, chunk_frames=5,
                                       max_tile_px=1024)
        tiled = localize_movie_network(movie, bundled_model, cfg, chunk_frames=2,
                                       max_tile_px=184, batch_size=3)
    assert len(whole) > 5 * 0.5 * 20 * 15 * 0.5  # at least half the emitters are found
    pd.testing.assert_frame_equal(whole, tiled, check_exact=False, rtol=1e-4, atol=1e-3)


def test_movie_is_streamed_in_bounded_chunks(bundled_model, wide_movie, monkeypatch) -> None:
    reads: list[tuple[int, int]] = []
    original = Movie._read

    def recording(self, start, stop):
        reads.append((start, stop))
        return original(self, start, stop)

    monkeypatch.setattr(Movie, "_read", recording)
    path, cfg = wide_movie
    with open_movie(path) as movie:
        localize_movie_network(movie, bundled_model, cfg, chunk_frames=2)
    assert max(stop - start for start, stop in reads) <= 2
    covered = np.zeros(5, dtype=bool)
    for start, stop in reads:
        covered[start:stop] = True
    assert covered.all()


def test_auto_chunk_keeps_about_four_million_pixels() -> None:
    assert auto_chunk_frames(64, 64) == 256
    assert auto_chunk_frames(1024, 1024) == 4
    assert auto_chunk_frames(2048, 2048) == 1
    assert auto_chunk_frames(4096, 4096) == 1
    # ... but enough frames that re-reading 2 (or 4) neighbours per chunk costs <= 25 %
    assert auto_chunk_frames(64, 64, context_frames=5) == 256
    assert auto_chunk_frames(1024, 1024, context_frames=3) == 8
    assert auto_chunk_frames(2048, 2048, context_frames=5) == 16
    assert auto_chunk_frames(4096, 4096, context_frames=5) == 4  # within 64 Mpx


def test_default_chunks_allow_for_the_models_context(bundled_model, wide_movie,
                                                     monkeypatch) -> None:
    import denseloc.localize.pipeline as pipeline

    asked: list[tuple[int, ...]] = []

    def recording(*args):
        asked.append(args)
        return 5

    monkeypatch.setattr(pipeline, "auto_chunk_frames", recording)
    path, cfg = wide_movie
    with open_movie(path) as movie:
        localize_movie_network(movie, bundled_model, cfg)
        assert asked == [(*movie.shape[1:], bundled_model.net.context_frames)]
