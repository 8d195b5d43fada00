"""`ellbench demo`: the whole product offline, on a built-in data set, in minutes (and the Fashion-MNIST study).

Stages, each through the same library function its own command uses (so the demo is also an end-to-end check):
train every family at the small-image size with the same budget -> clean top-1/top-5 (`ellbench eval`'s
run_eval) -> attack suites -> corruption
suite -> representation collapse -> efficiency profile -> report (tables, plots, paired statistics).
With several seeds every family is trained once per seed, and the report gives mean, std and n per cell.
"""

from __future__ import annotations

import dataclasses
import os
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
    # 0: every model trained and evaluated in this process at torch's thread count. N: over N spawned worker
    # processes of one torch thread each (the same numbers for every N >= 1); None: one worker per usable core.
    workers: int | None = 0


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
                      corruption_suite="study", workers=None),
}


def run_demo(out_dir: Path, plan: DemoPlan, *, data_root: str | None = None, progress: bool = True) -> dict:
    """Train, evaluate and report; returns the per-checkpoint summary rows (also in summary.csv) and the report."""
    from ellbench.data import open_dataset
    from ellbench.report.build import build_report
    from ellbench.report.tables import write_summary
    from ellbench.store import Store
    from ellbench.tasks.corruption import corrupted_datasets
    from ellbench.tasks.profile import run_profile

    out_dir = Path(out_dir)
    test_set = open_dataset(plan.dataset, "test", root=data_root, limit=plan.limit)  # fails before any file exists
    attack_entries, suite = _suites(plan)
    attack_limit = len(test_set) if plan.attack_limit is None else min(plan.attack_limit, len(test_set))
    store = Store.in_folder(out_dir)  # made here, before any worker opens it
    units = [(seed, name) for seed in plan.seeds for name in plan.models]
    workers = resolve_workers(plan.workers, len(units))
    if workers == 0:  # every stage here, at this process's torch threads
        rows = []
        for seed in plan.seeds:
            corrupted = corrupted_datasets(suite, clean=test_set, seed=seed, precompute=True)
            for name in plan.models:
                rows.append(_run_unit(out_dir, plan, seed, name, test_set=test_set, corrupted=corrupted,
                                      store=store, data_root=data_root, progress=progress))
    else:
        corrupted = {seed: corrupted_datasets(suite, clean=test_set, seed=seed, precompute=True)
                     for seed in plan.seeds}
        rows = _run_units_in_workers(out_dir, plan, units, workers, corrupted, data_root=data_root,
                                     progress=progress)
    if plan.profile:  # alone on the machine, after every unit: a throughput measured beside a worker is no figure
        first_seed = [row for row in rows if row["seed"] == plan.seeds[0]]
        for row in first_seed:
            measured = run_profile(store, row["model"], checkpoint=row.pop("_checkpoint"), seed=row["seed"],
                                   batch_size=EVAL_BATCH, img_size=test_set.image_size, repeats=3, warmup=3,
                                   steps=10, latency_steps=20)
            row["throughput_img_s"] = measured["throughput_img_s"]
    for row in rows:
        row.pop("_checkpoint", None)
        row["trust_check_warnings"] = row.pop("trust_check_warnings")  # the last column, as before
    seeds = ",".join(map(str, plan.seeds))
    attacked_images = f" (attacks on the first {attack_limit})" if attack_limit < len(test_set) else ""
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


