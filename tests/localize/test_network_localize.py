"""Localizing movies with a trained network: chunking, context frames, the CLI path."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from denseloc.cli import app
from denseloc.config import Config, load_config
from denseloc.errors import DenselocError, DenselocWarning
from denseloc.io import open_movie, read_table
from denseloc.localize.pipeline import check_model_matches, localize_movie_network
from denseloc.sim.simulator import simulate_movie


@pytest.fixture(scope="module")
def bundled():
    from denseloc.calibration import resolve_builtin
    from denseloc.cli import DEFAULT_MODEL
    from denseloc.train.artifact import TrainedModel

    return resolve_builtin(DEFAULT_MODEL), TrainedModel.load(resolve_builtin(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def movie(bundled, tmp_path_factory):
    _, model = bundled
    cfg = model.config.model_copy(update={
        "image": model.config.image.model_copy(update={"size_px": (48, 48)}),
        "emitters": model.config.emitters.model_copy(update={"density_per_um2": 0.5}),
        "simulation": model.config.simulation.model_copy(update={"n_frames": 24, "seed": 7}),
    })
    paths = simulate_movie(cfg, tmp_path_factory.mktemp("movie"))
    return paths["frames"], cfg, paths["ground_truth"]


def test_bundled_model_localizes_a_simulated_movie(bundled, movie) -> None:
    import dataclasses

    from denseloc.evaluate import evaluate
    from denseloc.localize.network import predict_frames
    from denseloc.sim.camera import Camera

    _, model = bundled
    path, cfg, truth_path = movie
    with open_movie(path) as mv:
        table = localize_movie_network(mv, model, cfg)
    metrics, _ = evaluate(table, pd.read_csv(truth_path), min_photons=500.0)
    # The benchmark measured Jaccard 0.89 at 0.1 /um^2 and 0.65 at 2 /um^2 with lateral RMSE
    # 42-78 nm (benchmarks/results/training_default_v2_57ep_final.md); a broken model or
    # pipeline falls far below these bounds.
    assert metrics.jaccard > 0.6, metrics
    assert metrics.rmse_lateral_nm < 90 and metrics.rmse_axial_nm < 110, metrics
    # No systematic offset (a half-pixel shift, 50 nm, would pass the RMSE bound): each mean
    # error within 4 standard errors of zero.
    for axis, rmse in (("x", metrics.rmse_lateral_nm / 2**0.5),
                       ("y", metrics.rmse_lateral_nm / 2**0.5), ("z", metrics.rmse_axial_nm)):
        assert abs(getattr(metrics, f"bias_{axis}_nm")) < 4 * rmse / metrics.tp**0.5, metrics
    # Predicted sigmas are calibrated (RMS(error / sigma) 0.90-1.01 in the benchmark); here
    # within 25 %: this movie's ~190 matches give 0.80 / 1.17 / 1.10 (the same without its
    # first and last two frames), since a few large errors, of overlapping emitters, dominate
    # an RMS over so few. A sigma in the wrong unit or a missing factor is off by far more.
    # The maximum pixel's sigmas alone, without the model's factors for that readout, are
    # too small (1.2-1.9 times in the benchmark).
    with open_movie(path) as mv:
        photons = Camera.from_config(cfg.camera, mv.shape[1:]).adu_to_photons(
            torch.from_numpy(mv[0 : len(mv)].astype("float32")))
    top = predict_frames(dataclasses.replace(model, sigma_scale={}), photons,
                         pixel_size_nm=cfg.image.pixel_size_nm, readout="max")
    top_metrics, _ = evaluate(top, pd.read_csv(truth_path), min_photons=500.0)
    for axis in "xyz":
        score = getattr(metrics, f"z_score_rms_{axis}")
        assert 0.75 < score < 1.25, metrics
        assert getattr(top_metrics, f"z_score_rms_{axis}") > 1.15 * score, top_metrics


@pytest.mark.parametrize("context", [3, 5])
def test_chunked_inference_equals_whole_movie(bundled, movie, context) -> None:
    import dataclasses

    from denseloc.nn.model import DecodeNet

    _, model = bundled
    path, cfg, _ = movie
    threshold = None
    if context != model.net.context_frames:  # untrained: detections wherever p peaks
        torch.manual_seed(0)
        net = DecodeNet(filters=4, depth=2, context_frames=context).eval()
        model, threshold = dataclasses.replace(model, net=net), 0.0
    with open_movie(path) as mv:
        whole = localize_movie_network(mv, model, cfg, chunk_frames=24, threshold=threshold)
        chunked = localize_movie_network(mv, model, cfg, chunk_frames=5, threshold=threshold)
        part = localize_movie_network(mv, model, cfg, frames=range(3, 7), chunk_frames=3,
                                      threshold=threshold)
    assert len(whole) > 0
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-5, atol=1e-3)
    # Frames 3..6 with their real neighbours as context: the same rows as in the whole run.
    expected = whole[whole["frame"].between(3, 6)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected, check_exact=False, rtol=1e-5, atol=1e-3)


def test_mle_chunks_and_frame_ranges_give_the_whole_runs_rows(movie) -> None:
    from denseloc.localize.pipeline import localize_movie_mle

    path, cfg, _ = movie
    with open_movie(path) as mv:
        whole = localize_movie_mle(mv, cfg, chunk_frames=24)
        chunked = localize_movie_mle(mv, cfg, chunk_frames=5)
        part = localize_movie_mle(mv, cfg, frames=range(7, 13), chunk_frames=4)
        for bad in (range(0), range(0, 10, 2), range(20, 30)):
            with pytest.raises(ValueError, match="non-empty range of consecutive frames"):
                localize_movie_mle(mv, cfg, frames=bad)
    assert len(whole) > 20 and set(whole["frame"]) > set(range(7, 13))
    # the same fits, up to rounding that depends on how many ROIs are fitted together
    # (measured: at most 0.01 nm in z, 0.1 photons)
    close = {"check_exact": False, "rtol": 1e-4, "atol": 0.5}
    pd.testing.assert_frame_equal(whole, chunked, **close)
    expected = whole[whole["frame"].between(7, 12)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected, **close)


def test_a_model_without_factors_for_the_readout_warns_its_sigmas_are_raw(bundled,
                                                                          movie) -> None:
    import dataclasses

    _, model = bundled
    path, cfg, _ = movie
    raw = dataclasses.replace(model, sigma_scale={})
    with open_movie(path) as mv, pytest.warns(DenselocWarning, match="uncalibrated"):
        table = localize_movie_network(mv, raw, cfg, frames=range(4), check=False)
    assert table.attrs["localization"]["sigma_scale"] == {}


def test_cli_network_localize_and_model_mismatch_warning(bundled, movie, tmp_path) -> None:
    model_dir, _ = bundled
    path, _, _ = movie
    runner = CliRunner()
    out = tmp_path / "locs.csv"
    result = runner.invoke(app, ["localize", str(path), "--out", str(out)])  # bundled model
    assert result.exit_code == 0, result.output
    assert "using those the model was trained for" in result.output
    table = pd.read_csv(out)
    assert len(table) > 0 and table["frame"].between(0, 23).all()
    result = runner.invoke(app, ["localize", str(path), "--model", str(model_dir),
                                 "--pixel-size-nm", "160", "--camera", "scmos",
                                 "--out", str(tmp_path / "l2.csv")])
    assert result.exit_code == 0, result.output
    assert "160 nm" in result.output and "scmos" in result.output


def test_missing_model_folder_is_a_clear_error(movie, tmp_path) -> None:
    path, _, _ = movie
    result = CliRunner().invoke(app, ["localize", str(path), "--model", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "l.csv")])
    assert result.exit_code == 2 and "model folder not found" in result.output


def test_check_model_matches() -> None:
    cfg = Config()
    assert check_model_matches(cfg, cfg) == []
    other = cfg.model_copy(update={"image": cfg.image.model_copy(update={"pixel_size_nm": 130})})
    assert "130 nm" in check_model_matches(cfg, other)[0]
    scmos = cfg.with_camera_preset("scmos")
    mapped = scmos.model_copy(update={
        "camera": scmos.camera.model_copy(update={"offset_map": "offset.npy"})})
    assert check_model_matches(mapped, mapped) == []
    assert "per-pixel maps" in check_model_matches(mapped, scmos)[0]


def test_python_api_warns_when_the_data_does_not_suit_the_model(bundled, movie) -> None:
    _, model = bundled
    path, cfg, _ = movie
    other = cfg.model_copy(update={"image": cfg.image.model_copy(update={"pixel_size_nm": 130})})
    with open_movie(path) as mv:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenselocWarning)
            localize_movie_network(mv, model, cfg, frames=range(2))
            # denseloc localize makes the checks itself and passes check=False
            localize_movie_network(mv, model, other, frames=range(2), check=False)
        with pytest.warns(DenselocWarning, match="trained for 100 nm pixels, the data has 130"):
            localize_movie_network(mv, model, other, frames=range(2))


@pytest.mark.parametrize("n_frames", [1, 4])
def test_a_movie_shorter_than_the_context_is_warned_of(bundled, movie, tmp_path, n_frames) -> None:
    import tifffile

    from denseloc.localize.pipeline import check_movie_length

    model_dir, model = bundled
    path, cfg, _ = movie
    assert model.net.context_frames == 5
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, tifffile.imread(path)[:n_frames], photometric="minisblack")
    expected = rf"has {n_frames} frames? and the model reads 5 consecutive frames"
    with open_movie(short) as mv, pytest.warns(DenselocWarning, match=expected):
        table = localize_movie_network(mv, model, cfg)
    assert len(table) > 0 and set(table["frame"]) <= set(range(n_frames))  # still localized
    result = CliRunner().invoke(app, ["localize", str(short), "--model", str(model_dir),
                                      "--out", str(tmp_path / "l.csv")])
    assert result.exit_code == 0, result.output
    assert f"warning: the movie has {n_frames} frame" in result.output
    # Long enough movies, or a single-frame model, have nothing to warn of.
    assert check_movie_length(5, 5) == [] and check_movie_length(1, 1) == []


def test_scmos_maps_from_training_to_a_region_of_interest(tmp_path) -> None:
    # Train on a 24 x 24 px chip's maps, then localize a 12 x 16 px region of it.
    from denseloc.train.trainer import Trainer

    rng = np.random.default_rng(0)
    np.save(tmp_path / "offset.npy", rng.normal(100, 2, (24, 24)))
    np.save(tmp_path / "variance.npy", rng.gamma(2, 2, (24, 24)))
    chip = {
        "image": {"size_px": 24},
        "camera": {"kind": "scmos", "em_gain": 1.0, "e_per_adu": 0.46, "qe": 0.82,
                   "read_noise_e": 1.4, "offset_map": "offset.npy",
                   "variance_map": "variance.npy"},
        "psf": {"kind": "gaussian"},
        "emitters": {"density_per_um2": 1.0},
        "model": {"filters": 4, "depth": 1},
        "train": {"frame_size_px": 16, "batch_size": 4, "steps_per_epoch": 2,
                  "validation_samples": 4, "threads": 1},
    }
    (tmp_path / "chip.yaml").write_text(Config.model_validate(chip).to_yaml())
    roi = {**chip, "image": {"size_px": [12, 16]},
           "camera": {**chip["camera"], "roi_origin_px": [6, 4]}, "simulation": {"n_frames": 4}}
    (tmp_path / "roi.yaml").write_text(Config.model_validate(roi).to_yaml())
    Trainer(load_config(tmp_path / "chip.yaml"), tmp_path / "m", device="cpu").fit(epochs=1)
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", str(tmp_path / "roi.yaml"), "--out",
                                 str(tmp_path / "sim")])
    assert result.exit_code == 0, result.output
    movie = str(tmp_path / "sim" / "frames.tif")
    out = tmp_path / "loc.csv"
    result = runner.invoke(app, ["localize", movie, "--model", str(tmp_path / "m"),
                                 "--camera", str(tmp_path / "roi.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and out.is_file()
    # The model's own camera is the whole chip's: the region needs its place on the chip.
    result = runner.invoke(app, ["localize", movie, "--model", str(tmp_path / "m"),
                                 "--out", str(tmp_path / "no.csv")])
    assert result.exit_code != 0 and "roi_origin_px" in result.output
    assert not (tmp_path / "no.csv").exists()
    # A map overwritten after training: the model's own camera is refused, and so is --resume.
    np.save(tmp_path / "offset.npy", rng.normal(100, 2, (24, 24)))
    result = runner.invoke(app, ["localize", movie, "--model", str(tmp_path / "m"),
                                 "--out", str(tmp_path / "no.csv")])
    assert result.exit_code != 0 and "camera.offset_map" in result.output, result.output
    assert "differs from the file used in training" in result.output
    assert not (tmp_path / "no.csv").exists()
    # Chosen knowingly with --camera, the new maps are used, with a warning.
    result = runner.invoke(app, ["localize", movie, "--model", str(tmp_path / "m"),
                                 "--camera", str(tmp_path / "roi.yaml"), "--out", str(out)])
    assert result.exit_code == 0 and "warning: camera.offset_map" in result.output
    # The Python API warns too (it cannot tell a knowing choice from a mistake).
    from denseloc.train.artifact import TrainedModel

    with open_movie(movie) as mv, pytest.warns(DenselocWarning, match=r"camera\.offset_map"):
        localize_movie_network(mv, TrainedModel.load(tmp_path / "m"),
                               load_config(tmp_path / "roi.yaml"))
    with pytest.raises(DenselocError, match=r"camera\.offset_map"):
        Trainer(load_config(tmp_path / "chip.yaml"), tmp_path / "m", device="cpu").fit(
            epochs=2, resume=True)


def test_cli_sigma_filter_grouping_and_bad_flags(bundled, movie, tmp_path) -> None:
    path, cfg, _ = movie
    runner = CliRunner()
    plain, filtered, grouped = (tmp_path / f"{n}.csv" for n in ("plain", "filtered", "grouped"))
    assert runner.invoke(app, ["localize", str(path), "--out", str(plain)]).exit_code == 0
    result = runner.invoke(app, ["localize", str(path), "--out", str(filtered),
                                 "--sigma-quantile", "0.5"])
    assert result.exit_code == 0, result.output
    full, half = pd.read_csv(plain), pd.read_csv(filtered)
    assert len(half) == pytest.approx(len(full) / 2, abs=1)
    lateral = lambda t: (t["sigma_x_nm"] ** 2 + t["sigma_y_nm"] ** 2) ** 0.5  # noqa: E731
    assert lateral(half).max() <= lateral(full).median() + 1e-6
    result = runner.invoke(app, ["localize", str(path), "--out", str(grouped), "--group"])
    assert result.exit_code == 0, result.output
    merged = pd.read_csv(grouped)
    assert len(merged) < len(full) and merged["n_frames"].sum() == len(full)
    # The maximum-pixel readout finds the same detections, placed and scaled as that readout
    # does (the model's default is the mixture).
    top = tmp_path / "top.parquet"
    result = runner.invoke(app, ["localize", str(path), "--out", str(top), "--readout", "max"])
    assert result.exit_code == 0, result.output
    top = read_table(top)
    # The native table records how it was made.
    assert top.attrs["localization"] == {"method": "network", "threshold": bundled[1].threshold,
                                         "readout": "max",
                                         "sigma_scale": bundled[1].sigma_scale["max"],
                                         "frame_error_correlation":
                                             bundled[1].frame_error_correlation["max"]}
    with open_movie(path) as mv:
        api = localize_movie_network(mv, bundled[1], cfg, readout="max", check=False)
    assert len(top) == len(full) == len(api)
    for column in ("x_nm", "sigma_x_nm", "sigma_z_nm"):
        np.testing.assert_allclose(top[column], api[column], rtol=1e-5)
    assert not np.allclose(top["x_nm"], full["x_nm"])
    bad = [
        (["--readout", "centre"], "unknown readout 'centre'; available: mixture, max"),
        (["--method", "mle", "--readout", "max"], "--readout applies to --method network only"),
        (["--batch-size", "zero"], "--batch-size must be auto or a positive integer"),
        (["--sigma-quantile", "1.5"], "quantile must be in (0, 1]"),
        (["--frames", "50:60"], "selects no frame"),
        (["--threshold", "5"], "0 < threshold <= 1, got 5"),  # MLE's sigmas, not a probability
        (["--group", "--group-radius-nm", "0"], "--group-radius-nm must be > 0"),
        (["--pixel-size-nm", "-100"], "--pixel-size-nm: pixel_size_nm"),
    ]
    for flags, message in bad:
        out = tmp_path / "bad.csv"
        result = runner.invoke(app, ["localize", str(path), "--out", str(out), *flags])
        assert result.exit_code == 2 and message in result.output, (flags, result.output)
        assert not out.exists()
    # An output format that cannot be written is refused before the run, not after it.
    result = runner.invoke(app, ["localize", str(path), "--out", str(tmp_path / "locs.txt")])
    assert result.exit_code == 2 and "unknown table format '.txt'" in result.output
    assert "localizing" not in result.output


def test_cli_reads_the_pixel_size_from_the_movie(bundled, movie, tmp_path) -> None:
    """A movie whose metadata says 160 nm is localized in 160 nm pixels, with a warning that
    the model was trained for 100 nm; without metadata the model's size is used, and said."""
    from denseloc.io import write_tiff

    path, _, _ = movie
    runner = CliRunner()
    with open_movie(path) as mv:
        frames = mv[:]
    model_px = bundled[1].config.image.pixel_size_nm
    tables = {}
    for name, px in [("model", model_px), ("wide", 1.6 * model_px), ("bare", None)]:
        tif = tmp_path / f"{name}.tif"
        write_tiff(tif, frames, pixel_size_nm=px)
        out = tmp_path / f"{name}.parquet"
        result = runner.invoke(app, ["localize", str(tif), "--out", str(out)])
        assert result.exit_code == 0, result.output
        tables[name] = read_table(out)
        if name == "wide":
            assert "warning: the model was trained for 100 nm pixels, the data has 160 nm" \
                in " ".join(result.output.split())
        if px is not None:  # read from the movie, and said, even when it is the model's
            assert f"note: {px:g} nm pixels, from {name}.tif's metadata" in result.output
        if name == "bare":
            assert "records no pixel size" in result.output
    assert tables["wide"].attrs["pixel_size_nm"] == pytest.approx(1.6 * model_px)
    np.testing.assert_allclose(tables["wide"]["x_nm"], 1.6 * tables["model"]["x_nm"], rtol=1e-5)
    np.testing.assert_allclose(tables["bare"]["x_nm"], tables["model"]["x_nm"], rtol=1e-6)
    # The table knows the movie it came from, for Picasso's Frames, Height and Width.
    assert tables["model"].attrs["movie_shape"] == list(frames.shape)
    # Metadata far from the model's pixels is more likely wrong (the chip's 6.5 um pixel)
    # than a movie the model could localize: refused, unless --pixel-size-nm says so.
    chip = tmp_path / "chip.tif"
    write_tiff(chip, frames, pixel_size_nm=6500.0)
    result = runner.invoke(app, ["localize", str(chip), "--out", str(tmp_path / "c.csv")])
    assert result.exit_code == 2 and "pass --pixel-size-nm" in result.output, result.output


