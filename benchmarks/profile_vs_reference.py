"""ellbench's profiler against an independent timm-style timing loop, then the paper's Table 11 shape.

Part 1 times the same model, batch and thread count with ellbench.profile.profile_model and with a loop written the
way timm's benchmark.py times inference (random normal input, inference_mode, warm-up, one timed run between two
clock readings). The two alternate round by round in A-B-B-A order so that load from other processes hits both
alike; the median of the per-round ratios should sit in 0.95-1.05.

Part 2 prints the shape of the paper's Table 11 (DeiT vs DeiT-Elliptical at tiny, small and base): throughput at
batch B (rounds alternating the two models, A-B-B-A; the change is the median of per-round ratios), peak memory
(one fresh child process per model), FLOPs per image and parameters, with Elliptical's percentage change over DeiT.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/profile_vs_reference.py --threads 2
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/profile_vs_reference.py --threads 2 --malloc steady

`--malloc steady` fixes glibc's trim and mmap thresholds first (ellbench.malloc, as benchmarks/attention.py does by
default), so that whether a pass faults its activations in afresh stops depending on the process's history. Running
the Table 11 part both ways tests one explanation of why its throughput change (batch 8, a fresh model per round)
differs from attention.py's: page faults that hit the two models unequally.
"""

import argparse
import statistics
import time

import timm
import torch

from ellbench.malloc import steady_malloc
from ellbench.profile import device_name, profile_model
from ellbench.stats import median_interval


def timm_style_throughput(name: str, batch_size: int, img_size: int, warmup: int, steps: int) -> float:
    """Images per second from a loop like timm's benchmark.py inference runner (CPU: no synchronisation needed)."""
    model = timm.create_model(name, img_size=img_size).eval()
    example = torch.randn((batch_size, 3, img_size, img_size))
    with torch.inference_mode():
        for _ in range(warmup):
            model(example)
        run_start = time.perf_counter()
        for _ in range(steps):
            model(example)
        run_end = time.perf_counter()
    return batch_size * steps / (run_end - run_start)


def ellbench_throughput(name: str, batch_size: int, img_size: int, warmup: int, steps: int, threads: int) -> float:
    result = profile_model(
        name, batch_size=batch_size, img_size=img_size, threads=threads, warmup=warmup, steps=steps, repeats=1,
        latency_steps=1, measure_memory=False,
    )  # fmt: skip
    return result["throughput_img_s"]


def compare_with_reference(args) -> None:
    ours, reference = [], []
    for round_index in range(args.rounds):
        order = ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")
        for side in order:
            if side == "ours":
                ours.append(ellbench_throughput(args.model, args.batch_size, args.img_size, args.warmup, args.steps,
                                                args.threads))  # fmt: skip
            else:
                reference.append(timm_style_throughput(args.model, args.batch_size, args.img_size, args.warmup,
                                                       args.steps))  # fmt: skip
    print(f"## 1. {args.model}, batch {args.batch_size}, {args.img_size} px, {args.threads} threads, "
          f"warm-up {args.warmup}, {args.steps} timed steps, {args.rounds} alternating rounds")  # fmt: skip
    print("| run | img/s per round | median |")
    print("|---|---|---|")
    for label, runs in (("ellbench profile_model", ours), ("timm-style loop", reference)):
        print(f"| {label} | {' '.join(f'{value:.1f}' for value in runs)} | {statistics.median(runs):.1f} |")
    paired = [mine / theirs for mine, theirs in zip(ours, reference, strict=True)]
    low, high = median_interval(paired)
    print(f"\nratio ellbench / timm-style, median of per-round ratios = {statistics.median(paired):.3f} "
          f"[95% CI {low:.3f}, {high:.3f}] (target 0.95-1.05; ratio of medians "
          f"{statistics.median(ours) / statistics.median(reference):.3f})\n")


def percent_change(new: float, old: float) -> str:
    return f"{100.0 * (new - old) / old:+.1f}%"


