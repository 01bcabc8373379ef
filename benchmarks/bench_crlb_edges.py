"""How much do emitters at the frame's edges weigh in the per-emitter CRLB ratios?

Usage: python benchmarks/bench_crlb_edges.py CONFIG.yaml [--model DIR] [--frames 100]

Until 2026-12-03 ``bench_training.py`` scored each matched emitter (>= 2000 photons) against
its own single-emitter bound computed as if the frame went on beyond its edges. An emitter on
an edge loses part of its light (the simulator renders only the frame), so its true bound is
looser and that ratio error / sqrt(CRLB) inflated. On the same 64x64 px test movies and with
the same scoring, this script gives the ratios three ways: the unbounded frame, the bound of
the light inside the frame (``add_crlb_columns(frame_shape=...)``, what ``bench_training.py``
now reports), and the unbounded bound for emitters at least ``--margin`` px from every edge.
"""

from __future__ import annotations

import numpy as np

from _common import model_on_test_movies_args, write_results
from bench_training import BRIGHT_PHOTONS, DENSITIES, MIN_PHOTONS, TEST_SIZE_PX, test_movie
from denseloc.evaluate import evaluate
from denseloc.localize.network import predict_frames
from denseloc.table import nm_to_px


def ratios(pairs, crlb) -> dict[str, float]:
    """Per-emitter RMS of error / sqrt(CRLB) per axis, with the bounds in `crlb` (by gt row)."""
    rows = pairs["gt_index"].to_numpy()
    return {axis: float(np.sqrt(np.mean((pairs[f"d{axis}_nm"].to_numpy()
                                         / crlb[f"crlb_{axis}_nm"].to_numpy()[rows]) ** 2)))
            for axis in "xyz"}


def main() -> None:
    args = model_on_test_movies_args(__doc__, "crlb_edges", **{"--margin": dict(
        type=float, default=3.0, help="px from the edges for the interior-only row")})
    config, model = args.config, args.model
    shape = (TEST_SIZE_PX, TEST_SIZE_PX)
    rows = []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        truth = truth.reset_index(drop=True)  # crlb_* in the frame, crlb_unbounded_* beyond
        unbounded = truth.assign(**{f"crlb_{a}_nm": truth[f"crlb_unbounded_{a}_nm"]
                                    for a in "xyz"})
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs = pairs[pairs["photons_gt"] >= BRIGHT_PHOTONS]
        gt = truth.iloc[pairs["gt_index"].to_numpy()]
        px = cfg.image.pixel_size_nm
        x, y = nm_to_px(gt["x_nm"].to_numpy(), px), nm_to_px(gt["y_nm"].to_numpy(), px)
        edge_px = np.minimum.reduce([x + 0.5, y + 0.5, shape[1] - 0.5 - x, shape[0] - 0.5 - y])
        interior = edge_px >= args.margin
        for bound, subset, table in (("unbounded frame (before 2026-12-03)", pairs, unbounded),
                                     ("light inside the frame", pairs, truth),
                                     (f">= {args.margin:g} px from every edge", pairs[interior],
                                      unbounded)):
            r = ratios(subset, table)
            rows.append({"density": density, "bound": bound, "emitters": len(subset),
                         "ratio_x": r["x"], "ratio_y": r["y"], "ratio_z": r["z"],
                         "share_within_1px_of_edge": float(np.mean(edge_px < 1.0))})
        print(rows[-3:], flush=True)
    write_results(args.name, rows, notes=(
        "Matched emitters with >= 2000 photons on the fixed test movies of bench_training.py, "
        "the model's default readout; 'share_within_1px_of_edge' is of those emitters."),
        config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
