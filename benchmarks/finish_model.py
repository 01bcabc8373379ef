"""Re-run the end of training on a model folder and score it with both readouts.

Usage: python benchmarks/finish_model.py CONFIG.yaml MODEL_DIR --name NAME [--finish-only] [--mle]

Tunes the detection threshold and fits the sigma factors on the validation set (what
``denseloc train`` does at the end of a run, :meth:`Trainer.finish`), saves the model folder,
and scores it on the fixed test movies of ``bench_training.py`` reading each detection from the
3x3 mixture (the default) and from its maximum pixel alone (DECODE's readout), each with the
sigmas calibrated by those factors and as the network predicted them. The weights come from
the folder's last checkpoint or, without one (a bundled model), from its ``weights.pt``. A
second table gives the recall (fraction of ground-truth emitters with >= 500 photons that are
found) by z and by photon count, to show which emitters the model misses; a third gives the
per-emitter error / sqrt(CRLB) by the distance to the nearest neighbour, to show where crowding
costs. With ``--mle`` the classical MLE fitter is scored on the same frames too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from _common import sigma_variants, write_results
from bench_training import (
    BRIGHT_PHOTONS,
    DENSITIES,
    MIN_PHOTONS,
    evaluate_model,
    found_emitters,
    mle_baseline,
    test_movie,
)
from denseloc.config import config_differences, load_config
from denseloc.evaluate import evaluate
from denseloc.localize.network import predict_frames
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import Trainer

Z_BINS_NM = np.arange(-700, 701, 200)
PHOTON_BINS = [500, 1000, 2000, 3000, 4000, 5000, 10000]
NEIGHBOUR_BINS_NM = [0, 200, 400, 600, 800, np.inf]
FRAME_SPACING_NM = 1e9  # frames as a third coordinate, far apart, for one k-d tree


def nearest_neighbour_nm(truth: pd.DataFrame) -> np.ndarray:
    """Lateral distance from each ground-truth emitter to the nearest other one in its frame."""
    points = np.column_stack([truth["x_nm"], truth["y_nm"],
                              truth["frame"].to_numpy() * FRAME_SPACING_NM])
    distance, _ = cKDTree(points).query(points, k=2)
    return np.where(distance[:, 1] < FRAME_SPACING_NM / 2, distance[:, 1], np.inf)


def breakdown_tables(model: TrainedModel, tests: dict) -> tuple[list[dict], list[dict]]:
    """Recall by z and photons; error / sqrt(CRLB) by the distance to the nearest neighbour."""
    recall, neighbours = [], []
    for density, (cfg, photons, truth) in tests.items():
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm,
                              readout="mixture")
        found = found_emitters(pred, truth)
        gt = truth.assign(found=found)[truth["photons"] >= MIN_PHOTONS]
        for column, bins, unit in (("z_nm", Z_BINS_NM, "nm"), ("photons", PHOTON_BINS, "")):
            groups = gt.groupby(pd.cut(gt[column], bins), observed=True)["found"]
            for interval, values in groups:
                recall.append({"density": density, "by": column,
                               "bin": f"{interval.left:g} to {interval.right:g} {unit}".strip(),
                               "emitters": len(values), "recall": round(values.mean(), 3)})
        _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
        pairs["neighbour_nm"] = nearest_neighbour_nm(truth)[pairs["gt_index"].to_numpy()]
        bright = pairs[pairs["photons_gt"] >= BRIGHT_PHOTONS]
        for interval, group in bright.groupby(pd.cut(bright["neighbour_nm"], NEIGHBOUR_BINS_NM),
                                              observed=True):
            row = {"density": density, "nearest_neighbour": f"{interval.left:g} to "
                   f"{interval.right:g} nm", "pairs": len(group)}
            for axis in "xyz":
                ratio = (group[f"d{axis}_nm"] / group[f"crlb_{axis}_nm"]).abs()
                row[f"crlb_ratio_{axis}"] = round(float(np.sqrt(np.mean(ratio**2))), 2)
            row["z_ratio_median"] = round(float(ratio.median()), 2)
            row["z_ratio_above_5"] = round(float(np.mean(ratio > 5)), 3)
            neighbours.append(row)
    return recall, neighbours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--finish-only", action="store_true",
                        help="save the finished model folder without scoring it (for a "
                        "configuration other than bench_training.py's test setting)")
    parser.add_argument("--mle", action="store_true",
                        help="also score the classical MLE fitter on the same frames")
    args = parser.parse_args()
    if args.finish_only and args.mle:
        parser.error("--mle scores the test movies, which --finish-only skips")
    config = load_config(args.config)
    trainer = Trainer(config, args.model_dir, device="cpu")
    if not trainer.load_checkpoint():  # which refuses a checkpoint of another configuration
        saved = TrainedModel.load(args.model_dir)
        changed = config_differences(saved.config.model_dump(mode="json"),
                               config.model_dump(mode="json"))
        if changed:
            raise SystemExit(f"{args.model_dir} was trained with another configuration than "
                             f"{args.config} ({'; '.join(changed)}): pass its own "
                             f"{args.model_dir / 'config.yaml'} instead")
        if not all(math.isclose(value, getattr(trainer.data.scaling, name), rel_tol=1e-9)
                   for name, value in vars(saved.scaling).items()):  # weights expect saved ones
            raise SystemExit(f"{args.model_dir}'s input scaling {saved.scaling} differs from "
                             f"the one its configuration gives today ({trainer.data.scaling})")
        trainer.net.load_state_dict(saved.net.state_dict())
        trainer.inputs = saved.inputs  # the files as training found them, not as they are now
        done = saved.summary
        trainer.state.epoch, trainer.state.step = done["epochs"], done["steps"]
        trainer.state.samples, trainer.state.elapsed_s = done["samples"], done["minutes"] * 60
    model = trainer.finish()
    print(f"saved {args.model_dir}: threshold {model.threshold}, sigma factors "
          f"{model.sigma_scale}", flush=True)
    if args.finish_only:
        return
    tests = {name: test_movie(config, d, args.frames, seed=100 + i)
             for i, (name, d) in enumerate(DENSITIES.items())}
    rows = []
    for readout in ("mixture", "max"):
        for sigmas, scored in sigma_variants(model):
            row = {"variant": args.name, "readout": readout, "sigmas": sigmas,
                   "minutes": round(trainer.state.elapsed_s / 60, 1),
                   "samples": trainer.state.samples, "threshold": model.threshold}
            for density, values in evaluate_model(scored, tests, readout).items():
                row.update({f"{density}_{k}": v for k, v in values.items()})
            print(row, flush=True)
            rows.append(row)
    baseline = mle_baseline(tests) if args.mle else None
    factors = "; ".join(f"{readout}: " + ", ".join(f"{axis} {value:.3f}"
                                                    for axis, value in axes.items())
                        for readout, axes in model.sigma_scale.items())
    write_results(f"training_{args.name}_final", rows,
                  "Final model, threshold tuned on the validation set. sigmas: calibrated, "
                  "multiplied by the factors fitted on the validation set (model.yaml's "
                  f"sigma_scale; {factors}), as denseloc localize reports them; as predicted, "
                  "without the factors. Localizations are the same."
                  + ("" if baseline is None else
                     f"\nMLE baseline on the same frames: {json.dumps(baseline)}"),
                  config=config, model_dir=args.model_dir)
    recall, neighbours = breakdown_tables(model, tests)
    write_results(f"training_{args.name}_recall", recall,
                  "Recall of ground-truth emitters with >= 500 photons in the frame, mixture "
                  "readout, the model's threshold; matching tolerances 250 nm / 500 nm.",
                  config=config, model_dir=args.model_dir)
    write_results(f"training_{args.name}_neighbours", neighbours,
                  "Per-emitter RMS(error / sqrt(CRLB)) of matched emitters with >= 2000 "
                  "photons, by the lateral distance from the emitter to its nearest neighbour "
                  "in the frame (any brightness); the single-emitter bound ignores the "
                  "neighbour. z_ratio_median: median |error| / sqrt(CRLB) in z; "
                  "z_ratio_above_5: fraction of emitters whose z error exceeds 5 sqrt(CRLB).",
                  config=config, model_dir=args.model_dir)


if __name__ == "__main__":
    main()
