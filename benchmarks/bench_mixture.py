"""Why a network's mixture sigmas are calibrated or too wide: the 3x3 mixture, taken apart.

Usage:
    python benchmarks/bench_mixture.py --model MODEL_DIR --name NAME [--density 0.3 6]

The mixture readout (``denseloc.localize.postprocess``) reports a detection's sigma as the
standard deviation of the p-weighted mixture over its 3x3 pixels,
``sqrt(within^2 + spread^2)``: ``within^2 = sum_k w_k sigma_k^2`` is the components' own
variance, ``spread^2 = sum_k w_k (mu_k - mean)^2`` how far the components' means lie apart.
That sigma is calibrated only if the mixture mean's errors are as large. On frames simulated
from the model's own configuration (its training frame size, one density at a time, a fixed
seed; windows of its training movies), detected and matched as its validation does (local
maxima of p whose integrated p reaches the model's threshold, read by the mixture; counted
emitters: at least a tenth of the mean brightness in the frame), this reports per axis the RMS
error of the mixture mean and of the centre pixel's own mean, the RMS of within, spread and the
mixture sigma, and RMS(error / sigma) for the mixture (as predicted, without the model's
factors), for within alone, and for the centre pixel (the maximum-pixel readout, its own mean).
``within`` and ``spread`` come from the package's own readout (``maps_to_table``): the spread
is its sigma with the sigma maps set to 0.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from _common import write_results
from denseloc.evaluate import evaluate
from denseloc.localize.postprocess import maps_to_table
from denseloc.train.artifact import TrainedModel
from denseloc.train.data import TrainingData
from denseloc.train.trainer import COUNTED_FRACTION

SEED = 11
CHUNK = 64  # samples per forward pass
AXES = ("x", "y", "z")


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if len(values) else float("nan")


def mixture_parts(model: TrainedModel, density: float, samples: int) -> dict[str, pd.DataFrame]:
    """Errors and sigma parts (nm) of the matched counted emitters, a column per axis.

    Detections and matching are the validation's: :func:`maps_to_table` at the model's
    threshold, matched to the truth by :func:`denseloc.evaluate.evaluate`. The same
    detections read at their maximum pixel give the centre's mean and sigma, and read from
    maps whose sigmas are 0 the spread.
    """
    cfg = model.config
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"density_range_per_um2": (density, density)})})
    data = TrainingData(cfg)
    batch = data.batch(samples, data.sim.generator(SEED))
    outputs = []
    with torch.no_grad():
        for i in range(0, samples, CHUNK):
            windows = batch.windows[i:i + CHUNK]
            first, last = int(windows.min()), int(windows.max())
            frames = batch.frames[first:last + 1]  # only the frames these windows use
            outputs.append(model.net.forward_windows(frames, windows - first))
    output = torch.cat(outputs)
    no_sigma = output.clone()
    no_sigma[:, 5:9] = 0.0
    read = {"pixel_size_nm": cfg.image.pixel_size_nm, "threshold": model.threshold,
            "is_3d": cfg.psf.is_3d}
    # One row per detection, in the same order in all three tables.
    pred = maps_to_table(output, model.scaling, **read)
    centre = maps_to_table(output, model.scaling, readout="max", **read)
    spread = maps_to_table(no_sigma, model.scaling, **read)
    _, pairs = evaluate(pred, batch.emitters.to_table(cfg.image.pixel_size_nm),
                        min_photons=COUNTED_FRACTION * cfg.emitters.photons_mean)
    i = pairs["pred_index"].to_numpy()
    axes = AXES if cfg.psf.is_3d else AXES[:2]

    def per_axis(table: pd.DataFrame, column: str) -> pd.DataFrame:
        return pd.DataFrame({a: table[column.format(a)].to_numpy()[i] for a in axes})

    sd, spread_sd = per_axis(pred, "sigma_{}_nm"), per_axis(spread, "sigma_{}_nm")
    truth = pd.DataFrame({a: pairs[f"{a}_gt_nm"].to_numpy() for a in axes})
    return {
        "error": per_axis(pred, "{}_nm") - truth,
        "centre_error": per_axis(centre, "{}_nm") - truth,
        "sd": sd,
        "spread": spread_sd,
        "within": np.sqrt((sd**2 - spread_sd**2).clip(lower=0)),
        "centre_sd": per_axis(centre, "sigma_{}_nm"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained model folder")
    parser.add_argument("--name", required=True, help="results name")
    parser.add_argument("--density", type=float, nargs="+", default=[0.3, 2.0],
                        help="emitters/um^2, one table block each")
    parser.add_argument("--samples", type=int, default=512, help="frames per density")
    args = parser.parse_args()

    model = TrainedModel.load(args.model)
    rows = []
    for density in args.density:
        parts = mixture_parts(model, density, args.samples)
        for axis in parts["error"].columns:
            err, err_c = parts["error"][axis].to_numpy(), parts["centre_error"][axis].to_numpy()
            sd, within = parts["sd"][axis].to_numpy(), parts["within"][axis].to_numpy()
            rows.append({
                "density_per_um2": density,
                "axis": axis,
                "emitters": len(err),
                "rmse_nm": _rms(err),
                "rmse_centre_nm": _rms(err_c),
                "within_rms_nm": _rms(within),
                "spread_rms_nm": _rms(parts["spread"][axis].to_numpy()),
                "mixture_sd_rms_nm": _rms(sd),
                "err_over_mixture_sd": _rms(err / sd),
                "err_over_within": _rms(err / within),
                "centre_err_over_centre_sd": _rms(err_c / parts["centre_sd"][axis].to_numpy()),
            })
    notes = (
        f"Model {args.model} ({model.config.psf.kind} PSF, trained on "
        f"{model.config.train.density_range_per_um2} emitters/um^2 per frame, "
        f"{model.summary.get('samples', '?')} samples). {args.samples} frames of "
        f"{model.config.train.frame_size_px} px per density, seed {SEED}; matched counted "
        f"emitters (>= {COUNTED_FRACTION} x the mean brightness in the frame). "
        "rmse: the mixture mean's error; rmse_centre: the centre pixel's own mean's; within, "
        "spread, mixture_sd: RMS over the emitters of the mixture's parts "
        "(mixture_sd^2 = within^2 + spread^2); err_over_*: RMS(error / sigma), sigmas as "
        "predicted (no factors)."
    )
    print(write_results(args.name, rows, notes))


if __name__ == "__main__":
    main()
