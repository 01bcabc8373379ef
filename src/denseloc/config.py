"""Configuration: pydantic models for the microscope, the camera and the simulation.

Each field carries its default, bounds, unit and description exactly once, here. A
configuration is saved and loaded as YAML (:meth:`Config.to_yaml`, :func:`load_config`);
``denseloc config init`` prints the default with every description as a comment.

Examples
--------
>>> cfg = Config()
>>> cfg.camera.kind, cfg.image.pixel_size_nm
('emccd', 100.0)
>>> Config.from_yaml_text(cfg.to_yaml()) == cfg
True
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from denseloc.errors import DenselocError, InputFileError

__all__ = [
    "CAMERA_PRESETS",
    "AstigmaticConfig",
    "BackgroundConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "EmitterConfig",
    "ImageConfig",
    "ModelConfig",
    "PSFConfig",
    "SimulationConfig",
    "TrainConfig",
    "changed_inputs",
    "config_differences",
    "file_sha256",
    "input_digests",
    "load_config",
    "resolve_path",
]

CONFIG_VERSION = 1
M = TypeVar("M", bound=BaseModel)


class ConfigError(DenselocError):
    """An invalid configuration value, reported as one line naming the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)


Range = Annotated[tuple[float, float], Field(description="(low, high)")]


def _ordered(value: tuple[float, float], name: str) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return value


PLAUSIBLE_PIXEL_NM = (10.0, 1000.0)
"""Camera pixel sizes in the sample that are accepted, nm: a chip's pixel (e.g. 6.5 um) or a
size in um typed as nm would scale every position."""


class ImageConfig(_Model):
    """Frame geometry."""

    size_px: tuple[int, int] = Field(
        (64, 64), description="frame size (height, width) in px; a single number means square"
    )
    pixel_size_nm: float = Field(
        100.0, ge=PLAUSIBLE_PIXEL_NM[0], le=PLAUSIBLE_PIXEL_NM[1],
        description="camera pixel size in the sample, nm (not the chip's pixel, several um)",
    )

    @field_validator("size_px", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return (int(v), int(v))
        return v

    @field_validator("size_px")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"frame size must be positive, got {v}")
        return v


