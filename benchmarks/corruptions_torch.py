"""ImageNet-C corruptions: the torch backend on N threads vs imagecorruptions on N worker processes, same photographs.

For each corruption, all severities: images per second of
  - imagecorruptions (ellbench.corruptions.images.corrupt_image, the path `corrupt` uses today) over N worker processes;
  - the torch backend (ellbench.corruptions.torch_backend.corrupt_tensor) in this process on N torch threads;
  - the torch backend over N worker processes of one torch thread each, batches of images per task (how generated
    ImageNet-C would run it on a CPU; on a shared machine it does not stall on OpenMP barriers as threads do);
  - with --device cuda, the torch backend on the GPU (timed with synchronisation).
Both backends hash each image and derive its seed as they would in a real run. The two run back to back per
corruption, so load that drifts over the run hits both alike; the ratio column is torch / imagecorruptions. The
whole-sweep line sums the times of the chosen corruptions (default: the 15 of mCE, severities 1-5); glass_blur,
which dominates imagecorruptions' cost, also gets a line of its own.
Target (issue 21): whole-sweep ratio >= 20 on an idle 2-core machine.

    .venv/bin/python benchmarks/corruptions_torch.py [--images 32] [--reference-images 16] [--threads 2]
        [--workers 2] [--device cuda] [--corruptions glass_blur,zoom_blur] [--severities 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from ellbench.corruptions import torch_backend
from ellbench.corruptions.compat import IMAGECORRUPTIONS_VERSION
from ellbench.corruptions.images import corrupt_image
from ellbench.corruptions.names import ALL_CORRUPTIONS, COMMON_CORRUPTIONS
from ellbench.data.photos import sample_photographs

_PHOTOS: np.ndarray | None = None  # the worker processes' copy (inherited through fork, or rebuilt)


def _reference_task(corruption: str, severity: int, indices: list[int], size: int, count: int) -> int:
    global _PHOTOS
    if _PHOTOS is None or len(_PHOTOS) < count:
        _PHOTOS = sample_photographs(count, size)
    for index in indices:
        corrupt_image(_PHOTOS[index], corruption, severity)
    return len(indices)


def _torch_task(corruption: str, severity: int, indices: list[int], size: int, count: int) -> int:
    global _PHOTOS
    if _PHOTOS is None or len(_PHOTOS) < count:
        _PHOTOS = sample_photographs(count, size)
    images = torch.from_numpy(_PHOTOS[indices]).permute(0, 3, 1, 2).float() / 255
    torch_backend.corrupt_tensor(images, corruption, severity)
    return len(indices)


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def time_pool(pool, task, corruption: str, severities, count: int, size: int, per_task: int) -> float:
    """Wall seconds for `task` to corrupt `count` photographs at every severity, `per_task` images a task."""
    chunks = [list(range(first, min(first + per_task, count))) for first in range(0, count, per_task)]
    start = time.perf_counter()
    futures = [pool.submit(task, corruption, s, chunk, size, count) for s in severities for chunk in chunks]
    done = sum(f.result() for f in futures)
    assert done == count * len(severities)
    return time.perf_counter() - start


def time_torch(images: torch.Tensor, corruption: str, severities, batch_size: int) -> float:
    """Wall seconds for the torch backend to corrupt `images` (already on their device) at every severity."""
    synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for severity in severities:
        for first in range(0, len(images), batch_size):
            torch_backend.corrupt_tensor(images[first:first + batch_size], corruption, severity)
    synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32, help="photographs for the torch backend")
    parser.add_argument("--reference-images", type=int, default=16, help="photographs for imagecorruptions")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU run)")
    parser.add_argument("--workers", type=int, default=2, help="imagecorruptions worker processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add a GPU column")
    parser.add_argument("--corruptions", default=",".join(COMMON_CORRUPTIONS))
    parser.add_argument("--severities", default="1,2,3,4,5")
    args = parser.parse_args()
    corruptions = [c for c in args.corruptions.split(",") if c]
    unknown = sorted(set(corruptions) - set(ALL_CORRUPTIONS))
    if unknown:
        parser.error(f"unknown corruptions: {', '.join(unknown)}")
    severities = [int(s) for s in args.severities.split(",")]
    use_cuda = args.device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")

    global _PHOTOS
    _PHOTOS = sample_photographs(max(args.images, args.reference_images), args.size)
    images = torch.from_numpy(_PHOTOS[:args.images]).permute(0, 3, 1, 2).float() / 255
    torch.set_num_threads(args.threads)
    gpu_images = images.to(args.device) if use_cuda else None

    print(f"torch {torch.__version__}, imagecorruptions {IMAGECORRUPTIONS_VERSION}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
          + (f", {torch.cuda.get_device_name()}" if use_cuda else ""))
    print("command: " + " ".join(["python", *os.sys.argv]))
    print(f"{args.size} px photographs (scikit-image samples): torch {args.images} on {args.threads} threads, "
          f"batch {args.batch_size}; imagecorruptions {args.reference_images} on {args.workers} processes; "
          f"severities {','.join(map(str, severities))}; load average at start {os.getloadavg()[0]:.2f}")
    print("warming up (frost pictures, Poisson tables, CUDA context) ...", flush=True)
    for corruption in corruptions:
        for severity in severities:
            torch_backend.corrupt_tensor(images[:2], corruption, severity)
            if use_cuda:
                torch_backend.corrupt_tensor(gpu_images[:2], corruption, severity)

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    header = (f"| corruption | imagecorruptions img/s ({args.workers} proc) | torch img/s ({args.threads} threads) | "
              f"ratio | torch img/s ({args.workers} proc x 1 thread) | ratio |")
    rule = "|---|---|---|---|---|---|"
    if use_cuda:
        header += " torch CUDA img/s | CUDA ratio |"
        rule += "---|---|"
    print(f"\n{header}\n{rule}", flush=True)
    totals = {"reference": 0.0, "cpu": 0.0, "processes": 0.0, "cuda": 0.0}
    per_image = len(severities)
    count = len(_PHOTOS)
    per_task = max(1, args.images // args.workers // 2)  # a few tasks per worker, each a batch
    with (ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as reference_pool,
          ProcessPoolExecutor(max_workers=args.workers, mp_context=context, initializer=_one_torch_thread) as pool):
        reference_pool.submit(_reference_task, corruptions[0], severities[0], [0], args.size, count).result()
        for corruption in corruptions:  # warm each torch worker's caches
            for severity in severities:
                warm = [pool.submit(_torch_task, corruption, severity, [0], args.size, count)
                        for _ in range(args.workers)]
                [f.result() for f in warm]
        for corruption in corruptions:
            reference = time_pool(reference_pool, _reference_task, corruption, severities, args.reference_images,
                                  args.size, max(1, args.reference_images // args.workers)) / (
                args.reference_images * per_image)
            on_cpu = time_torch(images, corruption, severities, args.batch_size) / (args.images * per_image)
            in_processes = time_pool(pool, _torch_task, corruption, severities, args.images, args.size,
                                     per_task) / (args.images * per_image)
            totals["reference"] += reference
            totals["cpu"] += on_cpu
            totals["processes"] += in_processes
            row = (f"| {corruption} | {1 / reference:.1f} | {1 / on_cpu:.1f} | {reference / on_cpu:.1f} | "
                   f"{1 / in_processes:.1f} | {reference / in_processes:.1f} |")
            if use_cuda:
                on_cuda = time_torch(gpu_images, corruption, severities, args.batch_size) / (args.images * per_image)
                totals["cuda"] += on_cuda
                row += f" {1 / on_cuda:.1f} | {reference / on_cuda:.1f} |"
            print(row, flush=True)
    # whole sweep: one image through every chosen corruption at every chosen severity
    sweep = len(corruptions) * per_image
    row = (f"| whole sweep ({len(corruptions)} x {per_image}) | {1 / (totals['reference'] * per_image):.3f} | "
           f"{1 / (totals['cpu'] * per_image):.3f} | {totals['reference'] / totals['cpu']:.1f} | "
           f"{1 / (totals['processes'] * per_image):.3f} | {totals['reference'] / totals['processes']:.1f} |")
    if use_cuda:
        row += f" {1 / (totals['cuda'] * per_image):.3f} | {totals['reference'] / totals['cuda']:.1f} |"
    print(row)
    print(f"\nwhole sweep = {sweep} corrupted versions of each image; its img/s counts source images through all "
          f"of them. Load average at end {os.getloadavg()[0]:.2f}.")
    print(f"WHOLE-SWEEP RATIO torch CPU ({args.threads} threads) / imagecorruptions ({args.workers} processes): "
          f"{totals['reference'] / totals['cpu']:.1f} (target >= 20 on an idle machine)")
    print(f"WHOLE-SWEEP RATIO torch CPU ({args.workers} processes x 1 thread) / imagecorruptions "
          f"({args.workers} processes): {totals['reference'] / totals['processes']:.1f}")


if __name__ == "__main__":
    main()