def test_partial_camera_flags_say_which_settings_the_model_supplies(movie, tmp_path) -> None:
    path, _, _ = movie
    result = CliRunner().invoke(app, ["localize", str(path), "--out", str(tmp_path / "l.csv"),
                                      "--baseline", "100", "--e-per-adu", "45"])
    assert result.exit_code == 0, result.output
    assert "not given are those the model was trained for" in result.output
    assert "em_gain 300" in result.output and "baseline_adu" not in result.output


def test_counts_below_the_baseline_are_flagged(bundled, movie, tmp_path) -> None:
    from denseloc.localize.pipeline import check_counts
    from denseloc.sim.camera import Camera

    path, cfg, _ = movie
    camera = Camera.from_config(cfg.camera)
    with open_movie(path) as mv:
        raw = mv[:4].astype(np.float64)
    assert check_counts(raw, camera, "raw") == (None, None)  # the camera's own counts
    subtracted = raw - np.median(raw)  # background-subtracted, as some software exports
    with pytest.warns(DenselocWarning, match="below the camera baseline"):
        nonfinite, low = check_counts(subtracted, camera, "sub")
    assert nonfinite is None and low is not None
    raw[2, 0, 0] = np.nan
    with pytest.warns(DenselocWarning, match=r"NaN or infinite values \(first in frame 12\)"):
        check_counts(raw, camera, "nan", first_frame=10)


