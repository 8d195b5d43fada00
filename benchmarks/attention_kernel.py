"""The attention op alone: Elliptical's fused path against its explicit reference, and plain SDPA, per block.

Shapes of DeiT tiny/small/base at 224 px (N = 197 tokens, D_h = 64, 3/6/12 heads), q, k, v as strided views of one
qkv tensor as in the model, m in [0, 1]. Medians of interleaved repeats, inference mode. It bounds what the fused
path can save in a whole forward pass: 11 elliptical blocks times the per-block difference. The column "estimate m"
times `coordinate_relevance` (|v_l - v_(l-1)| averaged over tokens, normalised) on two such value views: with
"Elliptical fused" minus "SDPA" (scaling q, and the kernel taking that fresh dense q beside strided k and v) it is what
an elliptical block costs beyond DeiT's.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention_kernel.py --repeats 15

By default glibc's trim and mmap thresholds are fixed first (`--malloc steady`, as in benchmarks/attention.py), so that
the reference path's [B, H, N, N] score tensors are not faulted in afresh on every call, as they are not inside a
model run by attention.py; `--malloc default` leaves glibc as it is (the reference then pays page faults per call).
"""

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from ellbench.malloc import steady_malloc
from ellbench.models.elliptical import coordinate_relevance, elliptical_attention

HEADS = {"tiny": 3, "small": 6, "base": 12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady: fix glibc's trim and mmap thresholds; default: glibc's own")
    args = parser.parse_args()
    if args.malloc == "steady" and not steady_malloc():
        parser.error("--malloc steady needs glibc's mallopt, which this C library does not have")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, N 197, D_h 64, "
          f"{args.malloc} malloc, median of {args.repeats} interleaved repeats, ms per call")
    print("| size | heads | SDPA (DeiT) | Elliptical fused | Elliptical reference | reference / fused | estimate m |")
    print("|---|---|---|---|---|---|---|")
    for size, heads in HEADS.items():
        qkv = torch.randn(args.batch, 197, 3, heads, 64).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D_h]
        q, k, v = qkv.unbind(0)
        previous_values = torch.randn(args.batch, 197, 3, heads, 64).permute(2, 0, 3, 1, 4)[2]
        m = torch.rand(args.batch, heads, 64)
        calls = {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v),
                 "fused": functools.partial(elliptical_attention, q, k, v, m, fused=True),
                 "reference": functools.partial(elliptical_attention, q, k, v, m, fused=False),
                 "estimate": functools.partial(coordinate_relevance, v, previous_values)}
        times = {name: [] for name in calls}
        with torch.inference_mode():
            for call in calls.values():
                call()
            for _ in range(args.repeats):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(1e3 * (time.perf_counter() - start))
        ms = {name: statistics.median(values) for name, values in times.items()}
        print(f"| {size} | {heads} | {ms['sdpa']:.2f} | {ms['fused']:.2f} | {ms['reference']:.2f} | "
              f"{ms['reference'] / ms['fused']:.2f} | {ms['estimate']:.2f} |")


if __name__ == "__main__":
    main()
