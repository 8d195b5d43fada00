"""Where a variant's extra time goes: torch profiler op counts and self times, DeiT against a variant with its weights.

Two forward passes (inference mode) or two training steps (forward, backward, AdamW step) of each model, after one
untimed warm-up. Op counts do not depend on machine load; self times do (check `uptime` first). Ops whose count or
self time differs are listed, with the tensor shapes of copies (`aten::copy_`), so that a copy can be traced to its
source. Minor page faults per pass are printed too: they are kernel work that the profiler charges to whichever op
first touches fresh memory.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention_ops.py --size tiny --batch 32 --threads 1
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attention_ops.py --size micro --batch 64 --mode train
"""

import argparse
import collections
import math
import resource

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)

MODEL_NAMES = {"micro": "{family}_micro_patch4_32"} | {
    size: "{family}_" + size + "_patch16_224" for size in ("tiny", "small", "base")
}


def build_pair(size: str, variant: str) -> dict:
    """DeiT and the variant of one size, the variant loaded with DeiT's weights (same parameter names)."""
    torch.manual_seed(0)
    deit = timm.create_model(MODEL_NAMES[size].format(family="deit"))
    other = timm.create_model(MODEL_NAMES[size].format(family=variant))
    other.load_state_dict(deit.state_dict(), strict=True)
    return {"deit": deit, variant: other}


def make_pass(model, images, labels, mode: str):
    """One forward pass (inference mode) or one training step, as a function of no arguments."""
    if mode == "forward":
        model.eval()

        def forward():
            with torch.inference_mode():
                model(images)

        return forward
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return train_step


def profile_passes(step, passes: int) -> tuple[dict, list[int]]:
    """Profiler events of `passes` calls of `step` grouped by op and input shapes, and minor page faults per call."""
    step()  # warm-up: lazy initialisation (optimizer state, kernels) stays out of the counts
    faults = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(passes):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return prof.key_averages(group_by_input_shape=True), faults


def by_op(averages) -> dict:
    """{op name: (calls, self CPU ms)} summed over input shapes."""
    table = collections.defaultdict(lambda: [0, 0.0])
    for event in averages:
        table[event.key][0] += event.count
        table[event.key][1] += event.self_cpu_time_total / 1e3
    return {key: tuple(value) for key, value in table.items()}


def copy_shapes(averages) -> dict:
    """{shape of the copied tensor: calls} of aten::copy_, and the elements copied in all: what is copied, how often."""
    shapes = {str(event.input_shapes[0]): event.count for event in averages if event.key == "aten::copy_"}
    elements = sum(math.prod(event.input_shapes[0]) * event.count for event in averages if event.key == "aten::copy_")
    return shapes, elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=list(MODEL_NAMES))
    parser.add_argument("--variant", default="elliptical", help="model family compared with DeiT")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", choices=("forward", "train"), default="forward")
    parser.add_argument("--passes", type=int, default=2, help="profiled passes per model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = build_pair(args.size, args.variant)
    side = models["deit"].pretrained_cfg["input_size"][-1]
    images = torch.rand(args.batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, models["deit"].num_classes, (args.batch,), generator=torch.Generator().manual_seed(1))
    results = {key: profile_passes(make_pass(model, images, labels, args.mode), args.passes)
               for key, model in models.items()}  # fmt: skip

    deit_ops, other_ops = (by_op(results[key][0]) for key in models)
    print(f"torch {torch.__version__}, {args.mode}, {args.passes} passes of each model, {args.size} batch {args.batch} "
          f"({side} px), threads {torch.get_num_threads()}")
    print(f"minor page faults per pass: deit {results['deit'][1]}, {args.variant} {results[args.variant][1]}")
    print(f"| op | deit calls | {args.variant} calls | deit self ms | {args.variant} self ms |")
    print("|---|---|---|---|---|")
    total = {key: sum(ms for _, ms in ops.values()) for key, ops in (("deit", deit_ops), ("other", other_ops))}
    for op in sorted(set(deit_ops) | set(other_ops), key=lambda op: -abs(other_ops.get(op, (0, 0))[1])):
        (deit_calls, deit_ms), (calls, ms) = deit_ops.get(op, (0, 0.0)), other_ops.get(op, (0, 0.0))
        if deit_calls != calls or abs(ms - deit_ms) > 0.01 * total["deit"]:
            print(f"| {op} | {deit_calls} | {calls} | {deit_ms:.1f} | {ms:.1f} |")
    print(f"| all ops | | | {total['deit']:.1f} | {total['other']:.1f} |")
    own = {op: ms for op, (_, ms) in other_ops.items() if op not in deit_ops}
    own_ms = sum(own.values())
    print(f"ops that DeiT does not run: {own_ms:.1f} ms self CPU, {100 * own_ms / total['deit']:.1f}% of DeiT's total "
          f"({', '.join(sorted(own, key=own.get, reverse=True)[:6])}, ...)")
    for key in models:
        shapes, elements = copy_shapes(results[key][0])
        print(f"aten::copy_ in {key}: {elements / 1e6:.2f} M elements copied; calls by shape {shapes}")


if __name__ == "__main__":
    main()
