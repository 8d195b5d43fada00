"""Clean evaluation in images/s: ellbench's pipeline against a validate.py-style loop on timm's create_loader.

Same folder of real photographs (benchmarks/photo_folder.py), same network object (the timm model inside ellbench's
wrapper, random weights from one seed), same batch size, worker count, thread count and device, in one process.

1. ellbench: `ellbench.tasks.eval.run_clean` on `ellbench.data.open_dataset(folder)` (the folder as `ellbench eval`
   and `ellbench attack --data FOLDER` open it), into a fresh results store each round: decoding in the runner's
   DataLoader, per-example rows committed to SQLite per batch.
   timm: timm's validate.py loop (huggingface/pytorch-image-models validate.py): `create_dataset` +
   `create_loader(input_size, batch_size, interpolation, mean, std, num_workers, crop_pct, crop_mode, pin_memory,
   device)`, a warm-up forward, then per batch the model under inference_mode, the loss and top-1/top-5 with `.item()`.
   Like with like: timm's loader is given the resize of ellbench's folder (interpolation and crop_pct = img_size /
   resize read off the opened data set when it has them, else the model's own timm data config). Each round runs
   A-B-B-A; the claim is the median of per-round ratios ellbench / timm (target >= 0.95 on CPU).
2. The loader alone (no model): ellbench's `runner.load_batches` with N workers against 0 workers, alternating
   (target >= 1.6 with 2 workers on an idle 2-core machine), with timm's loader at the same counts for reference.
   Each round is A-B-B-A too.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_pipeline.py                      # CPU, 256 images, 2 workers
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_pipeline.py --device cuda --images 2048 --batch-size 256 \\
        --workers 8

Check `uptime` first: on a busy machine the ratios, not the images/s, are what this shows.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.utils import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_folder import make_photo_folder  # noqa: E402

from ellbench import runner  # noqa: E402
from ellbench.data import open_dataset  # noqa: E402
from ellbench.models.loading import load_for_eval  # noqa: E402
from ellbench.store import Store  # noqa: E402
from ellbench.tasks.eval import run_clean  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timm_loader_settings(dataset, network) -> dict:
    """create_loader's resize settings matching ellbench's opened folder: its own when it names them, else timm's."""
    config = resolve_data_config(model=network)
    if all(hasattr(dataset, name) for name in ("img_size", "resize", "interpolation")):
        config.update(input_size=(3, dataset.img_size, dataset.img_size), interpolation=dataset.interpolation,
                      crop_pct=dataset.img_size / dataset.resize, crop_mode="center")
    return {key: config[key] for key in ("input_size", "interpolation", "mean", "std", "crop_pct")} | {
        "crop_mode": config.get("crop_mode", "center")}


