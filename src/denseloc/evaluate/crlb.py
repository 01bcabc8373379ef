"""Cramer-Rao lower bound of single-emitter localization for any PSF model.

For an emitter with photons ``N`` on a uniform background ``b`` (photons/px), the expected
electrons in pixel k are ``mu_k = qe (N f_k(x, y, z) + b) + spurious``. With the camera's
excess-noise factor ``F`` (2 for an EMCCD, 1 otherwise) and read noise ``s_k`` (electrons rms
at the camera's output, one value for the chip or per pixel from an sCMOS camera's maps;
``s_k^2 / G^2`` is its variance referred to the input of the EM gain ``G``), the Fisher
information is approximated by the Poisson-shift model (Huang et al., Nat. Methods 2013, for
sCMOS; the factor F for EMCCDs, Chao et al. 2013)::

    I_ij = sum_k (d mu_k / d theta_i)(d mu_k / d theta_j) / (F mu_k + s_k^2 / G^2)

over parameters ``theta = (x, y, z, N, b)`` (z omitted for 2D PSFs). The bound on the standard
deviation of an unbiased estimator is ``sqrt(diag(I^-1))``. F = 2 is the EMCCD's high-signal
limit: at a few photons per pixel the true information is higher (Chao et al. 2013), so there
the bound is a little loose and an estimator may beat it; at the 90-150 photons/px of
background of the benchmarks the difference is negligible.

These bounds treat each emitter as alone. :func:`add_crowded_bounds` sums the same information
over a whole frame, with the parameters of every emitter in it and one background, for the
bounds and detection signal-to-noise ratios of emitters whose light overlaps.
:func:`add_window_crlb_columns` and :func:`add_crowded_window_bounds` are the bounds of an
estimator that reads several consecutive frames, in which an emitter keeps its place, without
and with the neighbours.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain

import numpy as np
import pandas as pd
import torch

from denseloc.config import CameraConfig, Config
from denseloc.errors import DenselocWarning
from denseloc.sim.camera import Camera, read_variance_e2
from denseloc.sim.psf import PSF, patch_origin, place_patches

__all__ = [
    "NoiseModel",
    "add_crlb_columns",
    "add_crowded_bounds",
    "add_crowded_window_bounds",
    "add_window_crlb_columns",
    "crlb",
    "expected_and_jacobian",
    "fisher_information",
    "information_from_jacobian",
    "std_from_information",
]


@dataclass(frozen=True)
class NoiseModel:
    """What the Fisher information needs of the camera.

    Attributes
    ----------
    qe : float
        Quantum efficiency.
    excess_noise : float
        Variance multiplier of the gain register (2 for EMCCD).
    read_var_e2 : float or Tensor of shape (H, W)
        Read-noise variance referred to the input of the gain register, electrons^2: one
        number, or one per pixel of the frames (an sCMOS camera's variance map, see
        :meth:`from_camera`); :meth:`patches` cuts such a map to the pixels of patches.
    spurious_e : float
        Spurious charge per pixel, electrons.
    """

    qe: float = 1.0
    excess_noise: float = 1.0
    read_var_e2: float | torch.Tensor = 0.0
    spurious_e: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.read_var_e2, torch.Tensor) and self.read_var_e2.dim() != 2:
            raise ValueError(f"read_var_e2 is one number, a map (H, W) or patches (N, K), not "
                             f"shape {tuple(self.read_var_e2.shape)}")

    @classmethod
    def from_camera(cls, camera: CameraConfig | Camera) -> NoiseModel:
        """The noise model of a camera.

        A configuration gives one read noise for the whole chip: with an sCMOS variance map
        its median (:func:`denseloc.sim.camera.read_variance_e2`), not ``read_noise_e``, which
        the simulator then ignores. A loaded :class:`~denseloc.sim.camera.Camera` gives its
        read noise per pixel of the frames it was loaded for, when it has maps.
        """
        config = camera.config if isinstance(camera, Camera) else camera
        if isinstance(camera, Camera):
            read_var = camera.read_var_adu2 * camera.e_per_adu**2 / config.em_gain**2
            if isinstance(read_var, torch.Tensor):  # the fitter and the bounds run on the CPU
                read_var = read_var.to("cpu", torch.float64)
        else:
            read_var = read_variance_e2(config) / config.em_gain**2
        return cls(
            qe=config.qe,
            excess_noise=config.excess_noise_factor,
            read_var_e2=read_var,
            spurious_e=config.spurious_charge_e,
        )

    @property
    def per_pixel(self) -> bool:
        """Whether the read noise is a map of the frames rather than one number."""
        return isinstance(self.read_var_e2, torch.Tensor) and self.read_var_e2.dim() == 2

    def patches(self, rows: torch.Tensor, cols: torch.Tensor) -> NoiseModel:
        """The noise of N square patches of the frames, for :func:`information_from_jacobian`.

        Parameters
        ----------
        rows, cols : Tensor of shape (N, S), long
            Frame row and column of every row and column of each patch; pixels outside the
            frame take the nearest edge pixel's value (they should carry no information).

        Returns
        -------
        NoiseModel
            With ``read_var_e2`` of shape (N, S*S); unchanged if the read noise is one number.
        """
        if not self.per_pixel:
            return self
        height, width = self.read_var_e2.shape
        r = rows.clamp(0, height - 1)[:, :, None]
        c = cols.clamp(0, width - 1)[:, None, :]
        return replace(self, read_var_e2=self.read_var_e2[r, c].flatten(1))

    def shift_photons(self) -> float | torch.Tensor:
        """Photons to add to data and model so that a Poisson likelihood fits this camera.

        The photon count ``d`` of a pixel with expected photons ``mu`` has variance
        ``F (mu + g) / qe`` with ``g = (spurious_e + read_var_e2 / F) / qe``: the read noise
        and spurious charge add variance without signal. ``d + g`` then has a variance
        proportional to its mean, like a Poisson variable (the "shifted Poisson" model of
        Huang et al., Nat. Methods 2013), which keeps a pixel's weight right when its read
        noise is large. Per pixel for a map, flattened like :meth:`patches`.
        """
        return (self.spurious_e + self.read_var_e2 / self.excess_noise) / self.qe


def fisher_information(
    psf: PSF,
    z_nm: torch.Tensor,
    photons: torch.Tensor,
    bg: torch.Tensor,
    *,
    dx_px: torch.Tensor | None = None,
    dy_px: torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    size: int | None = None,
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fisher information matrices of single emitters.

    Parameters
    ----------
    psf : PSF
        The PSF model.
    z_nm, photons, bg : Tensor of shape (N,)
        Axial position, photons of the emitter, background photons per pixel.
    dx_px, dy_px : Tensor of shape (N,), optional
        Sub-pixel position relative to a pixel centre (0 if omitted).
    noise : NoiseModel
        Camera noise.
    size : int, optional
        Patch size (the PSF's default if None).
    inside : Tensor of shape (N, size, size), bool, optional
        Which pixels of each patch lie in the frame; the others carry no information (an
        emitter at the edge of a frame loses part of its light). Default: all.

    Returns
    -------
    Tensor of shape (N, P, P)
        P = 5 for 3D PSFs, parameters (x [px], y [px], z [nm], photons, bg [photons/px]);
        P = 4 for 2D PSFs, without z.
    """
    size = size or psf.default_patch_size()
    dx_px = torch.zeros_like(z_nm) if dx_px is None else dx_px
    dy_px = torch.zeros_like(z_nm) if dy_px is None else dy_px
    f, df = psf.evaluate(dx_px, dy_px, z_nm, size, derivatives=True)
    mu, jac = expected_and_jacobian(f, df, photons, bg, is_3d=psf.is_3d)
    if inside is not None:
        jac = jac * inside.flatten(1)[:, None, :].to(jac.dtype)
    return information_from_jacobian(mu, jac, noise)


