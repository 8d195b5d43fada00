"""Where the digits demo's training time goes: ellbench.train.train (default deit_micro_patch4_32, digits, 15 epochs,
batch 32) timed at 2 and 1 threads, then the torch profiler (ops by self CPU time) and cProfile over 3 epochs.

Usage: python benchmarks/train_profile.py [MODEL]   (run on an idle machine; check `uptime` first)
"""
import cProfile
import pstats
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ellbench.train import TrainConfig, train

model = sys.argv[1] if len(sys.argv) > 1 else "deit_micro_patch4_32"
for threads in (2, 1):
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        p = time.process_time()
        rec = train(TrainConfig(model=model, dataset="digits", epochs=15, batch_size=32), d, progress=False)
        print(f"{model} threads={threads}: wall {time.perf_counter()-t:.1f} s cpu {time.process_time()-p:.1f} s "
              f"train_acc {rec['history'][-1]['train_accuracy']:.3f}", flush=True)
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as d, profile(activities=[ProfilerActivity.CPU]) as prof:
    train(TrainConfig(model=model, dataset="digits", epochs=3, batch_size=32), d, progress=False)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
with tempfile.TemporaryDirectory() as d:
    pr = cProfile.Profile()
    pr.enable()
    train(TrainConfig(model=model, dataset="digits", epochs=3, batch_size=32), d, progress=False)
    pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(20)