def resolve_workers(workers: int | None, units: int) -> int:
    """The number of worker processes: 0 keeps everything in this process; None is one per usable core."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(workers, units))


def _suites(plan: DemoPlan):
    from ellbench.attacks.suite import load_suite as load_attack_suite
    from ellbench.corruptions.suite import load_suite as load_corruption_suite

    return ([entry for suite in plan.attack_suites for entry in load_attack_suite(suite)],
            load_corruption_suite(plan.corruption_suite))


def _run_unit(out_dir: Path, plan: DemoPlan, seed: int, name: str, *, test_set, corrupted, store, data_root,
              progress: bool, threads: int | None = None) -> dict:
    """One model and seed: train (or reuse the checkpoint), then clean, attacks, corruptions and collapse; the
    summary row (its checkpoint under '_checkpoint' for the profile that follows every unit)."""
    from ellbench.models.loading import load_for_eval
    from ellbench.tasks.attack import run_attack_suite
    from ellbench.tasks.collapse import run_collapse
    from ellbench.tasks.corruption import run_corruption_suite
    from ellbench.tasks.eval import run_eval
    from ellbench.train import TrainConfig, record_training, train

    attack_entries, suite = _suites(plan)
    attack_set = test_set if plan.attack_limit is None else test_set.subset(plan.attack_limit)
    config = TrainConfig(model=name, dataset=plan.dataset, epochs=plan.epochs, batch_size=plan.batch_size,
                         lr=plan.lr, warmup_epochs=plan.warmup_epochs, seed=seed, limit=plan.train_limit,
                         patch_size=plan.patch_size, threads=threads)
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
    row["trust_check_warnings"] = sum(check["status"] != "ok" for check in attacked["checks"])
    row["_checkpoint"] = checkpoint
    return row


def _unit_in_worker(out_dir: Path, plan: DemoPlan, seed: int, name: str, corrupted, data_root) -> dict:
    """Worker task (a spawned process of one torch thread): one unit, with its own data set and store connection."""
    from ellbench.data import open_dataset
    from ellbench.store import Store

    test_set = open_dataset(plan.dataset, "test", root=data_root, limit=plan.limit)
    store = Store.in_folder(out_dir)
    try:
        return _run_unit(out_dir, plan, seed, name, test_set=test_set, corrupted=corrupted, store=store,
                         data_root=data_root, progress=False, threads=1)
    finally:
        store.close()


def _run_units_in_workers(out_dir: Path, plan: DemoPlan, units: list[tuple[int, str]], workers: int,
                          corrupted: dict, *, data_root, progress: bool) -> list[dict]:
    """The units over `workers` spawned processes of one torch thread each, longest first; rows in plan order.

    On 2 cores, two 1-thread trainings side by side beat the same two in turn at 2 threads by about 19%, and a
    1-thread unit's numbers are the same whichever worker runs it, so any number of workers gives the same bits.
    """
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from ellbench.corruptions.images import _one_torch_thread
    from ellbench.errors import EllbenchError
    from ellbench.io import ProgressBar

    order = sorted(units, key=lambda unit: -_relative_cost(unit[1]))  # longest first: a short unit ends the run
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_torch_thread)
    rows: dict[tuple[int, str], dict] = {}
    try:
        futures = {pool.submit(_unit_in_worker, out_dir, plan, seed, name, corrupted[seed], data_root): (seed, name)
                   for seed, name in order}
        with ProgressBar(f"train + evaluate over {workers} processes", len(units), unit="models",
                         enabled=progress) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    seed, name = futures[future]
                    try:
                        rows[seed, name] = future.result()
                    except BrokenProcessPool as error:
                        raise EllbenchError(f"a worker process died while training or evaluating {name} seed "
                                            f"{seed}: {error}; run the same command again to resume (or lower "
                                            "--workers: each worker holds its data in memory)") from None
                    bar.advance(info=f"{name} seed {seed}: clean {rows[seed, name]['clean_accuracy']:.3f}")
    except BaseException:
        # Stop now: the other workers' units resume from their last saved state on the next run.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [rows[unit] for unit in units]


def _relative_cost(name: str) -> float:
    """Rough training + evaluation cost of a family at the study's settings (measured: RVT about 1.6x DeiT)."""
    for prefix, cost in (("rvt", 1.6), ("rkde", 1.15), ("mom", 1.15), ("elliptical", 1.02)):
        if name.startswith(prefix):
            return cost
    return 1.0


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
