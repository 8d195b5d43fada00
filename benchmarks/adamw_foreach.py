"""Training-step time of every study family with torch's AdamW as a per-tensor loop (its CPU default) against
foreach=True (what ellbench.train uses; bitwise the same weights, tests/test_cli.py), interleaved, median of repeats.

Usage: python benchmarks/adamw_foreach.py [REPEATS]   (run on an idle machine; check `uptime` first)
The study's shapes: batch 128 of 28 px images in 7 px patches, 2 threads, forward + backward + step.
"""
import statistics
import sys
import time

import torch

from ellbench.demo import DEMO_MODELS
from ellbench.models.factory import build_model
from ellbench.train import model_kwargs_for

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
torch.set_num_threads(2)
images, labels = torch.rand(128, 3, 28, 28), torch.randint(0, 10, (128,))
for name in DEMO_MODELS:
    kwargs = {**model_kwargs_for(name, 28, 10), "patch_size": 7}
    setups = {}
    for variant, options in (("loop", {"foreach": False}), ("foreach", {"foreach": True})):
        torch.manual_seed(0)
        model = build_model(name, seed=0, **kwargs).train()
        setups[variant] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, **options))

    def steps(variant: str, count: int, setups=setups) -> float:
        model, optimizer = setups[variant]
        started = time.perf_counter()
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        return (time.perf_counter() - started) / count

    times = {variant: [] for variant in setups}
    for variant in setups:
        steps(variant, 5)  # warm-up
    for _ in range(repeats):
        for variant in setups:
            times[variant].append(steps(variant, 20))
    loop, foreach = (statistics.median(times[v]) for v in ("loop", "foreach"))
    print(f"{name:28s} loop {loop * 1e3:6.1f} ms/step  foreach {foreach * 1e3:6.1f} ms/step  "
          f"loop/foreach {loop / foreach:.3f}", flush=True)
