"""How much worse are the first and last frames of a movie, whose missing neighbours are replicated?

Usage: python benchmarks/bench_edges.py CONFIG.yaml [--model MODEL_DIR] [--frames 100] [--name N]

``denseloc localize`` gives the first frame of a movie copies of itself as its previous frames,
and the last frame copies of itself as its next; unless it was trained with
``train.edge_windows`` > 0, the network never saw that. This scores the same frames (h .. n-1-h
of bench_training.py's test movies, 0.1 and 2 emitters/um^2, with h the model's
``context_frames // 2`` and at least 1) five ways: with all real neighbours, as the first frame
of a movie (previous replicated), as the last (next replicated), alone (both replicated), and
with unrelated neighbours (frames 37 and 61 further on, and the ones after those for a 5-frame
model, as in a stack of unrelated images). Scores as in bench_training.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from _common import write_results
from bench_training import DENSITIES, score, test_movie
from denseloc.calibration import resolve_builtin
from denseloc.cli import DEFAULT_MODEL
from denseloc.config import load_config
from denseloc.localize.network import predict_frames
from denseloc.train.artifact import TrainedModel

CONTEXTS = ("both neighbours", "first frame", "last frame", "alone", "unrelated neighbours")
UNRELATED = (37, 61)  # frames this far on (cyclically) stand in for the previous and next


def margin(model: TrainedModel) -> int:
    """Frames left out at each end of a test movie: a window's neighbours on one side."""
    return max(model.net.context_frames // 2, 1)


def localize_as(model: TrainedModel, photons, context: str, pixel_size_nm: float) -> pd.DataFrame:
    """Frames h .. n-1-h (h = :func:`margin`) localized with the given context, one per call."""
    n, h = len(photons), margin(model)
    if context == "both neighbours":
        pred = predict_frames(model, photons, pixel_size_nm=pixel_size_nm)
        return pred[pred["frame"].between(h, n - 1 - h)]
    tables = []
    for t in range(h, n - h):
        before = photons[t - h : t] if context == "last frame" else None
        after = photons[t + 1 : t + 1 + h] if context == "first frame" else None
        if context == "unrelated neighbours":  # as in a stack of unrelated frames
            before, after = (photons[[(t + k + j) % n for j in range(h)]] for k in UNRELATED)
        tables.append(predict_frames(model, photons[t:t + 1], pixel_size_nm=pixel_size_nm,
                                     frame_offset=t, before=before, after=after))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder (default: bundled)")
    parser.add_argument("--frames", type=int, default=100, help="frames per test movie")
    parser.add_argument("--name", default="edge_frames", help="results file name")
    args = parser.parse_args()
    config = load_config(args.config)
    model = TrainedModel.load(resolve_builtin(args.model))
    rows = []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        h = margin(model)
        truth = truth[truth["frame"].between(h, args.frames - 1 - h)]
        for context in CONTEXTS:
            pred = localize_as(model, photons, context, cfg.image.pixel_size_nm)
            row = {"density": density, "context": context, **score(pred, truth)}
            print(row, flush=True)
            rows.append(row)
    write_results(args.name, rows,
                  f"Model {args.model}; frames {h} to {args.frames - 1 - h} of each test movie.")


if __name__ == "__main__":
    main()