class CameraConfig(_Model):
    """Camera model, photons -> ADU (and the inverse applied to real data).

    ``ADU = round((EM(Poisson(photons * qe + spurious)) + N(0, read_noise)) / e_per_adu
    + baseline)``, clipped to ``[0, adc_max_adu]``; EM is Gamma(shape = electrons,
    scale = em_gain) for an EMCCD and the identity otherwise.

    The defaults are the EMCCD of the SMLM Challenge 2016; with ``kind: scmos`` or
    ``kind: ideal``, fields left out take that kind's preset (:data:`CAMERA_PRESETS`), as
    ``--camera scmos`` does.
    """

    kind: Literal["emccd", "scmos", "ideal"] = Field(
        "emccd", description="emccd | scmos | ideal (Poisson noise only, no read noise)"
    )
    qe: float = Field(0.9, gt=0, le=1, description="quantum efficiency (electrons per photon)")
    spurious_charge_e: float = Field(
        0.002, ge=0, description="clock-induced / spurious charge, electrons per px per frame"
    )
    em_gain: float = Field(300.0, ge=1, description="EM gain (EMCCD only; 1 otherwise)")
    e_per_adu: float = Field(45.0, gt=0, description="electrons per ADU (inverse of the gain)")
    baseline_adu: float = Field(100.0, ge=0, description="offset added by the camera, ADU")
    read_noise_e: float = Field(74.4, ge=0, description="read-noise standard deviation, e-")
    adc_max_adu: int = Field(
        65535, gt=0, le=65535,
        description="largest value the ADC can output, ADU (at most 65535: movies are 16-bit)",
    )
    offset_map: Path | None = Field(
        None, description="sCMOS per-pixel offset map (ADU), .tif or .npy of the frame size "
        "(or of the whole chip, see roi_origin_px)"
    )
    variance_map: Path | None = Field(
        None, description="sCMOS per-pixel read-noise variance map (ADU^2)"
    )
    gain_map: Path | None = Field(None, description="sCMOS per-pixel electrons-per-ADU map")
    roi_origin_px: tuple[int, int] | None = Field(
        None, description="for maps of a larger chip than the frames (a region of interest): "
        "chip row and column of the frames' pixel (0, 0)"
    )

    MAP_FIELDS: ClassVar[tuple[str, ...]] = ("offset_map", "variance_map", "gain_map")
    """The fields that hold per-pixel maps."""

    @model_validator(mode="before")
    @classmethod
    def _preset_of_kind(cls, data: Any) -> Any:
        """Fields left out take the preset of the camera's kind, not the EMCCD's defaults."""
        kind = data.get("kind") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind in CAMERA_PRESETS:
            return {**CAMERA_PRESETS[kind], **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CameraConfig:
        if self.kind != "emccd" and self.em_gain != 1:
            raise ValueError(
                f"em_gain applies to EMCCD cameras only; for kind {self.kind} set em_gain: 1"
            )
        if self.kind == "ideal" and self.read_noise_e != 0:
            raise ValueError("an ideal camera has no read noise; set read_noise_e: 0")
        if self.kind != "scmos" and self.has_maps:
            raise ValueError("per-pixel maps apply to sCMOS cameras only (kind: scmos)")
        if self.kind == "emccd" and self.em_gain < 2:
            raise ValueError(
                f"an EMCCD is modelled at high EM gain (excess noise factor 2); em_gain "
                f"{self.em_gain:g} is EM gain off: use kind: scmos, whose model (Poisson and "
                "read noise, no excess noise) fits a camera read without gain"
            )
        if self.baseline_adu >= self.adc_max_adu:
            raise ValueError(
                f"baseline_adu {self.baseline_adu:g} must be below adc_max_adu "
                f"{self.adc_max_adu}: every pixel would be saturated"
            )
        if self.roi_origin_px is not None and min(self.roi_origin_px) < 0:
            raise ValueError(f"roi_origin_px must be >= 0, got {list(self.roi_origin_px)}")
        return self

    @property
    def has_maps(self) -> bool:
        """Whether any per-pixel map is given."""
        return any(getattr(self, k) is not None for k in self.MAP_FIELDS)

    def without_maps(self) -> CameraConfig:
        """The same camera with its scalar settings only (no maps, no region of interest)."""
        return self.model_copy(update=dict.fromkeys((*self.MAP_FIELDS, "roi_origin_px")))

    @property
    def excess_noise_factor(self) -> float:
        """Variance multiplier of the EM register: 2 for an EMCCD, 1 otherwise."""
        return 2.0 if self.kind == "emccd" else 1.0


CAMERA_PRESETS: dict[str, dict[str, Any]] = {
    # The EMCCD of the SMLM Challenge 2016 (and of ../shared/data/beads_epfl2016): the defaults.
    "emccd": {},
    # A typical back-illuminated sCMOS (e.g. Hamamatsu ORCA-Flash 4.0 v3 data sheets).
    "scmos": {
        "kind": "scmos", "qe": 0.82, "spurious_charge_e": 0.0, "em_gain": 1.0,
        "e_per_adu": 0.46, "baseline_adu": 100.0, "read_noise_e": 1.6,
    },
    # Shot noise only: useful to test estimators against the Poisson CRLB.
    "ideal": {
        "kind": "ideal", "qe": 1.0, "spurious_charge_e": 0.0, "em_gain": 1.0,
        "e_per_adu": 1.0, "baseline_adu": 100.0, "read_noise_e": 0.0,
    },
}  # fmt: skip
"""Named cameras for ``--camera emccd|scmos|ideal``: overrides of the :class:`CameraConfig`
defaults."""


class AstigmaticConfig(_Model):
    """Astigmatic Gaussian PSF (Huang et al., Science 2008), one set of values per axis (x, y).

    ``sigma(z) = sigma0 sqrt(1 + u^2 + a3 u^3 + a4 u^4)`` with ``u = (z - focus) / depth``.
    """

    sigma0_px: tuple[float, float] = Field((1.0, 1.0), description="in-focus widths (x, y), px")
    focus_nm: tuple[float, float] = Field(
        (-200.0, 200.0), description="z where the PSF is narrowest along x and along y, nm"
    )
    depth_nm: tuple[float, float] = Field(
        (400.0, 400.0), description="focal depth per axis: width x sqrt(2) at focus +- depth, nm"
    )
    a3: tuple[float, float] = Field((0.0, 0.0), description="cubic coefficients (x, y)")
    a4: tuple[float, float] = Field((0.0, 0.0), description="quartic coefficients (x, y)")

    @field_validator("sigma0_px", "depth_nm")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v


class PSFConfig(_Model):
    """Point-spread function model."""

    kind: Literal["gaussian", "astigmatic", "file"] = Field(
        "astigmatic",
        description="gaussian (2D) | astigmatic (3D Gaussian) | file (a calibration, see path)",
    )
    sigma_px: float = Field(1.0, gt=0, description="width of the 2D Gaussian PSF, px")
    astigmatic: AstigmaticConfig = Field(default_factory=AstigmaticConfig)
    path: Path | None = Field(
        None,
        description="PSF calibration file (kind: file), e.g. from `denseloc calibrate`; "
        "denseloc:psf_epfl_beads_as_v2.h5 is the bundled EPFL astigmatic calibration "
        "(denseloc:psf_epfl_beads_as.h5 the earlier one, less smoothed along z)",
    )

    @property
    def is_3d(self) -> bool:
        """Whether z is a parameter of this PSF: of every kind but ``gaussian``."""
        return self.kind != "gaussian"

    @model_validator(mode="after")
    def _path_given(self) -> PSFConfig:
        if self.kind == "file" and self.path is None:
            raise ValueError("kind: file needs path: the PSF calibration file")
        if self.kind != "file" and self.path is not None:
            # Otherwise a user's calibration would be ignored without a word.
            raise ValueError(
                f"path is set but kind is {self.kind!r}: set kind: file to use the calibration "
                "in path, or remove path"
            )
        return self


class EmitterConfig(_Model):
    """Emitter density, brightness and blinking."""

    density_per_um2: float = Field(
        0.5, ge=0, description="mean number of emitters on per frame per um^2"
    )
    count_per_frame: float | None = Field(
        None, ge=0, description="mean number on per frame; overrides density_per_um2 when set"
    )
    photons_mean: float = Field(5000.0, gt=0, description="mean brightness, photons per frame")
    photons_std: float = Field(1000.0, ge=0, description="std of the brightness, photons")
    on_time_frames: float = Field(2.0, gt=0, description="mean on-time (exponential), frames")
    z_range_nm: Range = Field((-750.0, 750.0), description="z range of 3D emitters, nm")
    structure: Literal["uniform", "filaments"] = Field(
        "uniform",
        description="where emitters sit: uniform over the frame, or along random filaments "
        "(worm-like curves whose z varies smoothly within z_range_nm)",
    )
    filaments: int = Field(6, ge=1, description="structure filaments: filaments per movie")
    filament_persistence_nm: float = Field(
        5000.0, gt=0, description="structure filaments: persistence length, nm"
    )

    @field_validator("z_range_nm")
    @classmethod
    def _ordered_z(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered(v, "z_range_nm")


class BackgroundConfig(_Model):
    """Background: a uniform level per movie plus an optional smooth structured part."""

    level_photons: Range = Field(
        (90.0, 150.0), description="range of the uniform level, photons/px (drawn per movie)"
    )
    structured_amplitude_photons: float = Field(
        0.0, ge=0, description="scale of the smooth structured background added to the level, "
        "photons/px: at most this much, A / 2 on average (0: off)"
    )
    structured_scale_nm: float = Field(
        2000.0, gt=0, description="length scale of the structured background, nm"
    )

    @field_validator("level_photons")
    @classmethod
    def _ordered_nonnegative(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0:
            raise ValueError(f"background must be >= 0, got {v}")
        return _ordered(v, "level_photons")

    @property
    def mean_photons(self) -> float:
        """Mean background photons/px over movies: the middle of the level range plus half
        the structured amplitude (the structured part's mean, :mod:`denseloc.sim.background`)."""
        return 0.5 * sum(self.level_photons) + 0.5 * self.structured_amplitude_photons


class SimulationConfig(_Model):
    """Length and seed of a simulated movie."""

    n_frames: int = Field(100, ge=1, description="number of frames of a simulated movie")
    seed: int = Field(0, ge=0, description="random seed (same seed, same movie)")


class ModelConfig(_Model):
    """Network architecture: a frame-analysis and a temporal-context U-Net, as in DECODE."""

    filters: int = Field(
        16, ge=2, le=256, description="filters in the first U-Net stage (DECODE: 48)"
    )
    depth: int = Field(2, ge=1, le=4, description="down/up stages per U-Net")
    context_frames: Literal[1, 3, 5] = Field(
        3, description="input frames centred on t: 3 (t-1, t, t+1), 5 (t-2 .. t+2) or 1"
    )
    predict_bg: bool = Field(True, description="predict the background map")
    context_filters: int | None = Field(
        None, ge=2, le=256,
        description="filters in the first stage of the temporal-context U-Net and in the "
        "heads (default: filters)",
    )
    raw_to_context: bool = Field(
        False,
        description="pass the scaled frames to the temporal-context U-Net beside the "
        "frame-analysis features",
    )


class TrainConfig(_Model):
    """Training from on-the-fly simulation, with the Gaussian-mixture loss of DECODE."""

    frame_size_px: int = Field(40, ge=8, description="size of the simulated training frames, px")
    batch_size: int = Field(32, ge=1, description="training samples per step")
    frames_per_movie: int = Field(
        8,
        ge=1,
        description="frames of each simulated training movie; every window of consecutive "
        "frames is a sample, so a frame's analysis serves up to context_frames samples "
        "(with 3: 3 frames give independent samples, 1.5 times slower to train; 4 to 16 "
        "train equally well per sample)",
    )
    edge_windows: float = Field(
        0.0, ge=0, le=1,
        description="with half this probability for each side, make a training window one "
        "of a movie's first (or last) frames, whose missing neighbours localization fills "
        "with copies of the movie's first (last) frame (0.1 did not improve those frames' "
        "detection with 3 frames; validation uses interior windows)",
    )
    steps_per_epoch: int = Field(250, ge=1, description="optimiser steps between validations")
    lr: float = Field(2e-3, gt=0, description="peak learning rate of AdamW")
    lr_final_fraction: float = Field(
        0.02, gt=0, le=1, description="learning rate at the end of the schedule / peak"
    )
    warmup_steps: int = Field(200, ge=0, description="linear learning-rate warm-up, steps")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(5.0, gt=0, description="gradient-norm clipping threshold")
    density_range_per_um2: tuple[float, float] | None = Field(
        None,
        description="train on densities drawn uniformly from this range, e.g. [0.05, 2.5] "
        "so that one network serves sparse and crowded frames; needs "
        "emitters.density_per_um2 > 0 (default: that density alone)",
    )
    min_target_photons: float = Field(
        100.0, ge=0, description="emitters with fewer photons in a frame are not targets"
    )
    z_margin: float = Field(
        1.0,
        ge=1.0,
        le=3.0,
        description="the z head spans this multiple of the largest simulated |z|; above 1, "
        "the ends of the range are not where its tanh saturates (1.2 measured no better)",
    )
    bg_weight: float = Field(1.0, ge=0, description="weight of the background loss term")
    count_weight: Literal["one", "emitters"] = Field(
        "one",
        description="weight of each frame's count term: 1, or its number of true emitters "
        "(at least 1) as in DECODE, which balances it against the mixture term's one summand "
        "per emitter in crowded frames",
    )
    detection_warmup_steps: int = Field(
        600,
        ge=0,
        description="steps over which an auxiliary detection loss (weight 1 -> 0) speeds up "
        "the start of training; 0: the pure mixture loss throughout",
    )
    validation_samples: int = Field(
        256, ge=1, description="fixed-seed validation samples, each from a movie of its own "
        "(their time counts in --minutes)",
    )
    seed: int = Field(0, ge=0, description="seed of training data and weights")
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: all cores)"
    )
    channels_last: bool = Field(True, description="channels-last memory format (faster on CPU)")

    @field_validator("density_range_per_um2")
    @classmethod
    def _ordered_density(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] < 0:
            raise ValueError(f"densities must be >= 0, got {v}")
        return v if v is None else _ordered(v, "density_range_per_um2")


class Config(_Model):
    """Everything that describes a microscope, its camera, a simulation and a network."""

    version: int = Field(CONFIG_VERSION, description="configuration format version")
    image: ImageConfig = Field(default_factory=ImageConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    psf: PSFConfig = Field(default_factory=PSFConfig)
    emitters: EmitterConfig = Field(default_factory=EmitterConfig)
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > CONFIG_VERSION:
            raise ValueError(
                f"configuration version {v} is newer than this denseloc ({CONFIG_VERSION})"
            )
        return v

    def to_yaml(self, *, comments: bool = False) -> str:
        """Serialise to YAML; with `comments`, each field's description precedes it."""
        data = self.model_dump(mode="json")
        if not comments:
            return yaml.safe_dump(data, sort_keys=False)
        return "\n".join(_commented_yaml(type(self), data, 0)) + "\n"

    @classmethod
    def from_yaml_text(cls, text: str, *, name: str = "configuration") -> Config:
        """Parse YAML text (see :func:`load_config` for files)."""
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not valid YAML ({_first_line(exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: expected a mapping of sections, got {type(data).__name__}")
        return validated(cls, data, name=name)

    FILE_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        *(("camera", k) for k in CameraConfig.MAP_FIELDS), ("psf", "path"))
    """(section, field) of every setting that names a file."""

    def input_files(self) -> dict[str, Path]:
        """The files this configuration reads, by field name (bundled data excluded).

        >>> cfg = Config(camera={"kind": "scmos", "em_gain": 1, "gain_map": "g.npy"})
        >>> list(cfg.input_files())
        ['camera.gain_map']
        """
        files = {f"{section}.{name}": getattr(getattr(self, section), name)
                 for section, name in self.FILE_FIELDS}
        return {k: Path(p) for k, p in files.items() if p is not None and not _bundled(p)}

    def resolve_paths(self, base: str | os.PathLike) -> Config:
        """A copy whose relative file paths are made absolute against the folder `base`."""
        update: dict[str, dict[str, Path]] = {}
        for section, name in self.FILE_FIELDS:
            p = getattr(getattr(self, section), name)
            if p is not None and (resolved := resolve_path(p, base)) != p:
                update.setdefault(section, {})[name] = resolved
        return self.model_copy(update={
            section: getattr(self, section).model_copy(update=fields)
            for section, fields in update.items()
        })

    def with_camera_preset(self, name: str) -> Config:
        """Return a copy whose camera is the preset `name` (see :data:`CAMERA_PRESETS`)."""
        if name not in CAMERA_PRESETS:
            raise ConfigError(
                f"unknown camera {name!r}; choose one of {', '.join(CAMERA_PRESETS)}"
            )
        return self.model_copy(update={"camera": CameraConfig(**CAMERA_PRESETS[name])})


def resolve_path(path: Path, base: str | os.PathLike) -> Path:
    """`path` made absolute against the folder `base`, unless it is absolute already or names
    data shipped with denseloc (``denseloc:NAME``)."""
    return path if path.is_absolute() or _bundled(path) else (Path(base) / path).resolve()


def _bundled(path: Path) -> bool:
    """Whether `path` names data shipped with denseloc (``denseloc:NAME``)."""
    return str(path).startswith("denseloc:")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's contents, as hex."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({_first_line(exc)})") from None
    return digest.hexdigest()


def input_digests(config: Config) -> dict[str, str]:
    """SHA-256 of each file the configuration reads, by field name (missing files skipped).

    A model folder and a training checkpoint keep these, so that a PSF calibration or sCMOS
    map overwritten in place after training is noticed (:func:`changed_inputs`) rather than
    silently used with a network trained on the old one; a simulated movie's folder keeps
    them for the Cramer-Rao bounds ``denseloc evaluate --config`` computes from its files.
    """
    return {name: file_sha256(p) for name, p in config.input_files().items() if p.is_file()}


def changed_inputs(
    config: Config, digests: dict[str, str], prefix: str = "", *, used_in: str = "training"
) -> list[str]:
    """Messages for the files of `config` that are missing or differ from `digests`.

    Files are compared by field name (``camera.offset_map``), whatever their path, so another
    configuration naming other files can be checked against a model's record. Only fields
    starting with `prefix` are read; fields without a digest, or without a file in `config`,
    are skipped. `used_in` names what the digests were taken for, in the messages.
    """
    files = config.input_files()
    problems = []
    for name, digest in digests.items():
        path = files.get(name)
        if path is None or not name.startswith(prefix):
            continue
        if not path.is_file():
            problems.append(f"{name} ({path}) is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name} ({path}) differs from the file used in {used_in}")
    return problems


def validated(model: type[M], data: dict[str, Any], *, name: str) -> M:
    """Validate `data` as `model`, turning pydantic's report into a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(
            err["input"], dict
        ) else ""
        more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name}: {where}: {msg}{got}{more}") from None


def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML configuration file; relative file paths in it are relative to the file.

    Raises
    ------
    InputFileError
        If the file does not exist or cannot be read.
    ConfigError
        If a value is invalid (the message names the field).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot be read ({_first_line(exc)})") from None
    cfg = Config.from_yaml_text(text, name=str(path))
    return cfg.resolve_paths(path.parent)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _commented_yaml(model: type[BaseModel], data: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model.model_fields.items():
        value = data[name]
        if field.description:
            lines.append(f"{pad}# {field.description}")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            doc = (sub.__doc__ or "").strip().splitlines()
            if doc and not field.description:
                lines.append(f"{pad}# {doc[0]}")
            lines.append(f"{pad}{name}:")
            lines.extend(_commented_yaml(sub, value, indent + 1))
        else:
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False)
            lines.append(pad + dumped.strip().removeprefix("{").removesuffix("}"))
    return lines


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Settings that differ between two dumped configurations (``model_dump(mode="json")``).

    One readable line each, e.g. ``"train.lr was 0.002 and is now 0.003"``, sorted.
    """
    out = []
    for key in saved.keys() | current.keys():
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} was {a} and is now {b}")
    return sorted(out)
