"""Shared helpers for benchmark scripts: machine facts, provenance and writing results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    """Facts that make a timing meaningful."""
    import torch

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def provenance() -> dict[str, object]:
    """The commit the benchmark ran at, whether tracked files had changes, and the folder
    (relative to the repository) the command ran in: a configuration file named in a command
    may change later, the commit pins it."""
    root = RESULTS.parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": None if status is None else bool(status),
            "cwd": Path(os.path.relpath(Path.cwd(), root)).as_posix()}


def write_results(name: str, rows: list[dict[str, object]], notes: str = "", *,
                  config=None, model_dir: Path | None = None) -> Path:
    """Write `rows` as results/NAME.json and results/NAME.md (a markdown table).

    Both record the command, the machine and :func:`provenance`; the JSON also the full
    `config` (a :class:`denseloc.config.Config`) and `model_dir` with the SHA-256 of its
    weights, when given."""
    RESULTS.mkdir(exist_ok=True)
    meta, origin = machine(), provenance()
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    if model_dir is not None:
        from denseloc.config import file_sha256

        weights = Path(model_dir) / "weights.pt"
        origin["model"] = {"folder": str(model_dir),
                           "weights_sha256": file_sha256(weights) if weights.is_file() else None}
    record = {"command": command, "machine": meta, "provenance": origin, "rows": rows,
              "notes": notes}
    if config is not None:
        record["config"] = config.model_dump(mode="json")
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    headers = list(rows[0]) if rows else []
    lines = [f"# {name}", "", f"Command: `{command}`", ""]
    lines += [f"Machine: {', '.join(f'{k} {v}' for k, v in meta.items())}", ""]
    lines += [f"Provenance: {', '.join(f'{k} {v}' for k, v in origin.items())}"
              + ("; the full configuration is in the JSON" if config is not None else ""), ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[h]) for h in headers) + " |")
    if notes:
        lines += ["", notes]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def model_on_test_movies_args(doc: str, name: str, frames: int = 100,
                              **extra: dict) -> argparse.Namespace:
    """Arguments of a benchmark that scores a model on bench_training.py's test movies:
    CONFIG, --model (default: the bundled one), --frames, --name; `extra` adds options
    (flag -> add_argument keywords). Also loads ``args.config`` (with the model's ``model``
    section, so that window bounds span the model's frames) and ``args.model``, and sets
    ``args.model_dir`` to the model's folder."""
    from denseloc.calibration import resolve_builtin
    from denseloc.config import load_config
    from denseloc.train.artifact import TrainedModel

    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--model", help="model folder (default: the bundled one)")
    parser.add_argument("--frames", type=int, default=frames, help="frames per test movie")
    parser.add_argument("--name", default=name)
    for flag, keywords in extra.items():
        parser.add_argument(flag, **keywords)
    args = parser.parse_args()
    args.model_dir = Path(resolve_builtin(str(args.model or "denseloc:default_model")))
    args.model = TrainedModel.load(args.model_dir)
    args.config = load_config(args.config)
    require_models_setting(args.config, args.model, args.model_dir)
    # The test movies do not depend on the model section; the window bound reads its frames.
    args.config = args.config.model_copy(update={"model": args.model.config.model})
    return args


def require_models_setting(config, model, model_dir: Path) -> None:
    """Stop unless `config` simulates with the PSF, camera and pixel size `model` was trained
    on: scored on another setting's movies, a model's errors mix its own with the mismatch."""
    from denseloc.config import config_differences

    trained = model.config.model_dump(mode="json")
    scored = config.model_dump(mode="json")
    changed = config_differences(trained["psf"], scored["psf"], prefix="psf.")
    changed += config_differences(trained["camera"], scored["camera"], prefix="camera.")
    changed += config_differences({"pixel_size_nm": trained["image"]["pixel_size_nm"]},
                                  {"pixel_size_nm": scored["image"]["pixel_size_nm"]},
                                  prefix="image.")
    if changed:
        raise SystemExit(f"{model_dir} was trained for another PSF, camera or pixel size than "
                         f"the configuration's ({'; '.join(changed)}): pass its own "
                         f"{model_dir / 'config.yaml'}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sigma_variants(model):
    """The model with its sigma factors ("calibrated") and without them ("as predicted")."""
    return (("calibrated", model), ("as predicted", dataclasses.replace(model, sigma_scale={})))
