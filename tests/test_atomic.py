"""Atomic writes: all or nothing under the final name."""

from __future__ import annotations

import os

import pytest

from denseloc import _atomic
from denseloc._atomic import atomic_path


def test_a_complete_write_replaces_the_file(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until complete
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_contents_are_synced_to_disk_before_the_rename(tmp_path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(_atomic.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(_atomic.os, "replace",
                        lambda a, b: events.append("replace") or real_replace(a, b))
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"data")
    assert events == ["fsync", "replace"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_of_a_new_file(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_files_that_belong_together_are_replaced_together_or_not_at_all(tmp_path) -> None:
    from denseloc._atomic import atomic_paths

    movie, truth = tmp_path / "frames.tif", tmp_path / "ground_truth.csv"
    movie.write_text("old movie")
    truth.write_text("old truth")
    with pytest.raises(RuntimeError), atomic_paths(movie, truth) as (tmp_movie, tmp_truth):
        tmp_movie.write_text("new movie")  # complete, but its partner is not
        raise RuntimeError("interrupted while writing the truth")
    assert (movie.read_text(), truth.read_text()) == ("old movie", "old truth")
    with atomic_paths(movie, truth) as (tmp_movie, tmp_truth):
        tmp_movie.write_text("new movie")
        tmp_truth.write_text("new truth")
        assert movie.read_text() == "old movie"
    assert (movie.read_text(), truth.read_text()) == ("new movie", "new truth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.tif", "ground_truth.csv"]
