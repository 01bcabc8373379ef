"""Simulator throughput: noisy frames per second on this machine.

Usage: python benchmarks/bench_simulator.py [--seconds S]

Cases: 40x40 px frames with 20 emitters per frame (a training batch), and 256x256 px frames
with 500 emitters per frame, for each camera, astigmatic PSF, batches of 64 movies x 3 frames.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_results
from denseloc.config import CAMERA_PRESETS, Config
from denseloc.sim.simulator import Simulator


def frames_per_second(cfg: Config, n_movies: int, seconds: float) -> tuple[float, float]:
    sim = Simulator(cfg)
    gen = sim.generator(0)
    sim.sample(n_movies, 3, gen)  # warm-up
    done, emitters, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = sim.sample(n_movies, 3, gen)
        done += n_movies * 3
        emitters += len(batch.emitters)
    return done / (time.perf_counter() - start), emitters / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for size, count, n_movies in [(40, 20, 64), (256, 500, 4)]:
        for camera in CAMERA_PRESETS:
            cfg = Config.model_validate(
                {"image": {"size_px": size}, "emitters": {"count_per_frame": count}}
            ).with_camera_preset(camera)
            fps, per_frame = frames_per_second(cfg, n_movies, args.seconds)
            rows.append({"frame_px": f"{size}x{size}", "emitters_per_frame": round(per_frame, 1),
                         "camera": camera, "frames_per_s": round(fps, 1)})
            print(rows[-1])
    write_results(
        "simulator",
        rows,
        "Astigmatic Gaussian PSF, patches 23x23 px, 2 torch threads, batches of "
        "movies x 3 frames. Target: > 5,000 noisy 40x40 frames/s.",
    )


if __name__ == "__main__":
    main()
