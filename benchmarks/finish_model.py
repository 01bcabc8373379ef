"""Re-run the end of training on a model folder's last checkpoint and re-score it.

Usage: python benchmarks/finish_model.py CONFIG.yaml MODEL_DIR --name NAME

Tunes the detection threshold and fits the sigma calibration on the validation set (what
``denseloc train`` does at the end of a run, :meth:`Trainer.finish`), saves the model folder,
and scores it on the fixed test movies of ``bench_training.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import write_results
from bench_training import DENSITIES, evaluate_model, test_movie
from denseloc.config import load_config
from denseloc.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    config = load_config(args.config)
    trainer = Trainer(config, args.model_dir, device="cpu")
    if not trainer.load_checkpoint():
        raise SystemExit(f"{args.model_dir}: no checkpoint")
    model = trainer.finish()
    tests = {name: test_movie(config, d, args.frames, seed=100 + i)
             for i, (name, d) in enumerate(DENSITIES.items())}
    row = {"variant": args.name, "minutes": round(trainer.state.elapsed_s / 60, 1),
           "threshold": model.threshold,
           "sigma_scale_xyz": " / ".join(f"{v:.3f}" for v in model.sigma_scale)}
    for density, values in evaluate_model(model, tests).items():
        row.update({f"{density}_{k}": v for k, v in values.items()})
    print(row)
    write_results(f"training_{args.name}_calibrated", [row],
                  "Final model after the sigma calibration fitted on the validation set.")


if __name__ == "__main__":
    main()
