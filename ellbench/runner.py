"""The one loop every evaluation goes through: a job spec's fixed batches -> per-example outcomes -> store.

A task (ellbench.tasks) turns what the user asked for into job specs: the plan. The runner executes one spec at a
time: it opens (or reuses, or resumes) the job in the store, loads the batches still to do, moves each to the
device, calls the spec's per-batch evaluation and commits its rows, one transaction per batch.

Batch b always holds examples [b*B, (b+1)*B) of the data set's fixed order, so a resumed or sharded run sees exactly
the batches an uninterrupted single-process run sees, and ends with exactly the same outcomes. Under torchrun the
batches still to do are dealt round-robin to the ranks; rank 0 gathers every rank's rows and alone writes.

Loading: a torch DataLoader fetches whole batches (the data set's own batch path, so any number of worker processes
gives the same tensors as the main process), in `loader_workers` processes that live as long as the LoaderPool that
made them, pinned and copied without blocking when the device is a GPU. Under torchrun each rank loads only its own
batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ellbench import distributed
from ellbench._version import __version__
from ellbench.errors import EllbenchError
from ellbench.io import ProgressBar
from ellbench.store import Store, utc_now


@dataclasses.dataclass
class Batch:
    """One batch of a job: its number, the examples' indices in the data set, images and labels on the device."""

    number: int
    indices: object  # torch.Tensor [B] (CPU, int64)
    images: object  # torch.Tensor [B, 3, H, W] in [0, 1]
    labels: object  # torch.Tensor [B]
    # Report how much of this batch is done (a fraction in [0, 1)): long per-batch work (an attack of many steps)
    # moves the progress bar, and its ETA, before the batch ends. The runner sets it; by default it does nothing.
    progress: Callable[[float], None] = dataclasses.field(default=lambda fraction: None, repr=False)


@dataclasses.dataclass
class JobSpec:
    """One job of a plan: its key, its data, how one batch is evaluated and how the finished rows are summarised."""

    key: dict
    dataset: object
    evaluate: Callable[[Batch], list[dict]]
    batch_size: int
    device: str = "cpu"
    description: str = ""
    summarize: Callable | None = None  # DataFrame of the stored rows -> summary dict; default: accuracy_summary
    provenance: dict = dataclasses.field(default_factory=dict)  # extra provenance fields (skipped images, ...)
    loader_workers: int | None = None  # processes decoding batches; None: default_loader_workers(dataset, device)


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


def job_key(*, model: str, checkpoint: str, data: str, task: str, settings: dict, seed: int,
            amp: str = "off") -> dict:
    """A job's stable identity: what was evaluated, on what, how, with which seed and ellbench version.

    A model run under autocast (`amp` bf16 or fp16) makes other jobs than in float32: settings then carry "amp".
    float32 ("off") adds nothing, so keys (and stores) from before AMP existed stay valid.
    """
    if amp != "off":
        settings = {**settings, "amp": amp}
    return {"model": model, "checkpoint": checkpoint, "data": data, "task": task, "settings": settings,
            "seed": int(seed), "version": __version__}


def accuracy_summary(frame) -> dict:
    """Default summary of a job's outcomes: example count and top-1 accuracy."""
    n = int(len(frame))
    return {"n": n, "accuracy": float(frame["correct"].mean()) if n else float("nan")}


def outcome_rows(indices, labels, preds, **columns) -> list[dict]:
    """One stored row per example: idx, label, pred, correct (pred == label), then one value of each extra column.

    Every argument is a sequence over the batch's examples (tensors are read with .tolist()).
    """
    def as_list(values) -> list:
        return values.tolist() if hasattr(values, "tolist") else list(values)

    indices, labels, preds = as_list(indices), as_list(labels), as_list(preds)
    extra = {name: as_list(values) for name, values in columns.items()}
    for name, values in extra.items():
        if len(values) != len(indices):
            raise ValueError(f"column {name} has {len(values)} values for {len(indices)} examples")
    return [
        {"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y),
         **{name: values[row] for name, values in extra.items()}}
        for row, (i, y, p) in enumerate(zip(indices, labels, preds, strict=True))
    ]


