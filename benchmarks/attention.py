"""Throughput of each attention variant against DeiT, and of its fused path against its explicit reference.

Two modes: `forward` (inference mode, as `ellbench profile` and the evaluations run) and `train` (forward, backward and
an AdamW step on random labels, as `ellbench train` and the demo run). All models of one size are timed in the same
run, interleaved pass by pass with the order rotated, so machine load hits them alike. Images per second are medians
over the repeats; each ratio is the median over repeats of the two models' speed ratio within the repeat, so that
load which drifts between repeats cancels. The ratios are what this benchmark claims, not the images per second.
Beside each ratio is a distribution-free 95% confidence interval of that median (order statistics, which assume
independent repeats and nothing about their distribution). On a shared 2-core VM single passes of the same model
vary by 10-20% (1 thread, CPU clock included), so ratios near a target need many repeats: the interval says how
many were enough.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py                      # CPU, batch 32, 224 px, forward
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py --mode train --sizes tiny small
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py --mode train --sizes micro --batch 64  # 32 px, the demo's
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention.py --device cuda --amp  # GPU, bfloat16 autocast

The row `DeiT` times a second DeiT against the first: a control, whose ratio should be 1 and whose distance from 1 is
the noise floor of the run. Each row also prints the minor page faults of one pass of each model (median).

Memory allocator: glibc maps large blocks afresh and trims the top of its heap above thresholds that it raises from the
sizes freed so far, so whether a model's 5-40 MB activations are faulted in anew on every pass depends on the process's
history, not on the model: the same three models in the same order took 0 to 180 thousand faults per pass from one
process to the next here, roughly 15% of a pass's time at the high end (tiny, batch 32). By default (`--malloc
steady`) this script fixes both glibc thresholds (mallopt), so that no pass faults and the ratios measure the models;
`--malloc default` leaves glibc as it is, to see what a plain process gets. On a CPU shared with other work, `--clock
cpu --threads 1` times the process's own CPU seconds, which other processes disturb far less than wall time (they
still share caches and memory bandwidth).

Targets (issue 19): Elliptical / DeiT >= 0.97 forward at tiny, small and base, >= 0.95 train at tiny and small;
fused / reference >= 1.1 on CPU.
"""

import argparse
import resource
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)
from ellbench.malloc import steady_malloc
from ellbench.profile import device_name
from ellbench.stats import median_interval

# One entry per variant: (label, model name template, kwargs that select its explicit reference attention path,
# or None when the model has no separate reference path). Its baseline is DeiT's template at the same size.
ROWS = [
    ("DeiT", "deit_{size}_{patch}", None),
    ("Elliptical", "elliptical_{size}_{patch}", {"fused_attn": False}),
    ("KDE", "kde_{size}_{patch}", {"fused_attn": False}),
    ("RKDE", "rkde_{size}_{patch}", {"fused_attn": False}),
    ("MoM", "mom_{size}_{patch}", {"fused_attn": False}),
    ("RVT", "rvt_{size}{rvt_suffix}", None),
]
# What fills a template besides the size: ImageNet sizes (224 px) and the small-image micro models (32 px).
SIZES = {
    "tiny": dict(patch="patch16_224", rvt_suffix=""),
    "small": dict(patch="patch16_224", rvt_suffix=""),
    "base": dict(patch="patch16_224", rvt_suffix=""),
    "micro": dict(patch="patch4_32", rvt_suffix="_32"),
}
MODES = ("forward", "train")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

def make_pass(model, images, labels, mode: str, amp: bool):
    """One forward pass (inference mode) or one training step (forward, backward, AdamW step) as a 0-argument call."""
    device = images.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    if mode == "forward":
        model.eval()

        def forward():
            with torch.inference_mode(), autocast:
                model(images)

        return forward
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return train_step


def timed(step, device: torch.device, clock) -> tuple[float, int]:
    """Seconds of one call of `step` on `clock` (synchronised on GPU) and the minor page faults it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = clock()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = clock() - start
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def measure(steps: dict, device, repeats: int, warmup: int, clock) -> dict:
    """Seconds and minor page faults of every pass of each model: {key: [(seconds, faults) per repeat]}.

    Within a repeat the models run one after the other, in an order rotated from repeat to repeat.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples = {key: [] for key in steps}
    keys = list(steps)
    for repeat in range(repeats):
        for key in keys[repeat % len(keys):] + keys[: repeat % len(keys)]:
            samples[key].append(timed(steps[key], device, clock))
    return samples


