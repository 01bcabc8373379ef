"""The render, drift and frc commands, and their errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile
from typer.testing import CliRunner

from denseloc.cli import app
from denseloc.io import read_table, write_table


def _locs(tmp_path, n_frames: int = 3000):
    rng = np.random.default_rng(5)
    sites = rng.uniform(200, 4800, (300, 2))
    frame = np.repeat(np.arange(n_frames), 30)
    site = rng.integers(0, len(sites), len(frame))
    drift = frame * 0.03  # 90 nm over the movie, in x
    table = pd.DataFrame({
        "frame": frame,
        "x_nm": sites[site, 0] + rng.normal(0, 8, len(frame)) + drift,
        "y_nm": sites[site, 1] + rng.normal(0, 8, len(frame)),
        "z_nm": rng.uniform(-300, 300, len(frame)),
        "sigma_x_nm": np.full(len(frame), 8.0), "sigma_y_nm": np.full(len(frame), 8.0),
    })
    path = tmp_path / "locs.parquet"
    write_table(table, path)
    return path, table


def test_render_drift_frc_commands(tmp_path) -> None:
    path, table = _locs(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["render", str(path), "--out", str(tmp_path / "img.tif"),
                                 "--pixel-size-nm", "20"])
    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "img.tif").sum() == len(table)
    result = runner.invoke(app, ["render", str(path), "--out", str(tmp_path / "img.png"),
                                 "--mode", "gaussian", "--color-by", "z"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "corrected.parquet"
    result = runner.invoke(app, ["drift", str(path), "--out", str(out), "--segments", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "corrected_drift.png").is_file()
    corrected = read_table(out)
    late = corrected["frame"] > 2500
    shift = (corrected["x_nm"] - table["x_nm"])[late].mean()
    assert abs(shift - (-0.03 * (corrected["frame"][late].mean()))) < 5.0
    result = runner.invoke(app, ["frc", str(out), "--plot", str(tmp_path / "frc.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "frc.png").is_file()
    # 8 nm precision, 300 sites seen 300 times each: a resolution of a few tens of nm
    resolution = float(result.output.split("FRC resolution:")[1].split("nm")[0])
    assert 15 < resolution < 60, result.output


def test_analysis_commands_reject_bad_input(tmp_path) -> None:
    path, _ = _locs(tmp_path, n_frames=20)
    runner = CliRunner()
    cases = [
        (["render", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.png")], "not found"),
        (["render", str(path), "--out", str(tmp_path / "x.jpg")], ".png, .tif"),
        (["drift", str(path), "--out", str(tmp_path / "d.csv"), "--plot",
          str(tmp_path / "d.jpg")], "must end in .png"),
        (["frc", str(path), "--plot", str(tmp_path / "f.pdf")], "must end in .png"),
        (["render", str(tmp_path / "none.csv"), "--out", str(tmp_path)], "is a folder"),
        (["render", str(path), "--out", str(tmp_path / "x.png"), "--mode", "dots"],
         "unknown --mode"),
        (["render", str(path), "--out", str(tmp_path / "x.png"), "--color-by", "colour"],
         "no such column"),
        (["render", str(path), "--out", str(tmp_path / "x.png"), "--pixel-size-nm", "0.001"],
         "too large"),
        (["drift", str(path), "--out", str(tmp_path / "d.csv"), "--segments", "40"],
         "cannot be split"),
        (["frc", str(path), "--pixel-size-nm", "-1"], "must be > 0"),
        (["drift", str(path), "--out", str(tmp_path / "d.hdf5")], "give --camera-pixel-nm"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "x.png").exists()
    assert not (tmp_path / "d.hdf5").exists() and not (tmp_path / "d_drift.png").exists()
