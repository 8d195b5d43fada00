"""Throughput of ellbench's PGD-10 attack evaluator against a bare torchattacks loop on the same model, data and batch.

The bare loop does the same measurements an attack evaluation needs (clean prediction, PGD-10, adversarial
prediction) with nothing else: no seeding, no range check, no per-example rows. All run in one process, interleaved
batch by batch so that machine load hits them alike; the printed ratios (bare seconds / ellbench seconds, i.e.
ellbench throughput / bare throughput) are what this benchmark claims, not the absolute images per second.
Also printed: the paper protocol's evaluator (rescaled coordinates) against the same bare loop.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attack_overhead.py             # CPU, 1 thread, micro model, 32 px
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attack_overhead.py --device cuda \\
        --model deit_tiny_patch16_224 --batch-size 64 --batches 4 --repeats 5    # GPU, 224 px

Target (issue 7): ellbench / bare >= 0.95.
"""

import argparse
import platform
import statistics
import time

import torch
import torchattacks

from ellbench.attacks.checks import format_eps
from ellbench.attacks.suite import make_entries
from ellbench.models.factory import build_model
from ellbench.runner import Batch
from ellbench.tasks.attack import attack_evaluator

EPS = 4 / 255
STEPS = 10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(model, attack, device, images, labels):
    """The baseline, one batch: clean forward, torchattacks PGD-10, adversarial forward; counts kept on the device."""
    images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        clean_correct = (model(images).argmax(1) == labels).sum()
    adv = attack(images, labels)
    with torch.no_grad():
        robust_correct = (model(adv).argmax(1) == labels).sum()
    return clean_correct, robust_correct


def timed(run, device, clock) -> float:
    synchronize(device)
    start = clock()
    run()
    synchronize(device)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_micro_patch4_32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                        help="Autocast of the network, the same for all three (ellbench.models.amp)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps a shared machine's noise down)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default=None,
                        help="wall time, or this process's CPU time (default: cpu on CPU, wall on GPU)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    model = build_model(args.model, num_classes=args.classes, seed=0).eval().to(device)
    model.amp = args.amp
    size = model.input_size[-1]
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.arange(b * args.batch_size, (b + 1) * args.batch_size),
         torch.rand(args.batch_size, 3, size, size, generator=generator),
         torch.randint(0, args.classes, (args.batch_size,), generator=generator))
        for b in range(args.batches)
    ]
    settings = dict(alpha=EPS / 4, steps=STEPS, random_start=True)
    bare_attack = torchattacks.PGD(model, eps=EPS, **settings)
    standard = attack_evaluator(model, make_entries("PGD", settings, eps=EPS)[0], seed=0)
    paper = attack_evaluator(model, make_entries("PGD", settings, eps=EPS, protocol="paper")[0], seed=0)

    def on_device(batch):  # what the runner hands an evaluation: the batch moved to the device
        indices, images, labels = batch
        return Batch(0, indices, images.to(device), labels.to(device))

    runs = {
        "bare torchattacks": lambda batch: bare_step(model, bare_attack, device, batch[1], batch[2]),
        "ellbench standard": lambda batch: standard(on_device(batch)),
        "ellbench paper": lambda batch: paper(on_device(batch)),
    }
    for run in runs.values():  # warm-up
        run(batches[0])
    # Interleaved batch by batch, in rotating order, so that load changes on a shared machine hit all three alike.
    seconds = {name: [0.0] * args.repeats for name in runs}
    for repeat in range(args.repeats):
        for number, batch in enumerate(batches):
            names = list(runs)
            shift = (repeat * len(batches) + number) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name][repeat] += timed(lambda run=runs[name], batch=batch: run(batch), device, clock)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    images_per_repeat = args.batch_size * args.batches
    print(f"PGD-{STEPS} eps {format_eps(EPS)} on {args.model} ({size} px), batch {args.batch_size} x "
          f"{args.batches}, {args.repeats} repeats interleaved per batch, {device_name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {clock_name} clock, amp {args.amp}")
    bare = seconds["bare torchattacks"]
    for name, times in seconds.items():
        ratios = [b / t for b, t in zip(bare, times, strict=True)]
        print(f"  {name:18s} {images_per_repeat / statistics.median(times):9.1f} img/s   "
              f"throughput ratio vs bare per repeat: {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.3f}")
    print("target: ellbench standard / bare >= 0.95")


if __name__ == "__main__":
    main()
