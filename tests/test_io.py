"""Atomic writes, output folders and the progress bar."""

import os

import pytest

from ellbench.errors import EllbenchError
from ellbench.io import ProgressBar, atomic_path, atomic_write_text, ensure_writable_dir


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "results.md"
    atomic_write_text(target, "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("ellbench.io.os.replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_an_error_inside_the_block_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "weights.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and str(os.getpid()) in tmp.name
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


def test_an_unwritable_folder_is_one_line_and_leaves_no_probe(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    assert ensure_writable_dir(folder) == folder and list(folder.iterdir()) == []

    real_write_text = type(folder).write_text

    def full_disk(self, *args, **kwargs):
        real_write_text(self, "o")  # a partial write before the disk filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(folder), "write_text", full_disk)
    with pytest.raises(EllbenchError, match="not writable: No space left on device") as caught:
        ensure_writable_dir(folder)
    assert "\n" not in str(caught.value)
    assert list(folder.iterdir()) == []


def test_a_failing_block_removes_its_progress_bar(capsys):
    with pytest.raises(RuntimeError), ProgressBar("work", 3, unit="batches") as bar:
        bar.advance()
        raise RuntimeError("bad image")
    assert bar.progress.tasks[0].visible is False
    with ProgressBar("quiet", 3, enabled=False) as quiet:
        quiet.advance(info="ignored")  # a disabled bar is a no-op
