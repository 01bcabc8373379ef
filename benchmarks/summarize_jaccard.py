"""Jaccard against training samples, over every training run in ``results/``.

Usage: python benchmarks/summarize_jaccard.py [--name jaccard_by_samples]

Reads the rows of ``results/training_*.json`` that ``bench_training.py`` (one row per
evaluation during a run) and ``finish_model.py`` (the final model) wrote with a sample count,
and tabulates each run's Jaccard on the fixed test movies (0.1 and 2 emitters/um^2, ground
truth with >= 500 photons counted) against the samples it had seen. Nothing is trained or
scored here: the script collects what the runs measured, to ask how far training length
alone could take the Jaccard, the two targets the network issue has not met (0.95 and 0.85
after 30 CPU-minutes).

Per PSF, a straight line is fitted to Jaccard against log2(samples) over each run's last
evaluation (at the end of its learning-rate schedule, so that a longer schedule's middle does
not stand for a shorter one's end), for every run with temporal context (all widths, crops,
seeds and recipes alike: the README finds their differences within the seed spread). Its
slope is the gain per doubling of the samples, and the samples at which the line would cross
each target are given. That is an extrapolation far beyond the data, which assumes the gain
per doubling never shrinks; it is a generous estimate of the training a target needs, not a
prediction. Only with at least MIN_RUNS runs spanning at least 4 times in samples.
Writes ``results/NAME.{md,json,png}``.

The test movies differ by PSF: runs before 2026-12-03 afternoon used ``psf_epfl_beads_as.h5``
("v1"), later ones ``psf_epfl_beads_as_v2.h5`` ("v2"). Files that record their configuration
say which; of those that do not, the ``psf150_*`` runs are the v2 ones (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np

from _common import RESULTS, write_results
from denseloc._plotting import new_figure, save_figure

TARGETS = {"low": 0.95, "high": 0.85}
"""The network issue's Jaccard targets at 0.1 and 2 emitters/um^2."""
BUDGET_MINUTES = 30.5  # the 30 CPU-minutes; evaluations land a few seconds late
MIN_RUNS = 10


def psf_version(name: str, record: dict) -> str:
    """``v1`` or ``v2``: the PSF a run's test movies were simulated with."""
    if "config" in record:
        path = record["config"]["psf"]["path"] or ""
        return "v2" if path.endswith("_v2.h5") else "v1"
    return "v2" if "psf150" in name else "v1"


def context_frames(record: dict) -> int | None:
    """The run's temporal context, from its configuration or its notes."""
    if "config" in record:
        return record["config"]["model"]["context_frames"]
    found = re.search(r"'context_frames': (\d+)", str(record.get("notes", "")))
    return int(found.group(1)) if found else None


def test_frames(record: dict) -> int:
    """Frames per test movie: the command's ``--frames``, 100 by default."""
    found = re.search(r"--frames (\d+)", record["command"])
    return int(found.group(1)) if found else 100


def collect() -> list[dict]:
    """One row per evaluation with a sample count and both Jaccards."""
    rows = []
    for path in sorted(RESULTS.glob("training_*.json")):
        record = json.loads(path.read_text())
        for row in record["rows"]:
            if not {"samples", "low_jaccard", "high_jaccard"} <= row.keys():
                continue
            if row.get("readout", "mixture") != "mixture" or row.get("sigmas") == "as predicted":
                continue  # finish_model's other rows: the same detections, or DECODE's readout
            rows.append({"file": path.stem, "variant": row["variant"],
                         "psf": psf_version(path.stem, record),
                         "context_frames": context_frames(record),
                         "test_frames": test_frames(record),
                         "samples": int(row["samples"]), "minutes": round(row["minutes"], 1),
                         "low_jaccard": round(row["low_jaccard"], 3),
                         "high_jaccard": round(row["high_jaccard"], 3)})
    if not rows:
        raise SystemExit(f"no training results with sample counts in {RESULTS}")
    return sorted(rows, key=lambda r: (r["psf"], r["samples"], r["file"]))


def last_evaluations(rows: list[dict]) -> list[dict]:
    """Each run's last evaluation, for the runs with temporal context."""
    last = {}
    for row in rows:
        if row["context_frames"] != 1 and row["samples"] >= last.get(row["file"], row)["samples"]:
            last[row["file"]] = row
    return list(last.values())


