"""Lazy reading of SMLM movies, and writing them as ImageJ-compatible TIFF.

A movie is an array of shape (T, H, W): T frames of H rows by W columns. SMLM movies are
often larger than the computer's memory, so :func:`open_movie` returns a :class:`Movie` that
reads frames only when they are asked for: uncompressed data are memory-mapped, compressed
TIFF pages are decoded one at a time, and a folder of single-frame TIFFs opens one file per
frame. Reading a chunk of frames therefore costs memory proportional to the chunk.

Supported inputs
----------------
- a multi-page TIFF, BigTIFF, OME-TIFF or ImageJ hyperstack; a single-page 2D TIFF is a movie
  of one frame. Several series (e.g. appended by ``tifffile``) are concatenated in order, with
  a warning for OME-TIFF, where they may be different positions. A file with one
  non-singleton axis besides (H, W) holds frames along it (time, or z for bead stacks), unless
  that axis is channels: several channels are refused, as are several non-singleton axes;
- a folder of single-frame TIFFs, ordered naturally by the numbers in their names
  (``img_2.tif`` before ``img_10.tif``);
- a Picasso ``.raw`` movie with its ``.yaml`` sidecar of the same stem.

Frames are returned in the machine's native byte order, with the file's dtype (no rescaling).
Every problem with the input is raised as :class:`denseloc.errors.InputFileError`, whose message
names the file and, for an unreadable frame, the frame index (0-based).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import threading
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import tifffile

from denseloc._atomic import atomic_path
from denseloc.errors import DenselocWarning, InputFileError
from denseloc.io import _picasso_yaml as picasso_yaml

__all__ = ["Movie", "open_movie", "read_pixel_size_nm", "write_tiff"]

logger = logging.getLogger(__name__)

_TIFF_SUFFIXES = (".tif", ".tiff")
# write_tiff switches to BigTIFF above this many bytes of pixel data; some readers treat
# classic TIFF offsets as signed 32-bit integers, so 2 GiB (not 4) is the safe limit.
_BIGTIFF_BYTES = 2**31 - 2**25
_UINT16_MAX = 65535
# length of a unit in nm, keyed by the lower-case spellings found in ImageJ and OME metadata
_UNIT_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "µm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "å": 0.1,
}  # No inch: ImageJ reports a display DPI as unit "inch", as the TIFF tags below.
# TIFF ResolutionUnit values with a metric unit: centimeter (3), and millimeter (4) and
# micrometer (5) of the TIFF/EP extension. Inch (2), the TIFF default, is deliberately absent:
# in microscopy files it is a display DPI left by image software, not a pixel size.
_RESOLUTION_UNIT_NM = {3: 1e7, 4: 1e6, 5: 1e3}


# --------------------------------------------------------------------------------------------
# Movie
# --------------------------------------------------------------------------------------------


class _Segment(Protocol):
    """A run of consecutive frames stored the same way (one TIFF series, a raw file, ...)."""

    n_frames: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Return frames ``start:stop`` of the segment, shape (stop - start, H, W), native order."""
        ...


