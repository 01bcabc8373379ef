"""Lateral drift from the localizations themselves: redundant cross-correlation (RCC).

Wang et al., Opt. Express 22, 15982 (2014). The movie is cut into `n_segments` blocks of
frames; each block is rendered as a histogram image; every pair of blocks is cross-correlated
(FFT) and the sub-pixel peak (a parabola through the log-correlation around the maximum, per
axis) gives the shift between them. The N(N-1)/2 shifts over-determine the N block drifts:
a least-squares solve, then the pair with the largest residual above `max_residual_nm` is
dropped and the solve repeated, worst first, skipping pairs whose loss would cut a block off
from the others. A cubic spline through the block centres gives the drift of every frame
between the first and last centre; before and after them (half a block at each end) the
drift continues along the spline's end slopes, as extrapolating the cubic there amplifies
the blocks' noise. The drift is reported relative to the first frame.

Sign convention: ``observed = true + drift(frame)``; :func:`correct_drift` subtracts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from denseloc.errors import DenselocError

__all__ = ["DriftEstimate", "correct_drift", "estimate_drift", "plot_drift"]

_MAX_SPECTRA_BYTES = 6 * 2**30


@dataclass(frozen=True)
class DriftEstimate:
    """Drift per frame (nm) and the block estimates it was interpolated from."""

    frames: np.ndarray
    """Frame numbers, first to last frame of the table."""
    x_nm: np.ndarray
    y_nm: np.ndarray
    block_frames: np.ndarray
    """Mean frame of each block."""
    block_x_nm: np.ndarray
    block_y_nm: np.ndarray
    pairs_used: int
    pairs_total: int

    def at(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift (x, y) in nm at the given frames (clamped to the estimated range)."""
        index = np.clip(np.asarray(frame) - self.frames[0], 0, len(self.frames) - 1)
        return self.x_nm[index], self.y_nm[index]

    def to_frame(self) -> pd.DataFrame:
        """A table with columns frame, drift_x_nm, drift_y_nm."""
        return pd.DataFrame({"frame": self.frames, "drift_x_nm": self.x_nm,
                             "drift_y_nm": self.y_nm})


