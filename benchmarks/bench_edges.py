"""How much worse are the first and last frames of a movie, whose missing neighbours are replicated?

Usage: python benchmarks/bench_edges.py CONFIG.yaml [--model MODEL_DIR] [--frames 100] [--name N]

``denseloc localize`` gives the first frame of a movie copies of itself as its previous frames,
and the last frame copies of itself as its next; unless it was trained with
``train.edge_windows`` > 0, the network never saw that. This scores the same frames (2 .. n-3
of bench_training.py's test movies, 0.1 and 2 emitters/um^2; 1 .. n-2 before 2026-12-03 for
3-frame models) five ways: with all real neighbours, as the first frame of a movie (previous
replicated), as the last (next replicated), alone (both replicated), and with unrelated
neighbours (each from a different place further on in the movie, as in a stack of unrelated
images). A 5-frame model also gets the second and second-last frame of a movie, which have
one real neighbour on that side and a copy of it in place of the missing one. Scores as in
bench_training.py.
"""

from __future__ import annotations

import pandas as pd

from _common import model_on_test_movies_args, write_results
from bench_training import DENSITIES, score, test_movie
from denseloc.localize.network import predict_frames
from denseloc.train.artifact import TrainedModel

CONTEXTS = ("both neighbours", "first frame", "last frame", "alone", "unrelated neighbours")
CONTEXTS_5 = ("second frame", "second-last frame")  # only for models with 5 context frames
MARGIN = 2  # frames left out at each end of a test movie: the neighbours of a 5-frame window
UNRELATED = (37, 61)  # the first previous and next stand-ins lie this far on (cyclically) ...
UNRELATED_STEP = 12  # ... and a 5-frame model's outer ones this much further


def contexts(model: TrainedModel) -> tuple[str, ...]:
    """The ways a frame is scored for `model`."""
    return CONTEXTS + (CONTEXTS_5 if model.net.context_frames == 5 else ())


def localize_as(model: TrainedModel, photons, context: str, pixel_size_nm: float) -> pd.DataFrame:
    """Frames 2 .. n-3 localized with the given context, one frame per call."""
    n, h = len(photons), MARGIN
    if context == "both neighbours":
        pred = predict_frames(model, photons, pixel_size_nm=pixel_size_nm)
        return pred[pred["frame"].between(h, n - 1 - h)]
    # How many real neighbours each side keeps; localization fills the rest with copies of
    # the outermost one kept (of the frame itself if none), as at a movie's ends.
    keep_before, keep_after = {"first frame": (0, h), "last frame": (h, 0), "alone": (0, 0),
                               "second frame": (1, h), "second-last frame": (h, 1)
                               }.get(context, (h, h))
    tables = []
    for t in range(h, n - h):
        before = photons[t - keep_before : t] if keep_before else None
        after = photons[t + 1 : t + 1 + keep_after] if keep_after else None
        if context == "unrelated neighbours":  # as in a stack of unrelated frames
            before, after = (photons[[(t + k + j * UNRELATED_STEP) % n for j in range(h)]]
                             for k in UNRELATED)
            before = before.flip(0)  # time order: the stand-in for t-1 last
        tables.append(predict_frames(model, photons[t:t + 1], pixel_size_nm=pixel_size_nm,
                                     frame_offset=t, before=before, after=after))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    args = model_on_test_movies_args(__doc__, "edge_frames_bundled")
    if args.frames <= max(UNRELATED) + (MARGIN - 1) * UNRELATED_STEP + MARGIN:
        raise SystemExit("--frames too small: the unrelated neighbours would wrap around onto "
                         "a frame's real ones")
    config, model = args.config, args.model
    rows = []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        h = MARGIN
        truth = truth[truth["frame"].between(h, args.frames - 1 - h)]
        for context in contexts(model):
            pred = localize_as(model, photons, context, cfg.image.pixel_size_nm)
            row = {"density": density, "context": context, **score(pred, truth)}
            print(row, flush=True)
            rows.append(row)
    write_results(args.name, rows, f"Model {args.model_dir}; frames {h} to "
                  f"{args.frames - 1 - h} of each test movie.",
                  config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