class Movie:
    """A movie of shape (T, H, W) whose frames are read from disk on demand.

    Create one with :func:`open_movie`. Indexing reads from the file each time: ``movie[i]``
    returns frame ``i`` as an ndarray of shape (H, W), ``movie[a:b:s]`` returns an ndarray of
    shape (t, H, W). Integer indices may be negative, as for a sequence. Each returned array is
    a fresh, writable copy in native byte order with dtype :attr:`dtype`.

    Use the movie as a context manager, or call :meth:`close`, to release the file.

    Attributes
    ----------
    path : pathlib.Path
        The file or folder the movie was opened from.
    shape : tuple of int
        (T, H, W): number of frames, rows and columns.
    dtype : numpy.dtype
        Pixel data type as stored in the file (e.g. uint16), in native byte order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        segments: Sequence[_Segment],
        frame_shape: tuple[int, int],
        dtype: np.dtype,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._segments = list(segments)
        self._starts = np.cumsum([0] + [s.n_frames for s in self._segments]).tolist()
        self.shape: tuple[int, int, int] = (self._starts[-1], *frame_shape)
        self.dtype = np.dtype(dtype)
        self._on_close = on_close
        self._closed = False

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"Movie({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}{state})"

    def __getitem__(self, key: int | slice) -> np.ndarray:
        """Read one frame, shape (H, W), or a slice of frames, shape (t, H, W)."""
        if isinstance(key, slice):
            frames = range(len(self))[key]
            if frames.step == 1 or len(frames) <= 1:
                return self._read(frames.start, frames.start + len(frames))
            out = np.empty((len(frames), *self.shape[1:]), dtype=self.dtype)
            for k, frame in enumerate(frames):
                out[k] = self._read(frame, frame + 1)[0]
            return out
        try:
            index = range(len(self))[key]
        except IndexError:
            raise IndexError(
                f"frame index {key} is out of range for a movie of {len(self)} frames"
            ) from None
        except TypeError:
            raise TypeError(
                f"movie indices must be integers or slices, got {type(key).__name__}"
            ) from None
        return self._read(index, index + 1)[0]

    def iter_chunks(
        self, chunk_frames: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield consecutive chunks of frames, reading each one only when it is requested.

        The arguments are checked at the call, before any frame is read.

        Parameters
        ----------
        chunk_frames : int
            Number of frames per chunk (the last chunk may be shorter); at least 1.
        start : int, optional
            First frame to read, in [0, T].
        stop : int or None, optional
            Frame after the last one to read, in [start, T]; None means T.

        Yields
        ------
        first_frame : int
            Index of the chunk's first frame in the movie.
        frames : ndarray of shape (t, H, W)
            The chunk's frames, t <= `chunk_frames`.
        """
        n = len(self)
        if stop is None:
            stop = n
        if isinstance(chunk_frames, bool) or chunk_frames < 1:
            raise ValueError(f"`chunk_frames` must be a positive integer, got {chunk_frames!r}")
        if not 0 <= start <= n:
            raise ValueError(f"`start` must be in [0, {n}] for a movie of {n} frames, got {start}")
        if not start <= stop <= n:
            raise ValueError(f"`stop` must be in [{start}, {n}] (start to T), got {stop}")
        return self._chunks(chunk_frames, start, stop)

    def _chunks(self, chunk_frames: int, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(start, stop, chunk_frames):
            yield first, self._read(first, min(first + chunk_frames, stop))

    def close(self) -> None:
        """Release the file; frames read before stay valid. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._segments = []
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Movie:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` (0 <= start <= stop <= T) as an array of shape (t, H, W)."""
        if self._closed:
            raise ValueError(f"cannot read from a closed movie ({self.path})")
        parts = []
        for segment, first in zip(self._segments, self._starts, strict=False):
            lo, hi = max(start, first), min(stop, first + segment.n_frames)
            if lo < hi:
                parts.append(segment.read(lo - first, hi - first))
        if not parts:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def open_movie(path: str | os.PathLike) -> Movie:
    """Open an SMLM movie for lazy reading.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file (multi-page TIFF, BigTIFF, OME-TIFF, ImageJ hyperstack), a folder of
        single-frame TIFFs (read in natural order of the numbers in their names), or a Picasso
        ``.raw`` movie (its ``.yaml`` sidecar with the same stem must sit beside it).

    Returns
    -------
    Movie
        The movie, shape (T, H, W), not yet read. Close it (or use ``with``) when done.

    Raises
    ------
    denseloc.errors.InputFileError
        If the file is missing, is not a readable movie, is truncated, or does not hold a
        grayscale movie of shape (T, H, W) (e.g. RGB, or several channels).

    Warns
    -----
    denseloc.errors.DenselocWarning
        If an OME-TIFF holds several images (series), which are read as one movie.
    """
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if not path.exists():
        raise InputFileError(path, "file not found")
    if path.suffix.lower() == ".raw":
        return _open_picasso_raw(path)
    return _open_tiff(path)


# --------------------------------------------------------------------------------------------
# Segments: how a run of frames is read
# --------------------------------------------------------------------------------------------


class _MemmapSegment:
    """Frames of an uncompressed, contiguous block of a file, memory-mapped."""

    def __init__(self, array: np.memmap, dtype: np.dtype) -> None:
        self._array = array  # (T, H, W), possibly in the file's non-native byte order
        self._dtype = dtype
        self.n_frames = array.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._array[start:stop], dtype=self._dtype)


