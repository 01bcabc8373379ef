"""Accuracy per CPU-minute: train, and at checkpoints evaluate on fixed test movies.

Usage:
    python benchmarks/bench_training.py CONFIG.yaml --name NAME --minutes 30 \
        --eval-at 5 10 20 30 [--filters 16] [--set SECTION.FIELD=VALUE ...] [--out-model DIR]

``--set train.lr=3e-3 --set train.seed=5`` runs a variant of CONFIG without a copy of it; the
results file records the command and the effective configuration.

``--epochs N`` trains N epochs (``train.steps_per_epoch`` x ``train.batch_size`` samples each,
with the learning-rate schedule planned over them) instead of ``--minutes``, and ``--eval-at``
counts epochs. The machine's speed has varied by a factor of two between days (57 to 132
samples/s for the default), so a time budget compares variants on one day only; at equal
samples two runs are comparable on any day, and a variant's speed relative to the default
(``bench_training_speed.py``) turns its samples into minutes.

Test movies (fixed seeds): 64x64 px, low density (0.1 /um^2) and high density (2 /um^2),
z in -700..700 nm, with the configuration's PSF, camera, photons and background. Metrics per
the network issue: Jaccard counting ground-truth emitters with >= 500 photons in the frame;
per-emitter RMS(error / sqrt(CRLB)) per axis for matched emitters with >= 2000 photons (each
emitter's own bound: its photons, z and background, with the camera's excess noise, from the
light that falls inside the frame; ``crlb_ratio_unbounded_*`` as if the frame went on beyond its
edges, as all results before 2026-12-03 were scored; ``crlb_ratio_window_*`` against the bound
of an estimator that reads as many frames as the model, in all of which the emitter keeps its
place, its photons and the background unknown in each: the single-frame ratios can fall below
1; these do not on average for an unbiased estimator that does not know that the simulated
background stays constant, nor that a fully-on emitter keeps its photons, from frame to frame);
RMS(error / predicted sigma) per axis; and the classical MLE fitter's Jaccard on the same frames.
Each evaluation finishes the model as ``denseloc train`` does (threshold and sigma factors fitted
on the validation set) and reads the mixture, so the sigmas are those ``denseloc localize
--readout mixture`` would report; results from before the factors existed (2026-12-02) used
the sigmas as predicted. Training time excludes these evaluations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from _common import RESULTS, write_results
from denseloc.cli import resolve_config
from denseloc.config import Config
from denseloc.errors import DenselocError
from denseloc.evaluate import evaluate, has_z, rms_ratio
from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns, add_window_crlb_columns
from denseloc.sim.simulator import Simulator
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import Trainer

DENSITIES = {"low": 0.1, "high": 2.0}
TEST_SIZE_PX = 64
TEST_Z_RANGE_NM = (-700.0, 700.0)  # the network issue's; a config may train on a wider range
MIN_PHOTONS = 500.0  # ground-truth emitters with fewer photons in the frame are not counted
BRIGHT_PHOTONS = 2000.0  # the CRLB ratios are scored on matched emitters at least this bright


def parse_overrides(assignments: list[str]) -> dict[str, object]:
    """``SECTION.FIELD=VALUE`` assignments (VALUE in YAML) as dotted overrides."""
    overrides = {}
    for item in assignments:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--set {item}: expected SECTION.FIELD=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def test_movie(config: Config, density: float, n_frames: int, seed: int):
    cfg = config.model_copy(update={
        "image": config.image.model_copy(update={"size_px": (TEST_SIZE_PX, TEST_SIZE_PX)}),
        "emitters": config.emitters.model_copy(update={"density_per_um2": density,
                                                       "count_per_frame": None,
                                                       "z_range_nm": TEST_Z_RANGE_NM}),
    })
    sim = Simulator(cfg)
    batch = sim.sample(1, n_frames, sim.generator(seed))
    photons = sim.camera.adu_to_photons(batch.adu[0])
    truth = batch.emitters.to_table(cfg.image.pixel_size_nm)
    truth["bg"] = float(batch.background.mean())
    # Each emitter's bound from the light that reaches the frame; before 2026-12-03 the
    # frame was taken as unbounded, kept as crlb_unbounded_* to compare with those results.
    unbounded = add_crlb_columns(truth, cfg)
    frame = (TEST_SIZE_PX, TEST_SIZE_PX)
    truth = add_crlb_columns(truth, cfg, frame_shape=frame)
    truth = add_window_crlb_columns(truth, cfg, cfg.model.context_frames, frame_shape=frame)
    for axis in "xyz":
        truth[f"crlb_unbounded_{axis}_nm"] = unbounded[f"crlb_{axis}_nm"]
    return cfg, photons, truth


def found_emitters(pred: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Which rows of `truth` are counted emitters that a prediction matched, as in :func:`score`."""
    _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
    found = np.zeros(len(truth), dtype=bool)
    found[pairs["gt_index"].to_numpy()] = True
    return found


