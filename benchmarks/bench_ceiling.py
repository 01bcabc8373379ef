"""How well could any detector do on the test movies? Detection ceilings against the network.

Usage: python benchmarks/bench_ceiling.py CONFIG.yaml [--model DIR] [--frames 100]

On the fixed test movies of ``bench_training.py`` (64x64 px, 0.1 and 2 emitters/um^2), every
ground-truth emitter gets its crowded bounds (:func:`denseloc.evaluate.crlb.add_crowded_bounds`:
the Fisher information of the whole frame, neighbours and background fitted jointly) and its
detection SNR ``d = photons / bound of photons``: the signal-to-noise ratio of the best test for
its presence with its position and z known. An ideal detector that tests every emitter at
threshold ``tau`` finds it with probability ``Phi(d - tau)`` and, from ``n_tests`` independent
places without an emitter, reports ``n_tests * Q(tau)`` false positives. The ceiling is the
best Jaccard index ``TP / (GT + FP)`` over ``tau``. The number of independent places searched
in a 64x64 px frame over the z range is not known exactly: 1e3 and 1e4 per frame bracket it
(4096 pixels, a few z planes, neighbouring pixels correlated by the PSF).

The ceiling is optimistic: known positions, Gaussian test statistics. One thing it leaves out
helps real detectors: the three-frame context. An emitter also on, and clearly visible
(d >= 6), in the previous or next frame has a known place, so its test needs a lower
threshold ``tau_a``, which costs false positives only at the places where such an emitter
has switched off (each counted as 3 independent tests, for the position's uncertainty). The
"context" ceiling optimises ``tau_a`` and ``tau`` together.

Two versions of ``d``: with the neighbours' positions fitted (``detection_snr``), and known
(``detection_snr_known_neighbours``, columns ``known_*``), which can only be higher. Both
undercount nearly coincident pairs, where one detection finds one of two emitters that each
have a low ``d``; the network can therefore exceed the first version at high density.

The second table gives the network's recall by detection SNR: a detector whose misses are
emitters with low d is limited by the data, not by the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from _common import write_results
from bench_training import DENSITIES, score, test_movie
from denseloc.calibration import resolve_builtin
from denseloc.config import load_config
from denseloc.evaluate import evaluate
from denseloc.evaluate.crlb import add_crowded_bounds
from denseloc.evaluate.match import match
from denseloc.localize.network import predict_frames
from denseloc.train.artifact import TrainedModel

MIN_PHOTONS = 500.0
ANCHOR_SNR = 6.0
TESTS_PER_FRAME = (1e3, 1e4)
TAUS = np.arange(1.0, 6.01, 0.05)
SNR_BINS = [0, 2, 3, 4, 5, 6, 8, 10, 15, 20, np.inf]


def ceiling(d: np.ndarray, n_tests: float) -> float:
    """Best Jaccard of an ideal single-frame detector (see the module docstring)."""
    tp = norm.cdf(d[:, None] - TAUS[None, :]).sum(axis=0)
    return float(np.max(tp / (len(d) + n_tests * norm.sf(TAUS))))


def context_ceiling(d: np.ndarray, anchored: np.ndarray, empty_anchors: int,
                    n_tests: float) -> float:
    """Best Jaccard with a lower threshold where a neighbouring frame shows the emitter."""
    tp_a = norm.cdf(d[anchored, None] - TAUS[None, :]).sum(axis=0)  # (tau_a,)
    tp_u = norm.cdf(d[~anchored, None] - TAUS[None, :]).sum(axis=0)  # (tau,)
    fp_a = 3 * empty_anchors * norm.sf(TAUS)
    fp_u = n_tests * norm.sf(TAUS)
    jaccard = (tp_a[:, None] + tp_u[None, :]) / (len(d) + fp_a[:, None] + fp_u[None, :])
    return float(jaccard.max())


def anchors(truth: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Which emitters are clearly visible in a neighbouring frame (n,), and at how many
    places a clearly visible emitter is absent from the neighbouring frame."""
    present = set(zip(truth["id"], truth["frame"], strict=True))
    clear = truth[truth["detection_snr"] >= ANCHOR_SNR]
    strong = set(zip(clear["id"], clear["frame"], strict=True))
    anchored = np.array([(i, f - 1) in strong or (i, f + 1) in strong
                         for i, f in zip(truth["id"], truth["frame"], strict=True)])
    last = truth["frame"].max()
    empty = sum((i, f + step) not in present and 0 <= f + step <= last
                for i, f in strong for step in (-1, 1))
    return anchored, int(empty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled one)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--name", default="detection_ceiling")
    args = parser.parse_args()
    config = load_config(args.config)
    model = TrainedModel.load(args.model or resolve_builtin("denseloc:default_model"))
    summary, recall = [], []
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        truth = add_crowded_bounds(truth.reset_index(drop=True), cfg, frame_shape=(64, 64))
        anchored, empty = anchors(truth)
        counted = (truth["photons"] >= MIN_PHOTONS).to_numpy()
        d = truth["detection_snr"].to_numpy()[counted]
        d_known = truth["detection_snr_known_neighbours"].to_numpy()[counted]
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        found = np.zeros(len(truth), dtype=bool)
        found[match(pred, truth).gt_index] = True
        network = score(pred, truth)
        row = {"density": density, "emitters": int(counted.sum()),
               "median_snr": float(np.median(d)), "snr_below_4": float(np.mean(d < 4))}
        n_frames = photons.shape[0]
        for label, snr in (("", d), ("known_", d_known)):
            for n in TESTS_PER_FRAME:
                row[f"{label}ceiling_{n:.0e}"] = ceiling(snr, n * n_frames)
            for n in TESTS_PER_FRAME:
                row[f"{label}context_ceiling_{n:.0e}"] = context_ceiling(
                    snr, anchored[counted], empty, n * n_frames)
        row["network_jaccard"] = network["jaccard"]
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs = pairs[pairs["photons_gt"] >= 2000]
        crowded = truth.iloc[pairs["gt_index"].to_numpy()]
        for axis in "xyz":
            row[f"ratio_{axis}"] = network[f"crlb_ratio_{axis}"]
            err = pairs[f"d{axis}_nm"].to_numpy()
            bound = crowded[f"crlb_crowded_{axis}_nm"].to_numpy()
            row[f"crowded_ratio_{axis}"] = float(np.sqrt(np.mean((err / bound) ** 2)))
        print(row, flush=True)
        summary.append(row)
        gt = pd.DataFrame({"found": found[counted], "ideal": norm.cdf(d - 4.0)})
        for interval, group in gt.groupby(pd.cut(d, SNR_BINS), observed=True):
            recall.append({"density": density,
                           "detection_snr": f"{interval.left:g} to {interval.right:g}",
                           "emitters": len(group),
                           "network_recall": round(float(group["found"].mean()), 3),
                           "ideal_recall_at_4": round(float(group["ideal"].mean()), 3)})
    write_results(args.name, summary,
                  "Ceilings: best Jaccard of an ideal detector (see the script's docstring), "
                  "emitters with >= 500 photons in the frame; n_tests independent places "
                  "searched per frame. ratio_*: per-emitter RMS(error / sqrt(single-emitter "
                  "CRLB)) for matched emitters with >= 2000 photons (the network issue's measure); "
                  "crowded_ratio_*: the same against the crowded bound.")
    write_results(f"{args.name}_recall", recall,
                  "Recall of emitters with >= 500 photons by their crowded detection SNR: the "
                  "network's, and that of an ideal detector with threshold 4.")


if __name__ == "__main__":
    main()