class _TiffPageSegment:
    """Frames of a TIFF series with one frame per page, each page decoded on demand."""

    def __init__(
        self,
        path: Path,
        series: tifffile.TiffPageSeries,
        frame_shape: tuple[int, int],
        dtype: np.dtype,
        first_frame: int,
    ) -> None:
        self._path = path
        self._series = series
        self._frame_shape = frame_shape
        self._dtype = dtype
        self._first_frame = first_frame  # index of the series' first frame, for messages
        self.n_frames = len(series)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self._frame_shape), dtype=self._dtype)
        for k in range(start, stop):
            out[k - start] = self._read_page(k)
        return out

    def check_page(self, index: int) -> None:
        """Raise if page `index` is missing or its pixel data run past the end of its file."""
        self._page(index)

    def _page(self, index: int) -> tifffile.TiffPage | tifffile.TiffFrame:
        frame = self._first_frame + index
        try:
            page = self._series[index]
        except Exception as exc:
            raise InputFileError(self._path, f"frame {frame} cannot be read: {exc}") from exc
        if page is None:
            raise InputFileError(
                self._path,
                f"frame {frame} cannot be read: its page is missing from the file "
                "(is a file of a multi-file OME-TIFF missing?)",
            )
        if _page_data_truncated(page):
            raise InputFileError(
                self._path,
                f"frame {frame} cannot be read: its pixel data run past the end of the file "
                "(truncated file)",
            )
        return page

    def _read_page(self, index: int) -> np.ndarray:
        page = self._page(index)
        try:
            data = page.asarray()
        except Exception as exc:  # decoders raise many types (zlib.error, ValueError, ...)
            frame = self._first_frame + index
            raise InputFileError(self._path, f"frame {frame} cannot be read: {exc}") from exc
        return data.reshape(self._frame_shape)


class _FolderSegment:
    """Frames stored one per TIFF file; each file is opened when its frame is read."""

    def __init__(self, files: Sequence[Path], frame_shape: tuple[int, int], dtype: np.dtype):
        self._files = list(files)
        self._frame_shape = frame_shape
        self._dtype = dtype
        self.n_frames = len(files)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self._frame_shape), dtype=self._dtype)
        for k in range(start, stop):
            with _open_tiff(self._files[k], first_frame=k) as movie:
                _check_folder_frame(movie, self._files[0], self._frame_shape, self._dtype)
                out[k - start] = movie[0]
        return out


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


