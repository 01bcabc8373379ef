"""Training and inference throughput of the network on this machine.

Usage: python benchmarks/bench_training_speed.py [--seconds S]
    [--compile-only | --movies-only | --batches-only]

Training: samples per second of full training steps (simulation of the batch, forward,
Gaussian-mixture loss, backward, AdamW) for several network widths, training frame sizes
and movie lengths (``frames_per_movie`` 3: independent samples; 8: consecutive windows share
frame features). Inference: frames per second of the network (3-frame context, features
reused across windows) on 64x64 and 256x256 frames, without post-processing. Compiled: the
same training step with the network's forward pass through ``torch.compile`` (inductor,
compilation excluded from the timing); ``--compile-only`` measures just that pair and writes
``training_speed_compile``. ``--movies-only`` measures the default network for training movies
of 3 to 34 frames, back to back (speed varies by up to 20 % between days on this machine), and
writes ``training_speed_movies``; ``--batches-only`` does the same for batches of 8 to 128
samples and writes ``training_speed_batches``.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_results
from denseloc._runtime import configure_cpu
from denseloc.config import Config
from denseloc.localize.network import network_outputs
from denseloc.nn.model import DecodeNet
from denseloc.train.artifact import TrainedModel
from denseloc.train.trainer import Trainer


def training_rate(
    filters: int, frame_px: int, frames_per_movie: int, seconds: float, compiled: bool = False,
    batch_size: int = 32,
) -> tuple[float, int]:
    """Training samples/s, and the frames per batch that go through the frame-analysis U-Net."""
    cfg = Config.model_validate({
        "emitters": {"density_per_um2": 1.0},
        "model": {"filters": filters},
        "train": {"frame_size_px": frame_px, "frames_per_movie": frames_per_movie,
                  "density_range_per_um2": [0.05, 2.5], "validation_samples": 1,
                  "batch_size": batch_size},
    })
    trainer = Trainer(cfg, "/tmp/denseloc-speed-unused", device="cpu")
    if compiled:
        trainer.net.forward_windows = torch.compile(trainer.net.forward_windows)
    gen = trainer.generator
    for _ in range(3):  # warm-up
        trainer._step(trainer.data.batch(cfg.train.batch_size, gen))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = trainer.data.batch(cfg.train.batch_size, gen)
        trainer._step(batch)
        done += cfg.train.batch_size
    return done / (time.perf_counter() - start), len(batch.frames)


def inference_rate(filters: int, size: int, seconds: float) -> float:
    cfg = Config()
    net = DecodeNet(filters=filters).eval().to(memory_format=torch.channels_last)
    from denseloc.train.data import TrainingData

    model = TrainedModel(net, TrainingData(cfg).scaling, cfg)
    frames = torch.rand(16 if size <= 64 else 4, size, size) * 500 + 100
    network_outputs(model, frames)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        network_outputs(model, frames)
        done += len(frames)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--compile-only", action="store_true")
    only.add_argument("--movies-only", action="store_true")
    only.add_argument("--batches-only", action="store_true")
    args = parser.parse_args()
    configure_cpu(2)
    if args.batches_only:
        rows = []
        for batch_size in (8, 16, 32, 64, 128):
            rate, frames = training_rate(16, 40, 8, args.seconds, batch_size=batch_size)
            rows.append({"kind": "train", "filters": 16, "frame_px": 40, "batch_size": batch_size,
                         "frames_per_batch": frames, "rate": round(rate, 1),
                         "steps_per_s": round(rate / batch_size, 2), "unit": "samples/s"})
            print(rows[-1], flush=True)
        write_results("training_speed_batches", rows,
                      "2 torch threads, channels-last, 8-frame movies, density 0.05-2.5 /um^2, "
                      "batch sizes back to back. Rate includes simulating the batch.")
        return
    if args.movies_only:
        rows = []
        batch = Config().train.batch_size
        for fpm in (3, 4, 6, 8, 10, 16, 18, 34):
            rate, frames = training_rate(16, 40, fpm, args.seconds)
            rows.append({"kind": "train", "filters": 16, "frame_px": 40, "frames_per_movie": fpm,
                         "movies_per_batch": -(-batch // (fpm - 2)), "frames_per_batch": frames,
                         "rate": round(rate, 1), "unit": "samples/s"})
            print(rows[-1], flush=True)
        write_results("training_speed_movies", rows,
                      "2 torch threads, channels-last, batch 32, density 0.05-2.5 /um^2; "
                      "a movie of n frames gives n - 2 three-frame windows that share the "
                      "frame-analysis features; frames_per_batch frames go through the "
                      "frame-analysis U-Net for the batch's windows. Rate includes simulating the "
                      "batch.")
        return
    if args.compile_only:
        rows = []
        for compiled in (False, True):
            rate, _ = training_rate(16, 40, 8, args.seconds, compiled=compiled)
            rows.append({"kind": "train", "filters": 16, "frame_px": 40, "frames_per_movie": 8,
                         "compiled": compiled, "rate": round(rate, 1), "unit": "samples/s"})
            print(rows[-1], flush=True)
        write_results("training_speed_compile", rows,
                      "2 torch threads, channels-last, batch 32; compiled = torch.compile of "
                      "the forward pass (default inductor backend), timed after 3 warm-up steps.")
        return
    rows = []
    for filters, frame_px, fpm in [(16, 40, 3), (16, 40, 8), (16, 32, 8), (8, 40, 8),
                                   (24, 40, 8), (32, 40, 8), (48, 40, 3), (48, 40, 8)]:
        rate, _ = training_rate(filters, frame_px, fpm, args.seconds)
        rows.append({"kind": "train", "filters": filters, "frame_px": frame_px,
                     "frames_per_movie": fpm, "rate": round(rate, 1), "unit": "samples/s"})
        print(rows[-1], flush=True)
    for filters in (16, 48):
        for size in (64, 256):
            rate = inference_rate(filters, size, args.seconds)
            rows.append({"kind": "inference", "filters": filters, "frame_px": size,
                         "frames_per_movie": "-", "rate": round(rate, 1), "unit": "frames/s"})
            print(rows[-1], flush=True)
    write_results(
        "training_speed", rows,
        "2 torch threads, channels-last, batch 32, density 0.05-2.5 /um^2, 3-frame context, "
        "depth 2. Training rate includes simulating the batch.",
    )


if __name__ == "__main__":
    main()
