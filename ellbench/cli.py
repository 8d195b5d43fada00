"""The ellbench command line: parse, validate, call one library function. Heavy imports live inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from ellbench.errors import EllbenchError

app = typer.Typer(
    name="ellbench",
    help="Is this attention mechanism really more robust, and what does it cost? Benchmarks Elliptical Attention "
    "and the vision transformers it is compared with (DeiT, RVT, RKDE, MoM), or any timm model: attacks, "
    "corruptions, distribution shift, representation collapse and efficiency, stored with provenance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OUT_HELP = "Output folder: the results store (ellbench.sqlite) and reports go here. Default: $ELLBENCH_OUT or reports."
SEED_HELP = "Seed for model initialisation, data order and every random choice; the same seed gives the same result."
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (cuda when available)."


def _out_dir(out: Path | None) -> Path:
    from ellbench.store import default_out_dir, ensure_writable_dir

    return ensure_writable_dir(out if out is not None else default_out_dir())


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise EllbenchError(f"{name} must be positive, got {value}")
    return value


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command("models")
def models_command(
    family: str = typer.Option(None, help="Only this family: deit, elliptical, rvt, kde, rkde or mom."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List the registered models: name, family, parameters, input size."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ellbench.models.factory import list_models

    rows = list_models()
    if family is not None:
        known = sorted({row["family"] for row in rows})
        if family not in known:
            raise EllbenchError(f"unknown family {family!r}; choose one of {', '.join(known)}")
        rows = [row for row in rows if row["family"] == family]
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "family", "parameters", "input size")
    for row in rows:
        table.add_row(row["name"], row["family"], f"{row['params'] / 1e6:.2f}M", "x".join(map(str, row["input_size"])))
    Console().print(table)


@app.command("train")
def train_command(
    model: str = typer.Argument(..., help="A small-image model, e.g. elliptical_micro_patch4_32 (see `ellbench models`)."),
    dataset: str = typer.Option("digits", help="Built-in data set: digits (8x8, bundled) or fashion-mnist (28x28)."),
    data_root: str = typer.Option(None, help="Folder with the Fashion-MNIST IDX .gz files "
                                  "(default /usr/share/datasets/fashion-mnist)."),
    epochs: int = typer.Option(15, help="Training epochs."),
    batch_size: int = typer.Option(64, help="Training batch size."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (linear warm-up, then cosine decay)."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(1.0, help="Epochs of linear learning-rate warm-up."),
    label_smoothing: float = typer.Option(0.1, help="Label smoothing of the cross-entropy loss."),
    augment: str = typer.Option("crop", help="none, crop (random shifts) or crop-flip (shifts and horizontal flips)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; one checkpoint per seed, e.g. 0,1,2."),
    limit: int = typer.Option(None, help="Train on the first N training examples only."),
    out: Path = typer.Option(None, help=OUT_HELP + " Checkpoints go to OUT/checkpoints."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the checkpoint records as JSON."),
):
    """Train a small-image model on a built-in data set; writes a .safetensors checkpoint and a JSON sidecar.

    Resumable: an interrupted run continues from its last finished epoch; a finished one is reused.
    """
    seed_list = _parse_seeds(seeds)
    _positive(epochs, "--epochs")
    out_dir = _out_dir(out) / "checkpoints"
    from ellbench.data import BUILTIN_DATASETS

    if dataset not in BUILTIN_DATASETS:
        raise EllbenchError(f"unknown data set {dataset!r}; `ellbench train` uses a built-in set: "
                            f"{', '.join(BUILTIN_DATASETS)}")
    _check_model(model)
    from ellbench.evaluate import resolve_device
    from ellbench.train import TrainConfig, train

    records = []
    for seed in seed_list:
        config = TrainConfig(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                             label_smoothing=label_smoothing, augment=augment, seed=seed, limit=limit)
        records.append(train(config, out_dir, data_root=data_root, device=resolve_device(device),
                             progress=not as_json))
    if as_json:
        _print_json(records)
    else:
        for record in records:
            last = record["history"][-1]
            state = "reused" if record.get("reused") else "trained"
            typer.echo(f"{state} {record['model']} seed {record['train']['seed']}: train accuracy "
                       f"{last['train_accuracy']:.3f}, loss {last['loss']:.3f} -> {record.get('checkpoint', '')}")


@app.command("demo")
def demo_command(
    dataset: str = typer.Option("digits", help="digits (bundled, a few minutes on 2 cores) or fashion-mnist."),
    data_root: str = typer.Option(None, help="Folder with the Fashion-MNIST IDX .gz files."),
    epochs: int = typer.Option(None, help="Training epochs per model (default: 15 for digits, 3 for fashion-mnist)."),
    limit: int = typer.Option(None, help="Evaluate on the first N test examples only (default: all of digits, "
                              "1000 of fashion-mnist)."),
    seed: int = typer.Option(0, help=SEED_HELP),
    out: Path = typer.Option(Path("reports/demo"), help="Output folder for the store, checkpoints and report."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """The whole product offline, in minutes: train the model families on a built-in data set, evaluate them
    and write a report (reports/demo/summary.md, summary.csv)."""
    if epochs is not None:
        _positive(epochs, "--epochs")
    from ellbench.data import BUILTIN_DATASETS

    if dataset not in BUILTIN_DATASETS:
        raise EllbenchError(f"unknown data set {dataset!r}; the demo uses {', '.join(BUILTIN_DATASETS)}")
    out_dir = _out_dir(out)
    from ellbench.demo import run_demo

    summary = run_demo(out_dir, dataset=dataset, data_root=data_root, epochs=epochs, limit=limit, seed=seed,
                       progress=not as_json)
    if as_json:
        _print_json(summary)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise EllbenchError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    if not seeds or any(seed < 0 for seed in seeds):
        raise EllbenchError(f"--seeds must be non-negative integers, got {text!r}")
    return seeds


def _check_model(name: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    if not timm.is_model(name):
        raise EllbenchError(f"unknown model {name!r}; `ellbench models` lists the registered ones")


def main() -> None:
    """Console entry point: one-line errors (exit 2) for bad input, never a traceback."""
    from typer._click import exceptions as click_exceptions  # typer vendors click

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        code = app(standalone_mode=False)
    except EllbenchError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except click_exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(0)
    except click_exceptions.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click_exceptions.UsageError) else ""
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}{hint}\n")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write("error: interrupted; every finished batch is stored, run the same command again to resume\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
