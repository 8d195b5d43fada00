"""The study's corrupted test sets built in this process against over worker processes (the default on enough
images): seconds for each, the ratio, and whether every pixel is the same.

Usage: python benchmarks/study_precompute.py [SEED]   (run on an idle machine; check `uptime` first)
Needs Fashion-MNIST (see ../shared/ENVIRONMENT.md or `ellbench data`); uses the study's corruption suite and its
whole 10,000-image test split, as `ellbench demo --dataset study` does once per seed.
"""
import sys
import time

import torch

from ellbench.corruptions.suite import load_suite
from ellbench.data import open_dataset
from ellbench.tasks.corruption import corrupted_datasets


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    suite, test_set = load_suite("study"), open_dataset("fashion-mnist", "test")
    timings, built = {}, {}
    for label, workers in (("this process", 1), ("worker processes", None)):
        started = time.perf_counter()
        built[label] = corrupted_datasets(suite, clean=test_set, seed=seed, precompute=True, workers=workers)
        timings[label] = time.perf_counter() - started
        print(f"{label:>16}: {timings[label]:6.1f} s for {len(built[label])} sets of {len(test_set)} images",
              flush=True)
    same = all(torch.equal(built["this process"][key].precomputed[0], built["worker processes"][key].precomputed[0])
               and torch.equal(built["this process"][key].precomputed[1], built["worker processes"][key].precomputed[1])
               for key in built["this process"])
    print(f"speed-up {timings['this process'] / timings['worker processes']:.2f}x; identical pixels and labels: {same}")


if __name__ == "__main__":  # the worker processes are spawned: they import this file
    main()
