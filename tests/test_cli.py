"""The command-line contract: outputs, overrides, and one-line errors for bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from denseloc.cli import app
from denseloc.config import Config, load_config

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_simulate_writes_the_contracted_files(tmp_path) -> None:
    out = tmp_path / "sim"
    result = run("simulate", "--out", str(out), "--frames", "7", "--frame-size", "24",
                 "--seed", "3", "--density", "1.5", "--camera", "scmos", "--psf", "gaussian")
    assert result.exit_code == 0, result.output
    frames = tifffile.imread(out / "frames.tif")
    assert frames.shape == (7, 24, 24) and frames.dtype.name == "uint16"
    truth = pd.read_csv(out / "ground_truth.csv")
    assert list(truth.columns) == ["frame", "id", "x_nm", "y_nm", "z_nm", "photons"]
    cfg = load_config(out / "config.yaml")
    assert cfg.simulation.n_frames == 7 and cfg.simulation.seed == 3
    assert cfg.image.size_px == (24, 24) and cfg.emitters.density_per_um2 == 1.5
    assert cfg.camera.kind == "scmos" and cfg.psf.kind == "gaussian"
    assert (truth["z_nm"] == 0).all()


def test_flags_override_the_config_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("image: {size_px: 20, pixel_size_nm: 130}\nsimulation: {n_frames: 4}\n")
    result = run("simulate", str(path), "--out", str(tmp_path / "o"), "--frames", "2")
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "o" / "config.yaml")
    assert cfg.simulation.n_frames == 2 and cfg.image.pixel_size_nm == 130
    assert tifffile.imread(tmp_path / "o" / "frames.tif").shape == (2, 20, 20)


def test_camera_from_a_simulation_config(tmp_path) -> None:
    source = tmp_path / "source.yaml"
    source.write_text(Config().with_camera_preset("ideal").to_yaml())
    result = run("simulate", "--out", str(tmp_path / "o"), "--frames", "1", "--camera",
                 str(source))
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "o" / "config.yaml").camera.kind == "ideal"


@pytest.mark.parametrize(
    ("args", "config_text", "message"),
    [
        (["--psf", "doughnut"], None, "unknown PSF 'doughnut'"),
        (["--psf", "missing.h5"], None, "missing.h5: PSF calibration file not found"),
        (["--density", "-1"], None, "density_per_um2"),
        (["--camera", "emccd2"], None, "unknown camera 'emccd2'"),
        ([], "camera: {em_gain: 0.2}", "camera.em_gain"),
        ([], "image: {pixel_size_nm: 0}", "image.pixel_size_nm"),
        ([], "image: {pixel_size_nm: -100}", "image.pixel_size_nm"),
        ([], "camera: [unclosed", "not valid YAML"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, config_text, message):
    out = tmp_path / "out"
    cmd = ["simulate", "--out", str(out), "--frames", "2", *args]
    if config_text is not None:
        (tmp_path / "c.yaml").write_text(config_text)
        cmd.insert(1, str(tmp_path / "c.yaml"))
    result = run(*cmd)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_config_file(tmp_path) -> None:
    result = run("simulate", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.output


def test_config_init_prints_a_documented_valid_default(tmp_path) -> None:
    result = run("config", "init")
    assert result.exit_code == 0
    assert "# electrons per ADU" in result.output
    assert Config.from_yaml_text(result.output) == Config()
    result = run("config", "init", "--out", str(tmp_path / "d.yaml"))
    assert load_config(tmp_path / "d.yaml") == Config()
