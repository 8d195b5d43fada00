"""The one loop every evaluation goes through: fixed batches -> per-example outcomes -> store, resumable.

Batch b always holds examples [b*B, (b+1)*B) of the data set's fixed order, so a resumed or sharded run sees exactly
the batches an uninterrupted single-process run sees, and ends with exactly the same outcomes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ellbench import __version__
from ellbench.store import Store, utc_now

EvaluateBatch = Callable[..., list]


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(device: str | None = None, **extra) -> dict:
    """Where and how a result was made: versions, git commit, device, threads, host, command line, time."""
    import torch

    if device is None:
        device = "cpu"
    device_name = torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available() \
        else platform.processor() or platform.machine()
    record = {
        "ellbench": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "torchattacks": _version("torchattacks"),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "pid": os.getpid(),
        "recorded_utc": utc_now(),
    }
    record.update(extra)
    return record


def job_key(*, model: str, checkpoint: str, data: str, task: str, settings: dict, seed: int) -> dict:
    """A job's stable identity: what was evaluated, on what, how, with which seed and ellbench version."""
    return {"model": model, "checkpoint": checkpoint, "data": data, "task": task, "settings": settings,
            "seed": int(seed), "version": __version__}


def accuracy_summary(frame) -> dict:
    """Default summary of a job's outcomes: example count and top-1 accuracy."""
    n = int(len(frame))
    return {"n": n, "accuracy": float(frame["correct"].mean()) if n else float("nan")}


def batch_indices(total: int, batch_size: int, batch: int) -> list[int]:
    return list(range(batch * batch_size, min(total, (batch + 1) * batch_size)))


def run_job(store: Store, key: dict, dataset, evaluate_batch: EvaluateBatch, *, batch_size: int,
            description: str = "", summarize: Callable | None = None, progress: bool = True,
            provenance_extra: dict | None = None, device: str = "cpu", loader_workers: int = 0) -> dict:
    """Run (or resume, or reuse) one job and return its stored row, with its summary."""
    from ellbench import distributed

    total = len(dataset)
    record = provenance(device, **(provenance_extra or {}))
    job = store.open_job(key, total=total, batch_size=batch_size, provenance=record) if distributed.is_writer() \
        else None
    job_id = distributed.broadcast_object(job["id"] if job else None)
    status = distributed.broadcast_object(job["status"] if job else None)
    if status == "done":
        return store.get_job(job_id)
    n_batches = (total + batch_size - 1) // batch_size
    done = distributed.broadcast_object(store.done_batches(job_id) if job else None)
    todo = [b for b in range(n_batches) if b not in done]
    try:
        with _progress_bar(progress and distributed.is_writer(), description or key["task"], n_batches,
                           len(done)) as advance:
            for batch, rows in distributed.evaluate_batches(dataset, todo, batch_size, evaluate_batch,
                                                            loader_workers=loader_workers):
                if distributed.is_writer():
                    store.commit_batch(job_id, batch, rows)
                advance()
    except BaseException:
        if distributed.is_writer():
            store.end_attempt(job_id, "interrupted")
        raise
    if distributed.is_writer():
        summary = (summarize or accuracy_summary)(store.outcomes(job_id))
        summary["batches_resumed"] = len(done)
        store.finish_job(job_id, summary)
    distributed.barrier()
    return store.get_job(job_id)


class _NullBar:
    def __enter__(self):
        return lambda: None

    def __exit__(self, *exc):
        return False


class _RichBar:
    def __init__(self, description: str, total: int, completed: int):
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
                                 TextColumn("batches"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task(description, total=total, completed=completed)

    def __enter__(self):
        self.progress.__enter__()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _progress_bar(enabled: bool, description: str, total: int, completed: int):
    return _RichBar(description, total, completed) if enabled else _NullBar()
