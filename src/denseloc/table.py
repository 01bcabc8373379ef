"""The localization table: one schema for every localization and ground-truth table.

A table is a :class:`pandas.DataFrame` with one row per localization (or per emitter and
frame, for ground truth). Conventions, used everywhere in the package:

- ``frame`` is 0-based; importers and exporters of 1-based formats convert.
- ``x_nm`` is along the image column, ``y_nm`` along the row; the centre of pixel (0, 0)
  lies at ``(pixel_size_nm / 2, pixel_size_nm / 2)``, so ``column = x_nm / pixel_size_nm - 0.5``.
- Every quantity carries its unit in its name; photons are photo-electrons before the
  camera's quantum efficiency is applied (i.e. photons arriving at the detector).

Metadata travels in ``DataFrame.attrs`` (keys in :data:`METADATA_KEYS`) and is stored by the
native Parquet format.

Examples
--------
>>> import pandas as pd
>>> t = validate(pd.DataFrame({"frame": [0, 1], "x_nm": [50.0, 150.0], "y_nm": [50.0, 50.0]}))
>>> list(t.columns)[:4]
['frame', 'x_nm', 'y_nm', 'z_nm']
>>> float(t["z_nm"].iloc[0])
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from denseloc.errors import DenselocError

__all__ = [
    "COLUMNS",
    "METADATA_KEYS",
    "REQUIRED",
    "Column",
    "TableError",
    "empty",
    "nm_to_px",
    "px_to_nm",
    "validate",
]


class TableError(DenselocError):
    """A localization table that does not follow the schema."""


@dataclass(frozen=True)
class Column:
    """One column of the schema."""

    dtype: str
    unit: str
    description: str


COLUMNS: dict[str, Column] = {
    "frame": Column("int64", "frame", "frame index, 0-based"),
    "x_nm": Column("float64", "nm", "position along the image column"),
    "y_nm": Column("float64", "nm", "position along the image row"),
    "z_nm": Column("float64", "nm", "axial position relative to the focal plane"),
    "photons": Column("float64", "photons", "photons collected from the emitter in this frame"),
    "bg": Column("float64", "photons/px", "local background"),
    "p": Column("float64", "1", "detection probability (network) or quality score"),
    "sigma_x_nm": Column("float64", "nm", "predicted standard error of x_nm"),
    "sigma_y_nm": Column("float64", "nm", "predicted standard error of y_nm"),
    "sigma_z_nm": Column("float64", "nm", "predicted standard error of z_nm"),
    "sigma_photons": Column("float64", "photons", "predicted standard error of photons"),
    "id": Column("int64", "1", "emitter identity (ground truth) or group id"),
}
"""Every column the package knows, in canonical order. Unknown extra columns are kept."""

REQUIRED: tuple[str, ...] = ("frame", "x_nm", "y_nm")
"""Columns a table must have; ``z_nm`` defaults to 0 (2D data)."""

METADATA_KEYS: tuple[str, ...] = (
    "pixel_size_nm", "source", "movie_shape", "config", "localization", "software_version",
)
"""Keys of ``DataFrame.attrs`` that the native format stores. ``movie_shape`` is the source
movie's ``[frames, height, width]`` (the Picasso writer's ``Frames``, ``Height``, ``Width``).
``localization`` says how a table was made: ``method`` and ``threshold``, and for a network
its ``readout``, the ``sigma_scale`` factors applied to its sigmas and the model's
``frame_error_correlation`` (for grouping)."""


def empty() -> pd.DataFrame:
    """Return an empty table with the required columns and ``z_nm``."""
    return validate(pd.DataFrame({c: [] for c in (*REQUIRED, "z_nm")}))


def validate(table: pd.DataFrame, *, name: str = "table") -> pd.DataFrame:
    """Check a table against the schema and return it with canonical dtypes and order.

    Parameters
    ----------
    table : DataFrame
        At least the columns :data:`REQUIRED`.
    name : str
        How the table is named in error messages (usually its file name).

    Returns
    -------
    DataFrame
        A copy with known columns cast to their dtypes, ``z_nm`` added (zeros) if missing,
        known columns first in schema order, extra columns after them, and ``attrs`` kept.

    Raises
    ------
    TableError
        If a required column is missing, a known column holds text that is not a number
        (missing values are allowed, as NaN, except in positions and integer columns), a
        position is not finite, or a frame is negative or not an integer.
    """
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise TableError(
            f"{name}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, table.columns)) or 'none'}"
        )
    out = table.copy()
    if "z_nm" not in out.columns:
        out["z_nm"] = 0.0
    for col, spec in COLUMNS.items():
        if col not in out.columns:
            continue
        values = pd.to_numeric(out[col], errors="coerce")
        unreadable = values.isna() & out[col].notna()
        if unreadable.any():
            example = out[col][unreadable].iloc[0]
            raise TableError(
                f"{name}: column {col} holds {int(unreadable.sum())} value(s) that are not "
                f"numbers, e.g. {example!r} in row {int(np.argmax(unreadable.to_numpy()))} "
                "(0-based; a decimal comma?)"
            )
        if spec.dtype == "int64":
            finite = np.isfinite(values.to_numpy(dtype=float))
            if not finite.all() or (values % 1 != 0).any():
                raise TableError(f"{name}: column {col} must hold integers")
        out[col] = values.astype(spec.dtype)
    for col in ("x_nm", "y_nm", "z_nm"):
        if not np.isfinite(out[col].to_numpy()).all():
            raise TableError(f"{name}: column {col} has missing or non-finite values")
    if len(out) and out["frame"].min() < 0:
        raise TableError(f"{name}: frame must be >= 0 (0-based), got {out['frame'].min()}")
    known = [c for c in COLUMNS if c in out.columns]
    extra = [c for c in out.columns if c not in COLUMNS]
    out = out[known + extra].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def nm_to_px(position_nm: np.ndarray | float, pixel_size_nm: float) -> np.ndarray | float:
    """Convert a position in nm to a pixel index coordinate (centre of pixel 0 at 0.0)."""
    return np.asarray(position_nm) / pixel_size_nm - 0.5


def px_to_nm(position_px: np.ndarray | float, pixel_size_nm: float) -> np.ndarray | float:
    """Convert a pixel index coordinate (centre of pixel 0 at 0.0) to nm."""
    return (np.asarray(position_px) + 0.5) * pixel_size_nm