def test_nan_beyond_the_first_chunk_is_warned_once(movie, tmp_path) -> None:
    from denseloc.config import Config
    from denseloc.localize.pipeline import localize_movie_mle

    path, cfg, _ = movie
    with open_movie(path) as mv:
        frames = mv[:].astype(np.float32)
    frames[5, 3, 3] = np.nan
    frames[7, 1, 1] = np.inf
    damaged = tmp_path / "damaged.tif"
    tifffile.imwrite(damaged, frames)
    cfg = Config.model_validate({**cfg.model_dump(), "psf": {"kind": "gaussian"}})
    with open_movie(damaged) as mv, pytest.warns(DenselocWarning) as caught:
        localize_movie_mle(mv, cfg, chunk_frames=2)
    nan_warnings = [w for w in caught if "NaN or infinite" in str(w.message)]
    assert len(nan_warnings) == 1
    assert "(first in frame 5)" in str(nan_warnings[0].message)


@pytest.mark.parametrize("damage", ["no threshold", "bad architecture", "html weights",
                                    "negative sigma factor", "sigma factors of a new readout",
                                    "unknown readout", "weights of another save",
                                    "correlation above 1"])
def test_damaged_model_folder_is_a_clear_error(bundled, tmp_path, damage: str) -> None:
    import shutil

    import yaml

    from denseloc.errors import InputFileError
    from denseloc.train.artifact import TrainedModel

    folder = shutil.copytree(bundled[0], tmp_path / "m")
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    if damage == "no threshold":
        del meta["threshold"]
    elif damage == "bad architecture":
        meta["architecture"] = "16 filters"
    elif damage == "negative sigma factor":
        meta["sigma_scale"] = {"mixture": {"x": -1.0}}
    elif damage == "sigma factors of a new readout":
        meta["sigma_scale"] = {"centroid": {"x": 1.0}}
    elif damage == "unknown readout":
        meta["readout"] = "centroid"
    elif damage == "correlation above 1":
        meta["frame_error_correlation"] = {"x": 1.4}
    elif damage == "weights of another save":
        # A save of this model with digests, then the weights of an interrupted later save.
        model = TrainedModel.load(folder)
        model.save(folder)
        meta = yaml.safe_load((folder / "model.yaml").read_text())
        with torch.no_grad():
            next(model.net.parameters()).add_(1.0)
        torch.save(model.net.state_dict(), folder / "weights.pt")
    else:
        (folder / "weights.pt").write_text("<html>404 Not Found</html>")
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    target = "weights.pt" if damage in ("html weights", "weights of another save") else "model.yaml"
    with pytest.raises(InputFileError, match=target):
        TrainedModel.load(folder)


