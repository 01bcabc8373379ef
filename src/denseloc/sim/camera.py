"""Camera model: expected photons per pixel -> noisy ADU, and ADU -> photons for real data.

The forward model (DESIGN section 1), per pixel::

    electrons = Poisson(photons * qe + spurious_charge_e)
    electrons = Gamma(shape=electrons, scale=em_gain)        # EMCCD only
    adu = round((electrons + Normal(0, read_noise_e)) / e_per_adu + baseline_adu)
    adu = clip(adu, 0, adc_max_adu)

An EMCCD's register doubles the shot-noise variance (excess-noise factor 2): for a flat
image, ``var(ADU) = (2 qe photons em_gain^2 + read_noise_e^2) / e_per_adu^2``. sCMOS cameras
may give per-pixel offset, variance and gain maps, which replace the scalar values.

The ADC rounds to the nearest integer rather than flooring: flooring biases the mean by
-0.5 ADU for a continuous signal and by 0 for an integer one (ideal camera), so no single
inverse would be unbiased for both; rounding is unbiased for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from denseloc.config import CameraConfig
from denseloc.errors import InputFileError

__all__ = ["Camera", "standard_gamma"]


def standard_gamma(concentration: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gamma(concentration, 1) samples drawn reproducibly from `generator`.

    ``torch._standard_gamma`` takes no generator. On the CPU the samples come from a NumPy
    generator seeded from `generator` (NumPy's sampler is also twice as fast); on a GPU the
    device's global RNG is seeded from `generator` inside a forked RNG state. Either way the
    result depends only on `generator`.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=concentration.device))
    if concentration.device.type == "cpu":
        rng = np.random.default_rng(seed)
        values = rng.standard_gamma(concentration.numpy())
        return torch.from_numpy(values.astype(concentration.numpy().dtype, copy=False))
    with torch.random.fork_rng(devices=[concentration.device], device_type="cuda"):
        torch.manual_seed(seed)
        return torch._standard_gamma(concentration)


def _load_map(
    path: Path, shape: tuple[int, int], what: str, origin: tuple[int, int] | None
) -> np.ndarray:
    """Read a map and cut the frames' part: all of it, or `shape` from `origin` on the chip."""
    arr = _read_map(path, what)
    shape = tuple(shape)
    if origin is not None:
        top, left = origin
        if arr.ndim != 2 or top + shape[0] > arr.shape[0] or left + shape[1] > arr.shape[1]:
            raise InputFileError(path, f"{what} map has shape {arr.shape}: {shape[0]} x "
                                 f"{shape[1]} px frames from chip pixel {list(origin)} do not fit")
        arr = arr[top:top + shape[0], left:left + shape[1]]
    elif arr.shape != shape:
        raise InputFileError(
            path, f"{what} map has shape {arr.shape}, the frames are {shape}; if the movie is "
            "a region of the chip, set camera.roi_origin_px to the chip row and column of its "
            "pixel (0, 0)")
    return arr


def _read_map(path: Path, what: str) -> np.ndarray:
    """A whole map (.npy or TIFF) as float64, checked finite."""
    if not path.is_file():
        raise InputFileError(path, f"{what} map: no such file")
    try:
        if path.suffix == ".npy":
            arr = np.load(path)
        else:
            import tifffile

            arr = tifffile.imread(path)
    except Exception as exc:
        raise InputFileError(path, f"{what} map cannot be read ({exc})") from None
    arr = np.asarray(arr, dtype=np.float64).squeeze()
    if not np.isfinite(arr).all():
        raise InputFileError(path, f"{what} map has non-finite values")
    return arr


def read_variance_e2(config: CameraConfig) -> float:
    """Read-noise variance, electrons^2, at the camera's output (before dividing by EM gain).

    ``read_noise_e ** 2``, or with an sCMOS variance map (ADU^2) the median over the chip of
    the map times the gain (``gain_map`` or ``e_per_adu``) squared, which the simulator uses
    in place of ``read_noise_e``: one number for the Cramer-Rao bound, hot pixels left out.
    """
    if config.variance_map is None:
        return config.read_noise_e**2
    variance = _read_map(Path(config.variance_map), "variance")
    gain = (_read_map(Path(config.gain_map), "gain") if config.gain_map is not None
            else config.e_per_adu)
    return float(np.median(variance * np.asarray(gain) ** 2))