def expected_and_jacobian(
    f: torch.Tensor, df: torch.Tensor, photons: torch.Tensor, bg: torch.Tensor, *, is_3d: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected photons per pixel ``N f + b`` and its Jacobian.

    Parameters
    ----------
    f, df : Tensor of shape (N, S, S) and (N, 3, S, S)
        PSF fractions and their derivatives (x, y, z), from ``PSF.evaluate``.
    photons, bg : Tensor of shape (N,)

    Returns
    -------
    Tensor of shape (N, S*S), Tensor of shape (N, P, S*S)
        Expected photons and derivatives with respect to (x, y, [z,] photons, bg).
    """
    n = photons[:, None, None]
    grads = [n * df[:, 0], n * df[:, 1]]
    if is_3d:
        grads.append(n * df[:, 2])
    grads += [f, torch.ones_like(f)]
    mu = (n * f + bg[:, None, None]).flatten(1)
    return mu, torch.stack(grads, dim=1).flatten(2)


def information_from_jacobian(
    mu: torch.Tensor, jac: torch.Tensor, noise: NoiseModel = NoiseModel()
) -> torch.Tensor:
    """Fisher information (N, P, P) from expected photons (N, K) and Jacobian (N, P, K).

    The read noise of `noise` is one number or one per pixel, (N, K) or (1, K) (see
    :meth:`NoiseModel.patches`).
    """
    electrons = noise.qe * mu + noise.spurious_e
    var = noise.excess_noise * electrons + noise.read_var_e2
    # A pixel expected to stay dark on a noiseless camera (no background, beyond the PSF's
    # reach, or a spline's negative tail) has no variance to weigh by, and its derivatives
    # vanish with its light: it carries no information, not an infinite weight (0 * inf).
    weight = torch.where(var > 0, noise.qe**2 / var.clamp_min(1e-300), torch.zeros_like(var))
    return torch.einsum("npk,nqk,nk->npq", jac, jac, weight)


def _bound_from_variance(var: torch.Tensor) -> torch.Tensor:
    """Standard deviations; NaN, not 0, where rounding made a variance <= 0 (a nearly
    singular information matrix)."""
    return torch.where(var > 0, var.clamp_min(0).sqrt(), torch.full_like(var, float("nan")))


def std_from_information(info: torch.Tensor, is_3d: bool) -> torch.Tensor:
    """Standard deviations (N, 5) of (x, y, z, photons, bg); z is NaN for 2D models.

    Rows whose information matrix is singular (a parameter the data says nothing about) are
    NaN, and so is a variance that rounding made zero or negative (a near-singular matrix):
    never a bound of 0 nm.
    """
    std = _inverse_std(info)
    if not is_3d:
        nan = torch.full_like(std[:, :1], float("nan"))
        std = torch.cat([std[:, :2], nan, std[:, 2:]], dim=1)
    return std


def _inverse_std(info: torch.Tensor) -> torch.Tensor:
    """Square roots of the diagonal of the inverses of information matrices (N, P, P); NaN
    for a singular matrix or a variance rounded to <= 0."""
    inverse, singular = torch.linalg.inv_ex(info)
    std = _bound_from_variance(inverse.diagonal(dim1=1, dim2=2))
    return torch.where((singular == 0)[:, None], std, torch.full_like(std, float("nan")))


def crlb(
    psf: PSF,
    z_nm: torch.Tensor,
    photons: torch.Tensor,
    bg: torch.Tensor,
    *,
    dx_px: torch.Tensor | None = None,
    dy_px: torch.Tensor | None = None,
    noise: NoiseModel = NoiseModel(),
    size: int | None = None,
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cramer-Rao bound (standard deviations) of (x [px], y [px], z [nm], photons, bg).

    Same parameters as :func:`fisher_information`. Returns a tensor of shape (N, 5); for a 2D
    PSF the z column is NaN.
    """
    info = fisher_information(
        psf, z_nm, photons, bg, dx_px=dx_px, dy_px=dy_px, noise=noise, size=size,
        inside=inside,
    )
    return std_from_information(info, psf.is_3d)


def add_crlb_columns(
    truth: pd.DataFrame,
    config: Config,
    *,
    bg_photons: float | np.ndarray | None = None,
    frame_shape: tuple[int, int] | None = None,
    noise: NoiseModel | None = None,
) -> pd.DataFrame:
    """Add ``crlb_x_nm, crlb_y_nm, crlb_z_nm`` (per emitter and frame) to a ground truth.

    Each row's bound uses its own photons in that frame, its z, the background and the camera
    of `config` (PSF from ``config.psf``). It bounds an estimator that reads that frame alone;
    one that also reads neighbouring frames, as the network does, can do better where the
    emitter stays on (:func:`add_window_crlb_columns`).

    Parameters
    ----------
    truth : DataFrame
        Ground truth with columns ``x_nm, y_nm, z_nm, photons``.
    config : Config
        The simulation's configuration.
    bg_photons : float or array of shape (len(truth),), optional
        Background photons per pixel at each emitter; defaults to a ``bg`` column when
        present (simulated movies have one), else the configuration's mean background
        (:attr:`~denseloc.config.BackgroundConfig.mean_photons`).
    frame_shape : (height, width), optional
        The frames' size in px: pixels outside the frame then carry no information, so an
        emitter near an edge gets the looser bound of the light that reaches the camera.
        Default: every emitter as if in an unbounded frame.
    noise : NoiseModel, optional
        The camera's noise; default ``NoiseModel.from_camera(config.camera)``, one read noise
        for the chip. With a per-pixel map (``NoiseModel.from_camera`` of a loaded sCMOS
        camera, the size of `frame_shape`) each bound uses the read noise of its own pixels.
    """
    info, is_3d = _row_information(truth, config, bg_photons, frame_shape, noise)
    return _with_bounds(truth, std_from_information(info, is_3d)[:, :3], "crlb", config)


def add_window_crlb_columns(
    truth: pd.DataFrame,
    config: Config,
    context_frames: int,
    *,
    bg_photons: float | np.ndarray | None = None,
    frame_shape: tuple[int, int] | None = None,
    noise: NoiseModel | None = None,
) -> pd.DataFrame:
    """Add ``crlb_window_{x,y,z}_nm``: bounds for an estimator that reads `context_frames`
    frames centred on each row's frame, as a network with that temporal context does, and
    ``window_frames``, in how many of them the emitter is on.

    An emitter (one ``id``) keeps its place from frame to frame, so every frame of the
    window in which it is on tells about its x, y and z. Each such frame's information on
    them, with that frame's photons and background unknown (the Schur complement of its
    Fisher matrix), is summed over the window, and the bound is the inverse of the sum. For
    an emitter on in that frame alone it is :func:`add_crlb_columns`' bound; on equally in
    three frames, that bound over sqrt(3). The photons and the background are free in every
    frame: an estimator that knew them to be equal across frames (as in a simulation with a
    constant background and fully-on frames) could do a little better. ``window_frames``
    counts a frame in which the emitter is on for any part of it. Parameters as
    :func:`add_crlb_columns`; `truth` needs ``frame`` and ``id`` (one row per emitter and frame
    it is on).
    """
    _check_window_truth(truth, context_frames)
    info, is_3d = _row_information(truth, config, bg_photons, frame_shape, noise)
    k = 3 if is_3d else 2  # x, y[, z] against this frame's photons and background
    marginal, singular = _schur(info[:, :k, :k], info[:, :k, k:], info[:, k:, k:])
    marginal = torch.where((singular == 0)[:, None, None], marginal, torch.zeros_like(marginal))
    frames = truth["frame"].to_numpy()
    ids = truth["id"].to_numpy()
    rows = pd.MultiIndex.from_arrays([ids, frames])
    total = torch.zeros_like(marginal)
    on = np.zeros(len(truth), dtype=int)
    half = context_frames // 2
    for offset in range(-half, half + 1):
        other = rows.get_indexer(pd.MultiIndex.from_arrays([ids, frames + offset]))
        found = torch.as_tensor(other >= 0)
        total += torch.where(found[:, None, None], marginal[np.maximum(other, 0)], 0.0)
        on += other >= 0
    std = _inverse_std(total)
    if not is_3d:
        std = torch.cat([std, torch.full_like(std[:, :1], float("nan"))], dim=1)
    return _with_bounds(truth, std, "crlb_window", config).assign(window_frames=on)


def _check_window_truth(truth: pd.DataFrame, context_frames: int) -> None:
    """Refuse what no window bound can use; warn about ids that number rows (stacklevel of
    the public function's caller)."""
    if context_frames < 1 or context_frames % 2 == 0:
        raise ValueError(f"context_frames must be odd and positive, got {context_frames}")
    missing = {"frame", "id"} - set(truth.columns)
    if missing:
        raise ValueError(f"the window bound needs the columns frame and id (one per emitter, "
                         f"kept across frames); missing: {', '.join(sorted(missing))}")
    ids = truth["id"].to_numpy()
    if not pd.MultiIndex.from_arrays([ids, truth["frame"].to_numpy()]).is_unique:
        raise ValueError("`truth` has an emitter (id) twice in one frame")
    if context_frames > 1 and truth["frame"].nunique() > 1 and pd.Index(ids).is_unique:
        warnings.warn("no id of `truth` is on in two frames, so the window bound is the "
                      "single-frame one: are the ids per row rather than per emitter?",
                      DenselocWarning, stacklevel=3)


def _schur(keep: torch.Tensor, mixed: torch.Tensor,
           nuisance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Information on the kept parameters with the nuisance ones unknown: ``keep - mixed
    nuisance^-1 mixed^T`` for blocks (..., k, k), (..., k, n), (..., n, n); and torch's
    singular flags of the nuisance blocks (0 where solved)."""
    solved, singular = torch.linalg.solve_ex(nuisance, mixed.transpose(-1, -2))
    return keep - mixed @ solved, singular


def _with_bounds(truth: pd.DataFrame, std: torch.Tensor, prefix: str,
                 config: Config) -> pd.DataFrame:
    """A copy of `truth` with standard deviations (N, 3: x px, y px, z nm) as
    ``{prefix}_{x,y,z}_nm``."""
    px = config.image.pixel_size_nm
    std = std.numpy()
    out = truth.copy()
    out[f"{prefix}_x_nm"] = std[:, 0] * px
    out[f"{prefix}_y_nm"] = std[:, 1] * px
    out[f"{prefix}_z_nm"] = std[:, 2]
    return out


def _row_information(
    truth: pd.DataFrame,
    config: Config,
    bg_photons: float | np.ndarray | None,
    frame_shape: tuple[int, int] | None,
    noise: NoiseModel | None,
) -> tuple[torch.Tensor, bool]:
    """Fisher information (N, P, P) of every row of `truth` alone (see
    :func:`add_crlb_columns`), and whether the PSF is 3D."""
    from denseloc.sim.simulator import psf_from_config

    psf = psf_from_config(config.psf, config.emitters.z_range_nm)
    n_par = 5 if psf.is_3d else 4
    n = len(truth)
    if n == 0:
        return torch.zeros((0, n_par, n_par), dtype=torch.float64), psf.is_3d
    if bg_photons is None:
        bg_photons = (truth["bg"].to_numpy() if "bg" in truth
                      else config.background.mean_photons)
    px = config.image.pixel_size_nm
    as_t = lambda a: torch.as_tensor(np.broadcast_to(a, (n,)).copy(), dtype=torch.float64)  # noqa: E731
    x_px = truth["x_nm"].to_numpy() / px - 0.5
    y_px = truth["y_nm"].to_numpy() / px - 0.5
    noise = NoiseModel.from_camera(config.camera) if noise is None else noise
    _check_noise_map(noise, frame_shape)
    size = psf.default_patch_size()
    offsets = np.arange(size) - size // 2
    rows = np.round(y_px)[:, None] + offsets
    cols = np.round(x_px)[:, None] + offsets
    inside = None
    if frame_shape is not None:
        inside = torch.as_tensor(((rows >= 0) & (rows < frame_shape[0]))[:, :, None]
                                 & ((cols >= 0) & (cols < frame_shape[1]))[:, None, :])
    info = fisher_information(
        psf,
        as_t(truth["z_nm"].to_numpy()),
        as_t(truth["photons"].to_numpy()).clamp_min(1e-3),
        as_t(bg_photons),
        dx_px=as_t(x_px - np.round(x_px)),
        dy_px=as_t(y_px - np.round(y_px)),
        noise=noise.patches(torch.as_tensor(rows, dtype=torch.long),
                            torch.as_tensor(cols, dtype=torch.long)),
        size=size,
        inside=inside,
    )
    return info, psf.is_3d


def add_crowded_bounds(
    truth: pd.DataFrame,
    config: Config,
    *,
    frame_shape: tuple[int, int],
    bg_photons: float | None = None,
    noise: NoiseModel | None = None,
    known_below_photons: float = 0.0,
    max_elements: int = 50_000_000,
) -> pd.DataFrame:
    """Add bounds that count the neighbours: ``crlb_crowded_{x,y,z}_nm`` and detection SNRs.

    The bound of :func:`add_crlb_columns` treats every emitter as alone. In a dense frame the
    light of overlapping neighbours is confused with its own, and no estimator that must also
    find the neighbours can do as well. Here the Fisher information is that of the whole
    frame: the parameters are (x, y, [z,] photons) of every emitter of the frame and one
    uniform background, the pixels are the frame's (light falling outside is lost), and the
    bounds are the diagonal of its inverse. For an isolated emitter far from the edges they
    equal the single-emitter bounds (to the background's share of the information).

    ``detection_snr`` is ``photons / bound of photons`` with the emitter's own position and z
    known (its neighbours' and the background still fitted): how many standard deviations the
    emitter's light stands above none at all, to the Fisher information's (large-photon)
    approximation. It describes a test for the emitter's presence at a given place (at zero
    photons its position means nothing); a detector that must also search for the place
    needs more, and as a rule of thumb, not a bound, few detectors find emitters below about
    3-5. For a lone emitter it is ``photons * sqrt(I_NN - I_Nb^2 / I_bb)`` of the
    single-emitter information.
    ``detection_snr_known_neighbours`` is the same with every position in the frame known
    (only photons and background fitted), an optimistic version: it cannot be lower.

    Two nearly coincident emitters both get a low detection SNR (their photons cannot be told
    apart), yet one detection there finds one of them: a ceiling built on these numbers
    undercounts such pairs. Exactly coincident ones (e.g. a row listed twice) make the
    information singular: that frame's five columns are NaN, with a warning (only the faint
    emitter's, if it is one below `known_below_photons` that coincides with another).

    The background is one level per frame (the mean of its rows' ``bg``): a background that
    varies across the frame is averaged.

    Every neighbour's place costs the same, however faint it is: its Jacobian's columns span
    the same directions at 10 photons as at 5000. So a neighbour on for a sliver of the frame
    counts as fully as a bright one. With `known_below_photons`, emitters fainter than that are
    known to the estimator instead: their light stays in every pixel's mean, their parameters
    are not fitted (each such emitter's own bounds are computed with its own parameters
    fitted, the other faint ones known). The bounds then no longer bound every unbiased
    estimator, but they do not undercount what a detector that ignores such slivers can do.

    Parameters
    ----------
    truth : DataFrame
        Ground truth with columns ``frame, x_nm, y_nm, z_nm, photons`` (and optionally ``bg``,
        the background photons per pixel of each row's frame).
    config : Config
        The simulation's configuration (PSF, camera, pixel size).
    frame_shape : (H, W)
        Frame size, px.
    bg_photons : float, optional
        Background photons per pixel; the ``bg`` column's mean per frame if present, else the
        configuration's mean background (level and structured part).
    noise : NoiseModel, optional
        As for :func:`add_crlb_columns`: one read noise for the chip by default, or a map of
        the frames.
    known_below_photons : float
        Emitters with fewer photons are known, not fitted (see above); 0 fits every one.
    max_elements : int
        Largest Jacobian (parameters x pixels, with a margin of a patch on every side) of one
        frame; beyond it a ValueError asks for smaller frames (the cost grows as emitters x
        pixels, 8 bytes each).

    Returns
    -------
    DataFrame
        A copy of `truth` with the five columns added (nm for the bounds).
    """
    _check_known_below(known_below_photons)
    columns = {
        name: np.full(len(truth), np.nan)
        for name in ("crlb_crowded_x_nm", "crlb_crowded_y_nm", "crlb_crowded_z_nm",
                     "detection_snr", "detection_snr_known_neighbours")
    }
    px = config.image.pixel_size_nm
    singular: list[int] = []
    for frame_no, rows, info, is_3d in _frame_informations(
        truth, config, frame_shape, bg_photons, noise, max_elements
    ):
        photons = truth["photons"].to_numpy()[rows]
        bounds = _frame_bounds(info, photons, 4 if is_3d else 3, known_below_photons)
        if bounds is None or not bounds[0][:, 0].isfinite().all():
            singular.append(frame_no)
        if bounds is None:
            continue
        std, snr = bounds
        columns["crlb_crowded_x_nm"][rows] = std[:, 0].numpy() * px
        columns["crlb_crowded_y_nm"][rows] = std[:, 1].numpy() * px
        if is_3d:
            columns["crlb_crowded_z_nm"][rows] = std[:, 2].numpy()
        columns["detection_snr"][rows] = snr[:, 0].numpy()
        columns["detection_snr_known_neighbours"][rows] = snr[:, 1].numpy()
    _warn_singular(singular, "their crowded bounds (all of the frame's, or a faint emitter's "
                   "own)")
    out = truth.copy()
    for name, values in columns.items():
        out[name] = values
    return out


def add_crowded_window_bounds(
    truth: pd.DataFrame,
    config: Config,
    context_frames: int,
    *,
    frame_shape: tuple[int, int],
    bg_photons: float | None = None,
    noise: NoiseModel | None = None,
    known_below_photons: float = 0.0,
    max_elements: int = 50_000_000,
) -> pd.DataFrame:
    """Add ``crlb_crowded_window_{x,y,z}_nm``: bounds that count the neighbours, for an
    estimator that reads `context_frames` frames centred on each row's frame.

    The two bounds before this one each leave something out: :func:`add_window_crlb_columns`
    pools the frames of the window but treats the emitter as alone, :func:`add_crowded_bounds`
    counts the neighbours but reads one frame. Here the parameters are those of every emitter
    on anywhere in the window: its place (x, y[, z]), kept while it is on, and its photons in
    each frame in which it is on, with one uniform background per frame. The frames are
    independent given the parameters, so the window's information is the sum of each frame's
    (:func:`add_crowded_bounds`' matrix, its photons and background taken out by their Schur
    complement, since no other frame tells about them). With one frame the bounds are
    :func:`add_crowded_bounds`'; for a lone emitter, :func:`add_window_crlb_columns`' (to the
    background's share, which the whole frame knows better).

    An emitter (``id``) whose photons stay below `known_below_photons` in every frame of the
    window is known there, not fitted (see :func:`add_crowded_bounds`: a faint neighbour's
    place otherwise costs as much as a bright one's); its rows get NaN. One that is brighter in
    some frame of the window is fitted in all of them, its place pinned by the bright frames.
    Parameters as :func:`add_crowded_bounds`; `truth` needs ``frame`` and ``id`` too. A window
    whose information is singular (e.g. two emitters at the same place) gives NaN for its
    centre frame's rows, with a warning.
    """
    _check_window_truth(truth, context_frames)
    _check_known_below(known_below_photons)
    std = torch.full((len(truth), 3), float("nan"), dtype=torch.float64)
    ids = truth["id"].to_numpy()
    photons = truth["photons"].to_numpy()
    half = context_frames // 2
    singular: list[int] = []
    # Frame by frame in time order, keeping the information of the frames that the windows
    # still to bound need (a whole movie's would not fit in memory).
    frames: dict[int, tuple[np.ndarray, torch.Tensor, int]] = {}
    pending: deque[int] = deque()  # centre frames whose windows are not all read yet
    computed = _frame_informations(truth, config, frame_shape, bg_photons, noise, max_elements)
    for item in chain(computed, [None]):  # None: the last frame has been read
        if item is not None:
            frame_no, rows, info, is_3d = item
            frames[frame_no] = (rows, info, 4 if is_3d else 3)
            pending.append(frame_no)
        while pending and (item is None or pending[0] + half <= frame_no):
            centre = pending.popleft()
            window = [frames[f] for f in range(centre - half, centre + half + 1) if f in frames]
            if not _window_bounds(window, frames[centre], ids, photons, known_below_photons,
                                  std):
                singular.append(centre)
            oldest = pending[0] if pending else centre + 1
            for f in [f for f in frames if f < oldest - half]:
                del frames[f]
    _warn_singular(singular, "crowded window bounds of their emitters",
                   subject="windows centred on frame(s)")
    return _with_bounds(truth, std, "crlb_crowded_window", config)


def _window_bounds(window: list[tuple[np.ndarray, torch.Tensor, int]],
                   centre: tuple[np.ndarray, torch.Tensor, int], ids: np.ndarray,
                   photons: np.ndarray, known_below_photons: float, std: torch.Tensor) -> bool:
    """Write the place bounds of the `centre` frame's fitted emitters from the frames of
    `window` into their rows of `std` (N, 3); False if the window's information is singular."""
    in_window = np.concatenate([rows for rows, _, _ in window])
    peak = pd.Series(photons[in_window]).groupby(ids[in_window]).max()
    fitted = pd.Index(peak.index[peak.to_numpy() >= known_below_photons])
    centre_rows, _, n_par = centre
    cov = _window_covariance(window, ids, fitted, n_par)
    if cov is None:
        return False
    k = n_par - 1
    place = fitted.get_indexer(ids[centre_rows])
    report = place >= 0
    index = torch.as_tensor(place[report][:, None] * k + np.arange(k))
    std[torch.as_tensor(centre_rows[report])[:, None], torch.arange(k)] = _bound_from_variance(
        cov.diagonal()[index])
    return True


def _window_covariance(window: list[tuple[np.ndarray, torch.Tensor, int]], ids: np.ndarray,
                       fitted: pd.Index, n_par: int) -> torch.Tensor | None:
    """Covariance bound of the places (x, y[, z] per emitter of `fitted`, in that order) from
    the frames of `window` (each: rows of the truth, information of :func:`_frame_information`);
    None if singular."""
    k = n_par - 1
    total = torch.zeros(len(fitted) * k, len(fitted) * k, dtype=torch.float64)
    for rows, info, _ in window:
        place = fitted.get_indexer(ids[rows])
        emitters = torch.as_tensor(np.flatnonzero(place >= 0))
        if not len(emitters):
            continue
        params = emitters[:, None] * n_par + torch.arange(n_par)
        own = params[:, :k].flatten()  # places, then photons and the background: nuisance
        nuisance = torch.cat([params[:, k], torch.tensor([info.shape[0] - 1])])
        marginal, bad = _schur(info[own[:, None], own[None, :]],
                               info[own[:, None], nuisance[None, :]],
                               info[nuisance[:, None], nuisance[None, :]])
        if bad.item():
            return None
        target = torch.as_tensor(place[place >= 0][:, None] * k + np.arange(k)).flatten()
        total[target[:, None], target[None, :]] += marginal
    cov, bad = torch.linalg.inv_ex(total)
    if bad.item() or not torch.isfinite(cov).all():
        return None
    return cov


def _check_known_below(known_below_photons: float) -> None:
    if not known_below_photons >= 0:  # NaN would make every emitter known
        raise ValueError(f"known_below_photons must be >= 0, got {known_below_photons}")


def _warn_singular(frames: list[int], what: str, subject: str = "frame(s)") -> None:
    if frames:
        shown = ", ".join(map(str, frames[:5])) + (", ..." if len(frames) > 5 else "")
        warnings.warn(
            f"the Fisher information of {len(frames)} {subject} ({shown}) is singular, "
            f"e.g. two emitters at the same place: {what} are NaN",
            DenselocWarning,
            stacklevel=3,
        )


def _frame_informations(
    truth: pd.DataFrame,
    config: Config,
    frame_shape: tuple[int, int],
    bg_photons: float | None,
    noise: NoiseModel | None,
    max_elements: int,
) -> Iterator[tuple[int, np.ndarray, torch.Tensor, bool]]:
    """For each frame of `truth`: its number, its rows (positions in `truth`), the Fisher
    information of all its emitters and background (:func:`_frame_information`) and whether
    the PSF is 3D; the arguments as :func:`add_crowded_bounds`'."""
    from denseloc.sim.simulator import psf_from_config

    psf = psf_from_config(config.psf, config.emitters.z_range_nm)
    noise = NoiseModel.from_camera(config.camera) if noise is None else noise
    _check_noise_map(noise, frame_shape)
    if noise.per_pixel:
        noise = replace(noise, read_var_e2=noise.read_var_e2.flatten()[None])
    height, width = (int(v) for v in frame_shape)
    n_par = 4 if psf.is_3d else 3
    margin = 2 * psf.default_patch_size()  # place_patches renders into a padded stack
    for frame_no, rows in truth.groupby("frame").indices.items():
        n = len(rows)
        elements = (n * n_par + 1) * (height + margin) * (width + margin)
        if elements > max_elements:
            raise ValueError(
                f"a frame with {n} emitters on {height}x{width} px needs a Jacobian of "
                f"{elements:,} elements (max_elements={max_elements:,}); evaluate smaller frames"
            )
        frame = truth.iloc[rows]
        if bg_photons is not None:
            bg = float(bg_photons)
        elif "bg" in frame:
            bg = float(frame["bg"].mean())
        else:
            bg = config.background.mean_photons
        info = _frame_information(psf, noise, frame, bg, config.image.pixel_size_nm,
                                  (height, width))
        yield int(frame_no), rows, info, psf.is_3d


def _check_noise_map(noise: NoiseModel, frame_shape: tuple[int, int] | None) -> None:
    if not noise.per_pixel:
        return
    if frame_shape is None or tuple(noise.read_var_e2.shape) != tuple(frame_shape):
        raise ValueError(f"a read-noise map of shape {tuple(noise.read_var_e2.shape)} needs "
                         f"frames of that shape, not {frame_shape}")


def _frame_information(
    psf: PSF,
    noise: NoiseModel,
    frame: pd.DataFrame,
    bg: float,
    pixel_size_nm: float,
    shape: tuple[int, int],
) -> torch.Tensor:
    """Fisher information (n P + 1, n P + 1) of one frame: the P parameters (x [px], y [px],
    [z [nm],] photons) of each of its n emitters in turn, then one uniform background."""
    height, width = shape
    size = psf.default_patch_size()
    n = len(frame)
    n_par = 4 if psf.is_3d else 3
    col = {c: torch.tensor(frame[c].to_numpy(), dtype=torch.float64)
           for c in ("x_nm", "y_nm", "z_nm", "photons")}
    photons = col["photons"].clamp_min(1e-3)
    row0, col0, dx, dy = patch_origin(
        col["x_nm"] / pixel_size_nm - 0.5, col["y_nm"] / pixel_size_nm - 0.5, size
    )
    f, df = psf.evaluate(dx, dy, col["z_nm"], size, derivatives=True)
    # Each emitter's own Jacobian rows, without its local background (the frame has one).
    _, jac = expected_and_jacobian(f, df, photons, torch.zeros_like(photons), is_3d=psf.is_3d)
    patches = jac[:, :-1].reshape(n * n_par, size, size)
    placed = place_patches(
        patches,
        torch.arange(n * n_par),
        row0.repeat_interleave(n_par),
        col0.repeat_interleave(n_par),
        (n * n_par, height, width),
    ).reshape(n, n_par, height * width)
    mu = bg + (photons[:, None] * placed[:, -1]).sum(dim=0)
    ones = torch.ones(1, height * width, dtype=torch.float64)
    jac = torch.cat([placed.reshape(n * n_par, -1), ones])
    return information_from_jacobian(mu[None], jac[None], noise)[0]


def _frame_bounds(
    info: torch.Tensor, photons: np.ndarray, n_par: int, known_below_photons: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bounds (n, P) of (x [px], y [px], [z [nm],] photons) of one frame's emitters, all fitted
    jointly with a uniform background (those below `known_below_photons` known, but each
    fitted for its own bounds), and their detection SNRs (n, 2) with the neighbours' positions
    fitted and known (see :func:`add_crowded_bounds`), from the frame's information
    (:func:`_frame_information`); None if it is singular for the fitted emitters (NaN rows
    for a faint emitter whose own set alone is singular)."""
    n = len(photons)
    fitted = torch.as_tensor(photons >= known_below_photons)
    photons = torch.as_tensor(photons, dtype=torch.float64).clamp_min(1e-3)
    std = torch.full((n, n_par), float("nan"), dtype=torch.float64)
    snr = torch.full((n, 2), float("nan"), dtype=torch.float64)
    free = torch.nonzero(fitted).flatten()
    sets = [(free, free)] if len(free) else []  # (emitters fitted, emitters reported)
    sets += [(torch.cat([free, i[None]]), i[None]) for i in torch.nonzero(~fitted).flatten()]
    for emitters, report in sets:
        bounds = _joint_bounds(info, emitters, n_par, photons[emitters])
        if bounds is None:
            if report is free:
                return None  # every fitted emitter's bounds depend on it
            continue  # only this faint emitter's own bounds are lost: NaN
        std[report], snr[report] = bounds[0][-len(report):], bounds[1][-len(report):]
    return std, snr


def _joint_bounds(info: torch.Tensor, emitters: torch.Tensor, n_par: int,
                  photons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bounds (m, P) and detection SNRs (m, 2) of `emitters` fitted with the background, from
    the frame's information `info` (every emitter's P parameters, then the background); the
    other emitters are known. None if singular."""
    index = torch.cat([(emitters[:, None] * n_par + torch.arange(n_par)).flatten(),
                       torch.tensor([info.shape[0] - 1])])
    info = info[index[:, None], index[None, :]]
    m = len(emitters)
    cov, singular = torch.linalg.inv_ex(info)
    if singular.item() or not torch.isfinite(cov).all():
        return None
    std = _bound_from_variance(cov.diagonal())[:-1].reshape(m, n_par)
    # The photons' variance with the emitter's own position known: conditioning the joint
    # covariance on it (its Schur complement) is the inverse of the information without it.
    first = torch.arange(m) * n_par
    own = first[:, None] + torch.arange(n_par - 1)  # (m, P-1) own position indices
    amp = first + n_par - 1
    c_ss = cov[own[:, :, None], own[:, None, :]]
    c_ns = cov[amp[:, None], own]
    known = cov[amp, amp] - (c_ns * torch.linalg.solve(c_ss, c_ns)).sum(dim=1)
    # Every position known: only the photons and the background are fitted.
    linear = torch.cat([amp, torch.tensor([m * n_par])])
    all_known = torch.linalg.inv(info[linear[:, None], linear[None, :]]).diagonal()[:-1]
    snr = torch.stack([photons / known.clamp_min(1e-300).sqrt(),
                       photons / all_known.clamp_min(1e-300).sqrt()], dim=1)
    return std, snr