def summarize(rows: list[dict], density: str) -> dict:
    """The best Jaccards, and the line through the runs' last evaluations if they allow one."""
    target = TARGETS[density]
    within = [r[f"{density}_jaccard"] for r in rows if r["minutes"] <= BUDGET_MINUTES]
    ends = last_evaluations(rows)
    samples = np.array([r["samples"] for r in ends], dtype=float)
    jaccard = np.array([r[f"{density}_jaccard"] for r in ends])
    result = {"density": density, "target": target, "runs": len(ends),
              "samples_range": f"{int(samples.min()):,}-{int(samples.max()):,}",
              "best_within_30_min": max(within) if within else None,
              "best": max(r[f"{density}_jaccard"] for r in rows),
              "intercept": None, "gain_per_doubling": None, "rms_residual": None,
              "samples_at_target": None}
    if len(ends) < MIN_RUNS or samples.max() < 4 * samples.min():
        return result
    slope, intercept = np.polyfit(np.log2(samples), jaccard, 1)
    residual = jaccard - (intercept + slope * np.log2(samples))
    crossing = 2 ** ((target - intercept) / slope) if slope > 0 else math.inf
    result.update(intercept=round(float(intercept), 4),
                  gain_per_doubling=round(float(slope), 4),
                  rms_residual=round(float(np.sqrt(np.mean(residual**2))), 4),
                  samples_at_target=float(f"{crossing:.2g}"))
    return result


def plot(rows: list[dict], fits: dict, path) -> None:
    fig = new_figure(9.0, 3.6)
    axes = fig.subplots(1, 2, sharex=True)
    colours = {"v1": "tab:blue", "v2": "tab:orange"}
    for ax, density in zip(axes, ("low", "high"), strict=True):
        for psf, colour in colours.items():
            subset = [r for r in rows if r["psf"] == psf]
            if not subset:
                continue
            samples = np.array([r["samples"] for r in subset], dtype=float)
            jaccard = np.array([r[f"{density}_jaccard"] for r in subset])
            late = np.array([r["minutes"] > BUDGET_MINUTES for r in subset])
            f = fits[(psf, density)]
            for chosen, marker, size, when in ((~late, "o", 14, "within 30 min"),
                                               (late, "^", 22, "longer")):
                if chosen.any():
                    ax.scatter(samples[chosen], jaccard[chosen], s=size, color=colour,
                               marker=marker, label=f"PSF {psf}, {when}")
            if f["gain_per_doubling"] is not None:
                ends = [r["samples"] for r in last_evaluations(subset)]
                grid = np.geomspace(min(ends), max(ends), 50)
                line = f["intercept"] + f["gain_per_doubling"] * np.log2(grid)
                ax.plot(grid, line, color=colour, lw=1, label=f"PSF {psf}, fit to runs' ends")
        ax.axhline(TARGETS[density], color="k", ls="--", lw=1)
        ax.text(0.02, TARGETS[density], f" target {TARGETS[density]}", va="bottom",
                transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_ylabel("Jaccard")
        ax.set_title(f"{'0.1' if density == 'low' else '2'} emitters/um$^2$")
    axes[0].legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="jaccard_by_samples")
    args = parser.parse_args()
    rows = collect()
    fits, summary = {}, []
    for psf in sorted({r["psf"] for r in rows}):
        subset = [r for r in rows if r["psf"] == psf]
        for density in TARGETS:
            fits[(psf, density)] = summarize(subset, density)
            summary.append({"psf": psf, **fits[(psf, density)]})
    plot(rows, fits, RESULTS / f"{args.name}.png")
    write_results(args.name, summary,
                  "Per PSF and density: the runs with temporal context, the best Jaccard of "
                  "any evaluation within 30 minutes of training and of any at all (the "
                  "one-frame run included), and a line Jaccard = a + b log2(samples) through "
                  "each run's last evaluation (a = intercept, b = gain_per_doubling; "
                  "rms_residual its scatter, which the seed spread of 0.01-0.03 dominates), "
                  f"fitted only with at least {MIN_RUNS} runs spanning 4 times in samples. "
                  "samples_at_target is where the line would reach the target: an "
                  "extrapolation that assumes the gain per doubling never shrinks. "
                  f"Every evaluation: {args.name}_runs.md. Plot: {args.name}.png.")
    write_results(f"{args.name}_runs", rows,
                  "Every evaluation of results/training_*.json with a sample count (the "
                  "mixture readout's row of finish_model.py's final models). psf: v1 "
                  "psf_epfl_beads_as.h5, v2 psf_epfl_beads_as_v2.h5; test_frames: frames per "
                  "test movie (100 unless the command says otherwise).")


if __name__ == "__main__":
    main()
