"""Re-run the end of training on a model folder and score it with both readouts.

Usage: python benchmarks/finish_model.py CONFIG.yaml MODEL_DIR --name NAME

Tunes the detection threshold on the validation set (what ``denseloc train`` does at the end
of a run, :meth:`Trainer.finish`), saves the model folder, and scores it on the fixed test
movies of ``bench_training.py`` reading each detection from the 3x3 mixture (the default) and
from its maximum pixel alone (DECODE's readout). The weights come from the folder's last
checkpoint or, without one (a bundled model), from its ``weights.pt``. A second table gives
the recall (fraction of ground-truth emitters with >= 500 photons that are found) by z and by
photon count, to show which emitters the model misses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from _common import write_results
from bench_training import DENSITIES, evaluate_model, test_movie
from denseloc.config import load_config
from denseloc.evaluate.match import match
from denseloc.localize.network import predict_frames
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import Trainer

Z_BINS_NM = np.arange(-700, 701, 200)
PHOTON_BINS = [500, 1000, 2000, 3000, 4000, 5000, 10000]


def recall_table(model: TrainedModel, tests: dict) -> list[dict]:
    rows = []
    for density, (cfg, photons, truth) in tests.items():
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm)
        found = np.zeros(len(truth), dtype=bool)
        found[match(pred, truth).gt_index] = True
        gt = truth.assign(found=found)[truth["photons"] >= 500]
        for column, bins, unit in (("z_nm", Z_BINS_NM, "nm"), ("photons", PHOTON_BINS, "")):
            groups = gt.groupby(pd.cut(gt[column], bins), observed=True)["found"]
            for interval, values in groups:
                rows.append({"density": density, "by": column,
                             "bin": f"{interval.left:g} to {interval.right:g} {unit}".strip(),
                             "emitters": len(values), "recall": round(values.mean(), 3)})
    return rows


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
        saved = TrainedModel.load(args.model_dir)
        trainer.net.load_state_dict(saved.net.state_dict())
        done = saved.summary
        trainer.state.epoch, trainer.state.step = done["epochs"], done["steps"]
        trainer.state.samples, trainer.state.elapsed_s = done["samples"], done["minutes"] * 60
    model = trainer.finish()
    tests = {name: test_movie(config, d, args.frames, seed=100 + i)
             for i, (name, d) in enumerate(DENSITIES.items())}
    rows = []
    for readout in ("mixture", "max"):
        row = {"variant": args.name, "readout": readout,
               "minutes": round(trainer.state.elapsed_s / 60, 1), "threshold": model.threshold}
        for density, values in evaluate_model(model, tests, readout).items():
            row.update({f"{density}_{k}": v for k, v in values.items()})
        print(row, flush=True)
        rows.append(row)
    write_results(f"training_{args.name}_final", rows,
                  "Final model, threshold tuned on the validation set; uncertainties as "
                  "predicted (no calibration factor).")
    write_results(f"training_{args.name}_recall", recall_table(model, tests),
                  "Recall of ground-truth emitters with >= 500 photons in the frame, mixture "
                  "readout, the model's threshold; matching tolerances 250 nm / 500 nm.")


if __name__ == "__main__":
    main()