def score(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float | None]:
    is_3d = has_z(truth)  # 2D test movies: no axial scores, not 0
    metrics, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS, is_3d=is_3d)
    row = {"jaccard": metrics.jaccard, "rmse_lateral_nm": metrics.rmse_lateral_nm,
           "rmse_axial_nm": metrics.rmse_axial_nm}
    bright = pairs[pairs["photons_gt"] >= BRIGHT_PHOTONS]
    for axis in "xyz" if is_3d else "xy":
        err = bright[f"d{axis}_nm"].to_numpy()
        row[f"crlb_ratio_{axis}"] = rms_ratio(err, bright[f"crlb_{axis}_nm"])
        for kind in ("unbounded", "window"):
            if f"crlb_{kind}_{axis}_nm" in truth:
                bound = truth[f"crlb_{kind}_{axis}_nm"].to_numpy()[bright["gt_index"].to_numpy()]
                row[f"crlb_ratio_{kind}_{axis}"] = rms_ratio(err, bound)
        if f"sigma_{axis}_nm" in pairs:
            all_err = pairs[f"d{axis}_nm"].to_numpy()
            row[f"err_over_sigma_{axis}"] = rms_ratio(all_err, pairs[f"sigma_{axis}_nm"])
    return row


def evaluate_model(model: TrainedModel, tests: dict, readout: str = "mixture") -> dict[str, dict]:
    from denseloc.localize.network import predict_frames

    out = {}
    for name, (cfg, photons, truth) in tests.items():
        pred = predict_frames(model, photons, pixel_size_nm=cfg.image.pixel_size_nm,
                              readout=readout)
        out[name] = score(pred, truth)
    return out


def mle_baseline(tests: dict) -> dict[str, dict]:
    from denseloc.classic.mle import localize_mle
    from denseloc.sim.simulator import psf_from_config

    out = {}
    for name, (cfg, photons, truth) in tests.items():
        psf = psf_from_config(cfg.psf, cfg.emitters.z_range_nm)
        t0 = time.perf_counter()
        pred = localize_mle(photons, psf, pixel_size_nm=cfg.image.pixel_size_nm,
                            noise=NoiseModel.from_camera(cfg.camera),
                            z_range_nm=cfg.emitters.z_range_nm)
        row = score(pred, truth)
        row["seconds"] = time.perf_counter() - t0
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--name", required=True)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training minutes (30)")
    budget.add_argument("--epochs", type=int, default=None,
                        help="train this many epochs instead of --minutes")
    parser.add_argument("--eval-at", type=float, nargs="+", default=[5, 10, 20, 30],
                        help="evaluate after these minutes (epochs with --epochs)")
    parser.add_argument("--filters", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a configuration field (repeatable)")
    parser.add_argument("--frames", type=int, default=100, help="frames per test movie")
    parser.add_argument("--out-model", type=Path, default=None)
    parser.add_argument("--skip-mle", action="store_true")
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.epochs is None and args.minutes is None:
        args.minutes = 30.0

    overrides = {"model.filters": args.filters, **parse_overrides(args.set)}
    try:
        config = resolve_config(args.config, **overrides)
    except DenselocError as exc:
        raise SystemExit(f"error: {exc}") from None
    tests = {name: test_movie(config, d, args.frames, seed=100 + i)
             for i, (name, d) in enumerate(DENSITIES.items())}
    baseline = {} if args.skip_mle else mle_baseline(tests)
    print("MLE baseline:", json.dumps(baseline, indent=1))

    out_dir = args.out_model or (RESULTS / f"_model_{args.name}")
    trainer = Trainer(config, out_dir, device="cpu")
    pending = sorted(args.eval_at)
    rows: list[dict] = []

    def checkpoint(info: dict) -> None:
        if "jaccard" in info:
            print(f"epoch {info['epoch']} {info['minutes']:.1f} min val JI {info['jaccard']:.3f} "
                  f"loss {info['val_loss']:.2f}", flush=True)
        minutes = trainer.state.elapsed_s / 60
        while pending and (minutes if args.epochs is None else trainer.state.epoch) >= pending[0]:
            pending.pop(0)
            model = trainer.finish()
            result = evaluate_model(model, tests)
            row = {"variant": args.name, "filters": config.model.filters,
                   "epochs": trainer.state.epoch, "minutes": round(minutes, 1),
                   "samples": trainer.state.samples,
                   "samples_per_s": round(trainer.state.samples / trainer.state.elapsed_s, 1),
                   "threshold": model.threshold}
            for density, values in result.items():
                row.update({f"{density}_{k}": v for k, v in values.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)

    if args.epochs is None:
        trainer.fit(minutes=args.minutes, progress=checkpoint)
    else:
        trainer.fit(epochs=args.epochs, progress=checkpoint)
    if pending:  # the budget ended just before the last evaluation point
        pending[:] = [0.0]
        checkpoint({})
    notes = (f"Config: {args.config} (model {config.model.model_dump()}, train "
             f"{config.train.model_dump(exclude={'seed', 'threads'})}).\n"
             f"MLE baseline on the same frames: {json.dumps(baseline)}")
    write_results(f"training_{args.name}", rows, notes, config=config, model_dir=out_dir)


if __name__ == "__main__":
    main()
