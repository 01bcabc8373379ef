"""Command-line interface: thin wrappers over the library.

Heavy imports (torch, pandas) happen inside the commands so that ``--help`` is instant.
Errors caused by input (:class:`~denseloc.errors.DenselocError`) print one line and exit
with code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args

import typer

from denseloc.errors import DenselocError, InputFileError

if TYPE_CHECKING:
    from denseloc.config import Config

app = typer.Typer(
    name="denseloc",
    help="Deep-learning localization of dense single molecules (SMLM), fast on CPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Create and check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_MODEL = "denseloc:default_model"
"""The bundled model (``src/denseloc/data/default_model``, see ``make default-model``)."""
EXIT_INPUT_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(EXIT_INPUT_ERROR)


def reports_errors(func: F) -> F:
    """Turn input errors into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DenselocError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # a file system's refusal, found only on writing
            where = f"{exc.filename}: " if exc.filename else ""
            raise _fail(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            typer.secho("interrupted: no partial output was kept", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=_stderr_console())],
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def resolve_config(
    config_path: Path | None,
    *,
    psf: str | None = None,
    camera: str | None = None,
    **overrides: Any,
):
    """Load a configuration (or the default) and apply command-line overrides.

    `overrides` maps dotted field names (``"image.size_px"``) to values; None means unset.
    `psf` is ``gaussian``, ``astigmatic`` or a calibration file; `camera` a preset name
    (``emccd``, ``scmos``, ``ideal``) or a YAML file with a camera section.
    """
    from denseloc.config import Config, ConfigError, load_config, validated

    cfg = load_config(config_path) if config_path is not None else Config()
    if camera is not None:
        cfg = _with_camera(cfg, camera)
    if psf is not None:
        if psf in ("gaussian", "astigmatic"):
            update = {"kind": psf, "path": None}
        elif psf.startswith("denseloc:") or Path(psf).suffix or Path(psf).exists():
            from denseloc.calibration import resolve_builtin

            if not resolve_builtin(psf).is_file():
                raise DenselocError(f"{psf}: PSF calibration file not found")
            bundled = psf.startswith("denseloc:")  # kept symbolic: portable across installs
            update = {"kind": "file", "path": Path(psf) if bundled else Path(psf).resolve()}
        else:
            raise ConfigError(
                f"unknown PSF {psf!r}: use gaussian, astigmatic or a calibration file path"
            )
        cfg = cfg.model_copy(update={"psf": cfg.psf.model_copy(update=update)})
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, dot, field = dotted.partition(".")
        if not dot or not isinstance(data.get(section), dict) or field not in data[section]:
            raise ConfigError(f"{dotted}: not a known SECTION.FIELD of the configuration")
        data[section][field] = value
    return validated(Config, data, name="command line")


