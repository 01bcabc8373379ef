"""Picasso's YAML sidecars, read one way for movies (``.raw``) and localizations (``.hdf5``).

Picasso writes its metadata with ``yaml.dump``, sometimes as several documents (Localize
appends its own to the movie's) and sometimes with Python-tagged nodes, which a plain safe
loader refuses. Two pixel sizes may be recorded: the camera's (``Camera.Pixelsize``, written
with the movie) and Picasso Localize's own setting (``Pixelsize``, default 130 nm whatever
the camera). The camera's is the one the pixels were recorded with, so it comes first.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from denseloc.errors import DenselocWarning, InputFileError

CAMERA_KEY = "Camera.Pixelsize"
LOCALIZE_KEY = "Pixelsize"


class _InfoLoader(yaml.SafeLoader):
    """Safe YAML loader that reads Python-tagged nodes (Picasso uses ``yaml.dump``) as data."""


def _construct_plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    del suffix
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_InfoLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_plain)


def read_info(path: Path) -> list[dict[str, Any]]:
    """The key: value documents of a Picasso sidecar, in order ([] when there is no file).

    Raises
    ------
    InputFileError
        If the file exists but is not readable YAML.
    """
    if not path.is_file():
        return []
    try:
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_InfoLoader))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot be read as Picasso YAML ({exc})") from exc
    return [d for d in docs if isinstance(d, dict)]


def _size(value: Any, path: Path, key: str) -> float:
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise InputFileError(path, f"{key} {value!r} is not a number") from None
    if not (math.isfinite(size) and size > 0):
        raise InputFileError(path, f"{key} must be positive, got {value!r}")
    return size


def _last(docs: list[dict[str, Any]], key: str) -> Any:
    values = [d[key] for d in docs if d.get(key) is not None]
    return values[-1] if values else None


def pixel_size(path: Path, docs: list[dict[str, Any]], *, stacklevel: int = 2) -> float | None:
    """The pixel size (nm) the sidecar records: the camera's, else Localize's; None if neither.

    Warns (DenselocWarning) when both are recorded and differ; raises InputFileError for a
    recorded value that is not a positive number.
    """
    camera, localize = _last(docs, CAMERA_KEY), _last(docs, LOCALIZE_KEY)
    if camera is None:
        return None if localize is None else _size(localize, path, LOCALIZE_KEY)
    chosen = _size(camera, path, CAMERA_KEY)
    if localize is not None and not math.isclose(
        _size(localize, path, LOCALIZE_KEY), chosen, rel_tol=1e-3
    ):
        warnings.warn(
            f"{path}: the movie's {CAMERA_KEY} is {camera} nm but {LOCALIZE_KEY} (Picasso "
            f"Localize) is {localize} nm; using {camera} nm. Pass the pixel size to choose.",
            DenselocWarning,
            stacklevel=stacklevel + 1,
        )
    return chosen


def recorded_pixel_sizes(path: Path) -> list[float]:
    """Every valid pixel size a sidecar records; an unreadable sidecar or value records none."""
    try:
        docs = read_info(path)
    except InputFileError:
        return []
    sizes = []
    for value in (d[k] for d in docs for k in (CAMERA_KEY, LOCALIZE_KEY) if k in d):
        try:
            sizes.append(_size(value, path, "pixel size"))
        except InputFileError:
            continue
    return sizes
