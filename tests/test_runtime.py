"""Process set-up: how many threads torch may use."""

from __future__ import annotations

import os

import pytest

from denseloc._runtime import available_cores


def test_threads_follow_omp_num_threads_then_the_cpu_affinity(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert available_cores() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert available_cores() == (expected or os.cpu_count())
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a scheduler gave one core
    assert available_cores() == 1
