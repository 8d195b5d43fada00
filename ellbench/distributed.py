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

import atexit
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
        atexit.register(_leave_process_group)
    return True


def _leave_process_group() -> None:
    """At exit, shut the process group down before the interpreter does: a process that exits with gloo's threads
    still running aborts in C++ ("terminate called without an active exception", exit -6) about one time in 15 on
    2 cores, and torchrun then reports the job as failed. Leaving is local (no collective), so a dead peer cannot
    make it wait."""
    dist = _dist()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001,S110  (exiting anyway; a failure to leave cleanly must not replace the result)
            pass


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


def shard(items: list) -> list:
    """This rank's share of `items`: round-robin, so rank r takes items r, r + world, r + 2 world, ..."""
    return items[rank()::world_size()] if is_distributed() else list(items)


def rounds(count: int) -> int:
    """How many gather rounds `count` items sharded over the ranks take: every rank joins each round."""
    size = world_size() if is_distributed() else 1
    return (count + size - 1) // size


def gather_to_writer(value) -> list:
    """Every rank's `value` on rank 0, in rank order; an empty list on the other ranks."""
    if not is_distributed():
        return [value]
    gathered = [None] * world_size() if rank() == 0 else None
    _dist().gather_object(value, gathered, dst=0)
    return gathered if rank() == 0 else []


def check_same(value, what: str, describe=str) -> None:
    """Stop every rank with a one-line error when `value` differs between ranks (e.g. the data set each one opened).

    `describe(value)` words a rank's value in the message; `what` names what must agree.
    """
    if not is_distributed():
        return
    seen = [None] * world_size()
    _dist().all_gather_object(seen, value)
    for other_rank, other in enumerate(seen):
        if other != seen[0]:
            raise EllbenchError(f"rank {other_rank} sees {describe(other)}, rank 0 sees {describe(seen[0])}: "
                                f"every machine needs the same {what}")
