"""CLI start-up cost against a bare `import torch`, measured side by side in one run.

`ellbench --help` and argument errors must answer without importing torch (the CLI imports heavy packages inside
commands). Each command runs as a fresh subprocess; the runs are interleaved so that load from other processes on
the machine falls on all of them alike. Prints the median wall time of each and its ratio to the torch import.

    .venv/bin/python benchmarks/cli_startup.py --runs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def ellbench_command() -> list[str]:
    """The console script installed next to this interpreter, else `python -m ellbench`."""
    script = Path(sys.executable).with_name("ellbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ellbench"]


def wall_time(command: list[str], env: dict, expected_code: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != expected_code:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}, expected {expected_code}:\n"
                         f"{result.stderr.decode(errors='replace')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="Runs of each command (the median is reported).")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be positive")

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cases = {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        "ellbench --help": ([*ellbench_command(), "--help"], 0),
        "ellbench train M --epochs -1 (error)": ([*ellbench_command(), "train", "deit_micro_patch4_32", "--epochs",
                                                 "-1"], 2),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for command, code in cases.values():  # one warm-up each: file-system caches, .pyc files
        wall_time(command, env, code)
    for _ in range(args.runs):
        for name, (command, code) in cases.items():
            times[name].append(wall_time(command, env, code))

    baseline = statistics.median(times["python -c 'import torch'"])
    print(f"median wall time of {args.runs} runs each (interleaved), {os.cpu_count()} CPUs")
    print(f"{'command':40s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'vs import torch':>16s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:40s} {median:9.3f} {min(samples):7.3f} {max(samples):7.3f} {median / baseline:15.2f}x")


if __name__ == "__main__":
    main()