class _ThreadRecords(logging.Filter):
    """Take the calling thread's records out of a logger, keeping them in `records`."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self._thread:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def _tifffile_records() -> Iterator[list[logging.LogRecord]]:
    """Collect what tifffile logs in this thread, instead of letting it reach the handlers.

    tifffile logs (rather than raises) when it meets a corrupt page list or invalid metadata,
    and then falls back to a smaller movie. The caller turns those records into an
    :class:`InputFileError` or relays them as warnings of this module's logger.
    """
    tiff_logger = logging.getLogger("tifffile")
    collector = _ThreadRecords()
    tiff_logger.addFilter(collector)
    try:
        yield collector.records
    finally:
        tiff_logger.removeFilter(collector)


def _record_text(records: Sequence[logging.LogRecord]) -> str:
    """First tifffile message, without its ``<tifffile.Object @offset>`` prefix, or ''."""
    for record in records:
        if record.levelno >= logging.WARNING:
            return re.sub(r"^<[^>]*>\s*", "", record.getMessage())
    return ""


def _open_tiff(path: Path, first_frame: int = 0) -> Movie:
    """Open a TIFF file as a Movie; `first_frame` offsets the frame numbers in messages."""
    with _tifffile_records() as records:
        try:
            tif = tifffile.TiffFile(path)
        except OSError as exc:
            raise InputFileError(path, f"cannot be opened: {exc.strerror or exc}") from exc
        except Exception as exc:  # TiffFileError, struct.error, ... from a corrupt header
            raise InputFileError(path, f"not a TIFF file, or a corrupt one ({exc})") from exc
        try:
            segments, frame_shape, dtype = _tiff_segments(tif, path, first_frame, records)
        except InputFileError:
            tif.close()
            raise
        except Exception as exc:  # tifffile's parsers raise many types on corrupt files
            tif.close()
            raise InputFileError(path, f"corrupt TIFF file ({exc})") from exc
    for record in records:
        if record.levelno >= logging.WARNING:
            logger.warning("%s: tifffile: %s", path, record.getMessage())
    return Movie(path, segments, frame_shape, dtype, on_close=tif.close)


def _tiff_segments(
    tif: tifffile.TiffFile, path: Path, first_frame: int, records: list[logging.LogRecord]
) -> tuple[list[_Segment], tuple[int, int], np.dtype]:
    """Check a TIFF file and describe how to read its frames, series after series."""
    n_pages = len(tif.pages)  # walks the whole chain of pages, so breaks show up now
    if n_pages == 0:
        detail = _record_text(records)
        raise InputFileError(
            path, "truncated or corrupt TIFF: it holds no readable image" + _tifffile_says(detail)
        )
    all_series = list(tif.series)
    segments: list[_Segment] = []
    frame_shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    frame = first_frame
    for index, series in enumerate(all_series):
        label = f"series {index} " if len(all_series) > 1 else ""
        n_frames, shape = _series_layout(series, path, label)
        series_dtype = series.dtype.newbyteorder("=")
        if frame_shape is None:
            frame_shape, dtype = shape, series_dtype
        elif shape != frame_shape or series_dtype != dtype:
            raise InputFileError(
                path,
                f"series {index} holds frames of shape {shape} and dtype {series_dtype}, but "
                f"series 0 holds {frame_shape} and {dtype}: all series must match",
            )
        segments.append(_series_segment(tif, series, path, n_frames, shape, frame))
        frame += n_frames
    assert frame_shape is not None and dtype is not None
    if tif.is_ome and len(all_series) > 1:
        names = ", ".join(str(series.name) for series in all_series[:4])
        warnings.warn(
            f"{path}: holds {len(all_series)} OME images ({names}{', ...' * (len(all_series) > 4)})"
            f"; they are read one after another as one movie of {frame - first_frame} frames. "
            "If they are different positions or fields of view, save each as its own file.",
            DenselocWarning,
            stacklevel=4,
        )
    _check_imagej_frame_count(tif, path, first_frame, frame - first_frame)
    _check_page_chain(tif, path, first_frame, records)
    return segments, frame_shape, dtype


def _tifffile_says(text: str) -> str:
    return f"; tifffile says: {text}" if text else ""


def _series_layout(
    series: tifffile.TiffPageSeries, path: Path, label: str
) -> tuple[int, tuple[int, int]]:
    """Number of frames and frame shape (H, W) of a series, or raise for RGB and 4D+ data."""
    shape, axes = tuple(series.shape), series.axes
    if "S" in axes and shape[axes.index("S")] > 1:
        raise InputFileError(
            path,
            f"{label}is an RGB or multi-sample image (axes {axes}, shape {shape}): "
            "expected a grayscale movie; convert it to grayscale first",
        )
    dims = [(axis, size) for axis, size in zip(axes, shape, strict=True) if axis != "S"]
    if len(dims) < 2:
        raise InputFileError(path, f"{label}has shape {shape}: expected a movie (T, H, W)")
    extra = [(axis, size) for axis, size in dims[:-2] if size != 1]
    if len(extra) > 1:
        raise InputFileError(
            path,
            f"{label}has {len(extra) + 2} non-singleton dimensions (axes {axes}, shape "
            f"{shape}): expected a movie (T, H, W); split channels or z-planes into "
            "separate files",
        )
    if extra and extra[0][0] == "C":
        raise InputFileError(
            path,
            f"{label}holds {extra[0][1]} channels (axes {axes}, shape {shape}), not frames: "
            "expected a movie (T, H, W); save each channel as its own file",
        )
    n_frames = extra[0][1] if extra else 1
    if n_frames == 0:
        raise InputFileError(path, f"{label}holds no frames (shape {shape})")
    return n_frames, (dims[-2][1], dims[-1][1])


def _series_segment(
    tif: tifffile.TiffFile,
    series: tifffile.TiffPageSeries,
    path: Path,
    n_frames: int,
    frame_shape: tuple[int, int],
    first_frame: int,
) -> _Segment:
    """Memory-map the series when its data are uncompressed and contiguous, else read pages."""
    native = series.dtype.newbyteorder("=")
    if series.dataoffset is not None and not getattr(series, "is_multifile", False):
        offset = int(series.dataoffset)
        frame_bytes = math.prod(frame_shape) * series.dtype.itemsize
        file_size = tif.filehandle.size
        if offset + n_frames * frame_bytes > file_size:
            complete = max(0, (file_size - offset) // frame_bytes)
            raise InputFileError(
                path,
                f"frame {first_frame + complete} cannot be read: the file is truncated "
                f"({file_size} bytes, but its {n_frames} frames need "
                f"{offset + n_frames * frame_bytes})",
            )
        array = np.memmap(
            tif.filehandle.path,
            dtype=np.dtype(tif.byteorder + series.dtype.char),
            mode="r",
            offset=offset,
            shape=(n_frames, *frame_shape),
        )
        return _MemmapSegment(array, native)
    if len(series) == n_frames and math.prod(series.keyframe.shape) == math.prod(frame_shape):
        segment = _TiffPageSegment(path, series, frame_shape, native, first_frame)
        segment.check_page(n_frames - 1)  # a truncated file usually loses its last frame
        return segment
    raise InputFileError(
        path,
        f"compressed or tiled pages that each hold several frames (axes {series.axes}, shape "
        f"{tuple(series.shape)}) cannot be read lazily; re-save as one page per frame",
    )


def _page_data_truncated(page: tifffile.TiffPage | tifffile.TiffFrame) -> bool:
    """Whether any strip or tile of the page ends after the end of its file."""
    file_size = page.parent.filehandle.size
    return any(
        offset + count > file_size
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
        if count
    )


def _check_imagej_frame_count(
    tif: tifffile.TiffFile, path: Path, first_frame: int, n_frames: int
) -> None:
    """Raise if ImageJ metadata announce more images than were found (truncated hyperstack).

    ImageJ writes movies above 4 GB with one page description and contiguous data; when such
    a file is cut short, tifffile falls back to reading a single frame without raising.
    """
    meta = tif.imagej_metadata
    declared = meta.get("images") if meta else None
    if not isinstance(declared, int) or declared <= n_frames:
        return
    first = tif.pages[0]
    if len(tif.pages) == 1 and first.is_final and first.nbytes:
        complete = max(0, (tif.filehandle.size - first.dataoffsets[0]) // first.nbytes)
        raise InputFileError(
            path,
            f"frame {first_frame + complete} cannot be read: the file is truncated (its ImageJ "
            f"metadata announce {declared} frames, it holds {complete} complete ones)",
        )
    raise InputFileError(
        path,
        f"frame {first_frame + n_frames} cannot be read: the ImageJ metadata announce "
        f"{declared} frames but only {n_frames} were found (truncated or corrupt file)",
    )


def _next_page_offset(tif: tifffile.TiffFile, ifd_offset: int) -> int | None:
    """The 'next page' offset stored at the end of the page directory at `ifd_offset`."""
    fmt, fh = tif.tiff, tif.filehandle
    with fh.lock:
        fh.seek(ifd_offset)
        raw = fh.read(fmt.tagnosize)
        if len(raw) < fmt.tagnosize:
            return None
        (n_tags,) = struct.unpack(fmt.tagnoformat, raw)
        fh.seek(ifd_offset + fmt.tagnosize + n_tags * fmt.tagsize)
        raw = fh.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize:
        return None
    return int(struct.unpack(fmt.offsetformat, raw)[0])


def _check_page_chain(
    tif: tifffile.TiffFile, path: Path, first_frame: int, records: list[logging.LogRecord]
) -> None:
    """Raise if the linked list of pages does not end properly (truncated or corrupt file).

    tifffile stops at a broken link with a log message and reports the pages before it, which
    would silently shorten the movie.
    """
    n_pages = len(tif.pages)
    last = tif.pages[n_pages - 1]
    if _next_page_offset(tif, last.offset) == 0:
        return
    detail = _tifffile_says(_record_text(records))
    if _page_data_truncated(last):
        raise InputFileError(
            path,
            f"frame {first_frame + n_pages - 1} cannot be read: its pixel data run past the "
            f"end of the file (truncated file){detail}",
        )
    raise InputFileError(
        path,
        f"frame {first_frame + n_pages} cannot be read: the list of pages breaks after "
        f"page {n_pages - 1} (truncated or corrupt file){detail}",
    )


# --------------------------------------------------------------------------------------------
# Folder of single-frame TIFFs
# --------------------------------------------------------------------------------------------


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key putting 'img_2.tif' before 'img_10.tif' (numbers compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _folder_tiffs(folder: Path) -> list[Path]:
    """TIFF files directly in `folder` (hidden files skipped), in natural order."""
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in _TIFF_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_folder_frame(
    movie: Movie, reference: Path, frame_shape: tuple[int, int], dtype: np.dtype
) -> None:
    """Raise unless `movie` (one file of a folder) is one frame of the folder's shape and dtype."""
    if len(movie) != 1:
        raise InputFileError(
            movie.path,
            f"holds {len(movie)} frames, but a folder must hold single-frame TIFFs "
            "(open a multi-frame TIFF directly)",
        )
    if movie.shape[1:] != frame_shape or movie.dtype != dtype:
        raise InputFileError(
            movie.path,
            f"frame of shape {movie.shape[1:]} and dtype {movie.dtype} differs from "
            f"{frame_shape} and {dtype} of {reference.name}, the folder's first file",
        )


