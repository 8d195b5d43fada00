"""Forward throughput of each attention variant against DeiT, and of its fused path against its explicit reference.

All models of one size are timed in the same run, interleaved repeat by repeat, so machine load hits them alike;
the printed ratios are what this benchmark claims, not the absolute images per second.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py                      # CPU, batch 32, 224 px
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py --device cuda --amp  # GPU, bfloat16 autocast

On a CPU shared with other work, `--clock cpu --threads 1` times the process's own CPU seconds, which other
processes disturb far less than wall time (they still share caches and memory bandwidth).

Targets (issue 5): Elliptical / DeiT >= 0.95 at tiny, small and base; fused / reference >= 1.1 on CPU.
"""

import argparse
import platform
import statistics
import time

import timm
import torch

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)

# One entry per variant: (label, model name with {size}, kwargs that select its explicit reference attention path,
# or None when the model has no separate reference path). Its baseline is deit_{size}_patch16_224.
ROWS = [
    ("Elliptical", "elliptical_{size}_patch16_224", {"fused_attn": False}),
    ("KDE", "kde_{size}_patch16_224", {"fused_attn": False}),
    ("RKDE", "rkde_{size}_patch16_224", {"fused_attn": False}),
    ("MoM", "mom_{size}_patch16_224", {"fused_attn": False}),
    ("RVT", "rvt_{size}", None),
]
SIZES = ("tiny", "small", "base")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def seconds_per_batch(model, images, device: torch.device, amp: bool, clock) -> float:
    """Time of one forward pass on `clock`, synchronised on GPU."""
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return clock() - start


def measure(models: dict, images, device, amp: bool, repeats: int, warmup: int, clock) -> dict:
    """Median seconds per batch of each model, timing them in turn (rotating the order) within every repeat."""
    for _ in range(warmup):
        for model in models.values():
            seconds_per_batch(model, images, device, amp, clock)
    times = {key: [] for key in models}
    keys = list(models)
    for repeat in range(repeats):
        for key in keys[repeat % len(keys):] + keys[: repeat % len(keys)]:
            times[key].append(seconds_per_batch(models[key], images, device, amp, clock))
    return {key: statistics.median(values) for key, values in times.items()}


def build(name: str, device, **kwargs):
    return timm.create_model(name, **kwargs).eval().to(device)


def run(sizes, batch: int, img_size: int, repeats: int, warmup: int, device: torch.device, amp: bool,
        clock=time.perf_counter, variants=None) -> list[dict]:
    results = []
    for size in sizes:
        images = torch.rand(batch, 3, img_size, img_size, device=device)
        for label, template, reference_kwargs in ROWS:
            if variants and label not in variants:
                continue
            name = template.format(size=size)
            models = {"deit": build(f"deit_{size}_patch16_224", device), "fused": build(name, device)}
            if reference_kwargs is not None:
                models["reference"] = build(name, device, **reference_kwargs)
            seconds = measure(models, images, device, amp, repeats, warmup, clock)
            throughput = {key: batch / value for key, value in seconds.items()}
            results.append(dict(label=label, size=size, name=name, **throughput))
            print(format_row(results[-1]), flush=True)
            del models
    return results


def format_row(row: dict) -> str:
    reference = row.get("reference")
    cells = [
        row["label"], row["size"], f"{row['deit']:.1f}", f"{row['fused']:.1f}", f"{row['fused'] / row['deit']:.3f}",
        f"{reference:.1f}" if reference else "-", f"{row['fused'] / reference:.3f}" if reference else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--variants", nargs="+", choices=[row[0] for row in ROWS], help="default: every row")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time, or this process's CPU time")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, timm {timm.__version__}, device {device} ({hardware}), "
          f"threads {torch.get_num_threads()}, batch {args.batch}, {args.img_size} px, "
          f"{'bfloat16 autocast' if args.amp else 'float32'}, {args.clock} clock, "
          f"median of {args.repeats} interleaved repeats")
    print("| variant | size | DeiT img/s | variant img/s | variant / DeiT | reference img/s | fused / reference |")
    print("|---|---|---|---|---|---|---|")
    run(args.sizes, args.batch, args.img_size, args.repeats, args.warmup, device, args.amp, CLOCKS[args.clock],
        args.variants)


if __name__ == "__main__":
    main()
