"""The simulator: emitters -> PSF -> background -> camera, batched in torch.

One object serves two uses: :meth:`Simulator.sample` draws batches of short independent
movies for training (on CPU or GPU), and :func:`simulate_movie` writes a long movie to disk
in chunks (memory bounded by the chunk, not the movie).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from denseloc.config import Config, ConfigError, PSFConfig, input_digests
from denseloc.errors import DenselocError
from denseloc.sim.background import sample_background
from denseloc.sim.camera import Camera
from denseloc.sim.emitters import Emitters, sample_emitters
from denseloc.sim.psf import PSF, AstigmaticPSF, GaussianPSF, render_patches

__all__ = ["SimulatedBatch", "Simulator", "psf_from_config", "simulate_movie"]

logger = logging.getLogger(__name__)


def psf_from_config(config: PSFConfig, z_range_nm: tuple[float, float] = (-750.0, 750.0)) -> PSF:
    """Build the PSF model a configuration describes."""
    if config.kind == "gaussian":
        return GaussianPSF(config.sigma_px)
    if config.kind == "astigmatic":
        return AstigmaticPSF.from_config(config.astigmatic, z_range_nm)
    from denseloc.calibration import load_psf

    return load_psf(config.path)


def check_psf_pixel_size(psf: PSF, config: Config) -> None:
    """Raise ConfigError if a PSF calibration was made for other pixels than the image's."""
    pixel = getattr(psf, "pixel_size_nm", None)
    # 2 %, as check_model_matches: the PSF's shape hardly changes within it.
    if pixel is not None and not np.isclose(pixel, config.image.pixel_size_nm, rtol=0.02):
        raise ConfigError(
            f"{config.psf.path}: calibrated for {pixel:g} nm pixels, but the pixel size is "
            f"{config.image.pixel_size_nm:g} nm (image.pixel_size_nm, --pixel-size-nm or the "
            "movie's metadata); calibrate with beads imaged at the data's pixel size"
        )


def _check_calibration_fits(psf: PSF, config: Config) -> None:
    """Raise ConfigError if the image or z range is not what the PSF calibration covers."""
    check_psf_pixel_size(psf, config)
    lo, hi = config.emitters.z_range_nm
    # A calibration file describes the z it was measured over: a spline clamps z beyond
    # it, an astigmatic fit extrapolates its polynomial; emitters there get wrong images.
    covered = (getattr(psf, "z_range_nm", None) if config.psf.kind == "file" else None) or (
        -np.inf, np.inf)
    if lo < covered[0] - 1e-6 or hi > covered[1] + 1e-6:
        raise ConfigError(
            f"emitters.z_range_nm ({lo:g}, {hi:g}) reaches beyond the {config.psf.path} "
            f"calibration ({covered[0]:g}, {covered[1]:g}) nm: narrow it"
        )


@dataclass
class SimulatedBatch:
    """A batch of simulated movies.

    Attributes
    ----------
    adu : Tensor of shape (n_movies, n_frames, H, W)
        Camera output (float tensor holding integers).
    expected_photons : Tensor of shape (n_movies, n_frames, H, W)
        Noise-free photons per pixel (signal + background) that the camera saw.
    background : Tensor of shape (n_movies, H, W)
        Background photons per pixel (constant over a movie's frames).
    emitters : Emitters
        Ground truth; ``frame = movie * n_frames + frame_in_movie``.
    """

    adu: torch.Tensor
    expected_photons: torch.Tensor
    background: torch.Tensor
    emitters: Emitters


