"""Localize a movie: ADU -> photons through the camera model, then a localizer, in chunks.

The movie is read lazily (:func:`denseloc.io.open_movie`) and processed `chunk_frames` at a
time (by default about 4 million pixels: 256 frames of 128x128, 4 of 1024x1024), so memory is
bounded by the chunk, not the movie. Large frames are also tiled
(:mod:`denseloc.localize.network`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from denseloc.config import Config
from denseloc.errors import DenselocWarning
from denseloc.io.movie import Movie
from denseloc.sim.camera import Camera

if TYPE_CHECKING:
    from denseloc.localize.postprocess import Readout

__all__ = [
    "auto_chunk_frames",
    "check_counts",
    "check_model_matches",
    "frame_range",
    "localize_movie_mle",
    "localize_movie_network",
]

logger = logging.getLogger(__name__)

MISMATCH_ADVICE = "results will be unreliable - train a model for your microscope (denseloc train)"
"""Said after each problem :func:`check_model_matches` finds."""

_PIXELS_PER_CHUNK = 2**22
_MAX_PIXELS_PER_CHUNK = 2**26  # the most a chunk grows to for its context


def auto_chunk_frames(height: int, width: int, context_frames: int = 1) -> int:
    """Frames read at once for frames of this size: about 4 million pixels, 1-256 frames.

    Each chunk also reads and analyses ``context_frames // 2`` neighbouring frames on each
    side, so a chunk has at least ``4 * (context_frames - 1)`` frames, as far as that stays
    within 64 million pixels (256 MB of photons): the neighbours then cost at most a quarter
    more work (at 1024x1024 px with 5 frames, chunks of 16 frames instead of 4, which doubled
    the frame-analysis work).
    """
    pixels = height * width
    for_context = min(4 * (context_frames - 1), _MAX_PIXELS_PER_CHUNK // pixels)
    return max(1, for_context, min(256, _PIXELS_PER_CHUNK // pixels))


def frame_range(spec: str | None, n_frames: int) -> range:
    """Parse ``START:STOP`` (Python slice semantics, either part optional) into a range."""
    if spec is None:
        return range(n_frames)
    from denseloc.errors import DenselocError

    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise DenselocError(f"--frames must be START:STOP (e.g. 0:1000), got {spec!r}") from None
    frames = range(n_frames)[slice(start, stop)]
    if len(frames) == 0:
        raise DenselocError(f"--frames {spec} selects no frame of the {n_frames}-frame movie")
    return frames


def _frames_of(movie: Movie, frames: range | None) -> range:
    """The frames to process: all by default, else a non-empty run of the movie's frames."""
    if frames is None:
        return range(len(movie))
    if frames.step != 1 or len(frames) == 0 or frames.start < 0 or frames.stop > len(movie):
        raise ValueError(
            f"`frames` must be a non-empty range of consecutive frames within the movie's "
            f"{len(movie)}, got {frames}"
        )
    return frames


def _photon_chunks(
    movie: Movie,
    frames: range,
    camera: Camera,
    chunk_frames: int,
    dtype: str,
    progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first frame, photons) of each chunk of `frames`; checks the counts of the first one,
    and every chunk for values that are not finite (warned once), and reports progress
    after each."""
    done, finite = 0, True
    for start, chunk in movie.iter_chunks(chunk_frames, start=frames.start, stop=frames.stop):
        if not done:
            finite = not check_counts(chunk, camera, str(movie.path), first_frame=start)[0]
        elif finite and (problem := _nonfinite(chunk, str(movie.path), start)):
            warnings.warn(problem, DenselocWarning, stacklevel=3)
            finite = False
        yield start, camera.adu_to_photons(torch.from_numpy(chunk.astype(dtype)))
        done += len(chunk)
        if progress is not None:
            progress(done, len(frames))


def localize_movie_mle(
    movie: Movie,
    config: Config,
    *,
    frames: range | None = None,
    threshold: float = 5.0,
    chunk_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Localize every frame of `movie` with the classical MLE fitter.

    Parameters
    ----------
    movie : Movie
        Frames in ADU.
    config : Config
        Camera, PSF, pixel size and z range.
    frames : range, optional
        Frames to process (default: all).
    threshold : float
        Detection threshold in noise standard deviations.
    chunk_frames : int, optional
        Frames read and fitted at once (default: :func:`auto_chunk_frames`).
    progress : callable(done, total), optional
        Called after each chunk.
    """
    from denseloc.classic.mle import localize_mle
    from denseloc.evaluate.crlb import NoiseModel
    from denseloc.sim.simulator import check_psf_pixel_size, psf_from_config

    frames = _frames_of(movie, frames)
    _, height, width = movie.shape
    camera = Camera.from_config(config.camera, (height, width))
    psf = psf_from_config(config.psf, config.emitters.z_range_nm)
    check_psf_pixel_size(psf, config)
    noise = NoiseModel.from_camera(camera)  # per pixel with sCMOS maps
    tables = []
    chunk_frames = chunk_frames or auto_chunk_frames(height, width)
    for start, photons in _photon_chunks(movie, frames, camera, chunk_frames, "float64",
                                         progress):
        tables.append(
            localize_mle(
                photons,
                psf,
                pixel_size_nm=config.image.pixel_size_nm,
                noise=noise,
                threshold=threshold,
                frame_offset=start,
                z_range_nm=config.emitters.z_range_nm,
            )
        )
    table = _with_provenance(tables, movie, config,
                             localization={"method": "mle", "threshold": threshold})
    logger.info("%d localizations in %d frames", len(table), len(frames))
    return table


