"""Write files atomically: to a temporary file beside the target, then rename.

An interrupted run therefore never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from denseloc.errors import DenselocError


def check_writable(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    """Raise DenselocError unless `path` can be written (before long work, not after it).

    `path` must not be a folder, the nearest existing folder on its way must be writable (a
    missing folder is created on writing), and its extension must be one of `suffixes` if
    given (lower case, with the dot).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise DenselocError(f"{path} is a folder; give a file name")
        if suffixes is not None and path.suffix.lower() not in suffixes:
            raise DenselocError(f"{path}: the file name must end in {', '.join(suffixes)}")
        folder = path.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        writable = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    except OSError as exc:  # e.g. a folder on the way that may not be searched
        raise DenselocError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not writable:
        raise DenselocError(f"cannot write {path}: {folder} is not a writable folder")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to `path` on success.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    with atomic_paths(path) as (tmp_path,):
        yield tmp_path


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together.

    All are written and synced to disk before the first is renamed, and the renames follow
    one another at once: an interrupted run leaves the old set (or none), not a mix.
    """
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(_new_file(target))
        yield list(tmps)
        for tmp in tmps:
            _fsync(tmp)  # the contents reach the disk before the names do (power loss)
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _new_file(path: Path) -> Path:
    """Create an empty temporary file beside `path`, with the permissions of a new file."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            # Mode 0o666 less the umask, applied by the kernel (mkstemp would make it 0o600).
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
