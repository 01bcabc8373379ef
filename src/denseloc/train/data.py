"""Training batches simulated on the fly, in the network's units.

Each sample is a window of `context_frames` frames of a short simulated movie (emitters
persist across them, as in a real movie; ``train.edge_windows`` replicates some windows'
central frame in place of a neighbour); the targets are the emitters of the central frame
with at least ``train.min_target_photons`` photons. Frames go through the camera model and back
(ADU -> photons), exactly as real data will at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from denseloc.config import Config, ConfigError
from denseloc.nn.model import Scaling
from denseloc.sim.camera import Camera
from denseloc.sim.emitters import Emitters
from denseloc.sim.simulator import Simulator

__all__ = ["Batch", "TrainingData", "derive_scaling", "scale_frames"]


@dataclass
class Batch:
    """One training batch.

    Attributes
    ----------
    targets : Tensor of shape (B, K, 4)
        Central-frame emitters (photons, x_px, y_px, z) in network units, padded.
    mask : Tensor of shape (B, K), bool
    bg : Tensor of shape (B, H, W)
        Background in units of ``scaling.bg_photons``.
    emitters : Emitters
        All central-frame emitters (any brightness) with ``frame`` = sample index, in
        physical units, for evaluation.
    frames : Tensor of shape (N, H, W)
        The scaled frames the windows are cut from (all movies concatenated, without the
        frames after the last window).
    windows : Tensor of shape (B, context_frames), long
        Indices in `frames` of each sample's frames (``inputs[b] = frames[windows[b]]``):
        consecutive, except where ``train.edge_windows`` replicated the central frame.
    """

    targets: torch.Tensor
    mask: torch.Tensor
    bg: torch.Tensor
    emitters: Emitters
    frames: torch.Tensor
    windows: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        """The samples' scaled frames, (B, context_frames, H, W): ``frames[windows]``.

        A copy, made on use; training steps pass `frames` and `windows` to
        :meth:`~denseloc.nn.model.DecodeNet.forward_windows` instead.
        """
        return self.frames[self.windows]


def _check_trainable(config: Config, frame_size_px: int) -> None:
    """Raise ConfigError for settings that simulate, but cannot train a network."""
    em, cam = config.emitters, config.camera
    drawn = config.train.density_range_per_um2
    if drawn is not None and (em.count_per_frame is not None or em.density_per_um2 <= 0):
        raise ConfigError(
            "train.density_range_per_um2 scales emitters.density_per_um2: set that > 0 and "
            "leave emitters.count_per_frame empty"
        )
    expected = em.count_per_frame if em.count_per_frame is not None else em.density_per_um2
    if expected <= 0 or (drawn is not None and drawn[1] <= 0):
        raise ConfigError(
            "training needs emitters: emitters.density_per_um2 (or count_per_frame) and the "
            "top of train.density_range_per_um2 must be > 0"
        )
    z_lo, z_hi = em.z_range_nm
    if config.psf.is_3d and z_hi - z_lo < 1.0:
        # Every z target equal: sigma_z would shrink to its floor and its noise decide which
        # pixel explains an emitter (see denseloc.nn.loss.gmm_loss's is_3d).
        raise ConfigError(
            f"emitters.z_range_nm is a single z ({z_lo:g} nm) for a 3D PSF: a network cannot "
            "learn z from one value; give a range, or use psf kind gaussian for 2D data"
        )
    if config.train.edge_windows > 0 and config.model.context_frames == 1:
        raise ConfigError("train.edge_windows needs neighbouring frames: model.context_frames "
                          "is 1, so set edge_windows to 0")
    if cam.roi_origin_px is not None:
        raise ConfigError(
            "camera.roi_origin_px places a localized movie on the chip; training cuts its "
            "frames from the whole chip (image.size_px): remove it from the training "
            "configuration and give it to denseloc localize --camera"
        )
    chip = tuple(config.image.size_px)
    if cam.has_maps and min(chip) < frame_size_px:
        raise ConfigError(
            f"training cuts {frame_size_px} px frames from the sCMOS maps, which are "
            f"image.size_px = {list(chip)}: set image.size_px to the maps' size (the camera "
            "chip) or lower train.frame_size_px"
        )


def derive_scaling(config: Config, peak_fraction: float) -> Scaling:
    """Network units from the simulation configuration.

    `peak_fraction` is the fraction of an in-focus emitter's photons in its brightest pixel.
    """
    em, bg = config.emitters, config.background
    z_max = max(abs(em.z_range_nm[0]), abs(em.z_range_nm[1]), 1.0)
    photons_max = 2.0 * (em.photons_mean + 4 * em.photons_std)
    bg_max = 1.5 * (bg.level_photons[1] + bg.structured_amplitude_photons) + 1.0
    return Scaling(
        input_offset=float(sum(bg.level_photons) / 2),
        input_scale=float(max(em.photons_mean * peak_fraction, 1.0)),
        photons=float(photons_max),
        z_nm=float(config.train.z_margin * z_max),
        bg_photons=float(bg_max),
    )


def scale_frames(photons: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """Photons per pixel -> network input."""
    return (photons - scaling.input_offset) / scaling.input_scale


def _edge_windows(index: torch.Tensor, edge: float, generator: torch.Generator) -> torch.Tensor:
    """Windows (B, C) of frame indices, some made a movie's first or last frames.

    Each side of a window is cut with probability `edge` / 2: k of its frames there (k uniform
    in 1 .. C // 2) are replaced by the nearest frame left, as localization pads a movie's
    ends. For 3 frames (k = 1) no k is drawn, so their random stream is that of earlier
    versions.
    """
    size, ctx = index.shape
    half = ctx // 2
    cut = torch.rand(size, 2, generator=generator, device=index.device) < edge / 2
    if half > 1:
        k = torch.randint(1, half + 1, (size, 2), generator=generator, device=index.device)
    else:
        k = torch.ones(size, 2, dtype=torch.long, device=index.device)
    k = torch.where(cut, k, 0)
    position = torch.arange(ctx, device=index.device)
    # the first k[:, 0] positions take position k[:, 0]'s frame; the last k[:, 1] take
    # position (ctx - 1 - k[:, 1])'s
    source = position.clamp(min=k[:, :1]).minimum(ctx - 1 - k[:, 1:])
    return index.gather(1, source)


def _peak_fraction(sim: Simulator) -> float:
    zero = torch.zeros(1, dtype=torch.float64)
    return float(sim.psf.evaluate(zero, zero, zero, sim.patch_size).max())


class TrainingData:
    """Simulate training batches from a configuration.

    Parameters
    ----------
    config : Config
        Simulation (microscope, camera, emitters, background) and training settings; frames
        are ``config.train.frame_size_px`` square. sCMOS maps (``camera.offset_map`` etc.)
        are the chip's, ``image.size_px``: each movie is simulated at a random place on it.
    device : torch.device or str
        Where to simulate (the training device).
    frame_size_px : int, optional
        Override the frame size (e.g. larger validation frames).
    """

    def __init__(
        self, config: Config, device: torch.device | str = "cpu", frame_size_px: int | None = None
    ) -> None:
        size = frame_size_px or config.train.frame_size_px
        _check_trainable(config, size)
        # The maps, if any, are the chip's (image.size_px); the simulator makes crops, and
        # each batch gets the camera of its crops' places on the chip.
        self.chip_shape: tuple[int, int] = tuple(config.image.size_px)
        self.chip_camera = Camera.from_config(config.camera, self.chip_shape, device)
        self.config = config.model_copy(update={
            "image": config.image.model_copy(update={"size_px": (size, size)}),
            "camera": config.camera.without_maps(),
        })
        self.sim = Simulator(self.config, device=device)
        self.context = config.model.context_frames
        self.scaling = derive_scaling(config, _peak_fraction(self.sim))

    def _density_factor(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        rng = self.config.train.density_range_per_um2
        if rng is None:
            return None
        base = self.config.emitters.density_per_um2  # > 0 and no count_per_frame: checked
        u = torch.rand(n, generator=generator, device=self.sim.device, dtype=torch.float64)
        return (rng[0] + (rng[1] - rng[0]) * u) / base

    def _camera(self, n_movies: int, generator: torch.Generator) -> Camera:
        """The camera of each movie: sCMOS maps cut at a random place on the chip per movie."""
        if not self.chip_camera.config.has_maps:
            return self.sim.camera  # draws nothing: runs without maps keep their random stream
        chip_h, chip_w = self.chip_shape
        h, w = self.sim.frame_shape
        dev = self.sim.device
        top = torch.randint(0, chip_h - h + 1, (n_movies,), generator=generator, device=dev)
        left = torch.randint(0, chip_w - w + 1, (n_movies,), generator=generator, device=dev)
        return self.chip_camera.crop(top, left, (h, w))

    def batch(
        self,
        size: int,
        generator: torch.Generator,
        *,
        edge_windows: float | None = None,
        frames_per_movie: int | None = None,
    ) -> Batch:
        """Simulate `size` samples (windows of ``context_frames`` consecutive frames).

        Each movie of `frames_per_movie` frames (default ``train.frames_per_movie``, at least
        ``context_frames``) gives all its windows as samples, so samples of one movie share
        frames and fluorophores; at ``context_frames`` every sample is a movie of its own.

        With `edge_windows` (default ``train.edge_windows``) > 0, each window is made one of
        a movie's first frames with probability `edge_windows` / 2, and one of its last with
        the same probability (both with (`edge_windows` / 2)^2), as localization pads them:
        k of its previous (next) frames are missing, k uniform in 1 .. ``context_frames //
        2``, and are copies of the nearest one present (for 3 frames: the central frame).
        """
        sim, scaling = self.sim, self.scaling
        ctx = self.context
        if frames_per_movie is None:
            frames_per_movie = self.config.train.frames_per_movie
        elif frames_per_movie < 1:
            raise ValueError(f"frames_per_movie must be >= 1, got {frames_per_movie}")
        length = max(frames_per_movie, ctx)
        per_movie = length - ctx + 1
        n_movies = -(-size // per_movie)
        factor = self._density_factor(n_movies, generator)
        camera = self._camera(n_movies, generator)
        movies = sim.sample(n_movies, length, generator, density_factor=factor, camera=camera)
        window = torch.arange(size, device=sim.device)
        movie, offset = window // per_movie, window % per_movie
        starts = movie * length + offset
        # The last movie's frames after its last window would only cost network time.
        frames = scale_frames(camera.adu_to_photons(movies.adu), scaling).flatten(0, 1)
        frames = frames[: int(starts[-1]) + ctx]
        centre_frame = starts + ctx // 2  # global frame index of each sample's target frame
        lookup = torch.full((n_movies * length,), -1, dtype=torch.long, device=frames.device)
        lookup[centre_frame] = window
        em = movies.emitters
        sample_of = lookup[em.frame]
        central = em.select(sample_of >= 0)
        central.frame = sample_of[sample_of >= 0]
        targets, mask = self._targets(central, size)
        index = starts[:, None] + torch.arange(ctx, device=frames.device)
        edge = self.config.train.edge_windows if edge_windows is None else edge_windows
        if edge > 0 and ctx > 1:  # draws nothing otherwise: other runs keep their stream
            index = _edge_windows(index, edge, generator)
        return Batch(
            targets=targets,
            mask=mask,
            bg=movies.background[movie] / scaling.bg_photons,
            emitters=central,
            frames=frames,
            windows=index,
        )

    def _targets(self, emitters: Emitters, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = emitters.photons >= self.config.train.min_target_photons
        em = emitters.select(keep)
        order = torch.argsort(em.frame, stable=True)
        sample = em.frame[order]
        counts = torch.bincount(sample, minlength=size)
        k_max = max(int(counts.max()) if counts.numel() else 0, 1)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(sample.numel(), device=sample.device) - starts[sample]
        values = torch.stack(
            [
                em.photons[order] / self.scaling.photons,
                em.x_px[order],
                em.y_px[order],
                em.z_nm[order] / self.scaling.z_nm,
            ],
            dim=1,
        )
        targets = torch.zeros((size, k_max, 4), dtype=values.dtype, device=values.device)
        mask = torch.zeros((size, k_max), dtype=torch.bool, device=values.device)
        targets[sample, slot] = values
        mask[sample, slot] = True
        return targets, mask
