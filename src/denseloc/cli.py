"""Command-line interface: thin wrappers over the library.

Heavy imports (torch, pandas) happen inside the commands so that ``--help`` is instant.
Errors caused by input (:class:`~denseloc.errors.DenselocError`) print one line and exit
with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from denseloc.errors import DenselocError

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
            update = {"kind": psf}
        elif Path(psf).suffix or Path(psf).exists():
            if not Path(psf).is_file():
                raise DenselocError(f"{psf}: PSF calibration file not found")
            update = {"kind": "file", "path": Path(psf).resolve()}
        else:
            raise ConfigError(
                f"unknown PSF {psf!r}: use gaussian, astigmatic or a calibration file path"
            )
        cfg = cfg.model_copy(update={"psf": cfg.psf.model_copy(update=update)})
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, field = dotted.split(".")
        data[section][field] = value
    return validated(Config, data, name="command line")


def _with_camera(cfg, camera: str):
    from denseloc.config import CAMERA_PRESETS, CameraConfig, load_config, validated

    if camera in CAMERA_PRESETS:
        return cfg.with_camera_preset(camera)
    path = Path(camera)
    if not path.suffix:
        raise DenselocError(
            f"unknown camera {camera!r}: use {', '.join(CAMERA_PRESETS)} or a YAML file"
        )
    import yaml

    from denseloc.errors import InputFileError

    if not path.is_file():
        raise InputFileError(path, "no such file")
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and "camera" in data:
        return cfg.model_copy(update={"camera": load_config(path).camera})
    return cfg.model_copy(update={"camera": validated(CameraConfig, data, name=str(path))})


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
        float | None, typer.Option(help="Emitters on per frame per um^2.")
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
    from rich.progress import Progress

    from denseloc.sim.simulator import simulate_movie

    with Progress(console=_stderr_console(), transient=True) as bar:
        task = bar.add_task("simulating", total=cfg.simulation.n_frames)
        return simulate_movie(cfg, out, progress=lambda done, _: bar.update(task, completed=done))


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
    from denseloc._atomic import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(text)
    typer.echo(f"wrote {out}")


@config_app.command("check")
@reports_errors
def config_check(config: Annotated[Path, typer.Argument(help="Configuration YAML.")]) -> None:
    """Validate a configuration file and print it fully resolved."""
    from denseloc.config import load_config

    sys.stdout.write(load_config(config).to_yaml())


@app.command()
@reports_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_output"),
) -> None:
    """Run the demo on built-in defaults: simulate a movie and show what was made."""
    from denseloc.config import Config
    from denseloc.demo import run_demo

    run_demo(Config(), out, simulate=_simulate_with_progress, echo=typer.echo)


def main() -> None:
    """Entry point of the ``denseloc`` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