def _open_folder(folder: Path) -> Movie:
    files = _folder_tiffs(folder)
    if not files:
        raise InputFileError(folder, "folder holds no .tif or .tiff files")
    frame_shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    for k, file in enumerate(files):
        with _open_tiff(file, first_frame=k) as movie:
            if frame_shape is None:
                frame_shape, dtype = movie.shape[1:], movie.dtype
            _check_folder_frame(movie, files[0], frame_shape, dtype)
    assert frame_shape is not None and dtype is not None
    return Movie(folder, [_FolderSegment(files, frame_shape, dtype)], frame_shape, dtype)


# --------------------------------------------------------------------------------------------
# Picasso .raw + .yaml
# --------------------------------------------------------------------------------------------


def _picasso_info(raw_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The sidecar path and its documents; the first one describes the movie."""
    yaml_path = raw_path.with_suffix(".yaml")
    if not yaml_path.is_file():
        raise InputFileError(
            yaml_path, "not found: a Picasso .raw movie needs its .yaml sidecar (same stem)"
        )
    docs = picasso_yaml.read_info(yaml_path)
    if not docs:
        raise InputFileError(yaml_path, "is not a Picasso metadata file (no key: value mapping)")
    return yaml_path, docs


def _picasso_int(info: Mapping[str, Any], key: str, yaml_path: Path) -> int:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputFileError(yaml_path, f"`{key}` must be a positive integer, got {value!r}")
    return value


def _open_picasso_raw(path: Path) -> Movie:
    yaml_path, docs = _picasso_info(path)
    info = docs[0]
    n_frames = _picasso_int(info, "Frames", yaml_path)
    height = _picasso_int(info, "Height", yaml_path)
    width = _picasso_int(info, "Width", yaml_path)
    try:
        dtype = np.dtype(str(info.get("Data Type")))
    except TypeError as exc:
        raise InputFileError(
            yaml_path, f"`Data Type` {info.get('Data Type')!r} is not a numeric type"
        ) from exc
    if dtype.kind not in "uif":
        raise InputFileError(yaml_path, f"`Data Type` {dtype} is not a numeric type")
    byte_order = info.get("Byte Order", "<")
    if byte_order not in ("<", ">", "=", "|"):
        raise InputFileError(yaml_path, f"`Byte Order` must be '<' or '>', got {byte_order!r}")
    file_dtype = dtype.newbyteorder(byte_order if byte_order != "|" else "=")
    expected = n_frames * height * width * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputFileError(
            path,
            f"has {size} bytes, but {yaml_path.name} describes {n_frames} frames of "
            f"{height} x {width} {dtype} ({expected} bytes)",
        )
    array = np.memmap(path, dtype=file_dtype, mode="r", shape=(n_frames, height, width))
    native = dtype.newbyteorder("=")
    return Movie(path, [_MemmapSegment(array, native)], (height, width), native)


# --------------------------------------------------------------------------------------------
# Pixel size
# --------------------------------------------------------------------------------------------


def read_pixel_size_nm(path: str | os.PathLike) -> float | None:
    """Read the pixel size stored with a movie, if any.

    Looked up, in order: ImageJ metadata (``unit`` and the XResolution tag), OME-XML
    (``PhysicalSizeX``), the TIFF resolution tags with a metric ResolutionUnit; for a Picasso
    ``.raw`` movie the ``Camera.Pixelsize`` entry (nm) of its ``.yaml``, else ``Pixelsize``
    (Picasso Localize's setting, with a warning if both differ), as for Picasso tables; for a
    folder, its first TIFF file.

    Parameters
    ----------
    path : str or os.PathLike
        Anything :func:`open_movie` accepts.

    Returns
    -------
    float or None
        Pixel size in nm (the side of a square pixel in the sample plane), or None when the
        file does not record one (e.g. uncalibrated ImageJ images, unit "pixel" or inch).

    Raises
    ------
    denseloc.errors.InputFileError
        If the file cannot be read, or its pixels are not square.

    Warns
    -----
    denseloc.errors.DenselocWarning
        If a Picasso sidecar records two different pixel sizes.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_tiffs(path)
        if not files:
            raise InputFileError(path, "folder holds no .tif or .tiff files")
        return read_pixel_size_nm(files[0])
    if not path.exists():
        raise InputFileError(path, "file not found")
    if path.suffix.lower() == ".raw":
        yaml_path, docs = _picasso_info(path)
        return picasso_yaml.pixel_size(yaml_path, docs)
    with _tifffile_records():
        try:
            with tifffile.TiffFile(path) as tif:
                return _tiff_pixel_size_nm(tif, path)
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(path, f"not a TIFF file, or a corrupt one ({exc})") from exc


def _positive_size(value: Any, path: Path, what: str) -> float | None:
    """`value` as a float > 0, None when it is zero or absent, else raise naming `what`."""
    try:
        size = float(value)
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"{what} {value!r} is not a number") from exc
    if size == 0 or math.isnan(size):
        return None
    if size < 0 or math.isinf(size):
        raise InputFileError(path, f"{what} must be positive, got {size}")
    return size


def _unit_nm(unit: Any) -> float | None:
    """Length of `unit` (an ImageJ or OME unit name) in nm, or None if it is not a length."""
    if not isinstance(unit, str):
        return None
    text = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("μ", "µ")
    return _UNIT_NM.get(text.lower())


def _resolution_size_nm(page: tifffile.TiffPage, unit_nm: float, path: Path) -> float | None:
    """Pixel size in nm from the X/YResolution tags (pixels per unit) of `page`."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    sizes = []
    for name in ("XResolution", "YResolution"):
        if name not in tags:
            continue
        numerator, denominator = tags[name].value
        if numerator == 0 or denominator == 0:
            return None
        sizes.append(unit_nm * denominator / numerator)
    return _square(sizes, path)


SQUARE_TOLERANCE = 0.01
"""Pixel widths and heights in a movie's metadata that differ by less than this fraction
(a calibration per axis, e.g. 108.3 and 108.4 nm) are read as square pixels of their mean."""


def _square(sizes: Sequence[float], path: Path) -> float:
    if len(sizes) == 2 and not math.isclose(sizes[0], sizes[1], rel_tol=SQUARE_TOLERANCE):
        raise InputFileError(
            path,
            f"pixels are not square ({sizes[0]:g} nm wide, {sizes[1]:g} nm high): "
            "denseloc needs square pixels; if they are, give the size (--pixel-size-nm)",
        )
    return float(np.mean(sizes))


def _ome_pixel_size_nm(xml: str, path: Path) -> float | None:
    """Pixel size in nm from the first Pixels element of OME-XML."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        sizes = []
        for axis in ("X", "Y"):
            value = element.get(f"PhysicalSize{axis}")
            unit_nm = _unit_nm(element.get(f"PhysicalSize{axis}Unit", "µm"))
            if value is None or unit_nm is None:
                continue
            size = _positive_size(value, path, f"OME PhysicalSize{axis}")
            if size is None:
                return None
            sizes.append(size * unit_nm)
        return _square(sizes, path) if sizes else None
    return None


def _tiff_pixel_size_nm(tif: tifffile.TiffFile, path: Path) -> float | None:
    page = tif.pages[0]
    imagej = tif.imagej_metadata
    if imagej and "unit" in imagej:
        unit_nm = _unit_nm(imagej["unit"])
        return None if unit_nm is None else _resolution_size_nm(page, unit_nm, path)
    if tif.is_ome and tif.ome_metadata:
        size = _ome_pixel_size_nm(tif.ome_metadata, path)
        if size is not None:
            return size
    if "ResolutionUnit" in page.tags:
        unit_nm = _RESOLUTION_UNIT_NM.get(int(page.tags["ResolutionUnit"].value))
        if unit_nm is not None:
            return _resolution_size_nm(page, unit_nm, path)
    return None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _as_uint16_frames(frames: Any) -> np.ndarray:
    """`frames` as a uint16 array (T, H, W), converting only when no value changes."""
    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"`frames` must have shape (T, H, W) with T >= 1, got {array.shape}")
    if array.dtype == np.uint16:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`frames` must be numeric, got dtype {array.dtype}")
    low, high = array.min(), array.max()
    whole = array.dtype.kind != "f" or bool(np.all(np.isfinite(array) & (array == np.rint(array))))
    if not whole or low < 0 or high > _UINT16_MAX:
        raise ValueError(
            f"`frames` must hold whole numbers in [0, {_UINT16_MAX}] to be written as uint16 "
            f"without loss; got {array.dtype} values in [{low}, {high}]: convert explicitly, "
            "e.g. np.clip(frames, 0, 65535).round().astype(np.uint16)"
        )
    return array.astype(np.uint16)


