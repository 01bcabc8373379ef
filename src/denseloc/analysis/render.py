"""Super-resolution images from localization tables.

Two modes:

- ``histogram``: the number of localizations per render pixel (sums to the number of
  localizations inside the image);
- ``gaussian``: each localization drawn as a normalised 2D Gaussian with its own predicted
  ``sigma_x_nm`` and ``sigma_y_nm``, integrated over each render pixel (error functions, so a
  sigma smaller than a pixel is still exact); each localization adds 1 to the image sum,
  apart from the part that falls outside the image.

Images can be coloured by a column (usually ``z_nm``): hue from the locally averaged value,
brightness from the density. Pixel (0, 0) of an image covers ``[x0, x0 + pixel) x [y0, y0 +
pixel)`` of the extent; rows are y.

Examples
--------
>>> import pandas as pd
>>> t = pd.DataFrame({"frame": [0, 0, 1], "x_nm": [5.0, 15.0, 15.0], "y_nm": [5.0, 5.0, 5.0]})
>>> render(t, pixel_size_nm=10.0, extent_nm=(0.0, 20.0, 0.0, 10.0)).tolist()
[[1.0, 2.0]]
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import erf

from denseloc.errors import DenselocError, DenselocWarning

__all__ = ["render", "render_colored", "render_extent", "save_image"]

Extent = tuple[float, float, float, float]
"""(x0, x1, y0, y1) in nm."""

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
"""The extensions :func:`save_image` writes."""
_MAX_PIXELS = 400_000_000
_MAX_HALF_WIDTH_PX = 100
_SPLAT_ELEMENTS = 2**22  # (localizations x drawn pixels) per block: ~100 MB of temporaries


def check_pixel_size(pixel_size_nm: float) -> None:
    """Raise DenselocError unless a render pixel size is finite and positive."""
    if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise DenselocError(f"render pixel size must be > 0 nm, got {pixel_size_nm}")


def render_extent(table: pd.DataFrame, pixel_size_nm: float) -> Extent:
    """The default extent: from the camera origin (0, 0) to past the largest x and y."""
    x0, x1, y0, y1 = data_extent(table, pixel_size_nm)
    return (min(0.0, x0), x1, min(0.0, y0), y1)


def data_extent(table: pd.DataFrame, pixel_size_nm: float) -> Extent:
    """Whole render pixels around the localizations (not from the camera origin)."""
    check_pixel_size(pixel_size_nm)
    if table.empty:
        raise DenselocError("cannot render an empty localization table")
    x0 = math.floor(table["x_nm"].min() / pixel_size_nm) * pixel_size_nm
    y0 = math.floor(table["y_nm"].min() / pixel_size_nm) * pixel_size_nm
    x1 = (math.floor(table["x_nm"].max() / pixel_size_nm) + 1) * pixel_size_nm
    y1 = (math.floor(table["y_nm"].max() / pixel_size_nm) + 1) * pixel_size_nm
    return (x0, x1, y0, y1)


def image_shape(extent: Extent, pixel_size_nm: float) -> tuple[int, int]:
    """(ny, nx) of an image of `extent` at `pixel_size_nm`; refused beyond _MAX_PIXELS."""
    x0, x1, y0, y1 = extent
    if not (x1 > x0 and y1 > y0):
        raise DenselocError(f"empty render extent {extent} (x0, x1, y0, y1 in nm)")
    # Whole pixels covering the extent (a last partial pixel is kept, not dropped).
    ny = max(1, math.ceil((y1 - y0) / pixel_size_nm - 1e-9))
    nx = max(1, math.ceil((x1 - x0) / pixel_size_nm - 1e-9))
    if nx * ny > _MAX_PIXELS:
        raise DenselocError(
            f"a {nx} x {ny} px image at {pixel_size_nm:g} nm/px is too large; "
            "choose a larger --pixel-size-nm"
        )
    return ny, nx


def render(
    table: pd.DataFrame,
    *,
    pixel_size_nm: float = 10.0,
    mode: Literal["histogram", "gaussian"] = "histogram",
    extent_nm: Extent | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Render localizations into a 2D image of shape (ny, nx).

    Parameters
    ----------
    table : DataFrame
        Localizations (``x_nm``, ``y_nm``; ``sigma_x_nm``, ``sigma_y_nm`` for gaussian).
    pixel_size_nm : float
        Size of a render pixel.
    mode : {"histogram", "gaussian"}
        Counts per pixel, or each localization as a Gaussian with its predicted sigma.
    extent_nm : (x0, x1, y0, y1), optional
        Region to render (default: :func:`render_extent`); the image has
        ``ceil((x1 - x0) / pixel_size_nm)`` columns from x0, so an extent that is not a whole
        number of pixels is widened to one.
    weights : array of shape (len(table),), optional
        Value each localization contributes instead of 1 (e.g. z for a z-weighted sum).
    """
    check_pixel_size(pixel_size_nm)
    extent = render_extent(table, pixel_size_nm) if extent_nm is None else extent_nm
    ny, nx = image_shape(extent, pixel_size_nm)
    x0, _, y0, _ = extent
    u = (table["x_nm"].to_numpy(dtype=float) - x0) / pixel_size_nm
    v = (table["y_nm"].to_numpy(dtype=float) - y0) / pixel_size_nm
    w = np.ones(len(table)) if weights is None else np.asarray(weights, dtype=float)
    if mode == "histogram":
        # Pixels are [x0, x0 + pixel): histogram2d's last bin would also take its right edge.
        keep = (u < nx) & (v < ny)
        image, _, _ = np.histogram2d(v[keep], u[keep], bins=(ny, nx), range=((0, ny), (0, nx)),
                                     weights=w[keep])
        return image
    if mode != "gaussian":
        raise DenselocError(f"unknown render mode {mode!r}; available: histogram, gaussian")
    missing = [c for c in ("sigma_x_nm", "sigma_y_nm") if c not in table]
    if missing:
        raise DenselocError(
            f"gaussian rendering needs the predicted uncertainties ({', '.join(missing)} "
            "missing); use --mode histogram"
        )
    su = np.maximum(table["sigma_x_nm"].to_numpy(dtype=float) / pixel_size_nm, 1e-3)
    sv = np.maximum(table["sigma_y_nm"].to_numpy(dtype=float) / pixel_size_nm, 1e-3)
    if not (np.isfinite(su).all() and np.isfinite(sv).all()):
        raise DenselocError("sigma_x_nm / sigma_y_nm hold missing or non-finite values")
    half = np.ceil(4 * np.maximum(su, sv))
    cut = int((half > _MAX_HALF_WIDTH_PX).sum())
    if cut:
        warnings.warn(
            f"{cut} localizations have sigmas above {_MAX_HALF_WIDTH_PX / 4:g} render pixels "
            f"({_MAX_HALF_WIDTH_PX / 4 * pixel_size_nm:g} nm) and are drawn only within "
            f"{_MAX_HALF_WIDTH_PX} pixels of their centre, narrower than their sigma; filter "
            "them (denseloc localize --max-sigma-nm) or render larger pixels",
            DenselocWarning,
            stacklevel=2,
        )
    half = np.clip(half, 1, _MAX_HALF_WIDTH_PX).astype(int)
    flat = np.zeros(ny * nx)
    for k in np.unique(half):
        rows = np.flatnonzero(half == k)
        rows = rows[np.argsort(v[rows], kind="stable")]  # blocks of nearby rows of the image
        per_block = max(1, _SPLAT_ELEMENTS // (2 * int(k) + 1) ** 2)
        for block in np.array_split(rows, -(-len(rows) // per_block)):
            _splat(flat, (ny, nx), u[block], v[block], su[block], sv[block], w[block], k)
    return flat.reshape(ny, nx)


def _pixel_weights(centre: np.ndarray, sigma: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices (N, 2k+1) around each centre and the Gaussian mass in each pixel."""
    index = np.floor(centre).astype(np.int64)[:, None] + np.arange(-k, k + 1)
    scale = np.sqrt(2.0) * sigma[:, None]
    edges = (index - centre[:, None]) / scale
    mass = 0.5 * (erf(edges + 1 / scale) - erf(edges))
    return index, mass / mass.sum(axis=1, keepdims=True)


def _splat(flat, shape, u, v, su, sv, w, k) -> None:
    ny, nx = shape
    cols, wx = _pixel_weights(u, su, k)
    rows, wy = _pixel_weights(v, sv, k)
    mass = wy[:, :, None] * wx[:, None, :] * w[:, None, None]
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    index = (rows[:, :, None] * nx + cols[:, None, :])[inside]
    if index.size:  # add into the span of pixels the block touches, not a whole-image array
        lo = int(index.min())
        flat[lo:int(index.max()) + 1] += np.bincount(index - lo, weights=mass[inside])


def render_colored(
    table: pd.DataFrame,
    *,
    by: str = "z_nm",
    value_range: tuple[float, float] | None = None,
    cmap: str = "turbo",
    saturation: float = 0.995,
    **kwargs,
) -> np.ndarray:
    """RGB image (ny, nx, 3), float32 in [0, 1]: hue from the mean of column `by`, brightness
    from the density.

    `value_range` maps onto the colormap (default: the 1st-99th percentile of the column);
    brightness saturates at the `saturation` quantile of the non-empty pixels. Other keyword
    arguments go to :func:`render`.
    """
    from matplotlib import colormaps

    if by not in table:
        raise DenselocError(f"cannot colour by {by!r}: the table has no such column")
    values = table[by].to_numpy(dtype=float)
    density = render(table, **kwargs)
    with warnings.catch_warnings():  # said once, by the first
        warnings.simplefilter("ignore", DenselocWarning)
        weighted = render(table, weights=values, **kwargs)
    lo, hi = np.percentile(values, [1, 99]) if value_range is None else value_range
    mean = np.divide(weighted, density, out=weighted, where=density > 0)
    mean[density <= 0] = lo
    del weighted
    # The colormap's own 256 levels as a float32 table: an RGB image of 12 bytes per pixel
    # rather than matplotlib's RGBA of 32.
    colours = colormaps[cmap].resampled(256)(np.arange(256))[:, :3].astype(np.float32)
    level = np.clip((mean - lo) / max(hi - lo, 1e-12), 0, 1) * 256  # as matplotlib bins it
    rgb = colours[np.minimum(level, 255).astype(np.uint8)]
    rgb *= _brightness(density, saturation).astype(np.float32)[..., None]
    return rgb


def _brightness(image: np.ndarray, saturation: float) -> np.ndarray:
    positive = image[image > 0]
    if not len(positive):
        return np.zeros_like(image)
    top = float(np.quantile(positive, saturation)) or float(positive.max())
    return np.clip(image / top, 0, 1)


def save_image(
    image: np.ndarray,
    path: str | os.PathLike,
    *,
    pixel_size_nm: float,
    cmap: str = "hot",
    saturation: float = 0.995,
) -> Path:
    """Write a rendered image atomically.

    ``.png``: 8-bit, a grey-level image through `cmap` with contrast saturating at the
    `saturation` quantile of the non-empty pixels (RGB images as they are).
    ``.tif``/``.tiff``: the values themselves (float32 counts, or 8-bit RGB) with the pixel size
    in the ImageJ metadata, so Fiji shows a calibrated scale.
    """
    import tifffile
    from matplotlib import colormaps

    from denseloc._atomic import atomic_path, check_writable

    path = check_writable(path, IMAGE_SUFFIXES)
    suffix = path.suffix.lower()
    rgb = image.ndim == 3
    with atomic_path(path) as tmp:
        if suffix == ".png":
            from PIL import Image

            pixels = image if rgb else colormaps[cmap](_brightness(image, saturation))[..., :3]
            Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(tmp, format="PNG")
        else:
            data = np.round(image * 255).astype(np.uint8) if rgb else image.astype(np.float32)
            per_um = 1000.0 / pixel_size_nm
            with open(tmp, "wb") as fh:
                tifffile.imwrite(
                    fh, data, imagej=True, resolution=(per_um, per_um),
                    metadata={"unit": "um", "axes": "YXS" if rgb else "YX"},
                    photometric="rgb" if rgb else "minisblack",
                )
    return path