def test_grouping_uses_the_models_frame_error_correlation(bundled, movie, tmp_path) -> None:
    import dataclasses

    import yaml

    from denseloc.train.artifact import TrainedModel

    _, model = bundled
    # measured by bench_grouping.py --record, per readout
    assert set(model.frame_error_correlation) == {"mixture", "max"}
    assert model.frame_error_correlation["mixture"]["x"] > 0.8
    copy = tmp_path / "m"
    model.save(copy)  # a save keeps it
    assert TrainedModel.load(copy).frame_error_correlation == model.frame_error_correlation
    path, cfg, _ = movie
    with open_movie(path) as mv:
        table = localize_movie_network(mv, model, cfg, check=False)
    assert (table.attrs["localization"]["frame_error_correlation"]
            == model.frame_error_correlation["mixture"])
    unmeasured = dataclasses.replace(model, frame_error_correlation={})
    unmeasured.save(tmp_path / "u")
    runner = CliRunner()
    grouped = {}
    for name, model_dir, extra, warned in (("measured", copy, [], False),
                                           ("unmeasured", tmp_path / "u", [], True),
                                           ("given 0", copy, ["--group-correlation", "0"], False)):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["localize", str(path), "--model", str(model_dir),
                                     "--camera", "emccd", "--group", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert ("no measured frame_error_correlation" in result.output) == warned
        grouped[name] = pd.read_csv(out)
    several = grouped["measured"]["n_frames"] >= 2
    assert several.sum() > 10
    measured, independent = (grouped[k]["sigma_x_nm"][several] for k in ("measured", "given 0"))
    assert (measured > 1.3 * independent).mean() > 0.9  # rho 0.9: hardly any shrinking
    pd.testing.assert_frame_equal(grouped["unmeasured"], grouped["given 0"])
    # a correlation recorded by axis alone (as first written) is the default readout's
    meta = yaml.safe_load((copy / "model.yaml").read_text())
    meta["frame_error_correlation"] = {"x": 0.5}
    (copy / "model.yaml").write_text(yaml.safe_dump(meta))
    assert TrainedModel.load(copy).frame_error_correlation == {"mixture": {"x": 0.5}}


@pytest.mark.parametrize("readout", ["mixture", "max"])
def test_the_model_folders_readout_and_sigma_factors_are_used(bundled, movie, tmp_path,
                                                          readout) -> None:
    import shutil

    import yaml

    from denseloc.localize.network import predict_frames
    from denseloc.sim.camera import Camera
    from denseloc.train.artifact import TrainedModel

    folder = shutil.copytree(bundled[0], tmp_path / "m")
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    factors = {"photons": 1.0, "x": 1.0, "y": 1.0, "z": 1.0}
    factors.update(meta.get("sigma_scale", {}).get(readout, {}))
    meta["sigma_scale"] = {readout: {"photons": 3 * factors["photons"], "x": 2 * factors["x"],
                                     "y": factors["y"], "z": 0.5 * factors["z"]}}
    meta["readout"] = readout  # the copy's default
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    path, cfg, _ = movie
    with open_movie(path) as mv:
        photons = Camera.from_config(cfg.camera, mv.shape[1:]).adu_to_photons(
            torch.from_numpy(np.asarray(mv[:6], dtype=np.float32)))
    px = cfg.image.pixel_size_nm
    ours = predict_frames(bundled[1], photons, pixel_size_nm=px, readout=readout)
    theirs = predict_frames(TrainedModel.load(folder), photons, pixel_size_nm=px)
    assert len(ours) > 10
    pd.testing.assert_frame_equal(theirs.drop(columns=theirs.filter(like="sigma_").columns),
                                  ours.drop(columns=ours.filter(like="sigma_").columns))
    for column, ratio in (("sigma_photons", 3), ("sigma_x_nm", 2), ("sigma_y_nm", 1),
                          ("sigma_z_nm", 0.5)):
        np.testing.assert_allclose(theirs[column], ratio * ours[column], rtol=1e-9)


@pytest.mark.parametrize("context", [3, 5])
def test_windows_replicate_the_movies_ends_and_chunks_see_their_real_neighbours(
    bundled, context
) -> None:
    import dataclasses

    from denseloc.localize.network import network_outputs
    from denseloc.nn.model import DecodeNet
    from denseloc.train.data import scale_frames

    _, model = bundled
    torch.manual_seed(0)
    net = DecodeNet(filters=4, depth=1, context_frames=context).eval()
    small = dataclasses.replace(model, net=net)
    photons = 100 + 50 * torch.rand(7, 12, 12)
    half = context // 2
    padded = torch.cat([photons[:1].expand(half, -1, -1), photons,
                        photons[-1:].expand(half, -1, -1)])
    scaled = scale_frames(padded, small.scaling)
    with torch.no_grad():
        whole = network_outputs(small, photons, batch_size=3)
        expected = net(torch.stack([scaled[t : t + context] for t in range(7)]))
        torch.testing.assert_close(whole, expected, rtol=1e-4, atol=1e-5)
        # A part with all the frames before and after it (only `half` of each are used)
        # gives the whole movie's outputs; at the ends, the missing ones are replicated.
        for a, b in [(0, 1), (1, 3), (2, 5), (3, 4), (5, 7), (6, 7)]:
            part = network_outputs(small, photons[a:b], before=photons[:a] if a else None,
                                   after=photons[b:] if b < 7 else None, batch_size=1)
            torch.testing.assert_close(part, whole[a:b], rtol=1e-4, atol=1e-5)


def test_a_single_frame_network_reads_each_frame_alone(bundled) -> None:
    # model.context_frames: 1 is what the README advises for single images: every frame's
    # output must then depend on that frame only, whatever its neighbours and the batching.
    import dataclasses

    from denseloc.localize.network import network_outputs
    from denseloc.nn.model import DecodeNet

    _, model = bundled
    torch.manual_seed(0)
    single = dataclasses.replace(model, net=DecodeNet(filters=4, depth=1, context_frames=1).eval())
    photons = 100 + 50 * torch.rand(5, 24, 24)
    with torch.no_grad():
        together = network_outputs(single, photons, batch_size=2)
        alone = torch.cat([network_outputs(single, photons[t:t + 1]) for t in range(5)])
    torch.testing.assert_close(together, alone)
