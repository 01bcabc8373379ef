"""Exceptions and warnings that denseloc raises at its boundaries.

Every error a user can cause (a missing file, a corrupt TIFF, an absurd camera setting) is a
:class:`DenselocError` whose message names the file or parameter and the problem in one line;
the command-line interface prints that line and exits with a non-zero code, no traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class DenselocError(Exception):
    """An error caused by the user's input, reported as one line."""


class InputFileError(DenselocError):
    """A file that cannot be read, or whose content is not what was expected."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DenselocWarning(UserWarning):
    """A suspicious but usable input (e.g. a model trained for another pixel size)."""