def _nonfinite(adu: np.ndarray, name: str, first_frame: int) -> str | None:
    """The warning for frames (T, H, W) holding NaN or infinite values, if any."""
    bad = ~np.isfinite(adu.reshape(len(adu), -1)).all(axis=1)
    if not bad.any():
        return None
    return (f"{name}: the movie holds NaN or infinite values (first in frame "
            f"{first_frame + int(np.argmax(bad))}); no localization comes from around them")


def check_counts(
    adu: np.ndarray, camera: Camera, name: str, *, first_frame: int = 0
) -> tuple[str | None, str | None]:
    """Warn when frames cannot be this camera's raw counts; return the problems found.

    Checked on a movie's first chunk (whose first frame is `first_frame` of the movie):
    values that are not finite, and a median pixel below the camera baseline by more than
    three times the read noise (a wrong ``baseline_adu``, or a movie that is
    background-subtracted or already in photons), which makes most photon counts negative.

    Returns
    -------
    (str or None, str or None)
        The warnings about values that are not finite and about the baseline, or None.
    """
    nonfinite, low = _nonfinite(adu, name, first_frame), None
    offset = camera.offset_adu
    offset = float(offset.median()) if isinstance(offset, torch.Tensor) else float(offset)
    read_var = camera.read_var_adu2
    read_sd = float(read_var.median() if isinstance(read_var, torch.Tensor) else read_var) ** 0.5
    median = float(np.nanmedian(adu))
    if median < offset - max(3 * read_sd, 1.0):
        low = (
            f"{name}: its median pixel, {median:.4g} ADU, is below the camera baseline of "
            f"{offset:.4g} ADU, so most photon counts come out negative: is the baseline right, "
            "and does the movie hold raw camera counts (not background-subtracted, not photons)?"
        )
    for problem in (nonfinite, low):
        if problem is not None:
            warnings.warn(problem, DenselocWarning, stacklevel=3)
    return nonfinite, low


def _with_provenance(tables: list[pd.DataFrame], movie: Movie, config: Config, *,
                     localization: dict) -> pd.DataFrame:
    """The chunks' tables as one validated table, with where and how it was made in attrs."""
    from denseloc.table import validate

    table = validate(pd.concat(tables, ignore_index=True), name=str(movie.path))
    table.attrs.update(
        pixel_size_nm=config.image.pixel_size_nm, source=str(movie.path),
        movie_shape=[int(n) for n in movie.shape], config=config.to_yaml(),
        localization=localization,
    )
    return table


def check_model_matches(model_config: Config, config: Config) -> list[str]:
    """Differences between what a model was trained for and the data's settings."""
    problems = []
    trained_px, data_px = model_config.image.pixel_size_nm, config.image.pixel_size_nm
    if abs(trained_px - data_px) > 0.02 * trained_px:
        problems.append(
            f"the model was trained for {trained_px:g} nm pixels, the data has {data_px:g} nm"
        )
    if model_config.camera.kind != config.camera.kind:
        problems.append(
            f"the model was trained for an {model_config.camera.kind} camera, the data comes "
            f"from an {config.camera.kind}"
        )
    elif model_config.camera.has_maps and not config.camera.has_maps:
        problems.append(
            "the model was trained with the camera's per-pixel maps, but the data's camera "
            "settings have none (give a camera configuration with them: --camera CAMERA.yaml)"
        )
    return problems


