"""`ellbench demo`: the whole product offline, on a built-in data set, in minutes.

Stages, each through the same library function its own command uses (so the demo is also an end-to-end check):
train every family at the small-image size with the same budget -> clean accuracy -> quick attack suite -> quick
corruption suite -> representation collapse -> efficiency profile -> report (tables, plots, paired statistics).
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODELS = (
    "deit_micro_patch4_32",
    "elliptical_micro_patch4_32",
    "rvt_micro_32",
    "rkde_micro_patch4_32",
    "mom_micro_patch4_32",
)
# The pairs whose paired statistics the demo reports: the paper's method against each other family.
DEMO_COMPARISONS = tuple(("elliptical_micro_patch4_32", other) for other in DEMO_MODELS if not other.startswith("ell"))
DEMO_DEFAULTS = {
    "digits": {"epochs": 15, "limit": None, "batch_size": 64},
    "fashion-mnist": {"epochs": 3, "limit": 1000, "batch_size": 128},
}
EVAL_BATCH = 128


def run_demo(out_dir: Path, *, dataset: str = "digits", data_root: str | None = None, epochs: int | None = None,
             limit: int | None = None, seed: int = 0, progress: bool = True, models=DEMO_MODELS,
             train_limit: int | None = None, attack_suite: str = "quick", corruption_suite: str = "quick",
             profile: bool = True) -> dict:
    """Train, evaluate and report; returns the per-model summary rows (also in summary.csv) and the report files."""
    from ellbench import attacks, corruptions
    from ellbench.collapse import run_collapse
    from ellbench.data import open_dataset
    from ellbench.evaluate import load_for_eval, run_clean, run_profile
    from ellbench.report import build_report, write_summary
    from ellbench.store import Store
    from ellbench.train import TrainConfig, train

    defaults = DEMO_DEFAULTS[dataset]
    epochs = epochs or defaults["epochs"]
    limit = limit if limit is not None else defaults["limit"]
    out_dir = Path(out_dir)
    test_set = open_dataset(dataset, "test", root=data_root, limit=limit)  # a missing data set fails before any file
    store = Store.in_folder(out_dir)
    attack_entries = attacks.load_suite(attack_suite)
    suite = corruptions.load_suite(corruption_suite)
    corrupted = corruptions.corrupted_datasets(suite, clean=test_set, seed=seed, precompute=True)
    rows = []
    for name in models:
        config = TrainConfig(model=name, dataset=dataset, epochs=epochs, batch_size=defaults["batch_size"],
                             seed=seed, limit=train_limit)
        record = train(config, out_dir / "checkpoints", data_root=data_root, progress=progress)
        checkpoint = str(out_dir / "checkpoints" / f"{name}-{dataset}-seed{seed}.safetensors")
        loaded = load_for_eval(name, checkpoint, dataset=test_set, seed=seed)
        clean = run_clean(store, loaded, test_set, batch_size=EVAL_BATCH, seed=seed, progress=progress)
        attacked = attacks.run_attack_suite(store, loaded, test_set, attack_entries, batch_size=EVAL_BATCH, seed=seed,
                                            progress=progress)
        corrupt = corruptions.run_corruption_suite(store, loaded, suite, clean=test_set, batch_size=EVAL_BATCH,
                                                   seed=seed, datasets=corrupted, progress=progress)
        collapse = run_collapse(store, loaded, test_set, batch_size=EVAL_BATCH, seed=seed, progress=progress)
        row = {"model": name, "params": record["parameters"],
               "train_accuracy": record["history"][-1]["train_accuracy"],
               "clean_accuracy": clean["summary"]["accuracy"]}
        for entry, job in zip(attack_entries, attacked["jobs"], strict=True):
            row[f"{entry.label} {entry.protocol} {attacks.format_eps(entry.eps)}"] = job["summary"]["accuracy"]
        row["corruption_accuracy"] = 1.0 - corrupt["mean_error"]
        collapse_values = collapse["summary"]["collapse"]
        row["collapse_last_layer"] = collapse_values[-1]
        if profile:
            measured = run_profile(store, name, checkpoint=checkpoint, seed=seed, batch_size=EVAL_BATCH,
                                   img_size=test_set.image_size, repeats=3, warmup=3, steps=10, latency_steps=20)
            row["throughput_img_s"] = measured["throughput_img_s"]
        row["trust_check_failures"] = sum(check["status"] == "fail" for check in attacked["checks"])
        rows.append(row)
    title = f"ellbench demo on {dataset} ({len(test_set)} test images, {epochs} epochs, seed {seed})"
    write_summary(out_dir, rows, title=title, print_table=progress)
    comparisons = [pair for pair in DEMO_COMPARISONS if pair[0] in models and pair[1] in models]
    written = build_report(store, out_dir, compare=comparisons)
    store.close()
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"report written to {out_dir}/: summary.md, " +
                                   ", ".join(sorted(Path(p).name for p in _paths(written))))
    return {"out": str(out_dir), "dataset": dataset, "models": rows, "report": written}


def _paths(written) -> list[str]:
    """The file paths in build_report's returned description (a dict that may nest lists of paths)."""
    found = []
    values = written.values() if isinstance(written, dict) else written if isinstance(written, list) else [written]
    for value in values:
        if isinstance(value, (dict, list)):
            found.extend(_paths(value))
        elif isinstance(value, (str, Path)) and Path(value).suffix in (".csv", ".md", ".png"):
            found.append(str(value))
    return found
