"""Configuration: defaults, YAML round trip, validation messages, paths."""

from __future__ import annotations

import pytest

from denseloc.config import (
    CAMERA_PRESETS,
    Config,
    ConfigError,
    changed_inputs,
    input_digests,
    load_config,
)
from denseloc.errors import InputFileError


def test_documented_default_round_trips() -> None:
    text = Config().to_yaml(comments=True)
    assert "# quantum efficiency" in text
    assert Config.from_yaml_text(text) == Config()


def test_partial_yaml_fills_defaults(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("image:\n  size_px: 40\n  pixel_size_nm: 160\ncamera:\n  em_gain: 100\n")
    cfg = load_config(path)
    assert cfg.image.size_px == (40, 40)
    assert cfg.image.pixel_size_nm == 160
    assert cfg.camera.em_gain == 100
    assert cfg.camera.qe == Config().camera.qe


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("camera: {em_gain: 0.5}", r"camera\.em_gain: .*greater than or equal to 1"),
        ("camera: {adc_max_adu: 65536}", r"camera\.adc_max_adu: .*less than or equal to 65535"),
        ("image: {pixel_size_nm: -100}", r"image\.pixel_size_nm: .*greater than or equal to 10"),
        ("image: {pixel_size_nm: 6500}", r"image\.pixel_size_nm: .*less than or equal to 1000"),
        ("camera: {em_gain: 1}", r"em_gain 1 is EM gain off: use kind: scmos"),
        ("camera: {kind: [scmos]}", r"camera\.kind"),
        ("camera: {baseline_adu: 70000}", r"baseline_adu 70000 must be below adc_max_adu 65535"),
        ("emitters: {density_per_um2: -1}", r"emitters\.density_per_um2"),
        ("psf: {kind: spline}", r"psf\.kind"),
        ("camera: {kind: scmos, em_gain: 100}", r"em_gain applies to EMCCD"),
        ("psf: {kind: file}", r"needs path"),
        ("psf: {path: psf.h5}", r"set kind: file to use the calibration"),
        ("psf: {kind: gaussian, path: psf.h5}", r"kind is 'gaussian'"),
        ("emitters: {z_range_nm: [500, -500]}", r"low <= high"),
        ("typo_section: {a: 1}", r"typo_section"),
        ("camera: {gain: 3}", r"camera\.gain"),
        ("[1, 2]", r"expected a mapping"),
        ("image: {size_px: [0, 10]}", r"positive"),
        ("emitters: {photons_mean: .inf}", r"emitters\.photons_mean: .*finite"),
        ("train: {lr: .nan}", r"train\.lr: .*finite"),
    ],
)
def test_invalid_values_name_the_field(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("camera: {qe: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_relative_paths_are_relative_to_the_file(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("psf: {kind: file, path: psf.h5}\n")
    assert load_config(path).psf.path == (tmp_path / "sub" / "psf.h5").resolve()


def test_input_digests_notice_changed_and_missing_files(tmp_path) -> None:
    import hashlib

    (tmp_path / "psf.h5").write_bytes(b"spline v1")
    (tmp_path / "gain.npy").write_bytes(b"gain v1")
    cfg = Config(psf={"kind": "file", "path": tmp_path / "psf.h5"},
                 camera={"kind": "scmos", "em_gain": 1, "gain_map": tmp_path / "gain.npy"})
    digests = input_digests(cfg)
    assert digests == {"camera.gain_map": hashlib.sha256(b"gain v1").hexdigest(),
                       "psf.path": hashlib.sha256(b"spline v1").hexdigest()}
    assert changed_inputs(cfg, digests) == []
    (tmp_path / "psf.h5").write_bytes(b"spline v2")
    (tmp_path / "gain.npy").unlink()
    assert changed_inputs(cfg, digests) == [
        f"camera.gain_map ({tmp_path / 'gain.npy'}) is missing",
        f"psf.path ({tmp_path / 'psf.h5'}) differs from the file used in training",
    ]
    # Bundled data is the package's, not the user's: it is not recorded.
    bundled = Config(psf={"kind": "file", "path": "denseloc:psf_epfl_beads_as.h5"})
    assert input_digests(bundled) == {}


@pytest.mark.parametrize("name", list(CAMERA_PRESETS))
def test_camera_presets_are_valid(name: str) -> None:
    camera = Config().with_camera_preset(name).camera
    assert camera.kind == name
    assert camera.model_dump(include=set(CAMERA_PRESETS[name])) == CAMERA_PRESETS[name]


def test_a_camera_kind_fills_the_fields_left_out_from_its_preset(tmp_path) -> None:
    # not the EMCCD's 45 e-/ADU and 74 e- read noise under an sCMOS label
    path = tmp_path / "scmos.yaml"
    path.write_text("camera: {kind: scmos, baseline_adu: 120}\n")
    camera = load_config(path).camera
    assert (camera.e_per_adu, camera.read_noise_e, camera.qe) == (0.46, 1.6, 0.82)
    assert camera.baseline_adu == 120 and camera.em_gain == 1


def test_config_differences_name_each_changed_setting() -> None:
    from denseloc.config import config_differences

    base = Config()
    other = Config.model_validate({"model": {"context_frames": 5}, "train": {"lr": 3e-3}})
    changed = config_differences(base.model_dump(mode="json"), other.model_dump(mode="json"))
    assert changed == ["model.context_frames was 3 and is now 5",
                       "train.lr was 0.002 and is now 0.003"]
    assert config_differences(base.model_dump(mode="json"), base.model_dump(mode="json")) == []
