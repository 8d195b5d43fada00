"""Do two 1-thread trainings side by side beat the same two in turn at every thread? (the study's `--workers`)

`ellbench demo --dataset study` trains and evaluates its 15 (model, seed) units over worker processes of one torch
thread each. This script measures the reason on the machine at hand: for each pair of models it trains both for one
epoch on the first 12,800 Fashion-MNIST training images at the study's settings (patch 7, batch 128, lr 2e-3, warm-up
0.25), first in turn at `--threads` threads each, then side by side in two fresh processes at one thread each, and
prints the wall times and their ratio (> 1: side by side is faster). It also prints each run's final loss: the thread
count changes the order of float sums, so 1 and 2 threads give slightly different weights (why the study records its
thread count and keeps it fixed). Within a round the in-turn pair always runs first; run it on an idle machine
(check `uptime`).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_workers.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_workers.py --models deit_micro_patch4_32 rvt_micro_32 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def one(model: str, threads: int, limit: int) -> None:
    """Child process: one epoch of the study's training at `threads` torch threads; prints time and loss as JSON."""
    import torch

    torch.set_num_threads(threads)
    from ellbench.train import TrainConfig, train

    config = TrainConfig(model=model, dataset="fashion-mnist", epochs=1, batch_size=128, lr=2e-3,
                         warmup_epochs=0.25, limit=limit, patch_size=7, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        record = train(config, folder, progress=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"model": model, "threads": threads, "train_s": seconds, "loss": record["history"][-1]["loss"]}))


def _start(model: str, threads: int, limit: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--one", model, str(threads), "--limit", str(limit)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        sys.exit(f"error: a training process failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs=2, default=["deit_micro_patch4_32", "rvt_micro_32"])
    parser.add_argument("--threads", type=int, default=2, help="threads per training when run in turn")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=12_800, help="training images per epoch")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]), args.limit)
        return
    ratios = []
    for round_index in range(args.rounds):
        start = time.perf_counter()
        in_turn = [_result(_start(model, args.threads, args.limit)) for model in args.models]
        in_turn_s = time.perf_counter() - start
        start = time.perf_counter()
        processes = [_start(model, 1, args.limit) for model in args.models]
        side_by_side = [_result(process) for process in processes]
        side_s = time.perf_counter() - start
        ratios.append(in_turn_s / side_s)
        for a, b in zip(in_turn, side_by_side, strict=True):
            print(f"  {a['model']}: {a['train_s']:.1f} s at {args.threads} threads (loss {a['loss']:.7f}), "
                  f"{b['train_s']:.1f} s at 1 thread beside the other (loss {b['loss']:.7f})")
        print(f"round {round_index + 1}: in turn at {args.threads} threads {in_turn_s:.1f} s, side by side at 1 thread "
              f"{side_s:.1f} s, ratio {ratios[-1]:.2f}", flush=True)
    print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.2f} (in turn / side by side)")


if __name__ == "__main__":
    main()
