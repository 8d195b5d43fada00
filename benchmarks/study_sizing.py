"""What one training image costs each family at the Fashion-MNIST study's size, and what the study's budget costs.

The study (`ellbench demo --dataset study`) trains 5 families x 3 seeds on 28 px Fashion-MNIST. This script times one
training step (forward, backward, AdamW step) per family for each setting that sizing considered: patch 4 or 7 (a
7 x 7 or 4 x 4 token grid), batch 64 or 128, float32 or bfloat16 autocast (issue 22 asks whether bf16 pays on this
CPU; measure, don't assume). Families and settings are interleaved step by step with the order rotated, so drifting
load hits them alike; images per second are medians over the repeats. It then prints what the study's training
budget (epochs x 60,000 images per family and seed) costs at each setting.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_sizing.py                  # 2 threads, the study's machine
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/study_sizing.py --precisions fp32 --batches 128 --patches 7

Accuracy is not measured here: `ellbench train MODEL --dataset fashion-mnist --patch-size 7 ... --curve` prints the
test accuracy after every epoch (README, "The paper's claims in miniature", has the runs sizing used).
"""

import argparse
import itertools
import statistics
import time

import timm
import torch
from attention import make_pass  # benchmarks/attention.py: the same training step (forward, backward, AdamW)

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)
from ellbench.demo import DEMO_MODELS, PRESETS
from ellbench.malloc import steady_malloc

TRAIN_IMAGES = 60_000


def step_function(name: str, patch: int, batch: int, precision: str, seed: int = 0):
    """One training step of `name` at 28 px, 10 classes, on fixed random images; returns a callable."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10, img_size=28, patch_size=patch)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    return make_pass(model, images, labels, "train", amp=precision == "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--patches", default="4,7")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady_malloc()
    models = args.models.split(",")
    settings = list(itertools.product(map(int, args.patches.split(",")), map(int, args.batches.split(",")),
                                      args.precisions.split(",")))
    cases = [(name, *setting) for name in models for setting in settings]
    steps = {case: step_function(*case) for case in cases}
    for case in cases:
        for _ in range(args.warmup):
            steps[case]()
    speeds = {case: [] for case in cases}
    for repeat in range(args.repeats):
        shift = repeat % len(cases)
        for case in cases[shift:] + cases[:shift]:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[case]()
            speeds[case].append(case[2] * args.steps / (time.perf_counter() - start))
    median = {case: statistics.median(values) for case, values in speeds.items()}

    print(f"training images/s, median of {args.repeats} repeats of {args.steps} steps; torch {torch.__version__}, "
          f"{args.threads} threads")
    header = ["model"] + [f"p{p} b{b} {q}" for p, b, q in settings]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in models:
        print("| " + " | ".join([name] + [f"{median[(name, *s)]:.0f}" for s in settings]) + " |")
    study = PRESETS["study"]
    print(f"\nthe study's training per seed ({study.epochs} epochs x {TRAIN_IMAGES} images x {len(models)} families):")
    for setting in settings:
        seconds = sum(study.epochs * TRAIN_IMAGES / median[(name, *setting)] for name in models)
        print(f"  patch {setting[0]}, batch {setting[1]}, {setting[2]}: {seconds / 60:.1f} min per seed, "
              f"{len(study.seeds) * seconds / 60:.0f} min for {len(study.seeds)} seeds")


if __name__ == "__main__":
    main()
