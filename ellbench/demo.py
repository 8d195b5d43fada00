"""`ellbench demo`: the whole product offline, on a built-in data set, in minutes.

Stages: train every family at the small-image size with the same budget, then evaluate each model (clean
accuracy, ...) into the store, then write the report. Every stage goes through the same library functions the
individual commands use, so the demo is also an end-to-end check of the product.
"""

from __future__ import annotations

from pathlib import Path

from ellbench.store import Store

DEMO_MODELS = (
    "deit_micro_patch4_32",
    "elliptical_micro_patch4_32",
)
DEMO_DEFAULTS = {
    "digits": {"epochs": 15, "limit": None, "batch_size": 64},
    "fashion-mnist": {"epochs": 3, "limit": 1000, "batch_size": 128},
}


def run_demo(out_dir: Path, *, dataset: str = "digits", data_root: str | None = None, epochs: int | None = None,
             limit: int | None = None, seed: int = 0, progress: bool = True, models=DEMO_MODELS,
             train_limit: int | None = None) -> dict:
    """Train, evaluate and report; returns the summary rows that summary.csv holds."""
    from ellbench.data import open_dataset
    from ellbench.evaluate import load_for_eval, run_clean
    from ellbench.report import write_summary
    from ellbench.train import TrainConfig, train

    defaults = DEMO_DEFAULTS[dataset]
    epochs = epochs or defaults["epochs"]
    limit = limit if limit is not None else defaults["limit"]
    out_dir = Path(out_dir)
    store = Store.in_folder(out_dir)
    test_set = open_dataset(dataset, "test", root=data_root, limit=limit)
    rows = []
    for name in models:
        config = TrainConfig(model=name, dataset=dataset, epochs=epochs, batch_size=defaults["batch_size"],
                             seed=seed, limit=train_limit)
        record = train(config, out_dir / "checkpoints", data_root=data_root, progress=progress)
        checkpoint = str(out_dir / "checkpoints" / Path(record.get("checkpoint") or
                                                        f"{name}-{dataset}-seed{seed}.safetensors").name)
        loaded = load_for_eval(name, checkpoint, dataset=test_set, seed=seed)
        clean = run_clean(store, loaded, test_set, batch_size=256, seed=seed, progress=progress)
        rows.append({"model": name, "params": record["parameters"],
                     "train_accuracy": record["history"][-1]["train_accuracy"],
                     "clean_accuracy": clean["summary"]["accuracy"], "n_test": clean["summary"]["n"]})
    write_summary(out_dir, rows, title=f"ellbench demo on {dataset} ({len(test_set)} test images, seed {seed})",
                  print_table=progress)
    store.close()
    return {"out": str(out_dir), "dataset": dataset, "models": rows}
