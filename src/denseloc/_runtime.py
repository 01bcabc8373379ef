"""Process set-up for training and inference: device, threads, memory allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

from denseloc.errors import DenselocError

__all__ = ["available_cores", "configure_cpu", "select_device"]

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


def available_cores() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the cores of this process's CPU
    affinity (all cores where the platform has no affinity)."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_cpu(threads: int | None = None) -> None:
    """Set torch's thread count and keep glibc from returning large blocks to the OS.

    Without `threads`, torch uses ``OMP_NUM_THREADS`` if it is set, else the cores this
    process may run on (its CPU affinity, as a cluster scheduler sets it), not every core of
    the machine: more threads than cores stall OpenMP.

    glibc's malloc serves tensors over 32 MB with mmap and unmaps them when freed, which on a
    48-filter network halved training speed (page faults each step). Done once per process; a
    no-op where glibc is absent.
    """
    global _configured
    torch.set_num_threads(threads or available_cores())
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
