"""Does the network use the frames around each frame? Errors against the window bound.

Usage: python benchmarks/bench_window.py CONFIG.yaml [--model DIR] [--frames 100]

A network with temporal context reads ``model.context_frames`` frames centred on each frame,
and an emitter keeps its place while it is on, so the best any estimator of those frames can
do is the window bound (:func:`denseloc.evaluate.crlb.add_window_crlb_columns`), not the bound
of the frame alone. On the fixed test movies of ``bench_training.py`` (64x64 px, 0.1 and 2
emitters/um^2), the matched emitters with >= 2000 photons are grouped by the number of frames
of the window in which they are on (``window_frames``). Per group: the per-emitter RMS of
error / bound, against the frame's own bound (``ratio_single_*``) and against the window bound
(``ratio_window_*``, 1 for an estimator that pools the frames perfectly), and the median of
window bound / single-frame bound (``bound_gain_x``: 1 / sqrt(frames) for equal light in
each). A network that pooled the frames fully would keep ``ratio_window`` level across the
groups; one that read each frame alone would keep ``ratio_single`` level instead. Bounds of
the light inside the frame, single-emitter (neighbours ignored), the model's default readout.
"""

from __future__ import annotations

import numpy as np

from _common import model_on_test_movies_args, write_results
from bench_training import BRIGHT_PHOTONS, DENSITIES, MIN_PHOTONS, test_movie
from denseloc.evaluate import evaluate, rms_ratio
from denseloc.localize.network import predict_frames


def main() -> None:
    args = model_on_test_movies_args(__doc__, "window_bound")
    config, model = args.config, args.model  # config has the model's context frames
    rows = []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        truth = truth.reset_index(drop=True)
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs = pairs[pairs["photons_gt"] >= BRIGHT_PHOTONS]
        gt = truth.iloc[pairs["gt_index"].to_numpy()]
        groups = [(str(n), gt["window_frames"].to_numpy() == n)
                  for n in range(1, cfg.model.context_frames + 1)]
        for frames_on, member in [*groups, ("all", np.ones(len(gt), dtype=bool))]:
            if not member.any():
                continue
            row = {"density": density, "window_frames": frames_on, "emitters": int(member.sum())}
            for axis in "xyz":
                err = pairs[f"d{axis}_nm"].to_numpy()[member]
                single = gt[f"crlb_{axis}_nm"].to_numpy()[member]
                window = gt[f"crlb_window_{axis}_nm"].to_numpy()[member]
                row[f"ratio_single_{axis}"] = rms_ratio(err, single)
                row[f"ratio_window_{axis}"] = rms_ratio(err, window)
            row["bound_gain_x"] = float(np.median(gt["crlb_window_x_nm"].to_numpy()[member]
                                                  / gt["crlb_x_nm"].to_numpy()[member]))
            rows.append(row)
            print(row, flush=True)
    write_results(args.name, rows, notes=(
        f"Matched emitters with >= {BRIGHT_PHOTONS:g} photons on the fixed test movies of "
        f"bench_training.py ({args.frames} frames each), grouped by window_frames: the frames "
        f"of the model's {config.model.context_frames}-frame window in which the emitter is "
        "on. Bounds of the light inside the frame; the model's default readout."),
        config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
