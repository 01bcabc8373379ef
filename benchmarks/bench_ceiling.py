"""How well could any detector do on the test movies? Detection ceilings against the network.

Usage: python benchmarks/bench_ceiling.py CONFIG.yaml [--model DIR] [--frames 100]
    [--known-below-photons 500]

On the fixed test movies of ``bench_training.py`` (64x64 px, 0.1 and 2 emitters/um^2), every
ground-truth emitter gets its crowded bounds (:func:`denseloc.evaluate.crlb.add_crowded_bounds`:
the Fisher information of the whole frame, neighbours and background fitted jointly; those
with fewer than 500 photons, which the score does not count, known: fitted, a neighbour on for
a sliver of the frame would cost as much as a bright one, see that function) and its
detection SNR ``d = photons / bound of photons``: the signal-to-noise ratio of the best test for
its presence with its position and z known. An ideal detector that tests every emitter at
threshold ``tau`` finds it with probability ``Phi(d - tau)`` and, from ``n_tests`` independent
places without an emitter, reports ``n_tests * Q(tau)`` false positives. Such detections are
drawn (false ones at random places) and scored exactly like the network's, so false positives
that land within the matching tolerance of a missed emitter count as found; the ceiling is the
best Jaccard index over ``tau``. The number of independent places searched in a 64x64 px frame
over the z range is not known exactly: 1e3 and 1e4 per frame are the assumed range (4096
pixels, a few z planes, neighbouring pixels correlated by the PSF).

The ceiling is optimistic: known positions, Gaussian test statistics. One thing it leaves out
helps real detectors: the three-frame context. An emitter also on, and clearly visible
(d >= 6), in the previous or next frame has a known place, so its test needs a lower
threshold ``tau_a``, which costs false positives only at the places where such an emitter
has switched off (each counted as 3 independent tests, for the position's uncertainty). The
"context" ceiling optimises ``tau_a`` and ``tau`` together. It models the frames t-1 and t+1
only: for a 5-frame model, which also sees t-2 and t+2, it is not an upper bound.

Two versions of ``d``: with the neighbours' positions fitted (``detection_snr``), and known
(``detection_snr_known_neighbours``, columns ``known_*``), which can only be higher. Both
undercount nearly coincident pairs, where one detection finds one of two emitters that each
have a low ``d``; the network can therefore exceed the first version at high density.

The second table gives the network's recall by detection SNR: a detector whose misses are
emitters with low d is limited by the data, not by the network.

The third table shows where the network's z error sits, for matched emitters with >= 2000
photons: the per-emitter ratio to the single-emitter and to the crowded bound, by true z and by
crowding (crowded over single-emitter bound), with a robust spread (1.4826 x median absolute
deviation) and the RMS without the worst 1 % beside the RMS, to tell a broad error from a tail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation, norm

from _common import model_on_test_movies_args, write_results
from bench_training import (
    DENSITIES,
    MIN_PHOTONS,
    TEST_Z_RANGE_NM,
    found_emitters,
    score,
    test_movie,
)
from denseloc.evaluate import evaluate, rms_ratio
from denseloc.evaluate.crlb import add_crowded_bounds
from denseloc.localize.network import predict_frames

ANCHOR_SNR = 6.0
TESTS_PER_FRAME = (1e3, 1e4)
TAUS = np.arange(1.0, 6.01, 0.05)
SHIFTS = (-1.0, -0.75, -0.5, -0.25, 0.0)
REPEATS = 3
SNR_BINS = [0, 2, 3, 4, 5, 6, 8, 10, 15, 20, np.inf]
Z_BINS_NM = [-700, -400, -100, 200, 500, 700]
CROWDING_BINS = [0.0, 1.2, 1.5, 2.0, 3.0, np.inf]


def best_thresholds(d: np.ndarray, anchored: np.ndarray, empty_anchors: int,
                    n_tests: float, context: bool) -> tuple[float, float]:
    """Thresholds ``(tau_a, tau)`` that maximise the expected ``TP / (GT + FP)``, chance
    matches left out; without `context` the anchored emitters get no lower threshold."""
    cdf = norm.cdf(d[:, None] - TAUS[None, :])  # (n, taus)
    tp_a, tp_u = cdf[anchored].sum(axis=0), cdf[~anchored].sum(axis=0)
    fp_a = 3 * empty_anchors * norm.sf(TAUS) if context else np.zeros_like(TAUS)
    fp_u = n_tests * norm.sf(TAUS)
    jaccard = (tp_a[:, None] + tp_u[None, :]) / (len(d) + fp_a[:, None] + fp_u[None, :])
    if not context:
        jaccard = np.where(np.eye(len(TAUS), dtype=bool), jaccard, -np.inf)
    i, j = np.unravel_index(np.argmax(jaccard), jaccard.shape)
    return float(TAUS[i]), float(TAUS[j])


def ceiling(truth: pd.DataFrame, snr: np.ndarray, anchored: np.ndarray, empty_anchors: int,
            n_tests: float, context: bool, rng: np.random.Generator) -> float:
    """Jaccard of the ideal detector (module docstring), scored like the network.

    Detections are drawn: every emitter (also those under 500 photons, which the score
    ignores like the network's) at its true place with probability ``Phi(d - tau)``, and
    false positives at uniform places, frames and z, so that chance matches within the
    tolerance count as they do for any detector. The thresholds from
    :func:`best_thresholds` are shifted together by up to -1 to find the best score, each
    the mean of :data:`REPEATS` draws.
    """
    counted = (truth["photons"] >= MIN_PHOTONS).to_numpy()
    tau_a, tau = best_thresholds(snr[counted], anchored[counted], empty_anchors, n_tests,
                                 context)
    n_frames = int(truth.attrs["n_frames"])
    size_nm = truth.attrs["size_nm"]
    z_lo, z_hi = TEST_Z_RANGE_NM
    best = 0.0
    for shift in SHIFTS:
        threshold = np.where(anchored & context, tau_a + shift, tau + shift)
        p_detect = norm.cdf(snr - threshold)
        n_fp = n_tests * norm.sf(tau + shift)
        if context:
            n_fp += 3 * empty_anchors * norm.sf(tau_a + shift)
        scores = []
        for _ in range(REPEATS):
            hits = truth[rng.random(len(truth)) < p_detect][["frame", "x_nm", "y_nm", "z_nm"]]
            k = rng.poisson(n_fp)
            false = pd.DataFrame({"frame": rng.integers(0, n_frames, k),
                                  "x_nm": rng.uniform(0, size_nm, k),
                                  "y_nm": rng.uniform(0, size_nm, k),
                                  "z_nm": rng.uniform(z_lo, z_hi, k)})
            metrics, _ = evaluate(pd.concat([hits, false], ignore_index=True), truth,
                                  min_photons=MIN_PHOTONS)
            scores.append(metrics.jaccard)
        best = max(best, float(np.mean(scores)))
    return best


def anchors(truth: pd.DataFrame, n_frames: int) -> tuple[np.ndarray, int]:
    """Which emitters are clearly visible in a neighbouring frame (n,), and at how many
    places (id, frame) of the movie a clearly visible emitter is absent from the next or
    previous frame."""
    present = set(zip(truth["id"], truth["frame"], strict=True))
    clear = truth[truth["detection_snr"] >= ANCHOR_SNR]
    strong = set(zip(clear["id"], clear["frame"], strict=True))
    anchored = np.array([(i, f - 1) in strong or (i, f + 1) in strong
                         for i, f in zip(truth["id"], truth["frame"], strict=True)])
    empty = {(i, f + step) for i, f in strong for step in (-1, 1)
             if (i, f + step) not in present and 0 <= f + step < n_frames}
    return anchored, len(empty)


def z_error_rows(density: str, pairs: pd.DataFrame, crowded: pd.DataFrame) -> list[dict]:
    """The network's z error against both bounds: overall, by true z and by crowding."""
    err = pairs["dz_nm"].to_numpy()
    single = err / pairs["crlb_z_nm"].to_numpy()
    table = pd.DataFrame({
        "single": single,
        "crowded": err / crowded["crlb_crowded_z_nm"].to_numpy(),
        "z_nm": crowded["z_nm"].to_numpy(),
        "crowding": (crowded["crlb_crowded_z_nm"] / crowded["crlb_z_nm"]).to_numpy(),
    })
    groups = [("all", "", table)]
    for column, bins in (("z_nm", Z_BINS_NM), ("crowding", CROWDING_BINS)):
        for interval, group in table.groupby(pd.cut(table[column], bins), observed=True):
            groups.append((column, f"{interval.left:g} to {interval.right:g}", group))
    rows = []
    for by, interval, group in groups:
        r = group["single"].to_numpy()
        squares = np.sort(r**2)
        rows.append({
            "density": density, "by": by, "interval": interval, "emitters": len(group),
            "ratio_z": round(float(np.sqrt(squares.mean())), 3),
            "mean_ratio_z": round(float(r.mean()), 3),
            "robust_ratio_z": round(float(median_abs_deviation(r, scale="normal")), 3),
            "ratio_z_without_worst_1pc": round(
                float(np.sqrt(squares[: len(r) - len(r) // 100].mean())), 3),
            "crowded_ratio_z": round(float(np.sqrt(np.mean(group["crowded"] ** 2))), 3),
        })
    return rows


def main() -> None:
    args = model_on_test_movies_args(__doc__, "detection_ceiling", **{
        "--known-below-photons": dict(type=float, default=MIN_PHOTONS,
                                      help="neighbours with fewer photons are known, not "
                                      "fitted (default: those the score does not count; 0 "
                                      "fits every one)")})
    config, model = args.config, args.model
    summary, recall, z_errors = [], [], []
    rng = np.random.default_rng(0)
    for i, (density, value) in enumerate(DENSITIES.items()):
        cfg, photons, truth = test_movie(config, value, args.frames, seed=100 + i)
        truth = add_crowded_bounds(truth.reset_index(drop=True), cfg, frame_shape=(64, 64),
                                   known_below_photons=args.known_below_photons)
        anchored, empty = anchors(truth, len(photons))
        counted = (truth["photons"] >= MIN_PHOTONS).to_numpy()
        d = truth["detection_snr"].to_numpy()[counted]
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        found = found_emitters(pred, truth)
        network = score(pred, truth)
        weak = d < 4
        row = {"density": density, "emitters": int(counted.sum()),
               "median_snr": float(np.median(d)), "snr_below_4": float(np.mean(weak)),
               # what the weak ones are: dim (partly-on blinks), far below focus
               "weak_dim": float(np.mean(truth["photons"].to_numpy()[counted][weak] < 2000)),
               "weak_far": float(np.mean(truth["z_nm"].to_numpy()[counted][weak] < -500))}
        truth.attrs.update(n_frames=len(photons), size_nm=64 * cfg.image.pixel_size_nm)
        for label, column in (("", "detection_snr"), ("known_", "detection_snr_known_neighbours")):
            snr = truth[column].to_numpy()
            for context in (False, True):
                for n in TESTS_PER_FRAME:
                    name = f"{label}{'context_' if context else ''}ceiling_{n:.0e}"
                    row[name] = ceiling(truth, snr, anchored, empty, n * len(photons), context,
                                        rng)
        row["network_jaccard"] = network["jaccard"]
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs = pairs[pairs["photons_gt"] >= 2000]
        crowded = truth.iloc[pairs["gt_index"].to_numpy()]
        for axis in "xyz":
            row[f"ratio_{axis}"] = network[f"crlb_ratio_{axis}"]
            err = pairs[f"d{axis}_nm"].to_numpy()
            bound = crowded[f"crlb_crowded_{axis}_nm"].to_numpy()
            row[f"crowded_ratio_{axis}"] = rms_ratio(err, bound)
        z_errors += z_error_rows(density, pairs, crowded)
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
                  "crowded_ratio_*: the same against the crowded bound.",
                  config=args.config, model_dir=args.model_dir)
    write_results(f"{args.name}_z", z_errors,
                  "Per-emitter z error of the network, matched emitters with >= 2000 photons: "
                  "RMS(error / sqrt(single-emitter CRLB)), its mean (the bias; error = "
                  "predicted - true z), its robust spread (1.4826 x MAD), the RMS without the "
                  "worst 1 %, and the RMS against the crowded bound; by true z and by crowding "
                  "(crowded / single-emitter bound of z).",
                  config=args.config, model_dir=args.model_dir)
    write_results(f"{args.name}_recall", recall,
                  "Recall of emitters with >= 500 photons by their crowded detection SNR: the "
                  "network's, and that of an ideal detector with threshold 4.",
                  config=args.config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
