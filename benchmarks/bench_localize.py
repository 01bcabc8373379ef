"""Throughput and memory of `denseloc localize` with the bundled model (or --model) on 2 cores.

Usage: python benchmarks/bench_localize.py [--long-frames 12000] [--skip-long] [--model DIR]
[--name localize_speed]

For each case a movie is simulated with the bundled model's microscope (0.5 emitters/um^2)
and written as a TIFF; then a fresh process (the way a user runs it) opens the movie lazily,
localizes it with the default chunking and tiling, and reports the frames/s of the
localization itself (movie reading, ADU -> photons, network, post-processing; not the imports
and model loading) and its peak resident memory. The long 128x128 movie is several times
larger than the process's peak memory: memory does not grow with the movie.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_results

CASES = [  # (name, size px, frames)
    ("64x64", 64, 2000),
    ("128x128", 128, 500),
    ("256x256", 256, 100),
    ("1024x1024", 1024, 24),
]


def simulate(size: int, n_frames: int, out: Path) -> Path:
    from denseloc.calibration import resolve_builtin
    from denseloc.cli import DEFAULT_MODEL
    from denseloc.sim.simulator import simulate_movie
    from denseloc.train.artifact import TrainedModel

    # The bundled model's microscope whatever --model: every model sees the same movies.
    cfg = TrainedModel.load(resolve_builtin(DEFAULT_MODEL)).config
    cfg = cfg.model_copy(update={
        "image": cfg.image.model_copy(update={"size_px": (size, size)}),
        "emitters": cfg.emitters.model_copy(update={"density_per_um2": 0.5}),
        "simulation": cfg.simulation.model_copy(update={"n_frames": n_frames, "seed": 1}),
    })
    return simulate_movie(cfg, out)["frames"]


WORKER = """
import json, sys, time
from denseloc._runtime import configure_cpu
from denseloc.calibration import resolve_builtin
from denseloc.io import open_movie
from denseloc.localize.pipeline import localize_movie_network
from denseloc.train.artifact import TrainedModel

def status(*keys):
    with open("/proc/self/status") as f:
        values = dict(line.split(":", 1) for line in f)
    return [int(values[k].split()[0]) / 1024 for k in keys]

peak = {"RssAnon": 0.0, "RssFile": 0.0}
def sample(done, total):
    for key, value in zip(peak, status(*peak)):
        peak[key] = max(peak[key], value)

configure_cpu()
model = TrainedModel.load(resolve_builtin(sys.argv[2]))
with open_movie(sys.argv[1]) as movie:
    localize_movie_network(movie, model, model.config, frames=range(2))  # warm-up
    start = time.perf_counter()
    table = localize_movie_network(movie, model, model.config, progress=sample)
    seconds = time.perf_counter() - start
    n = len(movie)
sample(0, 0)
# VmHWM belongs to this address space; getrusage's ru_maxrss would survive execve and
# report the parent's peak (the simulation of the movie) instead.
(hwm,) = status("VmHWM")
print(json.dumps({"frames": n, "seconds": seconds, "localizations": len(table),
                  "table_mb": table.memory_usage(deep=True).sum() / 2**20,
                  "peak_rss_mb": hwm, "anon_mb": peak["RssAnon"], "file_mb": peak["RssFile"]}))
"""


def run_case(name: str, size: int, n_frames: int, workdir: Path,
             model: str) -> dict[str, object]:
    movie = simulate(size, n_frames, workdir / name)
    run = subprocess.run([sys.executable, "-c", WORKER, str(movie), model],
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"worker failed on {name}:\n{run.stderr}")
    result = json.loads(run.stdout)
    movie_mb = movie.stat().st_size / 2**20
    movie.unlink()
    row = {"case": name, "frames": result["frames"], "movie_mb": round(movie_mb, 1),
           "frames_per_s": round(result["frames"] / result["seconds"], 2),
           "megapixels_per_s": round(result["frames"] * size * size / result["seconds"] / 1e6, 3),
           "localizations": result["localizations"],
           "table_mb": round(result["table_mb"]),
           "peak_rss_mb": round(result["peak_rss_mb"]),
           "anon_mb_after_chunks": round(result["anon_mb"]),
           "file_mb_after_chunks": round(result["file_mb"])}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-frames", type=int, default=12000)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--model", default=None,
                        help="model folder (default: the bundled model)")
    parser.add_argument("--name", default="localize_speed", help="results file name")
    args = parser.parse_args()
    from denseloc.calibration import resolve_builtin
    from denseloc.cli import DEFAULT_MODEL
    from denseloc.train.artifact import TrainedModel

    model = str(args.model or DEFAULT_MODEL)
    arch = TrainedModel.load(resolve_builtin(model)).config.model
    cases = list(CASES)
    if not args.skip_long:
        cases.append((f"128x128 long ({args.long_frames} frames)", 128, args.long_frames))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_case(name, size, n, Path(tmp), model) for name, size, n in cases]
    wider = f", {arch.context_filters} in the temporal U-Net" if arch.context_filters else ""
    notes = (f"Model {model} ({arch.filters} filters{wider}, depth {arch.depth}, "
             f"{arch.context_frames} context frames), 2 torch threads, default chunks "
             "(about 4 Mpx per read, at least 4 x (context - 1) frames) and tiles "
             "(frames above 640 px are cut into tiles "
             "overlapping by the receptive field, 60 px). peak_rss_mb is the whole process "
             "(Python, torch, model): VmHWM of the worker process; compare it with movie_mb. "
             "anon_mb/file_mb_after_chunks: the largest anonymous (heap) and file-backed "
             "(shared libraries such as torch, about 160 MB, and memory-mapped movie pages, "
             "which the kernel can drop) resident memory seen "
             "after each chunk; table_mb: the localization table returned.")
    write_results(args.name, rows, notes)


if __name__ == "__main__":
    main()
