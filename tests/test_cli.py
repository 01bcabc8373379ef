"""The command-line contract: outputs, overrides, and one-line errors for bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from denseloc.cli import app, resolve_config
from denseloc.config import Config, ConfigError, load_config
from denseloc.errors import DenselocError

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
    assert list(truth.columns) == ["frame", "id", "x_nm", "y_nm", "z_nm", "photons", "bg"]
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


def test_bundled_psf_by_name(tmp_path) -> None:
    result = run("simulate", "--out", str(tmp_path / "o"), "--frames", "1", "--frame-size", "16",
                 "--psf", "denseloc:psf_epfl_beads_as.h5")
    assert result.exit_code == 0, result.output
    assert str(load_config(tmp_path / "o" / "config.yaml").psf.path) == (
        "denseloc:psf_epfl_beads_as.h5")


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


@pytest.mark.parametrize("command", ["calibrate", "config init", "simulate"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    beads = tmp_path / "beads.tif"  # never read: the output is checked first
    beads.write_bytes(b"")
    args = {
        "calibrate": ["calibrate", str(beads), "--z-step-nm", "10", "--pixel-size-nm", "100",
                      "--camera", "emccd", "--out", str(blocker / "psf.h5")],
        "config init": ["config", "init", "--out", str(blocker / "c.yaml")],
        "simulate": ["simulate", "--out", str(blocker / "sim"), "--frames", "1"],
    }[command]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "not a writable folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_file_system_error_on_writing_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    import denseloc._atomic

    def full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(denseloc._atomic.os, "replace", full)
    result = run("config", "init", "--out", str(tmp_path / "c.yaml"))
    assert result.exit_code == 2
    assert "c.yaml: No space left on device" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c.yaml").exists()


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


@pytest.fixture(scope="module")
def sparse_movie(tmp_path_factory):
    out = tmp_path_factory.mktemp("movie") / "sim"
    result = run("simulate", "--out", str(out), "--frames", "20", "--frame-size", "40",
                 "--density", "0.15", "--psf", "gaussian", "--seed", "2")
    assert result.exit_code == 0, result.output
    return out


def test_localize_mle_then_evaluate_json(sparse_movie, tmp_path) -> None:
    import json

    locs = tmp_path / "locs.parquet"
    result = run("localize", str(sparse_movie / "frames.tif"), "--method", "mle", "--camera",
                 str(sparse_movie / "config.yaml"), "--psf", "gaussian", "--out", str(locs))
    assert result.exit_code == 0, result.output
    from denseloc.io import read_table

    assert read_table(locs).attrs["localization"] == {"method": "mle", "threshold": 5.0}
    result = run("evaluate", str(locs), "--gt", str(sparse_movie / "ground_truth.csv"),
                 "--json", "--config", str(sparse_movie / "config.yaml"))
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    for key in ("tp", "fp", "fn", "precision", "recall", "jaccard", "rmse_lateral_nm",
                "rmse_axial_nm", "rmse_3d_nm", "efficiency_lateral", "efficiency_axial"):
        assert key in metrics
    # Sparse 2D emitters: most are found, few false positives, errors of tens of nm.
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.6
    assert metrics["rmse_lateral_nm"] < 40
    assert metrics["crlb_ratio_x"] is not None
    # 2D tables (z 0 in both) are scored without z; --3d reads their z of 0 as measured
    assert metrics["rmse_axial_nm"] is None and metrics["efficiency_axial"] is None
    result = run("evaluate", str(locs), "--gt", str(sparse_movie / "ground_truth.csv"),
                 "--json", "--3d")
    assert json.loads(result.output)["rmse_axial_nm"] == 0.0


def test_a_camera_file_without_its_camera_section_is_a_camera(sparse_movie, tmp_path) -> None:
    import yaml

    from denseloc.cli import _with_camera

    camera = load_config(sparse_movie / "config.yaml").camera
    bare = tmp_path / "cameras" / "emccd.yaml"
    bare.parent.mkdir()
    bare.write_text(yaml.safe_dump(camera.model_dump(mode="json")))
    outputs = {}
    for name, cam in (("bare", bare), ("section", sparse_movie / "config.yaml")):
        outputs[name] = tmp_path / f"{name}.csv"
        result = run("localize", str(sparse_movie / "frames.tif"), "--method", "mle",
                     "--camera", str(cam), "--psf", "gaussian", "--pixel-size-nm", "100",
                     "--out", str(outputs[name]))
        assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(outputs["bare"]), pd.read_csv(outputs["section"]))
    # Its map files are found beside it, as in a file with a camera: section.
    bare.write_text("{kind: scmos, em_gain: 1, variance_map: maps/variance.npy}\n")
    resolved = _with_camera(Config(), str(bare)).camera.variance_map
    assert resolved == (bare.parent / "maps" / "variance.npy").resolve()


def test_localize_frames_range_and_camera_flags(sparse_movie, tmp_path) -> None:
    locs = tmp_path / "locs.csv"
    result = run("localize", str(sparse_movie / "frames.tif"), "--method", "mle", "--baseline",
                 "100",
                 "--e-per-adu", "45", "--em-gain", "300", "--qe", "0.9",
                 "--pixel-size-nm", "100", "--psf", "gaussian", "--frames", "5:9",
                 "--out", str(locs))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(locs)
    assert table["frame"].between(5, 8).all() and len(table) > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "camera settings are needed"),
        (["--camera", "emccd"], "the fitter needs the data's PSF"),
        (["--camera", "emccd", "--psf", "astigmatic", "--sigma-px", "1.3"],
         "--sigma-px applies to a Gaussian PSF"),
        (["--camera", "emccd", "--psf", "gaussian", "--frames", "30:40"], "selects no frame"),
        (["--camera", "emccd", "--psf", "gaussian", "--frames", "abc"], "START:STOP"),
        (["--camera", "emccd", "--method", "magic"], "unknown method"),
        (["--camera", "emccd", "--psf", "gaussian", "--sigma-quantile", "2"],
         "--sigma-quantile must be in (0, 1]"),
        (["--camera", "emccd", "--psf", "gaussian", "--max-sigma-nm", "-1"],
         "--max-sigma-nm must be > 0"),
        (["--method", "network", "--psf", "gaussian"], "apply to --method mle"),
        (["--method", "network", "--sigma-px", "1.2"], "apply to --method mle"),
    ],
)
def test_localize_rejects_bad_input(sparse_movie, tmp_path, extra, message) -> None:
    out = tmp_path / "l.csv"
    result = run("localize", str(sparse_movie / "frames.tif"), "--method", "mle",
                 "--pixel-size-nm", "100", "--out", str(out), *extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_localize_checks_the_pixel_size_from_metadata_and_the_output_first(sparse_movie,
                                                                            tmp_path) -> None:
    import tifffile

    args = ["--method", "mle", "--camera", "emccd", "--psf", "gaussian"]
    result = run("localize", str(sparse_movie / "frames.tif"), *args,
                 "--out", str(tmp_path / "l.csv"))
    assert result.exit_code == 0, result.output
    assert "note: 100 nm pixels, from frames.tif's metadata" in result.output
    # A file calibrated with the camera chip's 6.5 um pixels would scale every position 65x.
    chip = tmp_path / "chip.tif"
    frames = tifffile.imread(sparse_movie / "frames.tif")
    tifffile.imwrite(chip, frames, photometric="minisblack", resolution=(1e4 / 6.5, 1e4 / 6.5),
                     resolutionunit="CENTIMETER")
    result = run("localize", str(chip), *args, "--out", str(tmp_path / "c.csv"))
    assert result.exit_code == 2 and "gives 6500 nm pixels" in result.output, result.output
    # An output that cannot be written is refused before the work, not after it.
    result = run("localize", str(sparse_movie / "frames.tif"), *args, "--out", str(tmp_path))
    assert result.exit_code == 2 and "is a folder" in result.output, result.output


def test_localize_missing_and_corrupt_stack(tmp_path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    for stack, message in [(tmp_path / "none.tif", "none.tif"), (bad, "bad.tif")]:
        result = run("localize", str(stack), "--camera", "emccd", "--pixel-size-nm", "100",
                     "--out", str(tmp_path / "l.csv"))
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    # Without --pixel-size-nm the pixel size is looked up in the file: a typo is not found,
    # rather than a file without a pixel size.
    result = run("localize", str(tmp_path / "none.tif"), "--method", "mle", "--camera", "emccd",
                 "--psf", "gaussian", "--out", str(tmp_path / "l.csv"))
    assert result.exit_code == 2 and "file not found" in result.output, result.output


@pytest.mark.parametrize("text", ["camera: [unclosed", "\xff\xfe\x00binary", "- 1\n- 2\n"])
def test_a_broken_camera_file_is_a_one_line_error(sparse_movie, tmp_path, text) -> None:
    camera = tmp_path / "cam.yaml"
    camera.write_bytes(text.encode("latin-1"))
    result = run("localize", str(sparse_movie / "frames.tif"), "--method", "mle", "--camera",
                 str(camera), "--psf", "gaussian", "--out", str(tmp_path / "l.csv"))
    assert result.exit_code == 2 and "cam.yaml" in result.output, result.output
    assert "Traceback" not in result.output


def test_evaluate_2d_refuses_a_table_with_z(tmp_path) -> None:
    import json

    flat, tilted = tmp_path / "flat.csv", tmp_path / "tilted.csv"
    flat.write_text("frame,x_nm,y_nm\n0,100,100\n")
    tilted.write_text("frame,x_nm,y_nm,z_nm\n0,110,100,50\n")
    result = run("evaluate", str(tilted), "--gt", str(flat), "--2d")
    assert result.exit_code == 2 and "tilted.csv has a non-zero z" in result.output
    assert "Traceback" not in result.output
    result = run("evaluate", str(tilted), "--gt", str(flat), "--json")  # 3D: z is measured
    assert json.loads(result.output)["rmse_axial_nm"] == 50.0


def test_evaluate_counts_only_emitters_bright_enough_with_min_photons(tmp_path) -> None:
    import json

    truth, pred = tmp_path / "gt.csv", tmp_path / "pred.csv"
    truth.write_text("frame,x_nm,y_nm,photons\n0,100,100,1000\n0,900,900,120\n")
    pred.write_text("frame,x_nm,y_nm\n0,110,100\n")  # finds the bright one only
    everything = json.loads(run("evaluate", str(pred), "--gt", str(truth), "--json").output)
    bright = json.loads(run("evaluate", str(pred), "--gt", str(truth), "--json",
                            "--min-photons", "500").output)
    assert (everything["jaccard"], everything["fn"]) == (0.5, 1)
    assert (bright["jaccard"], bright["fn"]) == (1.0, 0)
    # render, drift and frc call the pixel of px tables --camera-pixel-nm: evaluate takes both.
    alias = run("evaluate", str(pred), "--gt", str(truth), "--json", "--camera-pixel-nm", "100")
    assert alias.exit_code == 0 and json.loads(alias.output)["jaccard"] == 0.5, alias.output
    for args, message in [(["--min-photons", "-1"], "--min-photons must be >= 0"),
                          (["--tol-lateral-nm", "-5"], "must be > 0")]:
        result = run("evaluate", str(pred), "--gt", str(truth), *args)
        assert result.exit_code == 2 and message in result.output, result.output
    result = run("evaluate", str(pred), "--gt", str(pred), "--min-photons", "500")
    assert result.exit_code == 2 and "no photons column" in result.output, result.output


def test_evaluate_takes_a_pixel_size_per_table(tmp_path) -> None:
    import json

    from denseloc.io import write_table
    from denseloc.table import validate

    table = validate(pd.DataFrame({"frame": [0, 1], "x_nm": [400.0, 2000.0],
                                   "y_nm": [880.0, 1200.0], "photons": [900.0, 1500.0]}))
    pred, truth = tmp_path / "pred.h5", tmp_path / "truth_locs.hdf5"
    write_table(table, pred, pixel_size_nm=100.0)  # DECODE records its 100 nm pixels
    write_table(table, truth, pixel_size_nm=160.0)
    truth.with_suffix(".yaml").unlink()  # a Picasso table without its sidecar
    result = run("evaluate", str(pred), "--gt", str(truth), "--pixel-size-nm", "160")
    assert result.exit_code == 2 and "records 100 nm pixels" in result.output, result.output
    result = run("evaluate", str(pred), "--gt", str(truth), "--gt-pixel-size-nm", "160", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["jaccard"] == 1.0 and metrics["rmse_lateral_nm"] < 1e-3


def test_a_psf_model_flag_replaces_a_calibration_file_of_the_config(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('psf: {kind: file, path: "denseloc:psf_epfl_beads_as.h5"}\n')
    cfg = resolve_config(path, psf="gaussian")
    assert cfg.psf.kind == "gaussian" and cfg.psf.path is None


def test_evaluate_rejects_unreadable_tables(tmp_path) -> None:
    bad = tmp_path / "pred.csv"
    bad.write_text("frame,foo\n1,2\n")
    result = run("evaluate", str(bad), "--gt", str(bad))
    assert result.exit_code == 2 and "pred.csv" in result.output


def test_calibrate_real_beads_and_simulate_with_the_result(shared_data, tmp_path) -> None:
    psf = tmp_path / "psf.h5"
    result = run("calibrate", str(shared_data / "beads_epfl2016" / "beads_as.tif"),
                 "--z-step-nm", "10", "--pixel-size-nm", "100", "--camera", "emccd",
                 "--out", str(psf), "--astigmatic", str(tmp_path / "astig.yaml"))
    assert result.exit_code == 0, result.output
    assert "6 beads used" in result.output and "relative residual" in result.output
    assert "smoothing along z: 150 nm (leave-one-bead-out" in result.output
    result = run("simulate", "--out", str(tmp_path / "sim_h5"), "--frames", "2", "--psf", str(psf))
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "sim_h5" / "config.yaml").psf.kind == "file"
    # The astigmatic fit covers the z where single beads could be fitted, not the stack's.
    astig = tmp_path / "astig.yaml"
    result = run("simulate", "--out", str(tmp_path / "sim_yaml"), "--frames", "2", "--psf",
                 str(astig))
    assert result.exit_code == 2 and "reaches beyond" in result.output, result.output
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("emitters: {z_range_nm: [-300, 600]}\n")
    result = run("simulate", str(narrow), "--out", str(tmp_path / "sim_yaml"), "--frames", "2",
                 "--psf", str(astig))
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "sim_yaml" / "config.yaml").psf.kind == "file"


def test_calibrate_takes_a_fixed_smoothing_along_z(shared_data, tmp_path) -> None:
    from denseloc.calibration import load_psf

    psf = tmp_path / "psf.h5"
    result = run("calibrate", str(shared_data / "beads_epfl2016" / "beads_as.tif"),
                 "--z-step-nm", "10", "--pixel-size-nm", "100", "--camera", "emccd",
                 "--z-smoothing-nm", "0", "--out", str(psf))
    assert result.exit_code == 0, result.output
    assert "smoothing along z: 0 nm\n" in result.output
    assert load_psf(psf).metadata["z_smoothing_nm"] == 0.0
    result = run("calibrate", str(shared_data / "beads_epfl2016" / "beads_as.tif"),
                 "--z-step-nm", "10", "--pixel-size-nm", "100", "--camera", "emccd",
                 "--z-smoothing-nm", "-5", "--out", str(psf))
    assert result.exit_code == 2 and "`z_smoothing_nm` must be >= 0 nm" in result.output


def test_calibrate_needs_camera_and_a_stack(tmp_path) -> None:
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, (100 + 10 * __import__("numpy").random.rand(32, 32)).astype("uint16"))
    result = run("calibrate", str(single), "--z-step-nm", "10", "--pixel-size-nm", "100",
                 "--out", str(tmp_path / "p.h5"))
    assert result.exit_code == 2 and "camera settings are needed" in result.output
    result = run("calibrate", str(single), "--z-step-nm", "10", "--pixel-size-nm", "100",
                 "--camera", "emccd", "--out", str(tmp_path / "p.h5"))
    assert result.exit_code == 2 and "single.tif" in result.output
    assert not (tmp_path / "p.h5").exists()


def test_demo_writes_a_complete_report(tmp_path) -> None:
    import json

    from denseloc.cli import DEFAULT_MODEL, _simulate_with_progress
    from denseloc.demo import run_demo

    lines: list[str] = []
    paths = run_demo(tmp_path, model_dir=DEFAULT_MODEL, simulate=_simulate_with_progress,
                     echo=lines.append, n_frames=120, mle_frames=20)
    for key in ("render", "render_comparison", "frc", "preview", "summary", "metrics",
                "network_sigma_vs_error", "mle_error_histograms", "locs_network"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    metrics = json.loads(paths["metrics"].read_text())
    # filaments at 0.5 /um^2: the bundled model finds most emitters (benchmark: Jaccard 0.90
    # at 0.1 /um^2, 0.65 at 2 /um^2), better than the classical fitter on the same frames
    assert metrics["network"]["jaccard"] > 0.6
    assert metrics["network_first"]["jaccard"] > metrics["mle_first"]["jaccard"]
    assert "| Jaccard" in paths["summary"].read_text()
    assert any("report written" in line for line in lines)


@pytest.mark.parametrize("dotted", ["train.no_such_field", "nosection.lr", "trainlr"])
def test_an_override_of_an_unknown_field_is_a_config_error(dotted) -> None:
    assert resolve_config(None, **{"train.lr": 3e-3}).train.lr == 3e-3
    with pytest.raises(ConfigError, match=r"not a known SECTION\.FIELD"):
        resolve_config(None, **{dotted: 1})


def test_the_demo_leaves_out_a_chips_maps() -> None:
    from denseloc.demo import demo_config

    scmos = Config().with_camera_preset("scmos")
    camera = scmos.camera.model_copy(update={"offset_map": "chip.npy", "roi_origin_px": (8, 0)})
    demo = demo_config(scmos.model_copy(update={"camera": camera}))
    assert not demo.camera.has_maps and demo.camera.roi_origin_px is None
    assert demo.camera == scmos.camera  # the scalar settings stay


def test_camera_flags_alone_pick_a_preset_by_em_gain() -> None:
    from denseloc.cli import _camera_config

    assert _camera_config(None, {"em_gain": 100.0}).kind == "emccd"
    assert _camera_config(None, {"em_gain": 1.0, "baseline_adu": 90.0}).kind == "scmos"
    with pytest.raises(DenselocError, match=r"--em-gain 1\.5: an EMCCD is modelled at EM gain"):
        _camera_config(None, {"em_gain": 1.5})


def test_camera_flags_adjust_the_models_camera() -> None:
    # --baseline alone must not swap the bundled EMCCD model's camera for the sCMOS preset,
    # which would scale every photon count by the ratio of their gains.
    from denseloc.cli import DEFAULT_MODEL, _network_config

    flags = dict.fromkeys(("baseline_adu", "e_per_adu", "em_gain", "qe"))
    from pathlib import Path

    movie = Path("not_read.tif")  # with --pixel-size-nm the movie's metadata is not read
    trained, cfg = _network_config(DEFAULT_MODEL, "cpu", movie, None, 100.0,
                                   {**flags, "baseline_adu": 200.0})
    assert cfg.camera == trained.config.camera.model_copy(update={"baseline_adu": 200.0})
    _, preset = _network_config(DEFAULT_MODEL, "cpu", movie, "scmos", 100.0, flags)
    assert preset.camera == Config().with_camera_preset("scmos").camera
    # A flag that a per-pixel map would replace is refused rather than silently ignored.
    from denseloc.cli import _camera_config
    from denseloc.errors import DenselocError

    mapped = Config().with_camera_preset("scmos").camera.model_copy(
        update={"offset_map": "offset.npy"})
    with pytest.raises(DenselocError, match="--baseline would have no effect"):
        _camera_config(None, {**flags, "baseline_adu": 200.0}, default=mapped)
    assert _camera_config(None, {**flags, "qe": 0.7}, default=mapped).qe == 0.7
    with pytest.raises(DenselocError, match="--read-noise-e would have no effect"):
        _camera_config(None, {**flags, "read_noise_e": 3.0}, default=mapped.model_copy(
            update={"variance_map": "variance.npy"}))


def test_train_writes_a_model_folder_and_resumes(tmp_path) -> None:
    from denseloc.train.artifact import TrainedModel

    cfg = Config.model_validate({
        "image": {"size_px": 16},
        "emitters": {"density_per_um2": 2.0},
        "model": {"filters": 4, "depth": 1},
        "train": {"frame_size_px": 16, "batch_size": 4, "steps_per_epoch": 20,
                  "validation_samples": 16, "warmup_steps": 2, "threads": 1},
    })
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    model = tmp_path / "m"
    result = run("train", str(tmp_path / "cfg.yaml"), "--out", str(model), "--epochs", "1",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    loaded = TrainedModel.load(model)
    assert loaded.summary["epochs"] == 1 and loaded.config == cfg
    factors = loaded.sigma_scale[loaded.readout]
    errors = loaded.summary["validation_by_readout"][loaded.readout]
    assert f"readout {loaded.readout} (chosen on validation): RMSE lateral " in result.output
    assert f"{errors['rmse_lateral_nm']:.1f} nm" in result.output
    assert (f"predicted sigmas scaled by their validation RMS(error / sigma): photons "
            f"{factors['photons']:.2f}, x {factors['x']:.2f}") in result.output
    result = run("train", str(tmp_path / "cfg.yaml"), "--out", str(model), "--epochs", "2",
                 "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert TrainedModel.load(model).summary["epochs"] == 2
    result = run("train", str(tmp_path / "cfg.yaml"), "--out", str(model))
    assert result.exit_code != 0 and "give --minutes or --epochs" in result.output


def test_evaluate_warns_when_the_simulations_psf_file_changed(tmp_path, monkeypatch) -> None:
    import shutil

    import h5py

    from denseloc.calibration import resolve_builtin
    from denseloc.sim.simulator import simulate_movie

    monkeypatch.chdir(tmp_path)
    shutil.copy(resolve_builtin("denseloc:psf_epfl_beads_as.h5"), "psf.h5")
    cfg = Config.model_validate({"image": {"size_px": 24}, "simulation": {"n_frames": 3},
                                 "psf": {"kind": "file", "path": "psf.h5"}})
    paths = simulate_movie(cfg, tmp_path / "sim")  # a relative path, from Python
    saved = load_config(paths["config"])
    assert saved.psf.path == (tmp_path / "psf.h5").resolve()  # not sim/psf.h5
    truth = str(paths["ground_truth"])
    evaluate = ("evaluate", truth, "--gt", truth, "--config", str(paths["config"]))
    result = runner.invoke(app, list(evaluate), catch_exceptions=False)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    with h5py.File("psf.h5", "a") as f:  # still a valid calibration, but not the same file
        f.attrs["note"] = "recalibrated"
    result = runner.invoke(app, list(evaluate))
    assert result.exit_code == 0, result.output
    assert "warning: psf.path" in result.output
    assert "differs from the file used in the simulation" in result.output
    paths["inputs"].write_text("[not, a, mapping]")
    result = runner.invoke(app, list(evaluate))
    assert result.exit_code == 2 and "inputs.yaml: corrupt digest file" in result.output
