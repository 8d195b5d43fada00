"""Files and terminal: atomic writes, output folders, and the one progress bar.

Every file ellbench writes appears whole or not at all: it is written to a temporary sibling and renamed over the
target (`os.replace` is atomic on one file system), so a killed process never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ellbench.errors import EllbenchError

OUT_ENV = "ELLBENCH_OUT"


def default_out_dir() -> Path:
    """$ELLBENCH_OUT, or reports/ under the current folder."""
    return Path(os.environ.get(OUT_ENV, "reports"))


def ensure_writable_dir(path: str | Path) -> Path:
    """Create the output folder if needed and check that files can be written there (one-line error otherwise)."""
    folder = Path(path)
    probe = folder / f".ellbench-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
    except OSError as exc:
        raise EllbenchError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)  # also when the write failed half-way (a full disk)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed over `path` when the block ends without an error.

    The temporary name holds the process id, so two processes writing the same target never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole text file (UTF-8) or nothing."""
    atomic_write_bytes(path, text.encode("utf-8"))


class ProgressBar:
    """A rich progress bar on stderr with count, elapsed time, ETA and a free-text field; a no-op when disabled.

    Used as a context manager; `advance(n, info=...)` moves it on. Bars are transient: they vanish when their work
    ends (the command's result table says what was done), so after an error the one-line message is the only thing
    left on screen.
    """

    def __init__(self, description: str, total: int, *, completed: int = 0, unit: str = "", enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                                 transient=True)
        self.task = self.progress.add_task(description, total=total, completed=completed, info="")

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.enabled:
            if exc_type is not None:
                self.progress.update(self.task, visible=False)
            self.progress.__exit__(exc_type, exc, tb)
        return False

    def update(self, completed: float) -> None:
        """Set how much is done (a fraction of a step shows progress within it)."""
        if self.enabled:
            self.progress.update(self.task, completed=completed)

    def advance(self, steps: float = 1, info: str | None = None) -> None:
        if self.enabled:
            fields = {} if info is None else {"info": info}
            self.progress.update(self.task, advance=steps, **fields)
