"""`ellbench demo`: the whole product offline, on a built-in data set, in minutes (and the Fashion-MNIST study).

Stages, each through the same library function its own command uses (so the demo is also an end-to-end check):
train every family at the small-image size with the same budget -> clean top-1/top-5 (`ellbench eval`'s
run_eval) -> attack suites -> corruption
suite -> representation collapse -> efficiency profile -> report (tables, plots, paired statistics).
With several seeds every family is trained once per seed, and the report gives mean, std and n per cell.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

DEMO_MODELS = (
    "deit_micro_patch4_32",
    "elliptical_micro_patch4_32",
    "rvt_micro_32",
    "rkde_micro_patch4_32",
    "mom_micro_patch4_32",
)
# The pairs whose paired statistics the report gives: the paper's method against each other family.
DEMO_COMPARISONS = tuple(("elliptical_micro_patch4_32", other) for other in DEMO_MODELS if not other.startswith("ell"))
EVAL_BATCH = 128


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """What a demo or study run trains and evaluates."""

    dataset: str = "digits"
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    warmup_epochs: float = 1.0
    train_limit: int | None = None
    limit: int | None = None
    attack_limit: int | None = None  # attacks on the first N of the evaluated test images (None: all of them)
    patch_size: int | None = None  # None: model_kwargs_for's rule (2 below 16 px, else 4)
    seeds: tuple[int, ...] = (0,)
    attack_suites: tuple[str, ...] = ("quick",)
    corruption_suite: str = "quick"
    models: tuple[str, ...] = DEMO_MODELS
    profile: bool = True


PRESETS = {
    # Bundled 8x8 digits: a few minutes on 2 cores.
    "digits": DemoPlan(),
    # The same pipeline on Fashion-MNIST at a demo's scale.
    "fashion-mnist": DemoPlan(dataset="fashion-mnist", epochs=3, batch_size=64, train_limit=10000, limit=1000),
    # The committed study (reports/fashion-mnist/): every family on all 60,000 training images, 3 seeds; clean and
    # corrupted accuracy on all 10,000 test images, both attack protocols on the first 1000. Patches of 7 px (a 4 x 4
    # grid; patch 4 trains 2.7x slower) and 3 epochs of batch 128 with a short warm-up: 2 epochs left MoM at 0.844-0.851
    # (sizing and measured time: README, "The paper's claims in miniature").
    "study": DemoPlan(dataset="fashion-mnist", epochs=3, batch_size=128, lr=2e-3, warmup_epochs=0.25, limit=None,
                      attack_limit=1000, patch_size=7, seeds=(0, 1, 2), attack_suites=("study",),
                      corruption_suite="study"),
}


def run_demo(out_dir: Path, plan: DemoPlan, *, data_root: str | None = None, progress: bool = True) -> dict:
    """Train, evaluate and report; returns the per-checkpoint summary rows (also in summary.csv) and the report."""
    from ellbench.attacks.suite import load_suite as load_attack_suite
    from ellbench.corruptions.suite import load_suite as load_corruption_suite
    from ellbench.data import open_dataset
    from ellbench.models.loading import load_for_eval
    from ellbench.report.build import build_report
    from ellbench.report.tables import write_summary
    from ellbench.store import Store
    from ellbench.tasks.attack import run_attack_suite
    from ellbench.tasks.collapse import run_collapse
    from ellbench.tasks.corruption import corrupted_datasets, run_corruption_suite
    from ellbench.tasks.eval import run_eval
    from ellbench.tasks.profile import run_profile
    from ellbench.train import TrainConfig, record_training, train

    out_dir = Path(out_dir)
    test_set = open_dataset(plan.dataset, "test", root=data_root, limit=plan.limit)  # fails before any file exists
    attack_entries = [entry for suite in plan.attack_suites for entry in load_attack_suite(suite)]
    suite = load_corruption_suite(plan.corruption_suite)
    attack_set = test_set if plan.attack_limit is None else test_set.subset(plan.attack_limit)
    store = Store.in_folder(out_dir)
    rows = []
    for seed in plan.seeds:
        corrupted = corrupted_datasets(suite, clean=test_set, seed=seed, precompute=True)
        for name in plan.models:
            config = TrainConfig(model=name, dataset=plan.dataset, epochs=plan.epochs, batch_size=plan.batch_size,
                                 lr=plan.lr, warmup_epochs=plan.warmup_epochs, seed=seed, limit=plan.train_limit,
                                 patch_size=plan.patch_size)
            record = train(config, out_dir / "checkpoints", data_root=data_root, progress=progress,
                           eval_set=test_set)  # the training curve: test accuracy after each epoch
            checkpoint = str(out_dir / "checkpoints" / f"{name}-{plan.dataset}-seed{seed}.safetensors")
            loaded = load_for_eval(name, checkpoint, dataset=test_set, seed=seed)
            record_training(store, record, checkpoint_id=loaded.checkpoint_id)
            clean = run_eval(store, loaded, test_set, batch_size=EVAL_BATCH, seed=seed, progress=progress)
            attacked = run_attack_suite(store, loaded, attack_set, attack_entries, batch_size=EVAL_BATCH, seed=seed,
                                        progress=progress)
            corrupt = run_corruption_suite(store, loaded, suite, clean=test_set, batch_size=EVAL_BATCH, seed=seed,
                                           datasets=corrupted, progress=progress)
            collapse = run_collapse(store, loaded, test_set, batch_size=EVAL_BATCH, seed=seed, progress=progress)
            row = {"model": name, "seed": seed, "params": record["parameters"],
                   "train_accuracy": record["history"][-1]["train_accuracy"],
                   "clean_accuracy": clean["summary"]["accuracy"],
                   "clean_top5_accuracy": clean["summary"].get("top5_accuracy")}
            for entry, job in zip(attack_entries, attacked["jobs"], strict=True):
                row[f"{entry.label} ({entry.protocol})"] = job["summary"]["accuracy"]
            row["corruption_accuracy"] = 1.0 - corrupt["mean_error"]
            row["collapse_last_layer"] = collapse["summary"]["collapse"][-1]
            if plan.profile and seed == plan.seeds[0]:
                measured = run_profile(store, name, checkpoint=checkpoint, seed=seed, batch_size=EVAL_BATCH,
                                       img_size=test_set.image_size, repeats=3, warmup=3, steps=10, latency_steps=20)
                row["throughput_img_s"] = measured["throughput_img_s"]
            row["trust_check_warnings"] = sum(check["status"] != "ok" for check in attacked["checks"])
            rows.append(row)
    seeds = ",".join(map(str, plan.seeds))
    attacked_images = f" (attacks on the first {len(attack_set)})" if len(attack_set) < len(test_set) else ""
    title = (f"ellbench on {plan.dataset}: {len(test_set)} test images{attacked_images}, {plan.epochs} epochs, "
             f"seed{'s' if len(plan.seeds) > 1 else ''} {seeds}")
    write_summary(out_dir, rows, title=title)
    if progress:
        _print_compact(rows, [f"{e.label} ({e.protocol})" for e in attack_entries], title)
    comparisons = [pair for pair in DEMO_COMPARISONS if pair[0] in plan.models and pair[1] in plan.models]
    written = build_report(store, out_dir, compare=comparisons)
    store.close()
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"report written to {out_dir}/: summary.md, "
                                   + ", ".join(sorted(Path(p).name for p in written.get("files", []))))
    return {"out": str(out_dir), "plan": dataclasses.asdict(plan), "rows": rows, "report": written}


def _print_compact(rows: list[dict], attack_columns: list[str], title: str) -> None:
    """A terminal-width table of the headline numbers; summary.md and results.md hold every column."""
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "seed", "clean", "attacked (mean)", "corrupted (mean)", "collapse (last)", "img/s",
                  title=title, caption="full tables: summary.md, results.md, comparison.md")
    for row in rows:
        attacked = sum(row[c] for c in attack_columns) / max(1, len(attack_columns))
        throughput = row.get("throughput_img_s")
        table.add_row(row["model"], str(row["seed"]), f"{row['clean_accuracy']:.3f}", f"{attacked:.3f}",
                      f"{row['corruption_accuracy']:.3f}", f"{row['collapse_last_layer']:.3f}",
                      "" if throughput is None else f"{throughput:.0f}")
    Console().print(table)
