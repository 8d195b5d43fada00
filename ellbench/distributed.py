"""torch.distributed helpers: shard whole batches across ranks, gather per-example outcomes, let rank 0 write.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group is initialised on first use. With CUDA it is
"cpu:gloo,cuda:nccl": NCCL serves collectives on GPU tensors, while barriers and the object collectives used here
(outcome rows are Python objects) stay on gloo, so pickled rows never travel through GPU memory and a long wait for
rank 0 is not cut short by NCCL's watchdog. Without CUDA it is plain gloo.

Sharding is by whole batches (round-robin), so every batch holds exactly the examples it holds in a single-process run
and per-example outcomes are identical whatever the number of processes.

Every collective gives up after ELLBENCH_DIST_TIMEOUT seconds (default 1800, torch's gloo default), so ranks whose
peer vanished without closing its connections (a lost machine) end with an error instead of waiting forever. Under
torchrun a rank that dies is noticed at once: torchrun ends the other ranks of the job.
"""

from __future__ import annotations

import datetime
import os

from ellbench.errors import EllbenchError

TIMEOUT_ENV = "ELLBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


def _dist():
    import torch.distributed as dist

    return dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(cuda_available: bool) -> str:
    """The process group's backend: NCCL for GPU tensors when CUDA is there, gloo for CPU tensors and objects."""
    return "cpu:gloo,cuda:nccl" if cuda_available else "gloo"


def collective_timeout() -> datetime.timedelta:
    """How long one collective (gather, broadcast, barrier) may wait for the other ranks: $ELLBENCH_DIST_TIMEOUT s."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise EllbenchError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _check_launcher_environment() -> None:
    """WORLD_SIZE > 1 without the rest of torchrun's variables would wait for peers that never come."""
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise EllbenchError(f"WORLD_SIZE={world_size()} but {', '.join(missing)} not set: launch with torchrun, "
                            "or unset WORLD_SIZE for one process")


def is_distributed() -> bool:
    """True under a multi-process launch; initialises the process group on first call."""
    if world_size() <= 1:
        return False
    dist = _dist()
    if not dist.is_initialized():
        import torch

        _check_launcher_environment()
        timeout = collective_timeout()
        cuda = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda and local_rank < torch.cuda.device_count():  # more processes than GPUs is fine for --device cpu
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend_for(cuda), timeout=timeout)
    return True


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def is_writer() -> bool:
    """Only rank 0 writes to the store and to report files."""
    return rank() == 0


def local_device(requested: str) -> str:
    """Under torchrun with CUDA, each process takes the GPU of its LOCAL_RANK."""
    if requested.startswith("cuda") and is_distributed():
        import torch

        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise EllbenchError(f"process {local_rank} on this machine has no GPU of its own ({gpus} here): "
                                "give torchrun --nproc_per_node at most the number of GPUs, or use --device cpu")
        return f"cuda:{local_rank}"
    return requested


def broadcast_object(value):
    """Rank 0's value on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    _dist().broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every rank.

    `timeout_s` replaces the collective timeout for a wait known to be long (rank 0 alone generating data while the
    others wait).
    """
    if is_distributed():
        _dist().barrier(timeout=None if timeout_s is None else datetime.timedelta(seconds=timeout_s))


def _batches(dataset, batches: list[int], batch_size: int, loader_workers: int):
    """(batch number, indices, images, labels) for the given batches, loaded in order."""
    from ellbench.data import dataset_batch
    from ellbench.runner import batch_indices

    total = len(dataset)
    index_lists = [batch_indices(total, batch_size, b) for b in batches]
    if loader_workers > 0 and batches:
        import torch

        loader = torch.utils.data.DataLoader(dataset, batch_sampler=index_lists, num_workers=loader_workers)
        for batch, indices, (images, labels) in zip(batches, index_lists, loader, strict=True):
            yield batch, indices, images, labels
        return
    for batch, indices in zip(batches, index_lists, strict=True):
        images, labels = dataset_batch(dataset, indices)
        yield batch, indices, images, labels


def _data_identity(dataset) -> tuple:
    """What must agree between ranks: the example count, and the fingerprint of content-hashed (built-in) data.

    Folder fingerprints include file times, which differ between copies of one data set on different machines.
    """
    fingerprint = str(getattr(dataset, "fingerprint", ""))
    return len(dataset), None if "folder:" in fingerprint else fingerprint


def _check_same_data(dataset) -> None:
    """Every rank must read the data rank 0 reads, or batch b would hold different examples on different ranks."""
    seen = [None] * world_size()
    _dist().all_gather_object(seen, _data_identity(dataset))
    for other_rank, other in enumerate(seen):
        if other != seen[0]:
            raise EllbenchError(f"rank {other_rank} sees {other[0]} examples ({other[1] or 'a folder'}), rank 0 sees "
                                f"{seen[0][0]} ({seen[0][1] or 'a folder'}): every machine needs the same data")


def evaluate_batches(dataset, todo: list[int], batch_size: int, evaluate_batch, *, loader_workers: int = 0):
    """Yield (batch, rows) for every batch in `todo`; under torch.distributed, rank 0 receives all ranks' rows."""
    import torch

    if not is_distributed():
        for batch, indices, images, labels in _batches(dataset, todo, batch_size, loader_workers):
            yield batch, evaluate_batch(torch.as_tensor(indices), images, labels)
        return
    dist, size, me = _dist(), world_size(), rank()
    _check_same_data(dataset)
    mine = todo[me::size]
    rounds = (len(todo) + size - 1) // size
    loaded = _batches(dataset, mine, batch_size, loader_workers)
    for _ in range(rounds):
        item = next(loaded, None)
        result = None
        if item is not None:
            batch, indices, images, labels = item
            result = (batch, evaluate_batch(torch.as_tensor(indices), images, labels))
        gathered = [None] * size if me == 0 else None
        dist.gather_object(result, gathered, dst=0)
        if me == 0:
            yield from sorted((g for g in gathered if g is not None), key=lambda pair: pair[0])
