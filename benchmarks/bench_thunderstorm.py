"""A network trained by denseloc, scored on frames another program simulated (ThunderSTORM).

Usage:
    denseloc train benchmarks/configs/thunderstorm.yaml --out MODEL_DIR --minutes 20
    python benchmarks/bench_thunderstorm.py --model MODEL_DIR [--name thunderstorm]

Every other accuracy figure of this project is measured on movies denseloc simulated itself, so
an error shared by the simulator and the network's training (a pixel convention, the camera's
photon conversion) would cancel out there. The frames here come from ThunderSTORM's generator
(``../shared/data/thunderstorm_sim``, Deep-STORM's demo 1): 20 independent 64x64 frames of
about 6 emitters/um^2, 2D Gaussian PSF, 2000-2500 photons. The network is trained only from the
configuration, whose camera and PSF were read off the frames (and are checked by
``tests/sim/test_thunderstorm_forward.py``); it never sees these frames before this script.

The movie is localized as ``denseloc localize`` does (the model's default readout and sigma
factors), then read both ways (each detection from the 3x3 mixture, and from its maximum pixel
alone, DECODE's readout), each with the model's sigma factors and without them; the classical
MLE fitter runs on the same frames, with the same camera and PSF. All are scored against
ThunderSTORM's ground truth at two matching tolerances: the project's usual 250 nm, which is
generous at this density (the mean distance to the nearest neighbour is about 200 nm), and
100 nm. Columns: Jaccard index, recall, precision, lateral RMSE and bias, RMS(error /
sqrt(CRLB)) per axis with each emitter's own single-emitter bound (its photons, the background
of 20 photons/px, the EMCCD's excess noise), RMS(error / predicted sigma), z_score_rms, and the
fractions of errors within 1 and 2 predicted sigmas (0.683 and 0.954 for calibrated Normal
errors). Two more tables: the errors by the distance to the nearest neighbour, and the network
on denseloc's frames at densities from 0.3 to 9 emitters/um^2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import sigma_variants, write_results
from bench_training import MIN_PHOTONS, TEST_SIZE_PX, found_emitters, test_movie
from denseloc.classic.mle import localize_mle
from denseloc.config import load_config
from denseloc.evaluate import evaluate
from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns
from denseloc.io import open_movie, read_table
from denseloc.localize.network import predict_frames
from denseloc.localize.pipeline import localize_movie_network
from denseloc.sim.camera import Camera
from denseloc.sim.simulator import psf_from_config
from denseloc.train.artifact import TrainedModel
from finish_model import nearest_neighbour_nm

CONFIG = Path(__file__).resolve().parent / "configs" / "thunderstorm.yaml"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "thunderstorm_sim"
TOLERANCES_NM = (250.0, 100.0)
NEIGHBOUR_BINS_NM = [0, 100, 200, 300, 500, np.inf]
OWN_FRAMES, OWN_SEED = 100, 100  # denseloc's own simulation of the same setting
READOUTS = {"mixture": "mixture", "maximum pixel": "max"}
DENSITIES_PER_UM2 = (0.3, 1.0, 3.0, 6.0, 9.0)  # the sigma factors' table, on denseloc's frames
DENSITY_EMITTERS = 5000  # about this many emitters per density


def score(pred: pd.DataFrame, truth: pd.DataFrame, tol_nm: float) -> dict[str, float | None]:
    metrics, _ = evaluate(pred, truth, tol_lateral_nm=tol_nm, min_photons=MIN_PHOTONS)
    fields = ["jaccard", "recall", "precision", "rmse_lateral_nm", "bias_x_nm", "bias_y_nm",
              "crlb_ratio_x", "crlb_ratio_y", "z_score_rms_x", "z_score_rms_y",
              "within_1sigma_x", "within_1sigma_y", "within_2sigma_x",
              "within_2sigma_y"]  # fmt: skip
    return {name: getattr(metrics, name) for name in fields}


def by_neighbour(pred: pd.DataFrame, truth: pd.DataFrame) -> list[dict[str, object]]:
    """Recall, RMSE and RMS(error / sigma) by the distance to the nearest other emitter."""
    neighbour = nearest_neighbour_nm(truth)
    found = found_emitters(pred, truth)
    _, pairs = evaluate(pred, truth, min_photons=MIN_PHOTONS)
    pairs["neighbour_nm"] = neighbour[pairs["gt_index"].to_numpy()]
    rows = []
    for interval, group in pairs.groupby(pd.cut(pairs["neighbour_nm"], NEIGHBOUR_BINS_NM),
                                         observed=True):  # fmt: skip
        in_bin = (neighbour > interval.left) & (neighbour <= interval.right)
        squared = group["dx_nm"] ** 2 + group["dy_nm"] ** 2
        row = {"nearest_neighbour": f"{interval.left:g} to {interval.right:g} nm",
               "emitters": int(in_bin.sum()), "recall": float(found[in_bin].mean()),
               "rmse_lateral_nm": float(np.sqrt(squared.mean())),
               "sigma_x_median_nm": float(group["sigma_x_nm"].median())}  # fmt: skip
        for axis in "xy":
            ratio = group[f"d{axis}_nm"] / group[f"sigma_{axis}_nm"]
            row[f"z_score_rms_{axis}"] = float(np.sqrt(np.mean(ratio**2)))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="model folder to score")
    parser.add_argument("--name", default="thunderstorm", help="results file name")
    args = parser.parse_args()
    model = TrainedModel.load(args.model)
    config = model.config
    pixel_size_nm = config.image.pixel_size_nm
    truth = read_table(DATA / "ground_truth.csv", pixel_size_nm=pixel_size_nm)
    # The bounds use the configuration's background, the one measured in the frames (20
    # photons/px); the ground truth's "offset [photon]" column (50, read as bg) is not it.
    truth = add_crlb_columns(truth.drop(columns="bg").assign(z_nm=0.0), config)

    runs: dict[str, pd.DataFrame] = {}
    with open_movie(DATA / "frames.tif") as movie:
        runs["network"] = localize_movie_network(movie, model, config)
        adu = torch.from_numpy(movie[:].astype(np.float64))
    photons = Camera.from_config(config.camera).adu_to_photons(adu)
    for label, readout in READOUTS.items():
        for sigmas, scored in sigma_variants(model):
            name = f"network, {label}" + ("" if sigmas == "calibrated" else f", sigmas {sigmas}")
            runs[name] = predict_frames(scored, photons.float(), pixel_size_nm=pixel_size_nm,
                                        readout=readout)
    runs["MLE fitter"] = localize_mle(
        photons, psf_from_config(config.psf, config.emitters.z_range_nm),
        pixel_size_nm=pixel_size_nm, noise=NoiseModel.from_camera(config.camera),
    )  # fmt: skip

    # The same network on frames denseloc simulates from the same configuration: if the two
    # simulators agree, so do the scores.
    _, own_photons, own_truth = test_movie(config, config.emitters.density_per_um2,
                                           OWN_FRAMES, seed=OWN_SEED)  # fmt: skip
    own = predict_frames(model, own_photons, pixel_size_nm=pixel_size_nm)

    rows = []
    for data, method, pred in [
        *(("ThunderSTORM", method, pred) for method, pred in runs.items()),
        ("denseloc", "network", own),
    ]:
        for tol in TOLERANCES_NM:
            row = {"frames": data, "method": method, "tolerance_nm": tol, "predicted": len(pred),
                   **score(pred, own_truth if data == "denseloc" else truth, tol)}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    log = pd.read_csv(args.model / "training_log.csv").iloc[-1]
    area_um2 = len(adu) * adu.shape[1] * adu.shape[2] * (pixel_size_nm / 1000) ** 2
    trained_for = (
        f"trained with {CONFIG.relative_to(CONFIG.parents[2])}"
        if config.model_dump() == load_config(CONFIG).model_dump()
        else f"trained with a configuration that differs from {CONFIG.name}"
    )
    notes = (
        f"Model {args.model}, {trained_for}: {config.model.filters} filters, context_frames "
        f"{config.model.context_frames}, trained for {log['minutes']:.1f} CPU-minutes "
        f"({int(log['samples'])} samples). ThunderSTORM's frames: {len(adu)} frames, "
        f"{len(truth)} emitters ({len(truth) / area_um2:.1f} /um^2 per frame), photons "
        f"{truth['photons'].min():.0f}-{truth['photons'].max():.0f}; every emitter is counted. "
        f"denseloc: {OWN_FRAMES} frames simulated by denseloc from the same configuration "
        f"(seed {OWN_SEED}), {len(own_truth)} emitters; emitters on for part of a frame with "
        f"fewer than {MIN_PHOTONS:.0f} photons in it are optional, as in bench_training.py. "
        f"network: as denseloc localize, with the model's default readout ({model.readout}, "
        "chosen on its validation set); mixture: each detection read from the mixture of the "
        "3x3 pixels around it; maximum pixel: the same output maps read at the detection's "
        "pixel alone (DECODE's readout). The sigmas are scaled by the model's factors for the "
        "readout, fitted on its validation set (model.yaml's sigma_scale: "
        f"{model.sigma_scale or 'none'}), except in the rows 'sigmas as predicted'."
    )
    write_results(args.name, rows, notes)
    rows = [{"readout": method, **row} for method in runs if method.startswith("network, ")
            for row in by_neighbour(runs[method], truth)]  # fmt: skip
    write_results(
        f"{args.name}_neighbours",
        rows,
        "The network's localizations of ThunderSTORM's frames (as in "
        f"{args.name}.md, tolerance 250 nm) by the lateral distance from each emitter "
        "to its nearest other emitter in the frame: recall of the emitters in that "
        "range, and for those matched the lateral RMSE, the median predicted sigma "
        "and RMS(error / predicted sigma) (z_score_rms), with the model's sigma factors "
        "except in the rows 'sigmas as predicted'.",
    )

    write_results(
        f"{args.name}_densities",
        by_density(model),
        f"The same network on frames denseloc simulates from the configuration at other "
        f"densities (seed {OWN_SEED}, about {DENSITY_EMITTERS} emitters each; tolerance 250 nm; "
        f"it was trained on {config.train.density_range_per_um2} emitters/um^2), read both "
        "ways, with the sigmas scaled by the model's factors and as predicted: whether one "
        "factor per axis, fitted on the training densities, calibrates the sigmas at each.",
    )


def by_density(model: TrainedModel) -> list[dict[str, object]]:
    """Jaccard, RMSE and RMS(error / sigma) on denseloc's frames at each test density."""
    config = model.config
    area_um2 = (TEST_SIZE_PX * config.image.pixel_size_nm / 1000) ** 2
    rows = []
    for density in DENSITIES_PER_UM2:
        n_frames = int(np.ceil(DENSITY_EMITTERS / (density * area_um2)))
        _, photons, truth = test_movie(config, density, n_frames, seed=OWN_SEED)
        for label, readout in READOUTS.items():
            for sigmas, scored in sigma_variants(model):
                pred = predict_frames(scored, photons, pixel_size_nm=config.image.pixel_size_nm,
                                      readout=readout)
                row = {"density_per_um2": density, "readout": label, "sigmas": sigmas,
                       "frames": n_frames, **score(pred, truth, TOLERANCES_NM[0])}
                print(row, flush=True)
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()