def ellbench_eval(loaded, dataset, *, batch_size: int, workers: int) -> float:
    """Images per second of one clean evaluation job, from the call to its stored result."""
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch) / "results.sqlite")
        start = time.perf_counter()
        job = run_clean(store, loaded, dataset, batch_size=batch_size, workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        store.close()
    return job["summary"]["n"] / elapsed


def timm_validate(network, folder: Path, settings: dict, *, batch_size: int, workers: int,
                  device: torch.device) -> float:
    """Images per second of validate.py's loop over create_loader (warm-up forward untimed, as validate.py has it)."""
    cuda = device.type == "cuda"
    dataset = create_dataset(name="", root=str(folder), split="validation")
    with torch.inference_mode():
        network(torch.randn((batch_size, *settings["input_size"]), device=device))
    synchronize(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    start = time.perf_counter()
    loader = create_loader(dataset, batch_size=batch_size, use_prefetcher=cuda, num_workers=workers, pin_memory=cuda,
                           device=device, **settings)
    seen = 0
    with torch.inference_mode():
        for images, target in loader:
            if not cuda:
                images, target = images.to(device), target.to(device)
            output = network(images)
            loss = criterion(output, target)
            top1, top5 = accuracy(output.detach(), target, topk=(1, 5))
            loss.item(), top1.item(), top5.item()
            seen += output.shape[0]
    return seen / (time.perf_counter() - start)


def ellbench_loader(dataset, *, batch_size: int, workers: int) -> float:
    """Images per second of runner.load_batches over the whole data set, to CPU tensors."""
    batches = list(range((len(dataset) + batch_size - 1) // batch_size))
    start = time.perf_counter()
    seen = sum(len(batch.labels) for batch in runner.load_batches(dataset, batches, batch_size,
                                                                   loader_workers=workers))
    return seen / (time.perf_counter() - start)


def timm_loader(folder: Path, settings: dict, *, batch_size: int, workers: int) -> float:
    """Images per second of create_loader (no prefetcher, CPU tensors) over the whole folder."""
    dataset = create_dataset(name="", root=str(folder), split="validation")
    start = time.perf_counter()
    loader = create_loader(dataset, batch_size=batch_size, use_prefetcher=False, num_workers=workers, **settings)
    seen = sum(len(target) for _, target in loader)
    return seen / (time.perf_counter() - start)


def alternate(first, second, rounds: int) -> list[tuple[float, float]]:
    """Per round, first and second in the order A B B A; each side's figure is the mean of its two runs, so a load
    that drifts steadily during a round hits both sides alike."""
    results = []
    for _ in range(rounds):
        a1 = first()
        b1 = second()
        b2 = second()
        a2 = first()
        results.append(((a1 + a2) / 2, (b1 + b2) / 2))
    return results


def report(title: str, names: tuple[str, str], rounds: list[tuple[float, float]], target: str) -> float:
    ratios = [a / b for a, b in rounds]
    print(f"\n## {title}")
    print(f"| round (A-B-B-A) | {names[0]} img/s | {names[1]} img/s | ratio |")
    print("|---|---|---|---|")
    for index, ((a, b), ratio) in enumerate(zip(rounds, ratios, strict=True), 1):
        print(f"| {index} | {a:.1f} | {b:.1f} | {ratio:.3f} |")
    median = statistics.median(ratios)
    print(f"\nratio {names[0]} / {names[1]}, median of per-round ratios = {median:.3f} ({target})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="An ImageNet-style folder (default: a generated one)")
    parser.add_argument("--images", type=int, default=256, help="Photographs to generate (without --folder)")
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="Loader workers for both pipelines")
    parser.add_argument("--rounds", type=int, default=3, help="A-B-B-A rounds per comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-eval", action="store_true", help="Only the loader comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or make_photo_folder(Path(scratch) / "photos", args.images)
        dataset = open_dataset(str(folder))
        loaded = load_for_eval(args.model, seed=0, device=args.device)
        network = loaded.module.model  # the same network object in both loops
        settings = timm_loader_settings(dataset, network)
        load = os.getloadavg()
        print(f"# eval pipeline: {args.model}, {len(dataset)} images, batch {args.batch_size}, {args.workers} workers, "
              f"{torch.get_num_threads()} threads, {device}")
        print(f"torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
              f"{runner.available_cores()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"timm loader settings (like ellbench's folder): {settings}")
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        if not args.skip_eval:
            ellbench_eval(loaded, dataset, batch_size=args.batch_size, workers=args.workers)  # warm-up, untimed
            rounds = alternate(
                lambda: ellbench_eval(loaded, dataset, batch_size=args.batch_size, workers=args.workers),
                lambda: timm_validate(network, folder, settings, batch_size=args.batch_size, workers=args.workers,
                                      device=device),
                args.rounds)
            report("1. clean evaluation: ellbench run_clean vs timm validate.py loop", ("ellbench", "timm"), rounds,
                   "target >= 0.95 on CPU")
        loader_rounds = alternate(
            lambda: ellbench_loader(dataset, batch_size=args.batch_size, workers=args.workers),
            lambda: ellbench_loader(dataset, batch_size=args.batch_size, workers=0), args.rounds)
        report(f"2. ellbench loader alone: {args.workers} workers vs 0", (f"{args.workers} workers", "0 workers"),
               loader_rounds, "target >= 1.6 with 2 workers on an idle 2-core machine")
        timm_rounds = alternate(
            lambda: timm_loader(folder, settings, batch_size=args.batch_size, workers=args.workers),
            lambda: timm_loader(folder, settings, batch_size=args.batch_size, workers=0), args.rounds)
        report(f"3. reference: timm create_loader alone, {args.workers} workers vs 0",
               (f"{args.workers} workers", "0 workers"), timm_rounds, "for comparison with 2.")
        load = os.getloadavg()
        print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
