"""torch.distributed helpers: shard whole batches across ranks, gather per-example outcomes, let rank 0 write.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group is initialised on first use: NCCL when CUDA is
available, gloo otherwise. Sharding is by whole batches (round-robin), so every batch holds exactly the examples it
holds in a single-process run and per-example outcomes are identical whatever the number of processes.
"""

from __future__ import annotations

import os


def _dist():
    import torch.distributed as dist

    return dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    if world_size() <= 1:
        return False
    dist = _dist()
    if not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def is_writer() -> bool:
    """Only rank 0 writes to the store and to report files."""
    return rank() == 0


def local_device(requested: str) -> str:
    """Under torchrun with CUDA, each process takes the GPU of its LOCAL_RANK."""
    if requested.startswith("cuda") and is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return requested


def broadcast_object(value):
    """Rank 0's value on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    _dist().broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


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


def evaluate_batches(dataset, todo: list[int], batch_size: int, evaluate_batch, *, loader_workers: int = 0):
    """Yield (batch, rows) for every batch in `todo`; under torch.distributed, rank 0 receives all ranks' rows."""
    import torch

    if not is_distributed():
        for batch, indices, images, labels in _batches(dataset, todo, batch_size, loader_workers):
            yield batch, evaluate_batch(torch.as_tensor(indices), images, labels)
        return
    dist, size, me = _dist(), world_size(), rank()
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
