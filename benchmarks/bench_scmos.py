"""Does training with an sCMOS camera's per-pixel maps pay? Two networks, one chip.

Usage: python benchmarks/bench_scmos.py CONFIG.yaml [--minutes 10] [--frames 100] [--name N]
       [--set SECTION.FIELD=VALUE ...]     (e.g. train.seed=5: another training seed, same chip)

A synthetic 64 x 64 px sCMOS chip with the statistics of a typical back-illuminated camera
(ORCA-Flash 4.0 v3 data sheet): offsets ~ Normal(100, 2) ADU, 0.46 e-/ADU with 2 % pixel
spread, read noise log-normal around 1.4 e- rms, and 1 % hot pixels with 20-60 e- rms. Two
networks of CONFIG's architecture train for the same CPU time on CONFIG's microscope and
emitters with this chip: one with the maps (each training movie cut at a random place on the
chip), one with scalar settings, as a user without maps would: the median read noise (what
data sheets quote), the mean offset and gain. Both localize the same test movies
(bench_training.py's, 0.1 and 2 emitters/um^2), simulated with the maps and converted to
photons with the maps. Reported per density: bench_training.py's scores (their CRLB uses the
median read noise, right for 99 % of the pixels), the false positives per frame, and those
within 1 px of a hot pixel.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from _common import write_results
from bench_training import DENSITIES, parse_overrides, score, test_movie
from denseloc.cli import resolve_config
from denseloc.config import Config
from denseloc.evaluate.match import match
from denseloc.localize.network import predict_frames
from denseloc.table import px_to_nm
from denseloc.train.trainer import Trainer

CHIP_PX = 64  # the size of bench_training.py's test movies
HOT_FRACTION = 0.01
HOT_READ_NOISE_E = (20.0, 60.0)
E_PER_ADU = 0.46


def write_chip(folder: Path, seed: int = 0) -> tuple[dict[str, object], np.ndarray]:
    """Write the chip's maps; return the camera settings with maps and the hot pixels' mask."""
    rng = np.random.default_rng(seed)
    shape = (CHIP_PX, CHIP_PX)
    gain = E_PER_ADU * rng.normal(1.0, 0.02, shape)
    read_e = rng.lognormal(np.log(1.4), 0.3, shape)
    hot = rng.random(shape) < HOT_FRACTION
    read_e[hot] = rng.uniform(*HOT_READ_NOISE_E, int(hot.sum()))
    maps = {"offset": rng.normal(100.0, 2.0, shape), "variance": (read_e / gain) ** 2,
            "gain": gain}
    for name, values in maps.items():
        np.save(folder / f"{name}.npy", values)
    camera = {"kind": "scmos", "qe": 0.82, "em_gain": 1.0, "spurious_charge_e": 0.0,
              "e_per_adu": float(gain.mean()), "baseline_adu": float(maps["offset"].mean()),
              "read_noise_e": float(np.median(read_e)),
              **{f"{name}_map": str(folder / f"{name}.npy") for name in maps}}
    return camera, hot


def with_camera(config: Config, camera: dict[str, object]) -> Config:
    return config.model_copy(update={
        "image": config.image.model_copy(update={"size_px": (CHIP_PX, CHIP_PX)}),
        "camera": config.camera.model_validate(camera),
    })


def hot_false_positives(pred: pd.DataFrame, truth: pd.DataFrame, hot: np.ndarray,
                        pixel_nm: float) -> tuple[int, int]:
    """False positives (matched to no emitter at all), and those within 1 px of a hot pixel."""
    fp = pred.iloc[match(pred, truth).pred_unmatched]
    rows, cols = np.nonzero(hot)
    centres = np.column_stack([px_to_nm(cols, pixel_nm), px_to_nm(rows, pixel_nm)])
    xy = fp[["x_nm", "y_nm"]].to_numpy()
    distance = np.linalg.norm(xy[:, None, :] - centres[None], axis=2).min(axis=1, initial=np.inf)
    return len(fp), int(np.sum(distance <= pixel_nm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per network")
    parser.add_argument("--frames", type=int, default=100, help="frames per test movie")
    parser.add_argument("--name", default="scmos_maps")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting of CONFIG for both networks, e.g. "
                        "train.seed=5 (repeatable; not camera.*, which the chip replaces)")
    args = parser.parse_args()
    base = resolve_config(args.config, **parse_overrides(args.set))
    pixel_nm = base.image.pixel_size_nm
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        camera, hot = write_chip(Path(tmp))
        with_maps = with_camera(base, camera)
        scalar = {k: v for k, v in camera.items() if not k.endswith("_map")}
        tests = {name: test_movie(with_maps, d, args.frames, seed=100 + i)
                 for i, (name, d) in enumerate(DENSITIES.items())}
        for label, config in (("maps", with_maps), ("scalars", with_camera(base, scalar))):
            trainer = Trainer(config, Path(tmp) / label.replace(" ", "_"), device="cpu")
            trainer.fit(minutes=args.minutes)
            model = trainer.finish()
            for density, (_, photons, truth) in tests.items():
                pred = predict_frames(model, photons, pixel_size_nm=pixel_nm)
                fp, near_hot = hot_false_positives(pred, truth, hot, pixel_nm)
                row = {"trained_with": label, "density": density,
                       "minutes": round(trainer.state.elapsed_s / 60, 1),
                       "samples": trainer.state.samples, "threshold": model.threshold,
                       **score(pred, truth), "fp_per_frame": fp / len(photons),
                       "fp_near_hot_per_frame": near_hot / len(photons)}
                print(row, flush=True)
                rows.append(row)
    write_results(args.name, rows,
                  f"Chip {CHIP_PX} x {CHIP_PX} px, {int(hot.sum())} hot pixels "
                  f"({HOT_READ_NOISE_E[0]:g}-{HOT_READ_NOISE_E[1]:g} e- rms); a false positive "
                  "is a localization matched to no ground-truth emitter of any brightness; "
                  "'near hot' means within 1 px of a hot pixel's centre. Scores as in "
                  "bench_training.py.")


if __name__ == "__main__":
    main()