def estimate_drift(
    table: pd.DataFrame,
    *,
    n_segments: int = 10,
    pixel_size_nm: float = 20.0,
    max_shift_nm: float = 1000.0,
    max_residual_nm: float | None = None,
    smoothing_px: float = 1.0,
) -> DriftEstimate:
    """Estimate the lateral drift of a localization table by redundant cross-correlation.

    Parameters
    ----------
    table : DataFrame
        Localizations (``frame``, ``x_nm``, ``y_nm``).
    n_segments : int
        Blocks of frames (>= 3); each needs enough localizations to show the structure.
    pixel_size_nm : float
        Pixel of the block images; shifts are sub-pixel.
    max_shift_nm : float
        Largest drift between two blocks that is searched for.
    max_residual_nm : float, optional
        Pairs disagreeing with the solution by more are dropped (default: one image pixel).
    smoothing_px : float
        Gaussian blur of the block images (render pixels) before correlation.
    """
    from scipy import fft
    from scipy.interpolate import make_interp_spline
    from scipy.ndimage import gaussian_filter

    from denseloc._runtime import available_cores
    from denseloc.analysis.render import data_extent, image_shape, render

    if n_segments < 3:
        raise DenselocError(
            f"drift estimation needs n_segments (--segments) >= 3, got {n_segments}")
    if not max_shift_nm > 0:
        raise DenselocError(f"the largest drift searched must be > 0 nm, got {max_shift_nm}")
    if table.empty:
        raise DenselocError("cannot estimate drift from an empty localization table")
    frames = table["frame"].to_numpy()
    first, last = int(frames.min()), int(frames.max())
    if last - first + 1 < n_segments:
        raise DenselocError(
            f"{last - first + 1} frames cannot be split into {n_segments} drift segments"
        )
    edges = np.linspace(first, last + 1, n_segments + 1)
    block = np.clip(np.searchsorted(edges, frames, side="right") - 1, 0, n_segments - 1)
    counts = np.bincount(block, minlength=n_segments)
    if counts.min() < 10:
        raise DenselocError(
            f"a drift segment holds only {counts.min()} localizations; use fewer segments"
        )
    extent = data_extent(table, pixel_size_nm)  # around the data, not from the camera origin
    shape = image_shape(extent, pixel_size_nm)
    spectrum_bytes = n_segments * shape[0] * (shape[1] // 2 + 1) * 8
    if spectrum_bytes > _MAX_SPECTRA_BYTES:
        raise DenselocError(
            f"{n_segments} block images of {shape[1]} x {shape[0]} px at {pixel_size_nm:g} nm "
            f"need {spectrum_bytes / 2**30:.1f} GiB of spectra; use a larger --pixel-size-nm "
            "or fewer --segments"
        )
    spectra = []
    for b in range(n_segments):
        image = render(table[block == b], pixel_size_nm=pixel_size_nm, extent_nm=extent)
        image = gaussian_filter(image.astype(np.float32), smoothing_px)
        spectra.append(fft.rfft2(image, workers=available_cores()))  # complex64
    reach = int(np.ceil(max_shift_nm / pixel_size_nm))
    pairs, shifts = [], []
    for i in range(n_segments):
        for j in range(i + 1, n_segments):
            corr = fft.irfft2(np.conj(spectra[i]) * spectra[j], s=shape, workers=available_cores())
            shifts.append(_peak(corr, reach) * pixel_size_nm)
            pairs.append((i, j))
    pairs_arr, shifts_arr = np.array(pairs), np.array(shifts)  # (P, 2), (P, 2) as (dy, dx)
    tolerance = pixel_size_nm if max_residual_nm is None else max_residual_nm
    use = np.ones(len(pairs_arr), dtype=bool)
    needed = np.zeros(len(pairs_arr), dtype=bool)  # pairs whose loss would cut off a block
    while True:
        drift = _solve(pairs_arr[use], shifts_arr[use], n_segments)
        residual = np.linalg.norm(drift[pairs_arr[:, 1]] - drift[pairs_arr[:, 0]] - shifts_arr,
                                  axis=1)
        removable = use & ~needed & (residual > tolerance)
        if not removable.any():
            break
        worst = np.argmax(np.where(removable, residual, -1))
        trial = use.copy()
        trial[worst] = False
        if _connected(pairs_arr[trial], n_segments):
            use = trial
        else:
            needed[worst] = True
    centres = np.array([frames[block == b].mean() for b in range(n_segments)])
    all_frames = np.arange(first, last + 1)
    spline = make_interp_spline(centres, drift, k=min(3, n_segments - 1))  # 3 blocks: quadratic
    per_frame = _with_linear_ends(spline, all_frames.astype(float), centres[0], centres[-1])
    origin = per_frame[0].copy()
    per_frame -= origin
    drift = drift - origin
    return DriftEstimate(
        frames=all_frames, x_nm=per_frame[:, 1], y_nm=per_frame[:, 0], block_frames=centres,
        block_x_nm=drift[:, 1], block_y_nm=drift[:, 0],
        pairs_used=int(use.sum()), pairs_total=len(use),
    )


def _with_linear_ends(spline, frames: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The spline at `frames`, continued along its end slopes outside [lo, hi]."""
    values = spline(np.clip(frames, lo, hi))
    slope = spline.derivative()
    for end, outside in ((lo, frames < lo), (hi, frames > hi)):
        if outside.any():
            values[outside] += (frames[outside] - end)[:, None] * slope(end)[None, :]
    return values


def _peak(corr: np.ndarray, reach: int) -> np.ndarray:
    """Sub-pixel position (dy, dx) of the maximum of a circular correlation within `reach`."""
    ny, nx = corr.shape
    dy = np.fft.fftfreq(ny, 1 / ny).astype(int)
    dx = np.fft.fftfreq(nx, 1 / nx).astype(int)
    window = (np.abs(dy)[:, None] <= reach) & (np.abs(dx)[None, :] <= reach)
    iy, ix = np.unravel_index(np.argmax(np.where(window, corr, -np.inf)), corr.shape)
    along_y = np.array([corr[(iy + d) % ny, ix] for d in (-1, 0, 1)])
    along_x = np.array([corr[iy, (ix + d) % nx] for d in (-1, 0, 1)])
    floor = 1e-12 * abs(corr[iy, ix]) + 1e-300
    return np.array([
        dy[iy] + _parabola_vertex(np.log(np.maximum(along_y, floor))),
        dx[ix] + _parabola_vertex(np.log(np.maximum(along_x, floor))),
    ])


def _parabola_vertex(y: np.ndarray) -> float:
    curvature = y[0] - 2 * y[1] + y[2]
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (y[0] - y[2]) / curvature, -0.5, 0.5))


def _solve(pairs: np.ndarray, shifts: np.ndarray, n: int) -> np.ndarray:
    """Least-squares block drifts (n, 2) with drift[0] = 0 from d_j - d_i = shift_ij."""
    design = np.zeros((len(pairs), n - 1))
    for row, (i, j) in enumerate(pairs):
        if j:
            design[row, j - 1] += 1
        if i:
            design[row, i - 1] -= 1
    solution, *_ = np.linalg.lstsq(design, shifts, rcond=None)
    return np.vstack([np.zeros((1, 2)), solution])


def _connected(pairs: np.ndarray, n: int) -> bool:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[0] == 1


def correct_drift(table: pd.DataFrame, drift: DriftEstimate) -> pd.DataFrame:
    """A copy of `table` with the drift of each localization's frame subtracted."""
    dx, dy = drift.at(table["frame"].to_numpy())
    out = table.copy()
    out["x_nm"] = table["x_nm"].to_numpy(dtype=float) - dx
    out["y_nm"] = table["y_nm"].to_numpy(dtype=float) - dy
    out.attrs = dict(table.attrs)
    return out


def plot_drift(drift: DriftEstimate, path: str | os.PathLike) -> Path:
    """PNG of the estimated drift in x and y against frame, with the block estimates."""
    from denseloc._plotting import new_figure, save_figure

    fig = new_figure(7.0, 3.6)
    ax = fig.subplots()
    for label, line, points, colour in (("x", drift.x_nm, drift.block_x_nm, "tab:blue"),
                                        ("y", drift.y_nm, drift.block_y_nm, "tab:orange")):
        ax.plot(drift.frames, line, color=colour, label=f"drift {label}")
        ax.plot(drift.block_frames, points, "o", color=colour, ms=4)
    ax.set_xlabel("frame")
    ax.set_ylabel("drift (nm)")
    ax.set_title(f"redundant cross-correlation: {len(drift.block_frames)} segments, "
                 f"{drift.pairs_used}/{drift.pairs_total} pairs used")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