def batch_indices(total: int, batch_size: int, batch: int) -> list[int]:
    """Indices of batch `batch`: examples [batch * batch_size, (batch + 1) * batch_size) of `total`."""
    return list(range(batch * batch_size, min(total, (batch + 1) * batch_size)))


MAX_DEFAULT_WORKERS = 16


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_loader_workers(dataset, device: str = "cpu") -> int:
    """Worker processes for loading `dataset` when none are asked for.

    0 for data held in memory (built-in sets, precomputed corruptions: a batch is an index into a tensor). For files
    (and images corrupted on the fly), this process's share of the cores (the cores divided among torchrun's local
    processes), at most MAX_DEFAULT_WORKERS: all of it when a GPU computes, half of it when the CPU also runs the
    model.
    """
    if getattr(dataset, "in_memory", False):
        return 0
    share = max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if not str(device).startswith("cuda"):
        share = max(1, share // 2)
    return min(share, MAX_DEFAULT_WORKERS)


class LoadError:
    """An EllbenchError raised while loading a batch in a worker process, carried back to be raised in the main one.

    Raised in a worker, it would reach the user wrapped in the DataLoader's message and the worker's traceback.
    """

    def __init__(self, message: str):
        self.message = message


class _WholeBatches:
    """Map-style view of a data set whose items are whole batches: view[list of indices] = (images, labels)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices):
        from ellbench.data import dataset_batch

        try:
            return dataset_batch(self.dataset, indices)
        except EllbenchError as error:
            return LoadError(str(error))


class _BatchList:
    """The sampler of a pool's loader: the index lists of the batches asked for next (set before each pass)."""

    def __init__(self):
        self.index_lists: list[list[int]] = []

    def __iter__(self):
        return iter(self.index_lists)

    def __len__(self) -> int:
        return len(self.index_lists)


class LoaderPool:
    """DataLoaders kept alive across jobs: one per (data set, worker count), so worker processes start once.

    Use as a context manager (or call close()) around the jobs that share data, e.g. an attack suite's clean and
    adversarial jobs; `run` makes a pool of its own for a single job when given none. One pass over a data set at a
    time: asking for new batches of a data set restarts its loader.
    """

    def __init__(self):
        self._loaders: dict[tuple[int, int, bool], tuple[object, object, _BatchList]] = {}

    def batches(self, dataset, index_lists: list[list[int]], *, workers: int = 0, pin_memory: bool = False):
        """Iterator of (images, labels) CPU batches for `index_lists`, in order."""
        import torch

        if workers < 0:
            raise ValueError(f"loader workers must be 0 or more, got {workers}")
        key = (id(dataset), workers, pin_memory)
        if key not in self._loaders:
            sampler = _BatchList()
            loader = torch.utils.data.DataLoader(
                _WholeBatches(dataset), batch_size=None, sampler=sampler, num_workers=workers,
                pin_memory=pin_memory, persistent_workers=workers > 0,
                # a generator of its own: drawing worker seeds must not advance torch's global generator
                generator=torch.Generator().manual_seed(0))
            self._loaders[key] = (dataset, loader, sampler)  # the data set is held so that its id stays its own
        _, loader, sampler = self._loaders[key]
        sampler.index_lists = list(index_lists)
        return iter(loader)

    def close(self) -> None:
        """Stop every worker process of the pool."""
        for _, loader, _ in self._loaders.values():
            # persistent workers live in the loader's iterator; torch stops them only when it is collected
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self._loaders.clear()

    def __enter__(self) -> LoaderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_batches(dataset, batches: list[int], batch_size: int, *, device: str = "cpu", loader_workers: int = 0,
                 loaders: LoaderPool | None = None) -> Iterator[Batch]:
    """The given batches of `dataset`, in order, on `device`; decoded in `loader_workers` processes when > 0.

    On a GPU the batches are pinned and copied without blocking. `loaders` keeps the worker processes for later
    jobs; without it they stop when the batches are done.
    """
    import torch

    if not batches:
        return
    index_lists = [batch_indices(len(dataset), batch_size, b) for b in batches]
    cuda = torch.device(device).type == "cuda"
    pool = loaders if loaders is not None else LoaderPool()
    try:
        loaded = pool.batches(dataset, index_lists, workers=loader_workers, pin_memory=cuda)
        for number, indices, item in zip(batches, index_lists, loaded, strict=True):
            if isinstance(item, LoadError):
                raise EllbenchError(item.message)
            images, labels = item
            yield Batch(number, torch.as_tensor(indices, dtype=torch.long), images.to(device, non_blocking=cuda),
                        labels.to(device, non_blocking=cuda))
    finally:
        if loaders is None:
            pool.close()


def data_identity(dataset) -> tuple:
    """What must agree between ranks: the example count, and the fingerprint of content-hashed (built-in) data.

    Folder fingerprints include file times, which differ between copies of one data set on different machines.
    """
    fingerprint = str(getattr(dataset, "fingerprint", ""))
    return len(dataset), None if "folder:" in fingerprint else fingerprint


def _describe_identity(identity: tuple) -> str:
    return f"{identity[0]} examples ({identity[1] or 'a folder'})"


def evaluate_batches(dataset, todo: list[int], batch_size: int, evaluate: Callable[[Batch], list[dict]], *,
                     device: str = "cpu", loader_workers: int = 0,
                     loaders: LoaderPool | None = None) -> Iterator[tuple[int, list[dict]]]:
    """(batch number, rows) for every batch in `todo`, in order; under torchrun only rank 0 receives them.

    Each rank evaluates its round-robin share; in every round each rank hands its batch's rows (or None when its
    share is used up) to rank 0, so all ranks take part in every collective.
    """
    distributed.check_same(data_identity(dataset), "data", _describe_identity)
    mine = distributed.shard(todo)
    with contextlib.closing(load_batches(dataset, mine, batch_size, device=device, loader_workers=loader_workers,
                                         loaders=loaders)) as loaded:
        for _ in range(distributed.rounds(len(todo))):
            batch = next(loaded, None)
            result = None if batch is None else (batch.number, evaluate(batch))
            received = [r for r in distributed.gather_to_writer(result) if r is not None]
            yield from sorted(received, key=lambda pair: pair[0])


def run(store: Store, spec: JobSpec, *, progress: bool = True, loaders: LoaderPool | None = None) -> dict:
    """Run (or resume, or reuse) one job and return its stored row, with its summary.

    `loaders` keeps loader worker processes alive for the next job on the same data (see LoaderPool).
    """
    total = len(spec.dataset)
    writer = distributed.is_writer()
    workers = spec.loader_workers if spec.loader_workers is not None \
        else default_loader_workers(spec.dataset, spec.device)
    extra = dict(spec.provenance)
    skipped = int(getattr(spec.dataset, "skipped", 0) or 0)
    if skipped:
        extra.setdefault("skipped_images", skipped)  # unreadable images --skip-bad-images left out
    record = provenance(spec.device, loader_workers=workers, **extra)
    job = store.open_job(spec.key, total=total, batch_size=spec.batch_size, provenance=record) if writer else None
    job_id, status, done = distributed.broadcast_object(
        (job["id"], job["status"], store.done_batches(job["id"]) if job["status"] != "done" else set())
        if job else None)
    if status == "done":
        return store.get_job(job_id)
    n_batches = (total + spec.batch_size - 1) // spec.batch_size
    todo = [b for b in range(n_batches) if b not in done]
    try:
        with ProgressBar(spec.description or spec.key["task"], n_batches, completed=len(done), unit="batches",
                         enabled=progress and writer) as bar:
            finished = [len(done)]

            def evaluate(batch: Batch) -> list[dict]:
                if bar.enabled:
                    batch.progress = lambda fraction: bar.update(completed=finished[0] + min(max(fraction, 0), 0.99))
                return spec.evaluate(batch)

            for batch, rows in evaluate_batches(spec.dataset, todo, spec.batch_size, evaluate,
                                                device=spec.device, loader_workers=workers, loaders=loaders):
                if writer:
                    store.commit_batch(job_id, batch, rows)
                finished[0] += 1
                bar.update(completed=finished[0])
    except BaseException:
        if writer:
            store.end_attempt(job_id, "interrupted")
        raise
    if writer:
        summary = (spec.summarize or accuracy_summary)(store.outcomes(job_id))
        summary["batches_resumed"] = len(done)
        store.finish_job(job_id, summary)
    distributed.barrier()
    return store.get_job(job_id)
