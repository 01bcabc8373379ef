"""Process set-up for training and inference: device, threads, memory allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

from denseloc.errors import DenselocError

__all__ = ["configure_cpu", "select_device"]

logger = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_configured = False


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DenselocError(f"unknown device {spec!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DenselocError("--device cuda was asked for, but no CUDA device is available")
    return device


def configure_cpu(threads: int | None = None) -> None:
    """Set torch's thread count and keep glibc from returning large blocks to the OS.

    glibc's malloc serves tensors over 32 MB with mmap and unmaps them when freed, which on a
    48-filter network halved training speed (page faults each step; DESIGN section 9). Done
    once per process; a no-op where glibc is absent.
    """
    global _configured
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if _configured:
        return
    _configured = True
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc
        logger.debug("mallopt unavailable; allocator left as is")
