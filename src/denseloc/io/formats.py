"""Read and write localization tables in the file formats of SMLM software.

Every reader returns a table that follows :mod:`denseloc.table` (0-based ``frame``, ``x_nm``
along the image column, centre of pixel (0, 0) at ``(pixel_size_nm / 2, pixel_size_nm / 2)``),
validated and named after its file. Every writer validates its input first and writes
atomically, so a failure never leaves a half-written file under the final name.

Formats (:data:`FORMATS`; ``read_table`` and ``write_table`` choose by extension):

``parquet`` (``.parquet``)
    The native format: every column plus the metadata of ``DataFrame.attrs``
    (:data:`denseloc.table.METADATA_KEYS`) as JSON under the schema-metadata key
    ``b"denseloc"``. ``software_version`` is set to the writing denseloc version.
``csv`` (``.csv``)
    Plain CSV with the schema's column names and 0-based frames.
``thunderstorm`` (``.csv``)
    ThunderSTORM's CSV: quoted headers ``"frame","x [nm]",...``, 1-based frames, positions
    in nm with the same pixel convention as the schema (ImageJ: centre of pixel 0 at 0.5 px).
    ``x/y/z [nm]`` -> ``x_nm/y_nm/z_nm``, ``intensity [photon]`` -> ``photons``,
    ``offset [photon]`` -> ``bg``, ``uncertainty_xy [nm]`` (or ``uncertainty [nm]``) ->
    ``sigma_x_nm`` and ``sigma_y_nm``, ``uncertainty_z [nm]`` -> ``sigma_z_nm``,
    ``sigma [nm]`` (PSF width) -> ``psf_sigma_nm``, ``bkgstd [photon]`` ->
    ``bkgstd_photons``; other columns are kept with names reduced to letters, digits and
    ``_``. When ``sigma_x_nm`` and ``sigma_y_nm`` differ, the writer emits
    ``uncertainty_x [nm]`` and ``uncertainty_y [nm]`` (not ThunderSTORM's own names, which
    have one lateral uncertainty only), which the reader maps back.
``challenge`` (``.csv``, read only)
    Ground truth of the EPFL SMLM challenge: ``Ground-truth,frame,xnano,ynano,znano,intensity``
    with 1-based frames (the challenge's image files are numbered from 00001.tif).
    ``Ground-truth`` -> ``id``, ``intensity`` -> ``photons``; positions as in the schema.
``picasso`` (``.hdf5`` + ``.yaml`` sidecar)
    Picasso's localizations: dataset ``locs``, a structured array with ``frame`` (0-based),
    ``x``, ``y``, ``lpx``, ``lpy``, ``sx``, ``sy`` in camera pixels, ``photons``, ``bg`` and
    more. Picasso's x and y are pixel index coordinates: the centre of pixel (0, 0) is at
    (0.0, 0.0), so ``x_nm = (x + 0.5) * pixel_size_nm``. (Checked on Picasso's own test data:
    the intensity-weighted centroid of the spots agrees with ``x`` to 0.005 px, and is 0.48 px
    off under the edge convention.) ``lpx/lpy`` -> ``sigma_x_nm/sigma_y_nm``, ``sx/sy`` ->
    ``psf_sigma_x_nm/psf_sigma_y_nm`` (nm), ``group`` -> ``id``, ``z`` (nm) -> ``z_nm``;
    other fields are kept by name. The pixel size comes from ``pixel_size_nm``, else from
    the sidecar (the movie's ``Camera.Pixelsize`` written by Picasso Simulate first, then
    ``Pixelsize`` of Picasso Localize), else from the movie's sidecar (the locs file name
    without ``_locs``).
``decode`` (``.h5``)
    DECODE's ``EmitterSet`` HDF5 layout (``decode.utils.emitter_io.save_h5``, DECODE 0.10):
    group ``meta`` with attributes ``xy_unit`` (``"nm"`` or ``"px"``) and ``px_size``
    (2 floats), group ``decode`` with attribute ``version``, group ``data`` with datasets
    ``xyz`` (N, 3), ``xyz_sig``, ``xyz_cr``, ``phot``, ``phot_sig``, ``phot_cr``,
    ``frame_ix`` (0-based), ``id`` (-1: none), ``prob``, ``bg``, ``bg_sig``, ``bg_cr``
    (an all-NaN one is stored as an empty dataset). DECODE's conventions differ from ours in
    two ways, which the reader and writer convert: its x is the first axis of a frame, i.e.
    the image *row* (``xyz[:, 0]`` is our y, ``xyz[:, 1]`` our x), and its pixel centres
    lie at integer px coordinates with ``nm = px * px_size`` (so DECODE's nm are ours minus
    half a pixel). ``z``, always in nm, is unchanged. ``*_cr`` are Cramér-Rao *variances*;
    they become ``crlb_x_nm``, ``crlb_y_nm``, ``crlb_z_nm``, ``crlb_photons``, ``crlb_bg``
    (standard errors). denseloc's metadata and any other numeric columns go to a group
    ``denseloc``, which DECODE ignores.

In the HDF5 formats a column the writer has no value for is stored as NaN, and the reader
drops standard columns that are NaN throughout.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import yaml

from denseloc import __version__
from denseloc._atomic import atomic_path, atomic_paths, check_writable
from denseloc.errors import DenselocError, InputFileError
from denseloc.io import _picasso_yaml as picasso_yaml
from denseloc.table import METADATA_KEYS, REQUIRED, nm_to_px, px_to_nm, validate

__all__ = [
    "FORMATS",
    "TableFormat",
    "read_challenge",
    "read_csv",
    "read_decode",
    "read_parquet",
    "read_picasso",
    "read_table",
    "read_thunderstorm",
    "writable_format",
    "write_csv",
    "write_decode",
    "write_parquet",
    "write_picasso",
    "write_table",
    "write_thunderstorm",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, yaml.YAMLError)
"""What parsers raise on a file that is not what it claims to be (pyarrow's are subclasses)."""

_PARQUET_KEY = b"denseloc"


# --------------------------------------------------------------------------- helpers


_PIXEL_SIZE_HINT = ("the pixel size (`pixel_size_nm`; on the command line `--pixel-size-nm`, "
                    "for render, drift and frc `--camera-pixel-nm`)")
"""How to give a table's missing pixel size, in error messages."""


def _check_pixel_size(pixel_size_nm: Any, name: str = "`pixel_size_nm`") -> float:
    """Return a camera pixel size as a float, or raise naming the parameter: a number in
    :data:`~denseloc.config.PLAUSIBLE_PIXEL_NM` (outside it, more likely um typed as nm, or
    the chip's pixel instead of the sample's; every position would be scaled by it)."""
    from denseloc.config import PLAUSIBLE_PIXEL_NM

    try:
        value = float(pixel_size_nm)
    except (TypeError, ValueError):
        raise DenselocError(f"{name} must be a positive number, got {pixel_size_nm!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DenselocError(f"{name} must be positive, got {pixel_size_nm!r}")
    lo, hi = PLAUSIBLE_PIXEL_NM
    if not lo <= value <= hi:
        raise DenselocError(f"{name} is {value:g} nm, outside the {lo:g}-{hi:g} nm of a camera "
                            "pixel in the sample: is it in um, or the chip's pixel?")
    return value


def _pixel_size_for_writing(table: pd.DataFrame, pixel_size_nm: float | None, fmt: str) -> float:
    """The pixel size a writer of a pixel-based format needs: argument, else ``attrs``."""
    if pixel_size_nm is not None:
        return _check_pixel_size(pixel_size_nm)
    if table.attrs.get("pixel_size_nm") is not None:
        return _check_pixel_size(table.attrs["pixel_size_nm"], "table.attrs['pixel_size_nm']")
    raise DenselocError(
        f"writing {fmt} needs the pixel size: pass `pixel_size_nm` or set "
        "table.attrs['pixel_size_nm']"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn a parser's exception into a one-line :class:`InputFileError` naming the file."""
    try:
        yield
    except DenselocError:
        raise
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except _READ_ERRORS as exc:
        raise InputFileError(path, f"cannot read as {what}: {_first_line(exc)}") from exc


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found" if not path.exists() else "not a file")
    return path


def _sanitize(name: str) -> str:
    """Reduce a foreign column name to letters, digits and ``_`` (``"a [nm]"`` -> ``"a_nm"``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_") or "column"


def _finish(columns: dict[str, Any], path: Path, attrs: dict[str, Any]) -> pd.DataFrame:
    """Assemble a read table, attach metadata and validate it under the file's name."""
    df = pd.DataFrame(columns)
    df.attrs = {k: v for k, v in attrs.items() if v is not None}
    return validate(df, name=str(path))


def _read_attrs(path: Path, pixel_size_nm: float | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": str(path)}
    if pixel_size_nm is not None:
        attrs["pixel_size_nm"] = _check_pixel_size(pixel_size_nm)
    return attrs


def _metadata(table: pd.DataFrame, pixel_size_nm: float | None) -> dict[str, Any]:
    """The metadata a writer stores: ``attrs`` (schema keys), pixel size, this version."""
    meta = {k: table.attrs[k] for k in METADATA_KEYS if table.attrs.get(k) is not None}
    if pixel_size_nm is not None:
        meta["pixel_size_nm"] = pixel_size_nm
    if "pixel_size_nm" in meta:
        meta["pixel_size_nm"] = float(meta["pixel_size_nm"])
    meta["software_version"] = __version__
    return meta


def _metadata_json(meta: dict[str, Any]) -> str:
    try:
        return json.dumps(meta)
    except TypeError as exc:
        raise DenselocError(
            f"table.attrs must hold JSON-serializable metadata (config as str or dict): {exc}"
        ) from None


def _drop_all_nan(columns: dict[str, np.ndarray], names: Iterable[str]) -> None:
    """Drop the named float columns that are NaN throughout (what writers store for 'none')."""
    for name in list(names):
        values = None if name in REQUIRED else columns.get(name)
        if values is not None and values.dtype.kind == "f" and np.isnan(values).all():
            del columns[name]


def _numeric_extras(table: pd.DataFrame, known: set[str], fmt: str) -> list[str]:
    """Extra columns an HDF5 writer can store; non-numeric ones are dropped with a warning."""
    keep = []
    for col in table.columns:
        if col in known:
            continue
        if pd.api.types.is_numeric_dtype(table[col]) or pd.api.types.is_bool_dtype(table[col]):
            keep.append(col)
        else:
            logger.warning("%s cannot store non-numeric column %r; dropped", fmt, col)
    return keep


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A float column, or NaN when the table has none."""
    if name in table.columns:
        return table[name].to_numpy(dtype=np.float64)
    return np.full(len(table), np.nan)


# --------------------------------------------------------------------------- parquet


def read_parquet(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read a table in the native Parquet format, restoring ``attrs``.

    Parameters
    ----------
    path : str or PathLike
        A ``.parquet`` file written by :func:`write_parquet` (or any Parquet file with the
        schema's columns).
    pixel_size_nm : float, optional
        Overrides the stored ``attrs["pixel_size_nm"]`` (nm).

    Returns
    -------
    DataFrame
        The validated table with ``attrs`` from the file's metadata.
    """
    import pyarrow.parquet as pq

    path = _existing_file(path)
    with _reading(path, "Parquet"):
        arrow = pq.read_table(path)
        raw = (arrow.schema.metadata or {}).get(_PARQUET_KEY)
        attrs = json.loads(raw) if raw else {}
        df = arrow.to_pandas()
    if not isinstance(attrs, dict):
        raise InputFileError(path, "denseloc metadata in the Parquet schema is not a mapping")
    if pixel_size_nm is not None:
        attrs["pixel_size_nm"] = _check_pixel_size(pixel_size_nm)
    return _finish({c: df[c] for c in df.columns}, path, attrs)


def write_parquet(
    table: pd.DataFrame, path: PathLike, *, pixel_size_nm: float | None = None
) -> None:
    """Write a table with its metadata in the native Parquet format.

    Parameters
    ----------
    table : DataFrame
        A localization table; ``attrs`` keys :data:`denseloc.table.METADATA_KEYS` are stored
        (``config`` as a str or a JSON-serializable dict).
    path : str or PathLike
        Output ``.parquet`` file, replaced atomically.
    pixel_size_nm : float, optional
        Stored as ``pixel_size_nm`` instead of ``table.attrs["pixel_size_nm"]`` (nm).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = validate(table)
    px = None if pixel_size_nm is None else _check_pixel_size(pixel_size_nm)
    meta = _metadata_json(_metadata(table, px))
    plain = table.copy()
    plain.attrs = {}
    arrow = pa.Table.from_pandas(plain, preserve_index=False)
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), _PARQUET_KEY: meta.encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


# --------------------------------------------------------------------------- plain CSV


def read_csv(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read a plain CSV table with the schema's column names and 0-based frames.

    Parameters
    ----------
    path : str or PathLike
        A ``.csv`` file with at least the columns ``frame``, ``x_nm``, ``y_nm``.
    pixel_size_nm : float, optional
        Recorded in ``attrs["pixel_size_nm"]`` (nm); positions are read as they are.

    Returns
    -------
    DataFrame
        The validated table.
    """
    path = _existing_file(path)
    with _reading(path, "CSV"):
        df = pd.read_csv(path)
    df.columns = [str(c).strip() for c in df.columns]
    return _finish({c: df[c] for c in df.columns}, path, _read_attrs(path, pixel_size_nm))


def write_csv(table: pd.DataFrame, path: PathLike, *, pixel_size_nm: float | None = None) -> None:
    """Write a table as plain CSV (schema column names, 0-based frames, no metadata).

    Parameters
    ----------
    table : DataFrame
        A localization table.
    path : str or PathLike
        Output ``.csv`` file, replaced atomically.
    pixel_size_nm : float, optional
        Unused (positions are in nm); accepted so every writer has the same signature.
    """
    del pixel_size_nm
    table = validate(table)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


# --------------------------------------------------------------------------- ThunderSTORM

_TS_TO_SCHEMA: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "frame": ("frame",),
    "x [nm]": ("x_nm",),
    "y [nm]": ("y_nm",),
    "z [nm]": ("z_nm",),
    "intensity [photon]": ("photons",),
    "offset [photon]": ("bg",),
    "uncertainty_xy [nm]": ("sigma_x_nm", "sigma_y_nm"),
    "uncertainty [nm]": ("sigma_x_nm", "sigma_y_nm"),
    "uncertainty_x [nm]": ("sigma_x_nm",),
    "uncertainty_y [nm]": ("sigma_y_nm",),
    "uncertainty_z [nm]": ("sigma_z_nm",),
    "sigma [nm]": ("psf_sigma_nm",),
    "sigma1 [nm]": ("psf_sigma_x_nm",),
    "sigma2 [nm]": ("psf_sigma_y_nm",),
    "bkgstd [photon]": ("bkgstd_photons",),
}
"""ThunderSTORM header -> schema column(s). ``frame`` is 1-based in the file."""

_SCHEMA_TO_TS: dict[str, str] = {
    "id": "id",
    "frame": "frame",
    "x_nm": "x [nm]",
    "y_nm": "y [nm]",
    "z_nm": "z [nm]",
    "photons": "intensity [photon]",
    "bg": "offset [photon]",
    "sigma_x_nm": "uncertainty_x [nm]",
    "sigma_y_nm": "uncertainty_y [nm]",
    "sigma_z_nm": "uncertainty_z [nm]",
    "psf_sigma_nm": "sigma [nm]",
    "psf_sigma_x_nm": "sigma1 [nm]",
    "psf_sigma_y_nm": "sigma2 [nm]",
    "bkgstd_photons": "bkgstd [photon]",
}
"""Schema column -> ThunderSTORM header for the writer (equal sigmas: ``uncertainty_xy``)."""


def read_thunderstorm(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read a ThunderSTORM CSV (1-based frames, positions in nm).

    Parameters
    ----------
    path : str or PathLike
        A CSV exported by ThunderSTORM, with at least ``frame``, ``x [nm]``, ``y [nm]``.
    pixel_size_nm : float, optional
        Recorded in ``attrs["pixel_size_nm"]`` (nm); positions are read as they are.

    Returns
    -------
    DataFrame
        The validated table, frames converted to 0-based; see the module docstring for the
        column mapping.
    """
    path = _existing_file(path)
    with _reading(path, "ThunderSTORM CSV"):
        df = pd.read_csv(path)
    columns: dict[str, Any] = {}
    for header in df.columns:
        key = str(header).strip()
        for name in _TS_TO_SCHEMA.get(key, (_sanitize(key),)):
            columns[name] = df[header]
    if "frame" in columns:
        columns["frame"] = pd.to_numeric(columns["frame"], errors="coerce") - 1
    return _finish(columns, path, _read_attrs(path, pixel_size_nm))


def write_thunderstorm(
    table: pd.DataFrame, path: PathLike, *, pixel_size_nm: float | None = None
) -> None:
    """Write a table as ThunderSTORM CSV (quoted headers, 1-based frames, nm).

    Parameters
    ----------
    table : DataFrame
        A localization table. ``z [nm]`` is written only for 3D data (a non-zero ``z_nm``),
        and ``uncertainty_z [nm]`` not for 2D data without it (NaN, as 2D fits report it);
        equal ``sigma_x_nm`` and ``sigma_y_nm`` become ``uncertainty_xy [nm]``.
    path : str or PathLike
        Output ``.csv`` file, replaced atomically.
    pixel_size_nm : float, optional
        Unused (positions are in nm); accepted so every writer has the same signature.
    """
    del pixel_size_nm
    table = validate(table)
    out = table.copy()
    out["frame"] = out["frame"] + 1
    if not out["z_nm"].to_numpy().any():
        out = out.drop(columns="z_nm")
        # A 2D fit's sigma_z is NaN, which quoted CSV would write as "" (an empty table
        # keeps the column: nothing to write).
        if "sigma_z_nm" in out and len(out) and out["sigma_z_nm"].isna().all():
            out = out.drop(columns="sigma_z_nm")
    names = {c: _SCHEMA_TO_TS.get(c, c) for c in out.columns}
    if {"sigma_x_nm", "sigma_y_nm"} <= set(out.columns) and np.array_equal(
        out["sigma_x_nm"].to_numpy(), out["sigma_y_nm"].to_numpy(), equal_nan=True
    ):
        out = out.drop(columns="sigma_y_nm")
        names["sigma_x_nm"] = "uncertainty_xy [nm]"
    out = out.rename(columns=names)
    if "id" in out.columns:  # ThunderSTORM's first column
        out = out[["id", *(c for c in out.columns if c != "id")]]
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)


# --------------------------------------------------------------------------- SMLM challenge

_CHALLENGE_TO_SCHEMA = {
    "Ground-truth": "id",
    "frame": "frame",
    "xnano": "x_nm",
    "ynano": "y_nm",
    "znano": "z_nm",
    "intensity": "photons",
}


def read_challenge(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read an SMLM-challenge ground-truth CSV (``Ground-truth,frame,xnano,...``).

    Parameters
    ----------
    path : str or PathLike
        A challenge ``activations.csv`` / ``ground_truth.csv``; frames are 1-based.
    pixel_size_nm : float, optional
        Recorded in ``attrs["pixel_size_nm"]`` (nm); positions are read as they are.

    Returns
    -------
    DataFrame
        The validated table: ``id`` from ``Ground-truth``, 0-based ``frame``, ``x_nm``,
        ``y_nm``, ``z_nm`` from ``xnano``, ``ynano``, ``znano``, ``photons`` from
        ``intensity``.
    """
    path = _existing_file(path)
    with _reading(path, "SMLM-challenge CSV"):
        df = pd.read_csv(path, skipinitialspace=True)
    columns: dict[str, Any] = {}
    for header in df.columns:
        key = str(header).strip()
        columns[_CHALLENGE_TO_SCHEMA.get(key, _sanitize(key))] = df[header]
    if "frame" in columns:
        columns["frame"] = pd.to_numeric(columns["frame"], errors="coerce") - 1
    return _finish(columns, path, _read_attrs(path, pixel_size_nm))


# --------------------------------------------------------------------------- Picasso

# field -> (schema column, how to convert: "position" px index -> nm, "length" px -> nm, "")
_PICASSO_FIELDS: dict[str, tuple[str, str]] = {
    "frame": ("frame", ""),
    "x": ("x_nm", "position"),
    "y": ("y_nm", "position"),
    "photons": ("photons", ""),
    "sx": ("psf_sigma_x_nm", "length"),
    "sy": ("psf_sigma_y_nm", "length"),
    "bg": ("bg", ""),
    "lpx": ("sigma_x_nm", "length"),
    "lpy": ("sigma_y_nm", "length"),
    "z": ("z_nm", ""),
    "group": ("id", ""),
}
"""Picasso field -> schema column; the first nine are always written (in this order)."""

_PICASSO_DTYPES = {
    "frame": "u4",
    "x": "f4",
    "y": "f4",
    "photons": "f4",
    "sx": "f4",
    "sy": "f4",
    "bg": "f4",
    "lpx": "f4",
    "lpy": "f4",
    "z": "f4",
    "group": "i4",
}
_PICASSO_ALWAYS = ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy")


def read_picasso(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read Picasso localizations (HDF5 ``locs`` + YAML sidecar).

    Parameters
    ----------
    path : str or PathLike
        A Picasso ``.hdf5`` localization file; its sidecar is the same path with ``.yaml``.
    pixel_size_nm : float, optional
        Camera pixel size in nm. Needed because Picasso stores positions in pixels; when
        omitted it is taken from the sidecar (``Camera.Pixelsize``, then ``Pixelsize``), else
        from the movie's sidecar (the name without ``_locs``). When given and a sidecar
        records one, the two must agree (an error otherwise).

    Returns
    -------
    DataFrame
        The validated table with ``attrs["pixel_size_nm"]``; positions converted with
        ``x_nm = (x + 0.5) * pixel_size_nm`` (Picasso's pixel centres are at integers).

    Raises
    ------
    InputFileError
        If the file is not a Picasso localization file, or the pixel size is unknown.

    Warns
    -----
    DenselocWarning
        If the sidecar's camera and Localize pixel sizes disagree and none was passed.
    """
    path = _existing_file(path)
    with _reading(path, "Picasso HDF5"), h5py.File(path, "r") as f:
        if "locs" not in f:
            raise InputFileError(path, "no dataset 'locs'; not a Picasso localization file")
        locs = f["locs"][...]
    names = locs.dtype.names or ()
    missing = [n for n in ("frame", "x", "y") if n not in names]
    if missing:
        raise InputFileError(path, f"Picasso 'locs' lacks field(s) {', '.join(missing)}")
    px = _picasso_px_for_reading(path, pixel_size_nm)
    columns: dict[str, np.ndarray] = {}
    for field in names:
        values = locs[field]
        name, kind = _PICASSO_FIELDS.get(field, (field, ""))
        if kind == "position":
            values = px_to_nm(values.astype(np.float64), px)
        elif kind == "length":
            values = values.astype(np.float64) * px
        columns[name] = np.asarray(values)
    _drop_all_nan(columns, [name for name, _ in _PICASSO_FIELDS.values()])
    return _finish(columns, path, {"source": str(path), "pixel_size_nm": px})


def _picasso_px_for_reading(path: Path, pixel_size_nm: float | None) -> float:
    sidecar = path.with_suffix(".yaml")
    movie_sidecar = path.with_name(re.sub(r"_locs$", "", path.stem) + ".yaml")
    sidecars = [sidecar] if movie_sidecar == sidecar else [sidecar, movie_sidecar]
    if pixel_size_nm is not None:  # any size the sidecars record may be chosen
        recorded = [px for f in sidecars for px in picasso_yaml.recorded_pixel_sizes(f)]
        return _given_or_recorded_px(path, pixel_size_nm, recorded, "its Picasso YAML")
    for f in sidecars:
        px = picasso_yaml.pixel_size(f, picasso_yaml.read_info(f), stacklevel=3)
        if px is not None:
            return px
    raise InputFileError(
        path,
        f"pixel size unknown: no Pixelsize in {sidecar.name} or {movie_sidecar.name}; "
        f"pass {_PIXEL_SIZE_HINT}",
    )


def _given_or_recorded_px(path: Path, given: float, recorded: list[float], where: str) -> float:
    """The pixel size given, unless the file records others only: then an error."""
    given = _check_pixel_size(given)
    if recorded and not any(math.isclose(given, px, rel_tol=1e-3) for px in recorded):
        sizes = " or ".join(f"{px:g}" for px in dict.fromkeys(recorded))
        raise InputFileError(
            path,
            f"{where} records {sizes} nm pixels, but {given:g} nm was given "
            "(`pixel_size_nm`, on the command line `--pixel-size-nm` or `--camera-pixel-nm`); "
            "leave it out to use the file's own, or correct the file",
        )
    return given


def write_picasso(
    table: pd.DataFrame,
    path: PathLike,
    *,
    pixel_size_nm: float | None = None,
    n_frames: int | None = None,
    frame_shape_px: tuple[int, int] | None = None,
) -> None:
    """Write a table as Picasso localizations (HDF5 ``locs`` + YAML sidecar).

    Parameters
    ----------
    table : DataFrame
        A localization table. Columns without a Picasso field (``p``, ``sigma_z_nm``,
        ``sigma_photons``, extra numeric columns) are written as extra fields by name;
        missing standard fields are NaN.
    path : str or PathLike
        Output ``.hdf5`` file; the sidecar is the same path with ``.yaml``. Both are
        replaced atomically.
    pixel_size_nm : float, optional
        Camera pixel size in nm; defaults to ``table.attrs["pixel_size_nm"]``.
    n_frames : int, optional
        Number of frames of the movie (sidecar ``Frames``); default from
        ``table.attrs["movie_shape"]``, else the last frame + 1.
    frame_shape_px : tuple of int, optional
        ``(height, width)`` of the movie in pixels (sidecar ``Height``, ``Width``); default
        from ``table.attrs["movie_shape"]``, else the smallest that contains every
        localization.
    """
    table = validate(table)
    px = _pixel_size_for_writing(table, pixel_size_nm, "Picasso")
    locs = _picasso_locs(table, px)
    movie_shape = table.attrs.get("movie_shape")
    if n_frames is None:
        n_frames = (movie_shape[0] if movie_shape else
                    int(table["frame"].max()) + 1 if len(table) else 0)
    if frame_shape_px is None:
        frame_shape_px = (tuple(movie_shape[1:]) if movie_shape else
                          (_extent_px(table["y_nm"], px), _extent_px(table["x_nm"], px)))
    info = {
        "Generated by": f"denseloc {__version__}",
        "Frames": int(n_frames),
        "Height": int(frame_shape_px[0]),
        "Width": int(frame_shape_px[1]),
        "Pixelsize": px,
    }
    if table.attrs.get("source") is not None:
        info["Source"] = str(table.attrs["source"])
    path = _picasso_output(path)
    with atomic_paths(path, path.with_suffix(".yaml")) as (tmp_h5, tmp_yaml):
        with h5py.File(tmp_h5, "w") as f:
            f.create_dataset("locs", data=locs)
        tmp_yaml.write_text(
            yaml.safe_dump_all([info], default_flow_style=False, sort_keys=False),
            encoding="utf-8",
        )


def _picasso_output(path: PathLike) -> Path:
    """`path`, unless its YAML sidecar is the metadata of a Picasso movie (``.raw``) of the
    same name, which writing the localizations would replace, orphaning the movie."""
    path = Path(path)
    sidecar, movie = path.with_suffix(".yaml"), path.with_suffix(".raw")
    if sidecar.exists() and movie.exists():
        raise DenselocError(
            f"{path}: its sidecar {sidecar.name} is the metadata of the movie {movie.name}, "
            f"which writing the localizations would replace; choose another name, e.g. "
            f"{path.stem}_locs{path.suffix}"
        )
    return path


def _extent_px(position_nm: pd.Series, pixel_size_nm: float) -> int:
    """Smallest number of pixels whose extent [0, n * pixel_size_nm) holds every position."""
    if not len(position_nm):
        return 0
    return max(1, math.floor(float(position_nm.max()) / pixel_size_nm) + 1)


def _picasso_locs(table: pd.DataFrame, px: float) -> np.ndarray:
    """The structured ``locs`` array of a table (positions in px, pixel centres at integers)."""
    written = list(_PICASSO_ALWAYS)
    if table["z_nm"].to_numpy().any():
        written.append("z")
    if "id" in table.columns:
        if np.abs(table["id"].to_numpy()).max(initial=0) >= 2**31:
            raise DenselocError("Picasso's group field is int32; `id` values must be < 2**31")
        written.append("group")
    fields: dict[str, np.ndarray] = {}
    for field in written:
        name, kind = _PICASSO_FIELDS[field]
        if kind == "position":
            fields[field] = np.asarray(nm_to_px(table[name].to_numpy(np.float64), px))
        elif kind == "length":
            fields[field] = _column(table, name) / px
        elif name in ("frame", "id"):
            fields[field] = table[name].to_numpy()
        else:
            fields[field] = _column(table, name)
    known = {name for name, _ in _PICASSO_FIELDS.values()}
    for col in _numeric_extras(table, known, "Picasso"):
        if str(col) in fields:
            raise DenselocError(f"column {col!r} clashes with Picasso's field of that name")
        fields[str(col)] = table[col].to_numpy()
    locs = np.empty(
        len(table), dtype=[(k, _PICASSO_DTYPES.get(k, v.dtype)) for k, v in fields.items()]
    )
    for k, v in fields.items():
        locs[k] = v
    return locs


# --------------------------------------------------------------------------- DECODE

# DECODE per-emitter dataset -> schema column (scalars; xyz-like ones handled separately)
_DECODE_SCALARS = {
    "phot": "photons",
    "phot_sig": "sigma_photons",
    "prob": "p",
    "bg": "bg",
    "bg_sig": "sigma_bg",
}
_DECODE_VARIANCES = {"phot_cr": "crlb_photons", "bg_cr": "crlb_bg"}
# (N, 3) datasets in DECODE axis order (row, column, z) -> schema columns, and whether variance
_DECODE_VECTORS = {
    "xyz_sig": (("sigma_y_nm", "sigma_x_nm", "sigma_z_nm"), False),
    "xyz_cr": (("crlb_y_nm", "crlb_x_nm", "crlb_z_nm"), True),
}
_DECODE_VOLATILE = ("xyz_sig", "xyz_cr", "phot_cr", "phot_sig", "bg_cr", "bg_sig")
"""Datasets DECODE stores as empty when all NaN."""


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_decode(path: PathLike, *, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """Read a DECODE ``EmitterSet`` HDF5 file.

    Parameters
    ----------
    path : str or PathLike
        An ``.h5`` file written by DECODE's ``EmitterSet.save`` or :func:`write_decode`.
    pixel_size_nm : float, optional
        Pixel size in nm, needed to undo DECODE's half-pixel offset when the file has no
        ``meta/px_size``; if it has one, the two must agree (an error otherwise).

    Returns
    -------
    DataFrame
        The validated table (DECODE's x, the image row, becomes ``y_nm``); ``attrs`` from
        the ``denseloc`` group when present.
    """
    path = _existing_file(path)
    with _reading(path, "DECODE HDF5"):
        data, meta, stored, extra_columns = _load_decode(path)
        unit = _attr_str(meta.get("xy_unit", ""))
        if unit not in ("nm", "px"):
            raise InputFileError(path, f"meta/xy_unit must be 'nm' or 'px', got {unit!r}")
        px = _decode_px_for_reading(path, meta, pixel_size_nm)
        columns = _decode_columns(data, px, px if unit == "px" else 1.0)
    columns.update(extra_columns)
    attrs = {**stored, "pixel_size_nm": px}
    attrs.setdefault("source", str(path))
    return _finish(columns, path, attrs)


def _load_decode(path: Path) -> tuple[dict, dict, dict, dict]:
    """DECODE's data (None: empty dataset) and meta, plus denseloc's metadata and extras."""
    with h5py.File(path, "r") as f:
        if "data" not in f or "xyz" not in f["data"]:
            raise InputFileError(path, "no dataset 'data/xyz'; not a DECODE emitter file")
        data = {k: (None if v.shape is None else v[()]) for k, v in f["data"].items()}
        meta = dict(f["meta"].attrs) if "meta" in f else {}
        own = f.get("denseloc")
        if own is None:
            return data, meta, {}, {}
        stored = json.loads(_attr_str(own.attrs["metadata"])) if "metadata" in own.attrs else {}
        extras = {k: v[()] for k, v in own["columns"].items()} if "columns" in own else {}
    return data, meta, stored, extras


def _decode_columns(data: dict, px: float, scale: float) -> dict[str, np.ndarray]:
    """Schema columns from DECODE datasets; `scale` converts lateral units to nm."""
    xyz = np.asarray(data["xyz"], dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] not in (2, 3):
        raise ValueError(f"data/xyz must have shape (N, 3), got {xyz.shape}")
    if xyz.shape[1] == 2:
        xyz = np.column_stack([xyz, np.zeros(len(xyz))])
    columns: dict[str, np.ndarray] = {
        "frame": np.asarray(data["frame_ix"]),
        "y_nm": xyz[:, 0] * scale + 0.5 * px,
        "x_nm": xyz[:, 1] * scale + 0.5 * px,
        "z_nm": xyz[:, 2],
    }
    for key, name in _DECODE_SCALARS.items():
        if data.get(key) is not None:
            columns[name] = np.asarray(data[key], dtype=np.float64)
    for key, name in _DECODE_VARIANCES.items():
        if data.get(key) is not None:
            columns[name] = np.sqrt(np.asarray(data[key], dtype=np.float64))
    for key, (names, is_variance) in _DECODE_VECTORS.items():
        if data.get(key) is None:
            continue
        values = np.asarray(data[key], dtype=np.float64).reshape(len(xyz), -1)
        if is_variance:
            values = np.sqrt(values)
        for i, name in enumerate(names[: values.shape[1]]):
            columns[name] = values[:, i] * (scale if i < 2 else 1.0)
    if data.get("id") is not None and not (np.asarray(data["id"]) == -1).all():
        columns["id"] = np.asarray(data["id"])
    _drop_all_nan(
        columns,
        [*_DECODE_SCALARS.values(), *_DECODE_VARIANCES.values()]
        + [n for names, _ in _DECODE_VECTORS.values() for n in names],
    )
    return columns


def _decode_px_for_reading(path: Path, meta: dict[str, Any], pixel_size_nm: float | None) -> float:
    if pixel_size_nm is not None:
        try:
            recorded = [_decode_px_for_reading(path, meta, None)]
        except (DenselocError, TypeError, ValueError):
            recorded = []  # a missing or invalid recorded size cannot contradict the one given
        return _given_or_recorded_px(path, pixel_size_nm, recorded, "its meta/px_size")
    raw = meta.get("px_size")
    if raw is None or np.size(raw) == 0:
        raise InputFileError(path, f"meta/px_size missing; pass {_PIXEL_SIZE_HINT}")
    sizes = np.atleast_1d(np.asarray(raw, dtype=np.float64))
    if not np.allclose(sizes, sizes[0]):
        raise InputFileError(path, f"non-square pixels {sizes.tolist()} nm are not supported")
    return _check_pixel_size(sizes[0], f"{path}: meta/px_size")


def write_decode(
    table: pd.DataFrame, path: PathLike, *, pixel_size_nm: float | None = None
) -> None:
    """Write a table in DECODE's ``EmitterSet`` HDF5 layout (``xy_unit`` ``"nm"``).

    Parameters
    ----------
    table : DataFrame
        A localization table; ``crlb_*`` and ``sigma_bg`` columns fill DECODE's Cramér-Rao
        and background-error datasets, other numeric extras go to ``denseloc/columns``.
    path : str or PathLike
        Output ``.h5`` file, replaced atomically.
    pixel_size_nm : float, optional
        Pixel size in nm (DECODE's ``px_size``); defaults to ``table.attrs["pixel_size_nm"]``.
    """
    table = validate(table)
    px = _pixel_size_for_writing(table, pixel_size_nm, "DECODE")
    meta_json = _metadata_json(_metadata(table, px))
    n = len(table)
    offset = 0.5 * px
    data: dict[str, np.ndarray] = {
        "xyz": np.column_stack(
            [table["y_nm"] - offset, table["x_nm"] - offset, table["z_nm"]]
        ).reshape(n, 3),
        "frame_ix": table["frame"].to_numpy(np.int64),
        "id": table["id"].to_numpy(np.int64) if "id" in table else np.full(n, -1, np.int64),
    }
    for key, name in _DECODE_SCALARS.items():
        data[key] = _column(table, name)
    for key, name in _DECODE_VARIANCES.items():
        data[key] = _column(table, name) ** 2
    for key, (names, is_variance) in _DECODE_VECTORS.items():
        values = np.column_stack([_column(table, c) for c in names]).reshape(n, 3)
        data[key] = values**2 if is_variance else values
    known = {
        *REQUIRED,
        "z_nm",
        "id",
        *_DECODE_SCALARS.values(),
        *_DECODE_VARIANCES.values(),
        *(c for names, _ in _DECODE_VECTORS.values() for c in names),
    }
    extras = _numeric_extras(table, known, "DECODE")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_group("meta").attrs.update({"xy_unit": "nm", "px_size": np.array([px, px])})
        f.create_group("decode").attrs["version"] = f"denseloc {__version__}"
        group = f.create_group("data")
        for key, values in data.items():
            if key in _DECODE_VOLATILE and np.isnan(values).all():
                group.create_dataset(key, data=h5py.Empty("f"))
            else:
                group.create_dataset(key, data=values)
        own = f.create_group("denseloc")
        own.attrs["metadata"] = meta_json
        columns = own.create_group("columns")
        for col in extras:
            columns.create_dataset(str(col), data=table[col].to_numpy())


# --------------------------------------------------------------------------- dispatch


@dataclass(frozen=True)
class TableFormat:
    """One table file format: its file-name suffixes, reader and writer (None: read only)."""

    suffixes: tuple[str, ...]
    description: str
    read: Callable[..., pd.DataFrame]
    write: Callable[..., None] | None
    in_pixels: bool = False
    """Whether positions are stored in camera pixels: writing needs the pixel size."""


FORMATS: dict[str, TableFormat] = {
    "parquet": TableFormat(
        (".parquet",), "native Parquet with metadata", read_parquet, write_parquet
    ),
    "csv": TableFormat((".csv",), "plain CSV, schema columns", read_csv, write_csv),
    "thunderstorm": TableFormat(
        (".csv",), "ThunderSTORM CSV", read_thunderstorm, write_thunderstorm
    ),
    "challenge": TableFormat((".csv",), "SMLM-challenge ground truth CSV", read_challenge, None),
    "picasso": TableFormat((".hdf5",), "Picasso HDF5 + YAML", read_picasso, write_picasso,
                           in_pixels=True),
    "decode": TableFormat((".h5",), "DECODE EmitterSet HDF5", read_decode, write_decode,
                          in_pixels=True),
}
"""Every supported format by name. For writing, a suffix selects the first format listing it
(``.csv`` -> ``csv``); for reading, CSV and HDF5 files are told apart by their content."""


_WRITABLE = tuple(name for name, spec in FORMATS.items() if spec.write is not None)


def _format(name: str) -> TableFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise DenselocError(f"`format` must be one of {', '.join(FORMATS)}, got {name!r}") from None


def _formats_for_suffix(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    return [name for name, spec in FORMATS.items() if suffix in spec.suffixes]


def _unknown_suffix(path: Path) -> str:
    known = sorted({s for spec in FORMATS.values() for s in spec.suffixes})
    return (
        f"unknown table format {path.suffix or '(no extension)'!r}: use one of "
        f"{', '.join(known)} or pass `format` ({', '.join(FORMATS)})"
    )


def _sniff_csv(path: Path) -> str:
    """Tell ThunderSTORM, challenge and plain CSV apart by the header line."""
    with _reading(path, "CSV"), path.open(encoding="utf-8-sig") as f:
        header = f.readline()
    fields = [h.strip().strip('"').strip() for h in header.split(",")]
    if fields and fields[0] == "Ground-truth":
        return "challenge"
    if any(re.fullmatch(r"\S+ \[[^\]]+\]", f) for f in fields):
        return "thunderstorm"
    return "csv"


def _sniff_hdf5(path: Path) -> str:
    """Tell Picasso and DECODE HDF5 files apart by their content."""
    with _reading(path, "HDF5"), h5py.File(path, "r") as f:
        if "locs" in f:
            return "picasso"
        if "data" in f and "xyz" in f["data"]:
            return "decode"
    raise InputFileError(path, "HDF5 file has neither 'locs' (Picasso) nor 'data/xyz' (DECODE)")


def _detect_for_reading(path: Path) -> str:
    names = _formats_for_suffix(path)
    if not names:
        raise InputFileError(path, _unknown_suffix(path))
    if set(names) & {"picasso", "decode"}:
        return _sniff_hdf5(path)
    if len(names) > 1:
        return _sniff_csv(path)
    return names[0]


def read_table(
    path: PathLike, *, format: str | None = None, pixel_size_nm: float | None = None
) -> pd.DataFrame:
    """Read a localization table from any supported format.

    Parameters
    ----------
    path : str or PathLike
        The file. Its format follows from the extension (``.parquet``, ``.csv``, ``.hdf5``,
        ``.h5``) and, for CSV and HDF5, from its content.
    format : str, optional
        One of :data:`FORMATS`, to skip detection.
    pixel_size_nm : float, optional
        Camera pixel size in nm: needed for Picasso and DECODE files that do not record it,
        and refused if it disagrees with the one they record (their positions depend on
        it); for the other formats, whose positions are in nm, recorded in ``attrs``
        (overriding the stored one).

    Returns
    -------
    DataFrame
        A validated table (:func:`denseloc.table.validate`).

    Raises
    ------
    InputFileError
        If the file is missing, of an unknown format, or unreadable.
    TableError
        If its content does not follow the schema (e.g. no ``x`` column).
    """
    path = _existing_file(path)
    name = format if format is not None else _detect_for_reading(path)
    return _format(name).read(path, pixel_size_nm=pixel_size_nm)


def write_table(
    table: pd.DataFrame,
    path: PathLike,
    *,
    format: str | None = None,
    pixel_size_nm: float | None = None,
) -> None:
    """Write a localization table, atomically, in any writable format.

    Parameters
    ----------
    table : DataFrame
        A localization table (validated first).
    path : str or PathLike
        Output file. The format follows from the extension (``.parquet``, ``.csv`` -> plain
        CSV, ``.hdf5`` -> Picasso, ``.h5`` -> DECODE) unless `format` is given.
    format : str, optional
        One of :data:`FORMATS` with a writer, e.g. ``"thunderstorm"``.
    pixel_size_nm : float, optional
        Camera pixel size in nm, for the pixel-based formats (Picasso, DECODE) and the
        Parquet metadata; defaults to ``table.attrs["pixel_size_nm"]``.
    """
    path = Path(path)
    _format(writable_format(path, format)).write(table, path, pixel_size_nm=pixel_size_nm)


def writable_format(path: PathLike, format: str | None = None) -> str:
    """The format :func:`write_table` would write `path` in; raise if it cannot be written.

    Call it before long work, so that an unknown extension, or a place that cannot be
    written, is reported at once rather than after the run. (A missing folder is created on
    writing, as for every denseloc output.)

    Raises
    ------
    denseloc.errors.DenselocError
        If the extension (or `format`) names no writable format, `path` is a folder, or the
        nearest existing folder on its way is not writable.
    """
    path = check_writable(path)
    if format is None:
        names = _formats_for_suffix(path)
        if not names:
            raise DenselocError(f"{path}: {_unknown_suffix(path)}")
        format = names[0]
    if _format(format).write is None:
        raise DenselocError(f"format {format!r} is read only; writable: {', '.join(_WRITABLE)}")
    if format == "picasso":
        _picasso_output(path)
    return format