def paired_ratios(samples: dict, faster: str, slower: str) -> list[float]:
    """slower's seconds / faster's seconds, repeat by repeat (faster's speed relative to slower's).

    Their median is the ratio this benchmark reports: load that drifts between repeats cancels within a pair.
    """
    return [b / a for (a, _), (b, _) in zip(samples[faster], samples[slower], strict=True)]


def build(name: str, device, **kwargs):
    return timm.create_model(name, **kwargs).to(device)


def run(sizes, batch: int, img_size: int | None, repeats: int, warmup: int, device: torch.device, amp: bool,
        clock=time.perf_counter, variants=None, mode: str = "forward", with_reference: bool = True) -> list[dict]:
    """Time every row of ROWS (or those in `variants`) at each size; print and return one dict per row."""
    results = []
    for size in sizes:
        deit_name = ROWS[0][1].format(size=size, **SIZES[size])
        with torch.device("meta"):  # its configuration only: no weights
            deit_config = timm.create_model(deit_name).pretrained_cfg
        side = img_size or deit_config["input_size"][-1]
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, side, side, generator=generator).to(device)
        labels = torch.randint(0, deit_config["num_classes"], (batch,), generator=generator).to(device)
        for label, template, reference_kwargs in ROWS:
            if variants and label not in variants:
                continue
            name = template.format(size=size, **SIZES[size])
            kwargs = {} if img_size is None else {"img_size": img_size}
            models = {"deit": build(deit_name, device, **kwargs), "fused": build(name, device, **kwargs)}
            if reference_kwargs is not None and with_reference:
                models["reference"] = build(name, device, **kwargs, **reference_kwargs)
            steps = {key: make_pass(model, images, labels, mode, amp) for key, model in models.items()}
            samples = measure(steps, device, repeats, warmup, clock)
            row = dict(label=label, size=size, name=name, mode=mode)
            row |= {key: batch / statistics.median(s for s, _ in values) for key, values in samples.items()}
            row |= {f"{key}_faults": statistics.median(f for _, f in values) for key, values in samples.items()}
            for key, baseline in (("fused_vs_deit", "deit"), ("fused_vs_reference", "reference")):
                if baseline in samples:
                    ratios = paired_ratios(samples, "fused", baseline)
                    row[key] = statistics.median(ratios)
                    row[key + "_ci"] = median_interval(ratios)
            results.append(row)
            print(format_row(results[-1]), flush=True)
            del models, steps
    return results


def format_ratio(row: dict, key: str) -> str:
    """The median paired ratio and its 95% interval, or '-' where the row has no such ratio."""
    if key not in row:
        return "-"
    low, high = row[key + "_ci"]
    return f"{row[key]:.3f} [{low:.3f}, {high:.3f}]"


def format_row(row: dict) -> str:
    reference = row.get("reference")
    faults = " / ".join(f"{row[key + '_faults']:.0f}" for key in ("deit", "fused", "reference") if key in row)
    cells = [
        row["label"], row["size"], row["mode"], f"{row['deit']:.1f}", f"{row['fused']:.1f}",
        format_ratio(row, "fused_vs_deit"), f"{reference:.1f}" if reference else "-",
        format_ratio(row, "fused_vs_reference"), faults,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=list(SIZES))
    parser.add_argument("--variants", nargs="+", choices=[row[0] for row in ROWS], help="default: every row")
    parser.add_argument("--mode", nargs="+", default=["forward"], choices=MODES,
                        help="forward (inference mode) and/or train (forward + backward + AdamW step)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=None, help="default: the models' own (224 px; micro 32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per model (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the explicit-reference models (only variant vs DeiT; a third less time)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time, or this process's CPU time")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady: fix glibc's trim and mmap thresholds so that no pass page-faults; "
                        "default: glibc's own, history-dependent thresholds")
    args = parser.parse_args()
    if args.malloc == "steady" and not steady_malloc():
        parser.error("--malloc steady needs glibc's mallopt, which this C library does not have")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, timm {timm.__version__}, device {device} ({device_name(device)}), "
          f"threads {torch.get_num_threads()}, batch {args.batch}, {args.img_size or 'native'} px, "
          f"{'bfloat16 autocast' if args.amp else 'float32'}, {args.clock} clock, {args.malloc} malloc, "
          f"median of {args.repeats} interleaved repeats")
    print("| variant | size | mode | DeiT img/s | variant img/s | variant / DeiT [95% CI] | reference img/s | "
          "fused / reference [95% CI] | page faults per pass: DeiT / variant / reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.mode:
        run(args.sizes, args.batch, args.img_size, args.repeats, args.warmup, device, args.amp, CLOCKS[args.clock],
            args.variants, mode, not args.no_reference)


if __name__ == "__main__":
    main()