class Simulator:
    """Simulate SMLM movies from a :class:`~denseloc.config.Config`.

    Parameters
    ----------
    config : Config
        Microscope, camera, emitters, background.
    device : str or torch.device
        Where to simulate.
    dtype : torch.dtype
        Floating-point precision of the simulation.
    """

    def __init__(
        self,
        config: Config,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.frame_shape: tuple[int, int] = tuple(config.image.size_px)
        self.psf = psf_from_config(config.psf, config.emitters.z_range_nm)
        if config.psf.kind == "file":
            _check_calibration_fits(self.psf, config)
        self.camera = Camera.from_config(config.camera, self.frame_shape, self.device)
        self.patch_size = self.psf.default_patch_size()

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the simulator's device, seeded."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample_emitters(
        self,
        n_movies: int,
        n_frames: int,
        generator: torch.Generator | None,
        density_factor: torch.Tensor | None = None,
    ) -> Emitters:
        """Blinking emitters for `n_movies` movies of `n_frames` frames.

        `density_factor` (n_movies,) optionally scales the configured density per movie.
        """
        return sample_emitters(
            self.config.emitters,
            n_movies=n_movies,
            n_frames=n_frames,
            frame_shape=self.frame_shape,
            pixel_size_nm=self.config.image.pixel_size_nm,
            is_3d=self.psf.is_3d,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
            density_factor=density_factor,
        )

    def sample_background(self, n_movies: int, generator: torch.Generator | None) -> torch.Tensor:
        """Background photons per pixel, shape (n_movies, H, W)."""
        return sample_background(
            self.config.background,
            n_movies=n_movies,
            frame_shape=self.frame_shape,
            pixel_size_nm=self.config.image.pixel_size_nm,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
        )

    def render(self, emitters: Emitters, background: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Expected photons per pixel, shape (n_movies, n_frames, H, W).

        ``emitters.frame`` indexes the flattened (n_movies * n_frames) frames.
        """
        n_movies = background.shape[0]
        stack = background[:, None].expand(n_movies, n_frames, *self.frame_shape)
        stack = stack.reshape(n_movies * n_frames, *self.frame_shape).clone()
        render_patches(
            self.psf,
            emitters.frame,
            emitters.x_px,
            emitters.y_px,
            emitters.z_nm,
            emitters.photons,
            stack.shape,
            size=self.patch_size,
            out=stack,
        )
        return stack.view(n_movies, n_frames, *self.frame_shape)

    def sample(
        self,
        n_movies: int,
        n_frames: int,
        generator: torch.Generator | None = None,
        density_factor: torch.Tensor | None = None,
        camera: Camera | None = None,
    ) -> SimulatedBatch:
        """Simulate `n_movies` independent movies of `n_frames` frames each.

        `density_factor` (n_movies,) optionally scales the configured density per movie.
        `camera` replaces the configured one, e.g. with per-movie crops of sCMOS maps
        (:meth:`Camera.crop`).
        """
        emitters = self.sample_emitters(n_movies, n_frames, generator, density_factor)
        background = self.sample_background(n_movies, generator)
        expected = self.render(emitters, background, n_frames)
        adu = (camera or self.camera).photons_to_adu(expected, generator)
        return SimulatedBatch(adu, expected, background, emitters)


def background_at(background: torch.Tensor, table: pd.DataFrame,
                  pixel_size_nm: float) -> np.ndarray:
    """Background photons at the pixel nearest each row's ``x_nm, y_nm`` (clipped to the
    frame), in the table's order: of one map (H, W), or of a stack (T, H, W) at each row's
    ``frame``."""
    from denseloc.table import nm_to_px

    height, width = background.shape[-2:]
    rows = np.clip(np.round(nm_to_px(table["y_nm"].to_numpy(), pixel_size_nm)), 0, height - 1)
    cols = np.clip(np.round(nm_to_px(table["x_nm"].to_numpy(), pixel_size_nm)), 0, width - 1)
    index = (rows.astype(int), cols.astype(int))
    if background.dim() == 3:
        index = (table["frame"].to_numpy(), *index)
    return background.double().cpu().numpy()[index]


def simulate_movie(
    config: Config,
    out_dir: str | os.PathLike,
    *,
    chunk_frames: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Simulate one movie and write ``frames.tif``, ``ground_truth.csv``, ``config.yaml``.

    The movie is rendered in chunks of `chunk_frames` frames, so its length is bounded by the
    disk, not the memory; the same seed and `chunk_frames` give the same movie (the camera
    noise is drawn chunk by chunk). ``ground_truth.csv`` gives each emitter's background
    (``bg``, photons per pixel at its pixel: this movie's level plus any structure), which the
    Cramer-Rao bounds of :func:`denseloc.evaluate.crlb.add_crlb_columns` use. Each file is
    written to a temporary name and renamed when complete.
    ``config.yaml`` names its files (PSF calibration, sCMOS maps) by absolute paths, and
    ``inputs.yaml`` records their SHA-256 (:func:`denseloc.config.input_digests`), so that a
    file changed after the simulation is noticed when the folder is evaluated.

    Parameters
    ----------
    config : Config
        Full configuration; ``config.simulation`` gives the length and the seed.
    out_dir : path
        Output folder (created).
    chunk_frames : int
        Frames rendered at once.
    progress : callable(done, total), optional
        Called after each chunk with the number of frames written.

    Returns
    -------
    dict
        Paths of the written files under the keys ``frames``, ``ground_truth``, ``config``,
        ``inputs``.
    """
    import tifffile
    import yaml

    from denseloc._atomic import atomic_paths, check_writable

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DenselocError(f"{out_dir}: exists and is not a folder")
    check_writable(out_dir / "frames.tif")  # before the work, not after it
    digests = input_digests(config)  # before reading them: what the movie is made from
    sim = Simulator(config)
    n_frames = config.simulation.n_frames
    pixel_size_nm = config.image.pixel_size_nm
    generator = sim.generator(config.simulation.seed)
    emitters = sim.sample_emitters(1, n_frames, generator)
    background = sim.sample_background(1, generator)
    paths = {
        "frames": out_dir / "frames.tif",
        "ground_truth": out_dir / "ground_truth.csv",
        "config": out_dir / "config.yaml",
        "inputs": out_dir / "inputs.yaml",
    }
    resolution = 1e7 / pixel_size_nm  # px per cm, the TIFF resolution unit
    # All four files are renamed into place together once written: an interrupted run into
    # an existing folder leaves the old set, never a new movie beside the old ground truth.
    with atomic_paths(*paths.values()) as tmps:
        tmp = dict(zip(paths, tmps, strict=True))
        with tifffile.TiffWriter(tmp["frames"]) as tif:
            for start in range(0, n_frames, chunk_frames):
                stop = min(start + chunk_frames, n_frames)
                chunk = emitters.select((emitters.frame >= start) & (emitters.frame < stop))
                chunk.frame = chunk.frame - start
                expected = sim.render(chunk, background, stop - start)[0]
                adu = sim.camera.photons_to_adu(expected, generator)
                tif.write(
                    adu.cpu().numpy().astype(np.uint16),
                    contiguous=True,
                    photometric="minisblack",
                    resolution=(resolution, resolution),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                )
                if progress is not None:
                    progress(stop, n_frames)
        truth = emitters.to_table(pixel_size_nm)
        truth["bg"] = background_at(background[0], truth, pixel_size_nm)  # truth is re-sorted
        truth[["frame", "id", "x_nm", "y_nm", "z_nm", "photons", "bg"]].to_csv(
            tmp["ground_truth"], index=False)
        # Paths relative to the working directory would be read against the folder.
        tmp["config"].write_text(config.resolve_paths(Path.cwd()).to_yaml())
        tmp["inputs"].write_text(yaml.safe_dump(digests))
    logger.info("simulated %d frames, %d localizations into %s", n_frames, len(truth), out_dir)
    return paths