def _with_camera(cfg, camera: str):
    from denseloc.config import (
        CAMERA_PRESETS,
        CameraConfig,
        load_config,
        resolve_path,
        validated,
    )

    if camera in CAMERA_PRESETS:
        return cfg.with_camera_preset(camera)
    path = Path(camera)
    if not path.suffix:
        raise DenselocError(
            f"unknown camera {camera!r}: use {', '.join(CAMERA_PRESETS)} or a YAML file"
        )
    import yaml

    if not path.is_file():
        raise InputFileError(path, "no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(path, f"not a readable YAML file ({first})") from None
    if not isinstance(data, dict):
        raise InputFileError(path, f"expected a camera mapping, got {type(data).__name__}")
    if "camera" in data:
        return cfg.model_copy(update={"camera": load_config(path).camera})
    cam = validated(CameraConfig, data, name=str(path))
    maps = {name: resolve_path(p, path.parent) for name in CameraConfig.MAP_FIELDS
            if (p := getattr(cam, name)) is not None}  # beside the file, as load_config does
    return cfg.model_copy(update={"camera": cam.model_copy(update=maps)})


@app.command()
@reports_errors
def simulate(
    config: Annotated[
        Path | None, typer.Argument(help="Configuration YAML (default: built-in defaults).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("simulation"),
    frames: Annotated[int | None, typer.Option(help="Number of frames.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    frame_size: Annotated[int | None, typer.Option(help="Square frame size, px.")] = None,
    density: Annotated[
        float | None, typer.Option(help="Mean emitters switched on per frame, per um^2.")
    ] = None,
    psf: Annotated[
        str | None, typer.Option(help="gaussian | astigmatic | PATH to a PSF calibration.")
    ] = None,
    camera: Annotated[
        str | None, typer.Option(help="emccd | scmos | ideal | PATH to a camera YAML.")
    ] = None,
) -> None:
    """Simulate a movie: writes OUT/frames.tif, OUT/ground_truth.csv, OUT/config.yaml."""
    cfg = resolve_config(
        config,
        psf=psf,
        camera=camera,
        **{
            "simulation.n_frames": frames,
            "simulation.seed": seed,
            "image.size_px": frame_size,
            "emitters.density_per_um2": density,
        },
    )
    paths = _simulate_with_progress(cfg, out)
    typer.echo(f"wrote {paths['frames']}, {paths['ground_truth'].name}, {paths['config'].name}")


def _simulate_with_progress(cfg, out: Path) -> dict[str, Path]:
    from denseloc.sim.simulator import simulate_movie

    with _frames_progress("simulating", cfg.simulation.n_frames) as update:
        return simulate_movie(cfg, out, progress=update)


def _is_full_config(path: Path) -> bool:
    """Whether a YAML file holds a whole configuration (not only a camera section)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(data, dict):
        return False
    from denseloc.config import CameraConfig

    # A camera written without its `camera:` section is still only a camera.
    return bool(set(data) - {"camera"}) and not set(data) <= set(CameraConfig.model_fields)


def _camera_config(camera: str | None, values: dict[str, float | None], default=None):
    """Camera from a preset name, a YAML (camera section or whole config) and/or flags.

    Without `camera`, the flags start from `default` (a CameraConfig) if given, else from the
    EMCCD preset when ``em_gain >= 2`` and the sCMOS preset at 1. Returns None when
    nothing was given.
    """
    from denseloc.config import CAMERA_PRESETS, CameraConfig, Config, validated

    given = {k: v for k, v in values.items() if v is not None}
    if camera is None and not given:
        return None
    if camera is not None:
        base = _with_camera(Config(), camera).camera.model_dump()
    elif default is not None:
        base = default.model_dump()
    else:
        gain = given.get("em_gain", 1.0)
        if 1 < gain < 2:
            raise DenselocError(f"--em-gain {gain:g}: an EMCCD is modelled at EM gain >= 2; for "
                                "a camera read without gain pass --em-gain 1 (or leave it out)")
        preset = "emccd" if gain >= 2 else "scmos"
        base = CameraConfig(**CAMERA_PRESETS[preset]).model_dump()
    return _check_flags_vs_maps(validated(CameraConfig, {**base, **given}, name="camera options"),
                                given)


def _check_flags_vs_maps(camera, given: dict[str, float | None]):
    """Refuse flags that the camera's per-pixel maps would silently replace."""
    for key, flag, field in (("baseline_adu", "--baseline", "offset_map"),
                             ("e_per_adu", "--e-per-adu", "gain_map"),
                             ("read_noise_e", "--read-noise-e", "variance_map")):
        if given.get(key) is not None and getattr(camera, field) is not None:
            raise DenselocError(f"{flag} would have no effect: camera.{field} gives that value "
                                f"per pixel; leave {flag} out, or use a camera without the map")
    return camera


_NO_CAMERA = (
    "camera settings are needed to convert ADU to photons: pass --camera (a preset, a camera "
    "YAML or the config.yaml of a simulation) or --baseline, --e-per-adu, --em-gain, --qe"
)


def _localize_config(
    stack: Path,
    *,
    camera: str | None,
    psf: str | None,
    sigma_px: float | None,
    pixel_size_nm: float | None,
    camera_values: dict[str, float | None],
):
    """The configuration a localization run uses: file, then flags, then TIFF metadata."""
    from denseloc.config import PLAUSIBLE_PIXEL_NM
    from denseloc.io.movie import read_pixel_size_nm

    config_path = Path(camera) if camera and Path(camera).is_file() else None
    full = config_path is not None and _is_full_config(config_path)
    cam = None if full else _camera_config(camera, camera_values)
    if cam is None and not full:
        raise DenselocError(_NO_CAMERA)
    if psf is None and not full:
        raise DenselocError(
            "the fitter needs the data's PSF: pass --psf gaussian (with --sigma-px), "
            "astigmatic or a calibration PSF.h5, or --camera with a simulation's config.yaml"
        )
    if pixel_size_nm is None and not full:
        pixel_size_nm = read_pixel_size_nm(stack)
        if pixel_size_nm is None:
            raise DenselocError(
                f"{stack}: no pixel size in the file; pass --pixel-size-nm "
                "(or --camera with a full configuration)"
            )
        if not PLAUSIBLE_PIXEL_NM[0] <= pixel_size_nm <= PLAUSIBLE_PIXEL_NM[1]:
            raise DenselocError(
                f"{stack.name}'s metadata gives {pixel_size_nm:g} nm pixels, not a pixel size "
                "in the sample (the camera chip's, perhaps); pass --pixel-size-nm"
            )
        _note_metadata_pixel(pixel_size_nm, stack)
    cfg = resolve_config(
        config_path if full else None,
        psf=psf,
        **{"image.pixel_size_nm": pixel_size_nm, "psf.sigma_px": sigma_px},
    )
    if sigma_px is not None and cfg.psf.kind != "gaussian":
        raise DenselocError(f"--sigma-px applies to a Gaussian PSF, not to {cfg.psf.kind!r}")
    if full:  # flags adjust the file's camera
        cam = _camera_config(None, camera_values, default=cfg.camera)
        return cfg if cam is None else cfg.model_copy(update={"camera": cam})
    return cfg.model_copy(update={"camera": cam})


@app.command()
@reports_errors
def localize(
    stack: Annotated[Path, typer.Argument(help="Movie: TIFF, folder of TIFFs or Picasso .raw.")],
    out: Annotated[
        Path, typer.Option("--out", help="Localization table (.parquet, .csv, .h5, .hdf5).")
    ],
    method: Annotated[
        str,
        typer.Option(help="network (trained model) | mle (detection + maximum-likelihood fit)."),
    ] = "network",
    model: Annotated[
        str, typer.Option(help="Trained model folder (network); default: the bundled model.")
    ] = DEFAULT_MODEL,
    psf: Annotated[
        str | None, typer.Option(help="mle: gaussian | astigmatic | PATH to a PSF calibration.")
    ] = None,
    sigma_px: Annotated[
        float | None, typer.Option(help="Width of the Gaussian PSF, px (--psf gaussian).")
    ] = None,
    pixel_size_nm: Annotated[float | None, typer.Option(help="Pixel size, nm.")] = None,
    camera: Annotated[
        str | None,
        typer.Option(help="emccd | scmos | ideal | camera YAML | a simulation's config.yaml."),
    ] = None,
    baseline: Annotated[float | None, typer.Option(help="Camera offset, ADU.")] = None,
    e_per_adu: Annotated[float | None, typer.Option(help="Electrons per ADU.")] = None,
    em_gain: Annotated[float | None, typer.Option(help="EM gain (1 for sCMOS).")] = None,
    qe: Annotated[float | None, typer.Option(help="Quantum efficiency.")] = None,
    read_noise_e: Annotated[float | None, typer.Option(help="Read noise, e-.")] = None,
    frames: Annotated[
        str | None,
        typer.Option(help="START:STOP, frames to process (0-based, STOP excluded: 0:1000 is "
                     "the first 1000). The network still reads the frames just outside the "
                     "range as temporal context, so the frames in the range get the "
                     "localizations the whole movie would give them."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="network: detection probability (default: the model's tuned value; "
                     "candidates are pixels whose own p exceeds 0.05, so values below 0.05 "
                     "find no more); mle: noise standard deviations (default 5)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (network).")] = "auto",
    batch_size: Annotated[
        str, typer.Option(help="network: frames per forward pass, or auto (~260k px per pass).")
    ] = "auto",
    readout: Annotated[
        str | None,
        typer.Option(help="network: mixture (the 3x3 pixels around each detection) | max (its "
                     "own pixel). Default: the model's, chosen on its validation set. Either way "
                     "the sigmas are scaled by the model's factors for that readout."),
    ] = None,
    max_sigma_nm: Annotated[
        float | None,
        typer.Option(help="Drop localizations with lateral sigma sqrt(sx^2 + sy^2) above this "
                     "(the sigmas as reported: scaled by the model's factors)."),
    ] = None,
    sigma_quantile: Annotated[
        float | None,
        typer.Option(help="Keep this fraction (0-1] with the smallest lateral sigma."),
    ] = None,
    group: Annotated[
        bool, typer.Option(help="Merge one emitter's localizations in consecutive frames (a "
                           "network's sigmas merged with its frame_error_correlation).")
    ] = False,
    group_radius_nm: Annotated[
        float, typer.Option(help="--group: largest lateral distance between frames, nm.")
    ] = 50.0,
    group_gap: Annotated[int, typer.Option(help="--group: dark frames a group may skip.")] = 0,
    group_correlation: Annotated[
        float | None,
        typer.Option(help="--group: correlation (0-1) of one emitter's errors in two frames, "
                     "for every axis (default: the network model's measured one; 0 for mle)."),
    ] = None,
) -> None:
    """Localize the emitters in a movie and write a localization table."""
    from denseloc.io import open_movie, writable_format, write_table
    from denseloc.localize.pipeline import frame_range, localize_movie_mle
    from denseloc.localize.postprocess import Readout

    if method not in ("network", "mle"):
        raise DenselocError(f"unknown method {method!r}; available: network, mle")
    readouts = get_args(Readout)
    if method == "mle" and readout is not None:
        raise DenselocError("--readout applies to --method network only")
    if readout is not None and readout not in readouts:
        raise DenselocError(f"unknown readout {readout!r}; available: {', '.join(readouts)}")
    batch = _batch_size(batch_size)
    if method == "network" and threshold is not None and not 0 < threshold <= 1:
        raise DenselocError(f"--threshold is a detection probability for --method network: "
                            f"0 < threshold <= 1, got {threshold:g}")
    if method == "network" and (psf is not None or sigma_px is not None):
        raise DenselocError("--psf and --sigma-px apply to --method mle; a network localizes "
                            "with the PSF it was trained for (denseloc train)")
    if group and (group_radius_nm <= 0 or group_gap < 0):
        raise DenselocError("--group-radius-nm must be > 0 and --group-gap >= 0")
    if group_correlation is not None and not 0 <= group_correlation <= 1:
        raise DenselocError(f"--group-correlation must lie in 0..1, got {group_correlation:g}")
    if max_sigma_nm is not None and not max_sigma_nm > 0:
        raise DenselocError(f"--max-sigma-nm must be > 0, got {max_sigma_nm:g}")
    if sigma_quantile is not None and not 0 < sigma_quantile <= 1:
        raise DenselocError(f"--sigma-quantile must be in (0, 1], got {sigma_quantile:g}")
    writable_format(out)
    camera_values = {"baseline_adu": baseline, "e_per_adu": e_per_adu, "em_gain": em_gain,
                     "qe": qe, "read_noise_e": read_noise_e}
    if method == "mle":
        cfg = _localize_config(stack, camera=camera, psf=psf, sigma_px=sigma_px,
                               pixel_size_nm=pixel_size_nm, camera_values=camera_values)
        trained = None
    else:
        trained, cfg = _network_config(model, device, stack, camera, pixel_size_nm,
                                       camera_values)
    with open_movie(stack) as movie:
        selected = frame_range(frames, len(movie))
        if trained is not None:
            from denseloc.localize.pipeline import check_movie_length

            for problem in check_movie_length(len(movie), trained.net.context_frames):
                typer.secho(f"warning: {problem}", fg=typer.colors.YELLOW, err=True)
        with _frames_progress("localizing", len(selected)) as update:
            if trained is None:
                table = localize_movie_mle(movie, cfg, frames=selected, progress=update,
                                           threshold=5.0 if threshold is None else threshold)
            else:
                from denseloc.localize.pipeline import localize_movie_network

                table = localize_movie_network(movie, trained, cfg, frames=selected,
                                               threshold=threshold, batch_size=batch,
                                               readout=readout, progress=update,
                                               check=False)
    n_raw = len(table)
    if max_sigma_nm is not None or sigma_quantile is not None:
        from denseloc.localize.postprocess import filter_by_sigma

        if len(table) and "sigma_x_nm" not in table:
            raise DenselocError("sigma filters need sigma columns, and these localizations "
                                "have none")
        table = filter_by_sigma(table, max_sigma_nm=max_sigma_nm, quantile=sigma_quantile)
    if group:
        from denseloc.localize.grouping import group_consecutive

        correlation = (group_correlation if group_correlation is not None else
                       table.attrs.get("localization", {}).get("frame_error_correlation"))
        if method == "network" and group_correlation is None and not correlation:
            typer.secho("warning: this model has no measured frame_error_correlation for this "
                        "readout; grouped sigmas assume independent frames and are likely too "
                        "small (1.5-1.8 times for the bundled model before it was measured; "
                        "see benchmarks/bench_grouping.py --record, or give "
                        "--group-correlation)", fg=typer.colors.YELLOW,
                        err=True)
        table = group_consecutive(table, radius_nm=group_radius_nm, max_gap_frames=group_gap,
                                  error_correlation=correlation or 0.0)
    write_table(table, out, pixel_size_nm=cfg.image.pixel_size_nm)
    detail = "" if len(table) == n_raw else f" ({n_raw} before filtering/grouping)"
    typer.echo(f"wrote {len(table)} localizations{detail} from {len(selected)} frames to {out}")


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DenselocError(f"--batch-size must be auto or a positive integer, got {text!r}")
    return value


@contextlib.contextmanager
def _frames_progress(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over frames with the processing rate; yields update(done, total)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    start = time.perf_counter()
    with Progress(*columns, console=_stderr_console(), transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")

        def update(done: int, _total: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.1f} frames/s")

        yield update


def _note_metadata_pixel(pixel_size_nm: float, stack: Path) -> None:
    """Say that the pixel size was read from the movie, so that a wrong tag gets noticed."""
    typer.secho(f"note: {pixel_size_nm:g} nm pixels, from {stack.name}'s metadata", err=True)


def _network_config(model: str, device: str, stack: Path, camera: str | None,
                    pixel_size_nm: float | None, camera_values: dict[str, float | None]):
    """Load a trained model; the data's settings are the model's unless flags (or, for the
    pixel size, the movie's metadata) say otherwise."""
    from denseloc._runtime import configure_cpu, select_device
    from denseloc.calibration import resolve_builtin
    from denseloc.config import ImageConfig, validated
    from denseloc.io.movie import read_pixel_size_nm
    from denseloc.localize.pipeline import MISMATCH_ADVICE, check_model_matches
    from denseloc.train.artifact import TrainedModel

    dev = select_device(device)
    if dev.type == "cpu":
        configure_cpu()
    trained = TrainedModel.load(resolve_builtin(model), device=dev)
    cfg = trained.config
    # Flags alone adjust the model's camera (not a preset's): --baseline 200 changes one value.
    cam = _camera_config(camera, camera_values, default=cfg.camera)
    if cam is not None:
        cfg = cfg.model_copy(update={"camera": cam})
    changed = trained.changed_inputs(cfg, prefix="camera.")
    if changed and camera is None:
        raise DenselocError(
            f"{model}: the camera maps the model was trained with are not as they were "
            f"({'; '.join(changed)}). Restore them, or train a model on the new maps "
            "(denseloc train); to convert the data with other maps anyway, pass them with "
            "--camera CAMERA.yaml"
        )
    if cam is None:
        typer.secho(f"note: no camera settings given; using those the model was trained for "
                    f"({cfg.camera.kind}, baseline {cfg.camera.baseline_adu:g} ADU, "
                    f"{cfg.camera.e_per_adu:g} e-/ADU, gain {cfg.camera.em_gain:g})", err=True)
    elif camera is None:
        kept = [f"{key} {getattr(cfg.camera, key):g}" for key, value in camera_values.items()
                if value is None]
        if kept:
            typer.secho(f"note: camera settings not given are those the model was trained for "
                        f"({cfg.camera.kind}: {', '.join(kept)}); pass --camera for a preset",
                        err=True)
    source = "--pixel-size-nm"
    if pixel_size_nm is None:
        pixel_size_nm, source = read_pixel_size_nm(stack), f"{stack.name}'s metadata"
        trained_px = cfg.image.pixel_size_nm
        if pixel_size_nm is not None and not 0.5 <= pixel_size_nm / trained_px <= 2.0:
            raise DenselocError(
                f"{stack.name}'s metadata gives {pixel_size_nm:g} nm pixels, the model was "
                f"trained for {trained_px:g} nm; if the metadata is wrong (e.g. the camera "
                "chip's pixel instead of the sample's), pass --pixel-size-nm"
            )
    if pixel_size_nm is None:
        typer.secho(f"note: {stack.name} records no pixel size; using the model's "
                    f"{cfg.image.pixel_size_nm:g} nm (pass --pixel-size-nm)", err=True)
    else:
        if source != "--pixel-size-nm":
            _note_metadata_pixel(pixel_size_nm, stack)
        image = validated(ImageConfig, {**cfg.image.model_dump(), "pixel_size_nm": pixel_size_nm},
                          name=source)
        cfg = cfg.model_copy(update={"image": image})
    for problem in [*check_model_matches(trained.config, cfg), *changed]:
        typer.secho(f"warning: {problem}; {MISMATCH_ADVICE}", fg=typer.colors.YELLOW, err=True)
    return trained, cfg


@app.command()
@reports_errors
def calibrate(
    beads: Annotated[Path, typer.Argument(help="Bead z-stack (TIFF), shape (z, H, W), in ADU.")],
    out: Annotated[Path, typer.Option("--out", help="Spline PSF file to write (.h5).")],
    z_step_nm: Annotated[
        float,
        typer.Option(help="Change of the beads' z relative to the focal plane from one slice "
                     "to the next, nm: negative (e.g. -10) when the focus moved up, into the "
                     "sample, between slices (the usual stack; SMAP and DECODE read stacks "
                     "so). The sign mirrors the PSF, and every z, in z."),
    ],
    pixel_size_nm: Annotated[float, typer.Option(help="Pixel size, nm.")],
    camera: Annotated[
        str | None,
        typer.Option(help="emccd | scmos | ideal (fixed presets, see README) | camera YAML | "
                     "config.yaml."),
    ] = None,
    baseline: Annotated[float | None, typer.Option(help="Camera offset, ADU.")] = None,
    e_per_adu: Annotated[float | None, typer.Option(help="Electrons per ADU.")] = None,
    em_gain: Annotated[float | None, typer.Option(help="EM gain (1 for sCMOS).")] = None,
    qe: Annotated[float | None, typer.Option(help="Quantum efficiency.")] = None,
    roi_size_px: Annotated[int, typer.Option(help="Bead region of interest, px (odd).")] = 25,
    reference_slice: Annotated[
        float | None, typer.Option(help="Slice at z = 0 (default: the middle slice).")
    ] = None,
    z_smoothing_nm: Annotated[
        float | None,
        typer.Option(help="Smoothing along z before the spline fit, nm (0: none). Default: "
                     "chosen by leaving each bead out in turn (needs 2 or more beads)."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write diagnostic PNGs here.")] = None,
    astigmatic: Annotated[
        Path | None, typer.Option(help="Also write the astigmatic Gaussian fit (.yaml).")
    ] = None,
) -> None:
    """Calibrate the PSF from a bead z-stack: a cubic spline (and an astigmatic fit)."""
    from denseloc._atomic import check_writable
    from denseloc.calibration.beads import calibrate_bead_file

    for path in (out, astigmatic):  # before the work, not after it
        if path is not None:
            check_writable(path)
    if report is not None and report.exists() and not report.is_dir():
        raise DenselocError(f"--report {report} is a file; give a folder")
    if report is not None:
        check_writable(report / "psf_widths.png")
    cam = _camera_config(camera, {"baseline_adu": baseline, "e_per_adu": e_per_adu,
                                  "em_gain": em_gain, "qe": qe})
    if cam is None:
        raise DenselocError(_NO_CAMERA)
    result = calibrate_bead_file(
        beads, out, z_step_nm=z_step_nm, pixel_size_nm=pixel_size_nm, camera=cam,
        roi_size_px=roi_size_px, reference_slice=reference_slice,
        z_smoothing_nm=z_smoothing_nm, report_dir=report, astigmatic_path=astigmatic,
    )
    typer.echo(result.summary())
    typer.echo(f"model reproduces the measured average PSF to a relative residual of "
               f"{result.bead_residual:.3f} (single beads vs the others) and "
               f"{result.relative_residual:.4f} (spline vs average); wrote {out}")


@app.command()
@reports_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted localizations (any table format).")],
    gt: Annotated[Path, typer.Option("--gt", help="Ground truth (any table format).")],
    tol_lateral_nm: Annotated[float, typer.Option(help="Lateral matching tolerance, nm.")] = 250.0,
    tol_axial_nm: Annotated[float, typer.Option(help="Axial matching tolerance, nm.")] = 500.0,
    matching: Annotated[str, typer.Option(help="hungarian | greedy.")] = "hungarian",
    config: Annotated[
        Path | None,
        typer.Option(help="Simulation config.yaml: adds the CRLB of each ground-truth emitter "
                     "(with a warning if a file it reads, PSF or camera map, changed since the "
                     "simulation)."),
    ] = None,
    pixel_size_nm: Annotated[
        float | None,
        typer.Option("--pixel-size-nm", "--camera-pixel-nm",
                     help="Pixel size, nm, for tables stored in px (Picasso); render, drift "
                     "and frc call it --camera-pixel-nm."),
    ] = None,
    gt_pixel_size_nm: Annotated[
        float | None,
        typer.Option(help="Pixel size, nm, for the ground truth only, when it differs from "
                     "the predictions' (default: --pixel-size-nm)."),
    ] = None,
    min_photons: Annotated[
        float | None,
        typer.Option(help="Count only ground-truth emitters with at least this many photons in "
                     "the frame; dimmer ones may be found or missed without penalty (the "
                     "README's and the demo's scores use 500). Default: count all."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write error plots (PNG) here.")] = None,
    is_3d: Annotated[
        bool | None,
        typer.Option("--3d/--2d", help="Score z, or not (2D data: z 0 in both tables). "
                     "Default: 3D if either table has a non-zero z."),
    ] = None,
) -> None:
    """Match localizations to ground truth and report detection and localization metrics."""
    import json

    from denseloc.evaluate import evaluate as run_evaluation
    from denseloc.evaluate import has_z, plot_evaluation
    from denseloc.io import read_table

    if matching not in ("hungarian", "greedy"):
        raise DenselocError(f"--matching must be hungarian or greedy, got {matching!r}")
    if not (tol_lateral_nm > 0 and tol_axial_nm > 0):
        raise DenselocError("--tol-lateral-nm and --tol-axial-nm must be > 0")
    if min_photons is not None and not min_photons >= 0:
        raise DenselocError(f"--min-photons must be >= 0, got {min_photons:g}")
    predictions = read_table(pred, pixel_size_nm=pixel_size_nm)
    truth = read_table(gt, pixel_size_nm=pixel_size_nm if gt_pixel_size_nm is None
                       else gt_pixel_size_nm)
    if (min_photons is not None or config is not None) and "photons" not in truth:
        flag = "--min-photons" if min_photons is not None else "--config"
        raise DenselocError(f"{flag}: {gt} has no photons column")
    if config is not None:
        from denseloc.config import load_config
        from denseloc.evaluate.crlb import NoiseModel, add_crlb_columns
        from denseloc.sim.camera import Camera

        sim_config = load_config(config)
        for problem in _changed_since_simulation(sim_config, config.parent / "inputs.yaml"):
            typer.secho(f"warning: {problem}; the Cramer-Rao bounds use the file as it is now",
                        fg=typer.colors.YELLOW, err=True)
        shape = sim_config.image.size_px  # an sCMOS camera's read noise is taken per pixel
        noise = NoiseModel.from_camera(Camera.from_config(sim_config.camera, shape))
        truth = add_crlb_columns(truth, sim_config, frame_shape=shape, noise=noise)
    if is_3d is False:  # the default (None) is evaluate's: 3D if either table has a z
        for path, table in ((pred, predictions), (gt, truth)):
            if has_z(table):
                raise DenselocError(f"--2d: {path} has a non-zero z; drop --2d to score it in 3D")
    metrics, pairs = run_evaluation(
        predictions, truth, tol_lateral_nm=tol_lateral_nm, tol_axial_nm=tol_axial_nm,
        method=matching, is_3d=is_3d, min_photons=min_photons,
    )
    written = plot_evaluation(pairs, plots) if plots is not None else []  # 2D/3D as evaluated
    if json_out:
        typer.echo(json.dumps(metrics.to_dict()))
        return
    _print_metrics(metrics.to_dict())
    for path in written:
        typer.echo(f"wrote {path}")


def _print_metrics(values: dict[str, float | int | None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value", title="evaluation")
    for key, value in values.items():
        if value is None:
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
@reports_errors
def train(
    config: Annotated[Path, typer.Argument(help="Configuration YAML (simulation, model, train).")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    minutes: Annotated[float | None, typer.Option(help="Training time budget, minutes.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from the folder's checkpoint.")] = False,
) -> None:
    """Train a network on simulated data for the microscope a configuration describes."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from denseloc.config import load_config
    from denseloc.train.trainer import Trainer

    if minutes is None and epochs is None:
        raise DenselocError("give --minutes or --epochs (or both: whichever ends first)")
    cfg = load_config(config)
    trainer = Trainer(cfg, out, device=device)

    def axial(metrics: dict) -> str:
        """The axial RMSE; none for a 2D model (its z is 0, not measured)."""
        return f", axial {_nm(metrics['rmse_axial_nm'])}" if cfg.psf.is_3d else ""

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_stderr_console()) as bar:
        task = bar.add_task("training", total=None, info="simulating validation set")

        def report(info: dict) -> None:
            loss = info.get("loss", info.get("train_loss", float("nan")))
            text = f"epoch {info['epoch']} step {info['step']} loss {loss:.4g}"
            if "jaccard" in info:
                bar.console.print(
                    f"epoch {info['epoch']:3d}  {info['minutes']:6.1f} min  "
                    f"loss {info['train_loss']:.4g}  val {info['val_loss']:.4g}  "
                    f"JI {info['jaccard']:.3f}  RMSE lateral {_nm(info['rmse_lateral_nm'])}"
                    f"{axial(info)}"
                )
            bar.update(task, completed=info["step"], total=info.get("planned_steps"), info=text)

        model = trainer.fit(epochs=epochs, minutes=minutes, resume=resume, progress=report)
    val = model.summary["validation"]
    errors = model.summary["validation_by_readout"][model.readout]
    typer.echo(
        f"saved {out}: threshold {model.threshold:.2f}, validation Jaccard {val['jaccard']:.3f}; "
        f"readout {model.readout} (chosen on validation): RMSE lateral "
        f"{_nm(errors['rmse_lateral_nm'])}{axial(errors)}"
    )
    if errors["rmse_lateral_nm"] is None:
        typer.echo("no validation emitter was found: the sigma factors are not fitted (1)")
    else:
        factors = ", ".join(f"{axis} {value:.2f}"
                            for axis, value in model.sigma_scale[model.readout].items())
        typer.echo(f"predicted sigmas scaled by their validation RMS(error / sigma): {factors}")
    typer.echo("(threshold, readout and factors are fitted on the validation set, so these "
               "scores flatter the model slightly: measure it on a movie it has not seen, "
               "with denseloc simulate, localize and evaluate)")


def _changed_since_simulation(config: Config, digests: Path) -> list[str]:
    """The files of a simulation's `config` (PSF, camera maps) that changed since `digests`
    (inputs.yaml): the bounds read them. A folder simulated before denseloc recorded digests
    has no inputs.yaml: nothing to check.
    """
    import yaml

    from denseloc.config import changed_inputs

    if not digests.is_file():
        return []
    try:
        recorded = yaml.safe_load(digests.read_text())
    except yaml.YAMLError:
        raise InputFileError(digests, "corrupt digest file") from None
    if not isinstance(recorded, dict):
        raise InputFileError(digests, "corrupt digest file")
    return changed_inputs(config, recorded, used_in="the simulation")


def _nm(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} nm"


@config_app.command("init")
@reports_errors
def config_init(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file instead of printing.")
    ] = None,
) -> None:
    """Print the default configuration, every field documented."""
    from denseloc.config import Config

    text = Config().to_yaml(comments=True)
    if out is None:
        sys.stdout.write(text)
        return
    from denseloc._atomic import atomic_path, check_writable

    with atomic_path(check_writable(out)) as tmp:
        tmp.write_text(text)
    typer.echo(f"wrote {out}")


@config_app.command("check")
@reports_errors
def config_check(config: Annotated[Path, typer.Argument(help="Configuration YAML.")]) -> None:
    """Validate a configuration file and print it fully resolved."""
    from denseloc.config import load_config

    sys.stdout.write(load_config(config).to_yaml())


def _read_locs(path: Path, pixel_size_nm: float | None = None):
    from denseloc.io import read_table

    table = read_table(path, pixel_size_nm=pixel_size_nm)
    if table.empty:
        raise DenselocError(f"{path}: the table holds no localizations")
    return table


@app.command()
@reports_errors
def render(
    locs: Annotated[Path, typer.Argument(help="Localization table (any table format).")],
    out: Annotated[Path, typer.Option("--out", help="Image to write (.png or .tif).")],
    pixel_size_nm: Annotated[float, typer.Option(help="Render pixel size, nm.")] = 10.0,
    mode: Annotated[
        str, typer.Option(help="histogram (counts) | gaussian (each with its predicted sigma).")
    ] = "histogram",
    color_by: Annotated[
        str | None, typer.Option(help="Colour by a column, e.g. z (hue) over density.")
    ] = None,
    camera_pixel_nm: Annotated[
        float | None, typer.Option(help="Camera pixel size, nm, for tables stored in px.")
    ] = None,
) -> None:
    """Render a super-resolution image from a localization table."""
    from denseloc._atomic import check_writable
    from denseloc.analysis.render import IMAGE_SUFFIXES, render_colored, save_image
    from denseloc.analysis.render import render as draw

    check_writable(out, IMAGE_SUFFIXES)
    table = _read_locs(locs, camera_pixel_nm)
    if mode not in ("histogram", "gaussian"):
        raise DenselocError(f"unknown --mode {mode!r}; available: histogram, gaussian")
    if color_by is None:
        image = draw(table, pixel_size_nm=pixel_size_nm, mode=mode)
    else:
        column = {"z": "z_nm", "x": "x_nm", "y": "y_nm"}.get(color_by, color_by)
        image = render_colored(table, by=column, pixel_size_nm=pixel_size_nm, mode=mode)
    save_image(image, out, pixel_size_nm=pixel_size_nm)
    typer.echo(f"wrote {out}: {image.shape[1]} x {image.shape[0]} px at {pixel_size_nm:g} nm/px "
               f"from {len(table)} localizations")


@app.command()
@reports_errors
def drift(
    locs: Annotated[Path, typer.Argument(help="Localization table (any table format).")],
    out: Annotated[Path, typer.Option("--out", help="Drift-corrected table to write.")],
    segments: Annotated[int, typer.Option(help="Blocks of frames cross-correlated (>= 3).")] = 10,
    pixel_size_nm: Annotated[float, typer.Option(help="Pixel of the block images, nm.")] = 20.0,
    max_drift_nm: Annotated[
        float, typer.Option(help="Largest drift between two blocks, nm.")
    ] = 1000.0,
    plot: Annotated[
        Path | None, typer.Option(help="Drift plot (PNG); default: OUT with _drift.png.")
    ] = None,
    camera_pixel_nm: Annotated[
        float | None, typer.Option(help="Camera pixel size, nm, for tables stored in px.")
    ] = None,
) -> None:
    """Estimate lateral drift by redundant cross-correlation and write the corrected table."""
    import numpy as np

    from denseloc._atomic import check_writable
    from denseloc.analysis.drift import correct_drift, estimate_drift, plot_drift
    from denseloc.io import FORMATS, writable_format, write_table

    out_format = writable_format(out)
    plot = check_writable(plot or out.with_name(f"{out.stem}_drift.png"), (".png",))
    table = _read_locs(locs, camera_pixel_nm)
    if FORMATS[out_format].in_pixels and table.attrs.get("pixel_size_nm") is None:
        raise DenselocError(f"{out} stores positions in camera pixels, and {locs} does not "
                            "record its pixel size: give --camera-pixel-nm")
    estimate = estimate_drift(table, n_segments=segments, pixel_size_nm=pixel_size_nm,
                              max_shift_nm=max_drift_nm)
    write_table(correct_drift(table, estimate), out)  # the result first, then its picture
    plot_drift(estimate, plot)
    typer.echo(
        f"wrote {out} and {plot}: drift over the movie {np.ptp(estimate.x_nm):.1f} nm in x, "
        f"{np.ptp(estimate.y_nm):.1f} nm in y ({estimate.pairs_used}/{estimate.pairs_total} "
        "segment pairs used)"
    )


@app.command()
@reports_errors
def frc(
    locs: Annotated[Path, typer.Argument(help="Localization table (any table format).")],
    pixel_size_nm: Annotated[
        float, typer.Option(help="Render pixel, nm (a few times below the resolution).")
    ] = 5.0,
    blocks: Annotated[int, typer.Option(help="Frame blocks split at random into halves.")] = 20,
    plot: Annotated[Path | None, typer.Option(help="Write the FRC curve (PNG) here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    camera_pixel_nm: Annotated[
        float | None, typer.Option(help="Camera pixel size, nm, for tables stored in px.")
    ] = None,
) -> None:
    """Fourier ring correlation resolution (1/7 threshold) of a localization table."""
    import numpy as np

    from denseloc._atomic import check_writable
    from denseloc.analysis.frc import fourier_ring_correlation, plot_frc

    if plot is not None:
        check_writable(plot, (".png",))
    table = _read_locs(locs, camera_pixel_nm)
    result = fourier_ring_correlation(table, pixel_size_nm=pixel_size_nm, n_blocks=blocks,
                                      seed=seed)
    if plot is not None:
        plot_frc(result, plot)
        typer.echo(f"wrote {plot}")
    if np.isfinite(result.resolution_nm):
        typer.echo(f"FRC resolution: {result.resolution_nm:.1f} nm")
    else:
        typer.echo(f"FRC resolution: none; {result.problem}")


@app.command()
@reports_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_output"),
    model: Annotated[str, typer.Option(help="Trained model folder.")] = DEFAULT_MODEL,
) -> None:
    """Run the demo on built-in defaults: simulate, localize, evaluate, report."""
    from denseloc.demo import run_demo

    run_demo(out, model_dir=model, simulate=_simulate_with_progress, echo=typer.echo)


def main() -> None:
    """Entry point of the ``denseloc`` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
