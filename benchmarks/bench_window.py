"""Does the network use the frames around each frame? Errors against the window bound.

Usage: python benchmarks/bench_window.py CONFIG.yaml [--model DIR] [--frames 100]
    [--known-below-photons 500]

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
the light inside the frame, the model's default readout.

Those two bounds treat each emitter as alone. In crowded frames the neighbours' light costs
precision that no estimator recovers, so ``ratio_crowded_*`` divides by the bound of the frame
with every neighbour's place, z and photons fitted too
(:func:`denseloc.evaluate.crlb.add_crowded_bounds`). Neighbours with fewer photons than
``--known-below-photons`` (default 500, where the score starts counting, as in
``bench_ceiling.py``) are known instead, which can only lower that bound. It is 1 for the best
unbiased estimator of the frame alone that must also locate the neighbours, so a network below
1 takes information from the frames around it (or from its priors: it is biased, and only its
matched emitters are scored). ``ratio_crowded_window_*`` divides by the bound
that does both, neighbours and the window's frames
(:func:`denseloc.evaluate.crlb.add_crowded_window_bounds`, an emitter known there if it is
below that many photons in every frame of the window): 1 for the best estimator of what the
network reads. ``crowded_gain_x`` and ``crowded_window_gain_x`` are the medians of those
bounds over the single-emitter one, in x.
"""

from __future__ import annotations

import numpy as np

from _common import model_on_test_movies_args, write_results
from bench_training import BRIGHT_PHOTONS, DENSITIES, MIN_PHOTONS, test_movie
from denseloc.evaluate import evaluate, rms_ratio
from denseloc.evaluate.crlb import add_crowded_bounds, add_crowded_window_bounds
from denseloc.localize.network import predict_frames

BOUNDS = {"single": "crlb", "window": "crlb_window", "crowded": "crlb_crowded",
          "crowded_window": "crlb_crowded_window"}
"""The ratios' names and the truth's columns of their bounds."""


def main() -> None:
    args = model_on_test_movies_args(__doc__, "window_bound", **{
        "--known-below-photons": dict(type=float, default=MIN_PHOTONS,
                                      help="in the crowded bound, neighbours with fewer photons "
                                      "are known, not fitted (as in bench_ceiling.py)")})
    config, model = args.config, args.model  # config has the model's context frames
    rows = []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        crowded = dict(frame_shape=tuple(photons.shape[-2:]),
                       known_below_photons=args.known_below_photons)
        truth = add_crowded_bounds(truth.reset_index(drop=True), cfg, **crowded)
        truth = add_crowded_window_bounds(truth, cfg, cfg.model.context_frames, **crowded)
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs = pairs[pairs["photons_gt"] >= BRIGHT_PHOTONS]
        gt = truth.iloc[pairs["gt_index"].to_numpy()]
        groups = [(str(n), gt["window_frames"].to_numpy() == n)
                  for n in range(1, cfg.model.context_frames + 1)]
        for frames_on, member in [*groups, ("all", np.ones(len(gt), dtype=bool))]:
            if not member.any():
                continue
            bounds = gt[[f"{column}_{axis}_nm" for column in BOUNDS.values()
                         for axis in "xyz"]].to_numpy()[member]
            # the ratios leave out an emitter whose bound is not finite (a singular window)
            row = {"density": density, "window_frames": frames_on, "emitters": int(member.sum()),
                   "without_bound": int((~np.isfinite(bounds)).any(axis=1).sum())}
            for axis in "xyz":
                err = pairs[f"d{axis}_nm"].to_numpy()[member]
                for bound, column in BOUNDS.items():
                    scale = gt[f"{column}_{axis}_nm"].to_numpy()[member]
                    row[f"ratio_{bound}_{axis}"] = rms_ratio(err, scale)
            single_x = gt["crlb_x_nm"].to_numpy()[member]
            for gain, column in [("bound_gain_x", "crlb_window_x_nm"),
                                 ("crowded_gain_x", "crlb_crowded_x_nm"),
                                 ("crowded_window_gain_x", "crlb_crowded_window_x_nm")]:
                row[gain] = float(np.nanmedian(gt[column].to_numpy()[member] / single_x))
            rows.append(row)
            print(row, flush=True)
    write_results(args.name, rows, notes=(
        f"Matched emitters with >= {BRIGHT_PHOTONS:g} photons on the fixed test movies of "
        f"bench_training.py ({args.frames} frames each), grouped by window_frames: the frames "
        f"of the model's {config.model.context_frames}-frame window in which the emitter is "
        "on; without_bound of them lack one of the bounds (not finite: a singular window), "
        "which leaves them out of that bound's ratios. Bounds of the light inside the frame; "
        "crowded bounds with neighbours below "
        f"{args.known_below_photons:g} photons known; the model's default readout."),
        config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