def write_tiff(
    path: str | os.PathLike,
    frames: Any,
    *,
    pixel_size_nm: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a movie as a uint16 multi-page ImageJ TIFF, atomically.

    The file is written to a temporary name beside `path` and renamed when complete, so an
    interrupted write never leaves a partial file under `path`. Above 2 GiB of pixel data
    the file is a BigTIFF (with ImageJ metadata; Fiji opens it through Bio-Formats).

    Parameters
    ----------
    path : str or os.PathLike
        Output file, conventionally ending in ``.tif``; overwritten if it exists.
    frames : array_like of shape (T, H, W) or (H, W)
        Pixel values (ADU). uint16 is written as is; other numeric types are converted only
        if every value is a whole number in [0, 65535], else ValueError (no silent rescaling).
    pixel_size_nm : float, optional
        Pixel size in nm, stored as ImageJ calibration (resolution tags in pixels per µm,
        unit "um"), which ImageJ and :func:`read_pixel_size_nm` read back.
    metadata : mapping, optional
        JSON-serializable metadata, stored as JSON in the ImageJ "Info" property (ImageJ shows
        it under Image > Show Info).

    Raises
    ------
    ValueError
        If `frames` has the wrong shape or values, `pixel_size_nm` is not positive, or
        `metadata` is not JSON-serializable.
    """
    array = _as_uint16_frames(frames)
    ij_metadata: dict[str, Any] = {"axes": "TYX"}
    resolution = None
    if pixel_size_nm is not None:
        if not (isinstance(pixel_size_nm, int | float) and 0 < pixel_size_nm < math.inf):
            raise ValueError(f"`pixel_size_nm` must be positive, got {pixel_size_nm!r}")
        pixels_per_um = 1000.0 / pixel_size_nm
        resolution = (pixels_per_um, pixels_per_um)
        ij_metadata["unit"] = "um"
    if metadata is not None:
        try:
            ij_metadata["Info"] = json.dumps(dict(metadata))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`metadata` must be JSON-serializable: {exc}") from exc
    bigtiff = array.nbytes > _BIGTIFF_BYTES
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nonconformant BigTIFF ImageJ")
        tifffile.imwrite(
            tmp,
            array,
            imagej=True,
            bigtiff=bigtiff,
            photometric="minisblack",
            resolution=resolution,
            metadata=ij_metadata,
        )
