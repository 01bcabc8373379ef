"""Figures on matplotlib's Agg canvas (no :mod:`matplotlib.pyplot`), saved atomically.

Plotting this way needs no display and does not change the backend of a running notebook or
GUI; matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from denseloc._atomic import atomic_path, check_writable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure"]


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of `width` x `height` inches with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write `fig` as PNG to `path` atomically (creating its folder) and return the path."""
    path = check_writable(path, (".png",))  # atomic_path makes a missing folder
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