def profile_pair_alternating(size: str, args) -> dict[str, dict]:
    """Profile DeiT and Elliptical of one size; throughput is the median over rounds run in A-B-B-A order."""
    results, runs = {}, {"deit": [], "elliptical": []}
    for round_index in range(args.repeats):
        order = ("deit", "elliptical") if round_index % 2 == 0 else ("elliptical", "deit")
        for family in order:
            result = profile_model(
                f"{family}_{size}_patch16_224", batch_size=args.table_batch_size, threads=args.threads,
                warmup=args.warmup, steps=args.table_steps, repeats=1, latency_steps=1,
                measure_memory=family not in results,
            )  # fmt: skip
            results.setdefault(family, result)
            runs[family].append(result["throughput_img_s"])
    for family, result in results.items():
        result["throughput_img_s"] = statistics.median(runs[family])
        result["params"] = result["params"] / 1e6
    paired = [ours / theirs for ours, theirs in zip(runs["elliptical"], runs["deit"], strict=True)]
    results["elliptical"]["paired_throughput_change_pct"] = 100.0 * (statistics.median(paired) - 1.0)
    low, high = median_interval(paired)
    results["elliptical"]["paired_throughput_change_ci"] = (100.0 * (low - 1.0), 100.0 * (high - 1.0))
    return results


def table_11(args) -> None:
    metrics = [("throughput_img_s", "img/s", "{:.1f}"), ("peak_memory_mib", "peak MiB", "{:.1f}"),
               ("gflops_per_image", "GFLOPs/img", "{:.3f}"), ("params", "params (M)", "{:.2f}")]  # fmt: skip
    print(f"## 2. Table 11 shape: DeiT vs Elliptical, batch {args.table_batch_size}, 224 px, {args.threads} threads, "
          f"warm-up {args.warmup}, {args.table_steps} timed steps, median of {args.repeats} alternating rounds")
    print("| size | model | " + " | ".join(label for _, label, _ in metrics) + " | fused attention |")
    print("|---|---|" + "---|" * (len(metrics) + 1))
    for size in args.sizes:
        rows = profile_pair_alternating(size, args)
        for result in rows.values():
            cells = " | ".join(fmt.format(result[key]) for key, _, fmt in metrics)
            print(f"| {size} | {result['model']} | {cells} | {result['fused_attention']} |")
        # Throughput change: median of the per-round ratios, which cancels load that drifts between rounds.
        low, high = rows["elliptical"]["paired_throughput_change_ci"]
        change = rows["elliptical"]["paired_throughput_change_pct"]
        changes = f"{change:+.1f}% [{low:+.1f}, {high:+.1f}] | " + " | ".join(
            percent_change(rows["elliptical"][key], rows["deit"][key]) for key, _, _ in metrics[1:]
        )
        print(f"| {size} | Elliptical vs DeiT | {changes} | |")
    print("\nThroughput change: median of the per-round paired ratios, with its distribution-free 95% interval "
          "(order statistics; nan with fewer than 6 rounds).")
    print(f"FLOPs: {rows['deit']['flops_counting']}.")
    print(f"Memory: {rows['deit']['memory_method']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--table-batch-size", type=int, default=8)
    parser.add_argument("--table-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4, help="alternating rounds per Table 11 pair")
    parser.add_argument("--skip-table", action="store_true", help="run part 1 only")
    parser.add_argument("--malloc", choices=("default", "steady"), default="default",
                        help="steady: fix glibc's trim and mmap thresholds first (see the module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc == "steady" and not steady_malloc():
        raise SystemExit("error: --malloc steady needs glibc's mallopt")
    print(f"torch {torch.__version__}, timm {timm.__version__}, {device_name(torch.device('cpu'))}, "
          f"malloc {args.malloc}\n")
    compare_with_reference(args)
    if not args.skip_table:
        table_11(args)


if __name__ == "__main__":
    main()