def check_movie_length(n_frames: int, context_frames: int) -> list[str]:
    """The problem, if any, of localizing a movie of `n_frames` with a multi-frame model."""
    if n_frames >= context_frames:
        return []
    return [
        f"the movie has {n_frames} frame{'' if n_frames == 1 else 's'} and the model reads "
        f"{context_frames} consecutive frames: the missing neighbours are copies of the "
        "nearest frame, so expect fewer detections and too small sigmas (README: 'The first "
        "and last frames, and single images'); for single images, train a model with "
        "model.context_frames: 1"
    ]


def localize_movie_network(
    movie: Movie,
    model,
    config: Config,
    *,
    frames: range | None = None,
    chunk_frames: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    max_tile_px: int | None = None,
    readout: Readout | None = None,
    progress: Callable[[int, int], None] | None = None,
    check: bool = True,
) -> pd.DataFrame:
    """Localize every frame of `movie` with a trained network.

    Frames are converted to photons with ``config.camera``; chunks are processed with their
    neighbouring frames as temporal context, so the result does not depend on the chunk size.

    Parameters
    ----------
    movie : Movie
        Frames in ADU.
    model : TrainedModel
        The network.
    config : Config
        Camera and pixel size of the data.
    frames : range, optional
        Frames to process (default: all). The movie's frames just outside the range serve as
        temporal context, so each frame gets the localizations the whole movie would give it.
    chunk_frames : int, optional
        Frames read at once (default: :func:`auto_chunk_frames`).
    threshold : float, optional
        Detection probability (default: the model's tuned threshold).
    batch_size : int, optional
        Frames per forward pass (default: about 260k pixels per pass).
    max_tile_px : int, optional
        Frames larger than this are tiled (default 640).
    readout : {"mixture", "max"}, optional
        How a detection is read from the output maps (default: the model's), see
        :func:`denseloc.localize.postprocess.maps_to_table`; the sigmas are scaled by the
        model's factors for that readout. ``table.attrs["localization"]`` records both.
    progress : callable(done, total), optional
        Called after each chunk.
    check : bool
        Warn (:class:`~denseloc.errors.DenselocWarning`) when `config` does not suit the
        model: :func:`check_model_matches` (pixel size, camera kind, maps), and camera map
        files that differ from those the model was trained with
        (``model.changed_inputs(config, prefix="camera.")``); and when the movie is shorter
        than the model's context (:func:`check_movie_length`). ``denseloc localize`` makes
        these checks itself, with advice on the command line, and passes False.
    """
    from denseloc.localize.network import MAX_TILE_PX, predict_frames

    if check:
        problems = check_model_matches(model.config, config)
        for problem in [*problems, *model.changed_inputs(config, prefix="camera.")]:
            warnings.warn(f"{problem}; {MISMATCH_ADVICE}", DenselocWarning, stacklevel=2)
        for problem in check_movie_length(len(movie), model.net.context_frames):
            warnings.warn(problem, DenselocWarning, stacklevel=2)
    frames = _frames_of(movie, frames)
    readout = readout or model.readout
    if readout not in model.sigma_scale:
        warnings.warn(
            f"the model has no sigma factors for the {readout!r} readout (saved before they "
            "existed, or not fitted for it): its sigmas are reported as predicted, "
            "uncalibrated (often too small)",
            DenselocWarning,
            stacklevel=2,
        )
    _, height, width = movie.shape
    camera = Camera.from_config(config.camera, (height, width))
    chunk_frames = chunk_frames or auto_chunk_frames(height, width, model.net.context_frames)

    def photons(a: int, b: int) -> torch.Tensor:
        return camera.adu_to_photons(torch.from_numpy(movie[a:b].astype("float32")))

    half = model.net.context_frames // 2  # neighbours on each side of a window's centre
    tables = []
    for start, chunk_photons in _photon_chunks(movie, frames, camera, chunk_frames, "float32",
                                               progress):
        stop = start + len(chunk_photons)
        before = photons(max(start - half, 0), start) if start > 0 and half else None
        after = photons(stop, stop + half) if stop < len(movie) and half else None
        tables.append(
            predict_frames(
                model, chunk_photons, pixel_size_nm=config.image.pixel_size_nm,
                frame_offset=start, threshold=threshold, before=before, after=after,
                batch_size=batch_size, max_tile_px=max_tile_px or MAX_TILE_PX,
                readout=readout,
            )
        )
    table = _with_provenance(tables, movie, config, localization={
        "method": "network",
        "threshold": model.threshold if threshold is None else threshold,
        "readout": readout,
        "sigma_scale": dict(model.sigma_scale.get(readout, {})),
        "frame_error_correlation": dict(model.frame_error_correlation.get(readout, {})),
    })
    logger.info("%d localizations in %d frames", len(table), len(frames))
    return table