@dataclass
class Camera:
    """A camera: the configuration plus, for sCMOS, per-pixel maps as tensors.

    Parameters
    ----------
    config : CameraConfig
        Scalar settings.
    offset_adu, read_var_adu2, e_per_adu : Tensor of shape (H, W) or float
        Per-pixel (or scalar) baseline, read-noise variance and electrons per ADU.
    """

    config: CameraConfig
    offset_adu: torch.Tensor | float
    read_var_adu2: torch.Tensor | float
    e_per_adu: torch.Tensor | float

    @classmethod
    def from_config(
        cls,
        config: CameraConfig,
        frame_shape: tuple[int, int] | None = None,
        device: torch.device | str = "cpu",
    ) -> Camera:
        """Build a camera, loading sCMOS maps (which then need `frame_shape`).

        The maps are the frames' size, or larger (the whole chip) with
        ``config.roi_origin_px`` saying where the frames lie on it.
        """
        offset: torch.Tensor | float = config.baseline_adu
        read_var: torch.Tensor | float = (config.read_noise_e / config.e_per_adu) ** 2
        gain: torch.Tensor | float = config.e_per_adu
        maps = {
            "offset": config.offset_map,
            "variance": config.variance_map,
            "gain": config.gain_map,
        }
        if any(p is not None for p in maps.values()) and frame_shape is None:
            raise ValueError("per-pixel camera maps need the frame shape")
        loaded = {
            k: torch.as_tensor(_load_map(Path(p), frame_shape, k, config.roi_origin_px),
                               device=device)
            for k, p in maps.items()
            if p is not None
        }
        if "gain" in loaded:
            if (loaded["gain"] <= 0).any():
                raise InputFileError(config.gain_map, "gain map must be positive")
            gain = loaded["gain"]
            read_var = (config.read_noise_e / gain) ** 2  # read_noise_e is in electrons
        if "offset" in loaded:
            offset = loaded["offset"]
        if "variance" in loaded:
            if (loaded["variance"] < 0).any():
                raise InputFileError(config.variance_map, "variance map must be >= 0")
            read_var = loaded["variance"]
        return cls(config, offset, read_var, gain)

    def crop(self, top: torch.Tensor, left: torch.Tensor, shape: tuple[int, int]) -> Camera:
        """The camera seen by movies cut from the chip at given places, one per movie.

        Parameters
        ----------
        top, left : Tensor of shape (n,), long
            Chip row and column of each movie's pixel (0, 0).
        shape : (h, w)
            Frame size of the movies, px.

        Returns
        -------
        Camera
            Its maps have shape (n, 1, h, w), so that they broadcast over the frames of
            movies (n, T, h, w); scalar settings are kept.
        """
        h, w = shape

        def cut(value: torch.Tensor | float) -> torch.Tensor | float:
            if not isinstance(value, torch.Tensor):
                return value
            if top.numel() and (int(top.max()) + h > value.shape[0]
                                or int(left.max()) + w > value.shape[1]):
                raise ValueError(f"a {h}x{w} crop does not fit the {tuple(value.shape)} map")
            rows = (top[:, None] + torch.arange(h, device=top.device))[:, :, None]
            cols = (left[:, None] + torch.arange(w, device=left.device))[:, None, :]
            return value[rows, cols][:, None]

        return Camera(self.config, cut(self.offset_adu), cut(self.read_var_adu2),
                      cut(self.e_per_adu))

    @property
    def excess_noise_factor(self) -> float:
        """2 for an EMCCD (the EM register doubles the shot-noise variance), else 1."""
        return self.config.excess_noise_factor

    def _cast(self, value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
        return value.to(like) if isinstance(value, torch.Tensor) else value

    def photons_to_adu(
        self, photons: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Simulate the camera: expected photons per pixel -> ADU (float, integer-valued).

        Parameters
        ----------
        photons : Tensor of shape (..., H, W)
            Expected photons per pixel (signal + background), >= 0.
        generator : torch.Generator, optional
            Source of randomness (on the tensor's device).
        """
        cfg = self.config
        electrons = torch.poisson(photons * cfg.qe + cfg.spurious_charge_e, generator=generator)
        if cfg.kind == "emccd":
            # Gamma(0) is a point mass at 0: clamp the concentration, then zero those pixels.
            amplified = standard_gamma(electrons.clamp_min(1e-6), generator) * cfg.em_gain
            electrons = torch.where(electrons > 0, amplified, torch.zeros_like(amplified))
        gain = self._cast(self.e_per_adu, photons)
        adu = electrons / gain + self._cast(self.offset_adu, photons)
        read_var = self._cast(self.read_var_adu2, photons)
        if isinstance(read_var, torch.Tensor) or read_var > 0:
            noise = torch.randn(
                photons.shape, generator=generator, dtype=photons.dtype, device=photons.device
            )
            adu = adu + noise * (read_var**0.5)
        return torch.round(adu).clamp_(0, cfg.adc_max_adu)

    def adu_to_photons(self, adu: torch.Tensor) -> torch.Tensor:
        """Convert ADU to photons: ``((adu - baseline) e_per_adu / em_gain - spurious) / qe``.

        Its expectation equals the expected photons of the forward model (unless the ADC
        clipped).
        """
        cfg = self.config
        adu = adu.to(torch.get_default_dtype()) if not adu.is_floating_point() else adu
        gain = self._cast(self.e_per_adu, adu)
        electrons = (adu - self._cast(self.offset_adu, adu)) * gain
        return (electrons / cfg.em_gain - cfg.spurious_charge_e) / cfg.qe
