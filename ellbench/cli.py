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
WORKERS_HELP = ("Processes decoding images into batches (0: this process). Default: 0 for in-memory sets (digits, "
                "fashion-mnist); for folders a share of the cores (all on a GPU, half on the CPU, at most 16). "
                "Results are the same for any number.")
AMP_HELP = ("Mixed precision: off (float32, the reference), bf16 or fp16 autocast of the network; inputs, logits "
            "and attack arithmetic stay float32. Part of the job key. fp16 gradients can underflow under attacks "
            "(no loss scaling): prefer bf16.")


def _out_dir(out: Path | None) -> Path:
    from ellbench.io import default_out_dir, ensure_writable_dir

    return ensure_writable_dir(out if out is not None else default_out_dir())


# Bounds on sizes and seeds: a seed, a batch size or a limit is stored as an SQLite INTEGER (64-bit, signed), and a
# batch or image far beyond these allocates more memory than any machine has before a single image is evaluated.
MAX_SEED = 2**63 - 1
MAX_BATCH_SIZE = 65536
MAX_IMG_SIZE = 4096
MAX_COUNT = 2**63 - 1
MAX_RESAMPLES = 1_000_000


def _positive(value: int, name: str, most: int = MAX_COUNT) -> int:
    if value <= 0:
        raise EllbenchError(f"{name} must be positive, got {value}")
    if value > most:
        raise EllbenchError(f"{name} must be at most {most}, got {value}")
    return value


def _check_seed(seed: int, name: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise EllbenchError(f"{name} must be between 0 and 2**63-1, got {seed}")
    return seed


def _finite(value: float, name: str, *, low: float = 0.0, low_inclusive: bool = True,
            high: float | None = None) -> float:
    """A finite float option at least `low` (or above it), below `high` when given: nan and inf are refused."""
    import math

    if not math.isfinite(value) or value < low or (value == low and not low_inclusive) \
            or (high is not None and value >= high):
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise EllbenchError(f"{name} must be a finite number {bound}, got {value}")
    return value


def _check_choice(value: str | None, choices, option: str) -> None:
    if value is not None and value not in choices:
        raise EllbenchError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")


def _check_suite(kind: str, name: str | None) -> None:
    """A shipped suite's name, or an existing TOML file: checked before any heavy import."""
    if name is None:
        return
    from ellbench.resources import suite_path

    suite_path(kind, name)


def _check_file(path: str | None, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise EllbenchError(f"{what} {path} not found")


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda", "auto") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise EllbenchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


def _check_loading(workers: int | None, amp: str) -> None:
    """--workers (0 or more) and --amp (off, bf16, fp16) of the evaluation commands."""
    if workers is not None and workers < 0:
        raise EllbenchError(f"--workers must be 0 or more, got {workers}")
    _check_choice(amp, ("off", "bf16", "fp16"), "--amp")


def _single_process(command: str) -> None:
    """Commands that measure or write files themselves do not shard; refuse them under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise EllbenchError(f"`ellbench {command}` runs in one process; run it without torchrun "
                            "(attack, corrupt, shift and collapse run under torchrun)")


FAMILIES = ("deit", "elliptical", "rvt", "kde", "rkde", "mom")


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command("models")
def models_command(
    family: str = typer.Option(None, help="Only this family: deit, elliptical, rvt, kde, rkde or mom."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List the registered models: name, family, parameters, input size."""
    _check_choice(family, FAMILIES, "family")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ellbench.models.factory import list_models

    rows = list_models()
    if family is not None:
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
    model: str = typer.Argument(..., help="A small-image model, e.g. elliptical_micro_patch4_32 "
                                "(see `ellbench models`)."),
    dataset: str = typer.Option("digits", help="Built-in data set: digits (8x8, bundled) or fashion-mnist (28x28)."),
    data_root: str = typer.Option(None, help="Folder with the Fashion-MNIST IDX .gz files "
                                  "(default /usr/share/datasets/fashion-mnist)."),
    epochs: int = typer.Option(15, help="Training epochs."),
    batch_size: int = typer.Option(64, help="Training batch size."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (linear warm-up, then cosine decay)."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(1.0, help="Epochs of linear learning-rate warm-up."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the cross-entropy loss."),
    augment: str = typer.Option("none", help="none, crop (random shifts) or crop-flip (shifts and horizontal flips)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; one checkpoint per seed, e.g. 0,1,2."),
    limit: int = typer.Option(None, help="Train on the first N training examples only."),
    patch_size: int = typer.Option(None, help="Patch side in pixels; it must divide the image side (default: 2 below "
                                   "16 px, else 4; the study uses 7 on Fashion-MNIST's 28 px)."),
    curve: bool = typer.Option(False, "--curve", help="Also measure accuracy on the data set's test split after every "
                               "epoch (the training curve, in the sidecar's history as test_accuracy); it draws no "
                               "random numbers, so the weights are the same."),
    out: Path = typer.Option(None, help=OUT_HELP + " Checkpoints go to OUT/checkpoints."),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the checkpoint records as JSON."),
):
    """Train a small-image model on a built-in data set; writes a .safetensors checkpoint and a JSON sidecar.

    Resumable: an interrupted run continues from its last finished epoch; a finished one is reused.
    """
    _single_process("train")
    seed_list = _parse_seeds(seeds)
    _positive(epochs, "--epochs")
    _positive(batch_size, "--batch-size", MAX_BATCH_SIZE)
    if limit is not None:
        _positive(limit, "--limit")
    if patch_size is not None:
        _positive(patch_size, "--patch-size")
    _finite(lr, "--lr", low_inclusive=False)
    _finite(weight_decay, "--weight-decay")
    _finite(warmup_epochs, "--warmup-epochs")
    _finite(label_smoothing, "--label-smoothing", high=1.0)
    _check_device(device)
    out_dir = _out_dir(out) / "checkpoints"
    from ellbench.data import BUILTIN_DATASETS

    if dataset not in BUILTIN_DATASETS:
        raise EllbenchError(f"unknown data set {dataset!r}; `ellbench train` uses a built-in set: "
                            f"{', '.join(BUILTIN_DATASETS)}")
    _check_model(model)
    from ellbench.data import open_dataset
    from ellbench.models.loading import resolve_device
    from ellbench.train import TrainConfig, train

    test_set = open_dataset(dataset, "test", root=data_root) if curve else None
    records = []
    for seed in seed_list:
        config = TrainConfig(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                             label_smoothing=label_smoothing, augment=augment, seed=seed, limit=limit,
                             patch_size=patch_size)
        records.append(train(config, out_dir, data_root=data_root, device=resolve_device(device),
                             progress=not as_json, eval_set=test_set))
    if as_json:
        _print_json(records)
    else:
        for record in records:
            last = record["history"][-1]
            state = "reused" if record.get("reused") else "trained"
            curve_text = ""
            if curve and all("test_accuracy" in entry for entry in record["history"]):
                curve_text = ", test accuracy by epoch " + " ".join(f"{e['test_accuracy']:.4f}"
                                                                   for e in record["history"])
            typer.echo(f"{state} {record['model']} seed {record['train']['seed']}: train accuracy "
                       f"{last['train_accuracy']:.3f}, loss {last['loss']:.3f}{curve_text} -> "
                       f"{record.get('checkpoint', '')}")


@app.command("demo")
def demo_command(
    dataset: str = typer.Option("digits", help="digits (bundled; a few minutes on 2 cores), fashion-mnist (the same "
                                "pipeline on Fashion-MNIST), or study (the committed Fashion-MNIST study: 5 families "
                                "x 3 seeds on all 60,000 training images; clean and corrupted accuracy on all 10,000 "
                                "test images, both attack protocols on 1000; its measured time is in the README)."),
    data_root: str = typer.Option(None, help="Folder with the Fashion-MNIST IDX .gz files."),
    epochs: int = typer.Option(None, help="Training epochs per model (default: the preset's)."),
    seeds: str = typer.Option(None, help="Comma-separated training seeds (default: the preset's); each family is "
                              "trained once per seed and the report gives mean, std and n."),
    train_limit: int = typer.Option(None, help="Train on the first N training images (default: the preset's)."),
    limit: int = typer.Option(None, help="Evaluate on the first N test images (default: the preset's)."),
    attack_limit: int = typer.Option(None, help="Attack the first N of those (default: the preset's; the study "
                                     "attacks 1000, the other presets every evaluated image)."),
    patch_size: int = typer.Option(None, help="Patch side in pixels (default: the preset's; the study uses 7 on "
                                   "28 px, the others 2 below 16 px, else 4)."),
    attack_suite: list[str] = typer.Option(None, help="Attack suite(s), repeatable (default: the preset's)."),
    corruption_suite: str = typer.Option(None, help="Corruption suite (default: the preset's)."),
    models: str = typer.Option(None, help="Comma-separated small-image models (default: one per family: "
                               "deit, elliptical, rvt, rkde and mom micro)."),
    out: Path = typer.Option(None, help="Output folder for the store, checkpoints and report (default: reports/demo, "
                             "or reports/fashion-mnist for the study)."),
    workers: int = typer.Option(None, help="Train and evaluate the models over N worker processes of one torch "
                                "thread each (the same numbers for every N >= 1; the profile jobs run alone "
                                "afterwards). 0: all in this process at torch's thread count. Default: the preset's "
                                "(the study: one worker per usable core; the others: 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """The whole product offline, in minutes: train the five families on a built-in data set, attack, corrupt,
    measure collapse and cost, and write a report with plots and paired statistics (reports/demo/)."""
    _single_process("demo")
    import dataclasses

    if epochs is not None:
        _positive(epochs, "--epochs")
    if workers is not None and workers < 0:
        raise EllbenchError(f"--workers must be 0 or more, got {workers}")
    for value, option in ((limit, "--limit"), (train_limit, "--train-limit"), (attack_limit, "--attack-limit"),
                          (patch_size, "--patch-size")):
        if value is not None:
            _positive(value, option)
    for name in attack_suite or []:
        _check_suite("attacks", name)
    _check_suite("corruptions", corruption_suite)
    for name in (models or "").split(","):
        if name.strip():
            _check_model(name.strip())
    presets = ("digits", "fashion-mnist", "study")
    _check_choice(dataset, presets, "demo data set")
    out_dir = _out_dir(out if out is not None else Path("reports/fashion-mnist" if dataset == "study"
                                                        else "reports/demo"))
    from ellbench.demo import PRESETS, run_demo

    overrides = {"epochs": epochs, "train_limit": train_limit, "limit": limit, "corruption_suite": corruption_suite,
                 "attack_limit": attack_limit, "patch_size": patch_size,
                 "seeds": tuple(_parse_seeds(seeds)) if seeds else None,
                 "attack_suites": tuple(attack_suite) if attack_suite else None,
                 "models": tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
                 "workers": workers}
    plan = dataclasses.replace(PRESETS[dataset], **{k: v for k, v in overrides.items() if v is not None})
    summary = run_demo(out_dir, plan, data_root=data_root, progress=not as_json)
    if as_json:
        _print_json(summary)


CHECKPOINT_HELP = ("Weights: .safetensors, or .pt/.pth read with torch.load(weights_only=True). A JSON sidecar "
                   "<checkpoint>.json from `ellbench train` gives the model's settings. Without it: random init "
                   "from --seed.")
DATA_HELP = ("A built-in set (digits, fashion-mnist; its test split) or an ImageNet-style folder with one sub-folder "
             "of images per class (wnid names map to ImageNet-1k indices).")


PRETRAINED_HELP = ("Use timm's published weights for MODEL, from the Hugging Face cache (or the hub when online). A "
                   "name with a tag (deit_small_patch16_224.fb_in1k) loads them without this flag.")
IMG_SIZE_HELP = ("Image folders: input side in pixels (timm validate.py's --img-size); a fixed-size model is built for "
                 "it. Default: the model's own, its test size when its pretrained config names one.")
CROP_PCT_HELP = "Image folders: centre-crop fraction (validate.py's --crop-pct). Default: the model's own."
INTERPOLATION_HELP = ("Image folders: resize interpolation, e.g. bilinear or bicubic (validate.py's --interpolation). "
                      "Default: the model's own.")


def _shared_option_declarations() -> dict:
    """The options several evaluation commands share, declared once: name -> (type, a fresh typer.Option)."""
    return {
        "checkpoint": (str, lambda: typer.Option(None, help=CHECKPOINT_HELP)),
        "pretrained": (bool, lambda: typer.Option(False, "--pretrained", help=PRETRAINED_HELP)),
        "data_root": (str, lambda: typer.Option(None, help="Folder of the Fashion-MNIST IDX files, for --data "
                                                "fashion-mnist.")),
        "img_size": (int, lambda: typer.Option(None, help=IMG_SIZE_HELP)),
        "crop_pct": (float, lambda: typer.Option(None, help=CROP_PCT_HELP)),
        "interpolation": (str, lambda: typer.Option(None, help=INTERPOLATION_HELP)),
        "skip_bad_images": (bool, lambda: typer.Option(False, help="Skip unreadable images (counted) instead of "
                                                       "stopping.")),
        "workers": (int, lambda: typer.Option(None, help=WORKERS_HELP)),
        "amp": (str, lambda: typer.Option("off", help=AMP_HELP)),
        "seed": (int, lambda: typer.Option(0, help=SEED_HELP)),
        "device": (str, lambda: typer.Option("auto", help=DEVICE_HELP)),
        "out": (Path, lambda: typer.Option(None, help=OUT_HELP)),
        "as_json": (bool, lambda: typer.Option(False, "--json", help="Print the results as JSON.")),
    }


def shared_options(command):
    """Give a command's keyword-only parameters that have no default the shared option of the same name.

    A command lists its own options as usual and names the shared ones after `*` (e.g. `*, checkpoint, seed`);
    typer reads the completed signature.
    """
    import functools
    import inspect

    declarations = _shared_option_declarations()
    signature = inspect.signature(command)
    parameters, annotations = [], {}
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            kind, option = declarations[parameter.name]
            parameter = parameter.replace(default=option(), annotation=kind)
        parameters.append(parameter.replace(kind=parameter.KEYWORD_ONLY))
        annotations[parameter.name] = parameter.annotation

    @functools.wraps(command)
    def with_shared_options(**options):
        return command(**options)

    with_shared_options.__signature__ = signature.replace(parameters=parameters)
    with_shared_options.__annotations__ = annotations
    return with_shared_options


def _check_common(batch_size: int, seed: int, limit: int | None) -> None:
    _positive(batch_size, "--batch-size", MAX_BATCH_SIZE)
    _check_seed(seed)
    if limit is not None:
        _positive(limit, "--limit")


def _amp_note(amp: str) -> str:
    """What a result's title says about autocast: nothing for float32."""
    return "" if amp == "off" else f", {amp} autocast"


def _overrides(img_size: int | None, crop_pct: float | None, interpolation: str | None):
    """The eval-transform overrides, checked before any heavy import."""
    from ellbench.data.transforms import INTERPOLATIONS
    from ellbench.tasks.inputs import TransformOverrides

    if img_size is not None:
        _positive(img_size, "--img-size", MAX_IMG_SIZE)
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise EllbenchError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    _check_choice(interpolation, INTERPOLATIONS, "--interpolation")
    return TransformOverrides(img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)


def _check_checkpoint(checkpoint: str | None) -> None:
    """A checkpoint's type, size, sidecar and (safetensors) layout, before any heavy import."""
    _check_file(checkpoint, "checkpoint")
    if checkpoint is not None:
        from ellbench.models.loading import precheck_checkpoint

        precheck_checkpoint(checkpoint)


def _check_inputs(checkpoint: str | None, pretrained: bool, data: str | None = None) -> None:
    """Weights and data named on the command line, checked before any heavy import (the model name is checked when
    it is built)."""
    if pretrained and checkpoint is not None:
        raise EllbenchError("give either --pretrained (timm's published weights) or --checkpoint, not both")
    _check_checkpoint(checkpoint)
    from ellbench.data import check_folder, is_builtin

    if data is not None and not is_builtin(data):
        check_folder(data)


def _model_and_data(model: str, data: str, *, checkpoint: str | None, pretrained: bool, data_root: str | None,
                    limit: int | None, overrides, seed: int, device: str, out_dir: Path,
                    skip_bad_images: bool = False, amp: str = "off", labels: bool = True):
    """(model ready for evaluation, data set, the output folder's store): ellbench.tasks.inputs.open_model_and_data."""
    from ellbench.store import Store
    from ellbench.tasks.inputs import open_model_and_data

    loaded, dataset = open_model_and_data(model, data, checkpoint=checkpoint, pretrained=pretrained,
                                          data_root=data_root, limit=limit, skip_bad_images=skip_bad_images,
                                          overrides=overrides, seed=seed, device=device, amp=amp, labels=labels)
    return loaded, dataset, Store.in_folder(out_dir)


def _show(as_json: bool, payload, rows: list[dict], title: str) -> bool:
    """The result on stdout, from rank 0 only: `payload` as JSON for scripts, else `rows` as a table.

    Returns whether this process printed it (so that notes which follow a table are printed once).
    """
    from ellbench import distributed

    if not distributed.is_writer():
        return False
    if as_json:
        _print_json(payload)
    else:
        _print_rows(rows, title)
    return True


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ellbench.report.tables import format_cell

    if not rows:
        return
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*[format_cell(value) for value in row.values()])
    Console().print(table)


def _skipped(dataset) -> int:
    """How many unreadable images --skip-bad-images left out of `dataset`."""
    return int(getattr(dataset, "skipped", 0) or 0)


def _note_skipped(count: int) -> None:
    if count:
        typer.echo(f"note: {count} unreadable images were skipped (--skip-bad-images)")


def _transform_of(dataset) -> str:
    return getattr(dataset, "transform_description", None) or "as stored"


def _title(loaded, dataset) -> str:
    transform = getattr(dataset, "transform_description", None)
    return f"{loaded.name} on {dataset.name} ({len(dataset)} examples{_amp_note(loaded.amp)})" + \
        (f", {transform}" if transform else "")


@app.command("eval")
@shared_options
def eval_command(
    model: str = typer.Argument(..., help="Any timm classifier (see `ellbench models`), with a pretrained tag to use "
                                "timm's published weights, e.g. deit_small_patch16_224.fb_in1k."),
    data: str = typer.Option("digits", help=DATA_HELP + " A folder goes through the model's own timm eval "
                             "transform, as timm's validate.py reads it."),
    limit: int = typer.Option(None, help="Evaluate N examples only: the first N of a built-in set, N spread evenly "
                              "over a folder's classes."),
    batch_size: int = typer.Option(64, help="Examples per batch."),
    save_logits: Path = typer.Option(None, help="Write the float32 logits [N, classes], in data-set order, to this "
                                     ".npy file."),
    *, checkpoint, pretrained, data_root, img_size, crop_pct, interpolation, skip_bad_images, workers, amp, seed,
    device, out, as_json,
):
    """Clean top-1 and top-5 accuracy, the job of timm's validate.py: the model's own preprocessing, resumable.

    Per-example predictions, top-5 hits and losses go to the results store.
    """
    _check_common(batch_size, seed, limit)
    _check_loading(workers, amp)
    _check_device(device)
    overrides = _overrides(img_size, crop_pct, interpolation)
    _check_inputs(checkpoint, pretrained, data)
    if save_logits is not None and save_logits.suffix != ".npy":
        raise EllbenchError(f"--save-logits writes a .npy file; got {save_logits}")
    out_dir = _out_dir(out)
    from ellbench.tasks.eval import run_eval

    loaded, dataset, store = _model_and_data(model, data, checkpoint=checkpoint, pretrained=pretrained,
                                             data_root=data_root, limit=limit, overrides=overrides, seed=seed,
                                             device=device, out_dir=out_dir, skip_bad_images=skip_bad_images,
                                             amp=amp)
    job = run_eval(store, loaded, dataset, batch_size=batch_size, seed=seed, save_logits=save_logits,
                   progress=not as_json, workers=workers)
    summary = job["summary"]
    result = {"model": loaded.name, "checkpoint": loaded.checkpoint_id, "weights": loaded.weights,
              "data": dataset.fingerprint, "transform": _transform_of(dataset), "amp": amp, "n": summary["n"],
              "top1": 100.0 * summary["accuracy"], "top5": 100.0 * summary.get("top5_accuracy", float("nan")),
              "loss": summary.get("loss"), "job": job["id"], "logits": job.get("logits"),
              "skipped_images": _skipped(dataset)}
    shown = _show(as_json, result, [{"model": loaded.name, "n": summary["n"], "top-1 %": result["top1"],
                                     "top-5 %": result["top5"], "loss": result["loss"]}], _title(loaded, dataset))
    if shown and not as_json:
        _note_skipped(result["skipped_images"])
        typer.echo(f"weights: {loaded.weights} ({loaded.checkpoint_id[:19]})")
        if job.get("logits"):
            typer.echo(f"logits written to {job['logits']}")
        if job.get("logits_disagree"):
            typer.echo(f"note: {job['logits_disagree']} predictions recomputed for the logits differ from the stored "
                       "ones (the evaluation is not deterministic here)", err=True)


@app.command("attack")
@shared_options
def attack_command(
    model: str = typer.Argument(..., help="Model name (see `ellbench models`) or any timm model."),
    data: str = typer.Option("digits", help=DATA_HELP),
    suite: str = typer.Option(None, help="Attack suite: paper, standard, quick, or a TOML file. Default: quick, "
                              "unless --attack is given."),
    attack: str = typer.Option(None, help="One torchattacks class by name instead of a suite, e.g. PGD."),
    param: list[str] = typer.Option(None, help="Setting of --attack, repeatable: --param eps=4/255 --param steps=10. "
                                    "A comma list of eps gives one job per eps; alpha=0.15*eps scales with eps. "
                                    "SPSA holds max_batch_size x batch images per forward pass."),
    protocol: str = typer.Option("standard", help="For --attack: standard (pixel space, true labels, clipping to "
                                 "[0, 1]) or paper (normalised space, no clipping, the model's own predictions)."),
    limit: int = typer.Option(None, help="Attack the first N examples only."),
    batch_size: int = typer.Option(64, help="Examples per batch (part of the job key: random starts are per batch)."),
    *, checkpoint, pretrained, data_root, img_size, crop_pct, interpolation, skip_bad_images, workers, amp, seed,
    device, out, as_json,
):
    """Clean and robust accuracy under adversarial attacks (torchattacks), per attack and eps, resumable per batch.

    Trust checks (budgets held, robust <= clean, accuracy non-increasing in eps, PGD at least as strong as FGSM)
    are recorded with the results.
    """
    _check_common(batch_size, seed, limit)
    _check_loading(workers, amp)
    _check_device(device)
    _check_suite("attacks", suite)
    overrides = _overrides(img_size, crop_pct, interpolation)
    _check_inputs(checkpoint, pretrained, data)
    _check_choice(protocol, ("standard", "paper"), "protocol")
    from ellbench.attacks.checks import format_eps
    from ellbench.attacks.suite import load_suite, make_entries, parse_params

    if attack is not None:
        if suite is not None:
            raise EllbenchError("give either --suite or --attack, not both")
        params = parse_params(param or [])
        entries = make_entries(attack, params, protocol=protocol)
    else:
        if param:
            raise EllbenchError("--param needs --attack")
        entries = load_suite(suite or "quick")
    out_dir = _out_dir(out)
    from ellbench.runner import LoaderPool
    from ellbench.tasks.attack import run_attack_suite
    from ellbench.tasks.eval import run_clean

    loaded, dataset, store = _model_and_data(model, data, checkpoint=checkpoint, pretrained=pretrained,
                                             data_root=data_root, limit=limit, overrides=overrides, seed=seed,
                                             device=device, out_dir=out_dir, skip_bad_images=skip_bad_images,
                                             amp=amp)
    with LoaderPool() as loaders:  # the clean and every attack job share the loader's worker processes
        clean = run_clean(store, loaded, dataset, batch_size=batch_size, seed=seed, progress=not as_json,
                          workers=workers, loaders=loaders)
        result = run_attack_suite(store, loaded, dataset, entries, batch_size=batch_size, seed=seed,
                                  progress=not as_json, workers=workers, loaders=loaders)
    rows = [{"attack": "clean", "protocol": "", "eps": "", "accuracy": clean["summary"]["accuracy"],
             "top5_accuracy": clean["summary"].get("top5_accuracy"), "n": clean["summary"]["n"]}]
    for entry, job in zip(entries, result["jobs"], strict=True):
        rows.append({"attack": entry.label, "protocol": entry.protocol, "eps": format_eps(entry.eps),
                     "accuracy": job["summary"]["accuracy"],
                     "top5_accuracy": job["summary"].get("robust_top5_accuracy"), "n": job["summary"]["n"]})
    shown = _show(as_json, {"model": loaded.name, "checkpoint": loaded.checkpoint_id, "data": dataset.fingerprint,
                            "transform": _transform_of(dataset), "amp": amp, "results": rows,
                            "checks": result["checks"], "skipped_images": _skipped(dataset)},
                  rows, _title(loaded, dataset))
    if shown and not as_json:
        _note_skipped(_skipped(dataset))
        for check in result["checks"]:
            if check["status"] != "ok":
                typer.echo(f"trust check {check['status']}: {check['check']}: {check['detail']}", err=True)


@app.command("corrupt")
@shared_options
def corrupt_command(
    model: str = typer.Argument(..., help="Model name (see `ellbench models`) or any timm model."),
    data: str = typer.Option(None, help="Clean data to corrupt on the fly: " + DATA_HELP + " Default: digits unless "
                             "--imagenet-c is given. A folder's images are resized and cropped by the model's own eval "
                             "transform, then corrupted."),
    imagenet_c: str = typer.Option(None, help="Released ImageNet-C root: <root>/[<group>/]<corruption>/<severity>/"
                                   "<wnid>/*.JPEG. Its 224 px images are resized for a model of another input size "
                                   "(noted in the results)."),
    suite: str = typer.Option("quick", help="Corruption suite: imagenet-c (15 x 5), imagenet-c-extra, quick, or a "
                              "TOML file."),
    limit: int = typer.Option(None, help="Evaluate N images per (corruption, severity) only: the first N of a "
                              "built-in set, N spread evenly over a folder's classes."),
    batch_size: int = typer.Option(64, help="Examples per batch."),
    workers: int = typer.Option(None, help="Processes preparing images: generating ImageNet-C from a folder "
                                "(default: all cores; 0: this process) and decoding batches (default: 0 for "
                                "precomputed in-memory sets, else a share of the cores). Results are the same for "
                                "any number."),
    cache_dir: Path = typer.Option(None, help="Cache of generated ImageNet-C images (default: ~/.cache/ellbench)."),
    baseline: str = typer.Option(None, help="AlexNet errors for mCE: hendrycks (default) or robustbench."),
    corruption_backend: str = typer.Option(None, help="Who corrupts generated and in-memory images: imagecorruptions "
                                           "(the published ImageNet-C code, one image at a time; default unless the "
                                           "suite says otherwise) or torch (ellbench's batched port, much faster; "
                                           "see benchmarks/README.md for its fidelity). Different backends are "
                                           "different jobs."),
    *, checkpoint, pretrained, data_root, img_size, crop_pct, interpolation, amp, skip_bad_images, seed, device, out,
    as_json,
):
    """Accuracy under common corruptions (ImageNet-C on disk, or generated on the fly and cached), CE and mCE."""
    _check_common(batch_size, seed, limit)
    _check_loading(workers, amp)
    _check_device(device)
    _check_suite("corruptions", suite)
    _check_choice(baseline, ("hendrycks", "robustbench"), "baseline")
    from ellbench.corruptions.names import BACKENDS

    _check_choice(corruption_backend, BACKENDS, "--corruption-backend")
    overrides = _overrides(img_size, crop_pct, interpolation)
    if data is not None and imagenet_c is not None:
        raise EllbenchError("choose one source of corrupted images: --data (clean images, corrupted here) or "
                            "--imagenet-c (the released ImageNet-C), not both")
    _check_inputs(checkpoint, pretrained, data)
    from ellbench.corruptions.suite import load_suite

    chosen = load_suite(suite)
    if imagenet_c is not None and not Path(imagenet_c).is_dir():
        raise EllbenchError(f"ImageNet-C folder {imagenet_c} not found")
    if imagenet_c is not None and corruption_backend is not None:
        raise EllbenchError("--corruption-backend chooses who corrupts generated images; released ImageNet-C "
                            "(--imagenet-c) is already corrupted")
    out_dir = _out_dir(out)
    from ellbench.store import Store
    from ellbench.tasks.corruption import run_corruption_suite
    from ellbench.tasks.inputs import eval_transform, load_model

    clean = None
    if data is not None or imagenet_c is None:
        loaded, clean, store = _model_and_data(model, data or "digits", checkpoint=checkpoint, pretrained=pretrained,
                                               data_root=data_root, limit=limit, overrides=overrides, seed=seed,
                                               device=device, out_dir=out_dir, skip_bad_images=skip_bad_images,
                                               amp=amp)
    else:
        loaded = load_model(model, checkpoint=checkpoint, pretrained=pretrained, seed=seed, device=device,
                            overrides=overrides, amp=amp)
        store = Store.in_folder(out_dir)
    transform = eval_transform(loaded, overrides) if imagenet_c is not None else None
    if transform is not None:
        from ellbench.tasks.inputs import check_model_input

        check_model_input(loaded, transform.input_size, "the size its eval transform makes of ImageNet-C's images")
        outputs = getattr(loaded.timm_model, "num_classes", 1000)
        if outputs < 1000:
            raise EllbenchError(f"ImageNet-C is labelled with ImageNet-1k's 1000 classes, but {loaded.name} has "
                                f"{outputs} outputs; use a 1000-class ImageNet model")
    summary = run_corruption_suite(
        store, loaded, chosen, clean=clean, imagenet_c=imagenet_c, batch_size=batch_size, seed=seed,
        cache_dir=cache_dir, workers=workers, skip_bad_images=skip_bad_images, limit=limit, baseline=baseline,
        progress=not as_json, transform=transform, backend=corruption_backend)
    from ellbench import distributed

    if not distributed.is_writer():
        return
    if as_json:
        _print_json(summary)
        return
    _print_json_summary(summary)
    if summary.get("upsampled"):
        typer.echo("note: images under 32 px were upsampled to 32 px, corrupted and downsampled back "
                   "(imagecorruptions refuses smaller images)")
    if summary.get("skipped_images"):
        typer.echo(f"note: {summary['skipped_images']} unreadable images were skipped (--skip-bad-images)")
    if summary.get("resized"):
        typer.echo(f"note: {summary['resized']}; not the published 224 px ImageNet-C setting")
    if summary.get("mce") is not None:
        typer.echo(f"mCE {100 * summary['mce']:.1f} (AlexNet = 100; baseline {summary['baseline']['name']})")
    if amp != "off":
        typer.echo(f"note: the network ran under {amp} autocast (--amp {amp})")


def _print_json_summary(summary: dict) -> None:
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    _print_rows([{"field": k, "value": v} for k, v in flat.items()], "summary")
    for key, value in summary.items():
        if isinstance(value, dict) and value and all(not isinstance(v, (dict, list)) for v in value.values()):
            _print_rows([{"name": k, "value": v} for k, v in value.items()], key)


@app.command("shift")
@shared_options
def shift_command(
    model: str = typer.Argument(..., help="An ImageNet-1k model (1000 outputs)."),
    dataset: str = typer.Option(..., help="imagenet-a or imagenet-r."),
    data: str = typer.Option(..., help="The data set's folder: <root>/<wnid>/*.jpg with its 200 wnid sub-folders."),
    limit: int = typer.Option(None, help="Evaluate N images only (spread evenly over the folder)."),
    batch_size: int = typer.Option(64, help="Examples per batch."),
    *, checkpoint, pretrained, img_size, crop_pct, interpolation, skip_bad_images, workers, amp, seed, device, out,
    as_json,
):
    """Top-1 and top-5 accuracy under distribution shift: ImageNet-A or ImageNet-R through the model's own eval
    transform, logits restricted to their 200 classes."""
    _check_common(batch_size, seed, limit)
    _check_loading(workers, amp)
    _check_device(device)
    _check_choice(dataset, ("imagenet-a", "imagenet-r"), "shift data set")
    overrides = _overrides(img_size, crop_pct, interpolation)
    _check_inputs(checkpoint, pretrained)
    if not Path(data).is_dir():
        raise EllbenchError(f"data folder {data} not found")
    out_dir = _out_dir(out)
    from ellbench.store import Store
    from ellbench.tasks.inputs import check_model_input, eval_transform, load_model
    from ellbench.tasks.shift import run_shift

    loaded = load_model(model, checkpoint=checkpoint, pretrained=pretrained, seed=seed, device=device,
                        overrides=overrides, amp=amp)
    transform = eval_transform(loaded, overrides)
    check_model_input(loaded, transform.input_size, f"the size its eval transform makes of {dataset}'s images")
    outputs = getattr(loaded.timm_model, "num_classes", 1000)
    if outputs != 1000:
        raise EllbenchError(f"{dataset} is scored on ImageNet-1k's classes, but {loaded.name} has {outputs} outputs; "
                            "use a 1000-class ImageNet model")
    store = Store.in_folder(out_dir)
    job = run_shift(store, loaded, dataset, data, batch_size=batch_size, seed=seed, skip_bad_images=skip_bad_images,
                    limit=limit, transform=transform, progress=not as_json, workers=workers)
    skipped = int(job.get("skipped_images", 0))
    shown = _show(as_json, {"model": loaded.name, "dataset": dataset, "transform": transform.describe(), "amp": amp,
                            "summary": job["summary"], "job": job["id"], "skipped_images": skipped},
                  [{"model": loaded.name, "dataset": dataset, **job["summary"]}],
                  f"distribution shift ({transform.describe()}{_amp_note(amp)})")
    if shown and not as_json:
        _note_skipped(skipped)


@app.command("collapse")
@shared_options
def collapse_command(
    model: str = typer.Argument(..., help="Any timm ViT-like model whose blocks have an `attn` module."),
    data: str = typer.Option("digits", help=DATA_HELP),
    limit: int = typer.Option(None, help="Use the first N examples only."),
    batch_size: int = typer.Option(64, help="Examples per batch."),
    *, checkpoint, pretrained, data_root, img_size, crop_pct, interpolation, skip_bad_images, workers, amp, seed,
    device, out, as_json,
):
    """Representation collapse per layer: mean pairwise cosine similarity of the attention outputs' tokens."""
    _check_common(batch_size, seed, limit)
    _check_loading(workers, amp)
    _check_device(device)
    overrides = _overrides(img_size, crop_pct, interpolation)
    _check_inputs(checkpoint, pretrained, data)
    out_dir = _out_dir(out)
    from ellbench.tasks.collapse import run_collapse

    loaded, dataset, store = _model_and_data(model, data, checkpoint=checkpoint, pretrained=pretrained,
                                             data_root=data_root, limit=limit, overrides=overrides, seed=seed,
                                             device=device, out_dir=out_dir, skip_bad_images=skip_bad_images,
                                             amp=amp, labels=False)  # collapse reads no labels
    job = run_collapse(store, loaded, dataset, batch_size=batch_size, seed=seed, progress=not as_json,
                       workers=workers)
    layers, values = job["settings"]["layers"], job["summary"]["collapse"]
    shown = _show(as_json, {"model": loaded.name, "job": job["id"], "amp": amp,
                            "layers": dict(zip(layers, values, strict=True)), "skipped_images": _skipped(dataset)},
                  [{"layer": name, "mean cosine similarity": value}
                   for name, value in zip(layers, values, strict=True)],
                  f"representation collapse of {loaded.name} on {dataset.name}{_amp_note(amp)}")
    if shown and not as_json:
        _note_skipped(_skipped(dataset))


@app.command("profile")
def profile_command(
    models: list[str] = typer.Argument(..., help="One or more model names."),
    batch_size: int = typer.Option(64, help="Batch size of the throughput measurement (latency uses batch 1)."),
    img_size: int = typer.Option(None, help="Input side in pixels (default: the model's own)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    amp: str = typer.Option("off", help="off, bf16 or fp16 autocast."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model first."),
    threads: int = typer.Option(None, help="CPU threads (default: torch's)."),
    repeats: int = typer.Option(3, help="Timed repeats; the median and spread are reported."),
    warmup: int = typer.Option(10, help="Untimed warm-up steps before each measurement."),
    steps: int = typer.Option(40, help="Timed steps per throughput repeat."),
    latency_steps: int = typer.Option(50, help="Timed batch-1 calls for the latency median and p90."),
    reference_attn: bool = typer.Option(False, "--reference-attn", help="Time the explicit reference attention "
                                        "(fused_attn=False) instead of each model's fused path."),
    checkpoint: str = typer.Option(None, help=CHECKPOINT_HELP),
    memory: bool = typer.Option(True, help="Measure peak memory: the peak bytes of live tensors during one forward "
                                "pass, weights and input included (CUDA: max_memory_allocated; CPU: torch's allocator "
                                "through its profiler, the same figure), and on CPU peak RSS as a secondary column."),
    seed: int = typer.Option(0, help=SEED_HELP),
    out: Path = typer.Option(None, help=OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements as JSON."),
):
    """Throughput, latency, peak memory, FLOPs (attention counted the same way for every model) and parameters."""
    _single_process("profile")
    _check_seed(seed)
    _positive(batch_size, "--batch-size", MAX_BATCH_SIZE)
    if img_size is not None:
        _positive(img_size, "--img-size", MAX_IMG_SIZE)
    _positive(repeats, "--repeats")
    _positive(steps, "--steps")
    _positive(latency_steps, "--latency-steps")
    if warmup < 0:
        raise EllbenchError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None:
        _positive(threads, "--threads")
    _check_choice(amp, ("off", "bf16", "fp16"), "--amp")
    _check_device(device)
    _check_checkpoint(checkpoint)
    for name in models:
        _check_model(name)
    out_dir = _out_dir(out)
    from ellbench.store import Store
    from ellbench.tasks.profile import run_profile

    store = Store.in_folder(out_dir)
    results = [run_profile(store, name, batch_size=batch_size, img_size=img_size, device=device, amp=amp,
                           compile=compile, threads=threads, repeats=repeats, checkpoint=checkpoint,
                           measure_memory=memory, seed=seed, warmup=warmup, steps=steps,
                           latency_steps=latency_steps, fused_attn=False if reference_attn else None)
               for name in models]
    if as_json:
        _print_json(results)
        return
    keys = ("model", "params", "gflops_per_image", "throughput_img_s", "latency_ms_median", "peak_memory_mib",
            "peak_rss_mib")
    _print_rows([{k: r.get(k) for k in keys} for r in results],
                f"efficiency on {results[0].get('device_name')} (batch {batch_size}, {results[0].get('threads')} "
                "threads)")
    typer.echo(results[0].get("flops_counting", ""))


@app.command("report")
def report_command(
    out: Path = typer.Option(None, help="Folder of the store (ellbench.sqlite); default $ELLBENCH_OUT or reports."),
    report_dir: Path = typer.Option(None, help="Where the tables and plots go (default: the --out folder)."),
    format: str = typer.Option("md,csv,png", "--format", help="Comma-separated outputs: md, csv, png."),
    models: str = typer.Option(None, help="Comma-separated model names to include (default: all in the store)."),
    compare: list[str] = typer.Option(None, help="A paired comparison 'A,B' (repeatable): accuracy difference with a "
                                      "bootstrap 95% CI and an exact McNemar test per attack, eps and corruption. "
                                      "A or B may be NAME@CHECKPOINT-PREFIX to pick one checkpoint."),
    reference: bool = typer.Option(True, help="Put the reference tables (reports/reference/) beside matching results."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resampling."),
    resamples: int = typer.Option(10000, help="Bootstrap resamples."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
):
    """Tables (CSV, Markdown) and plots of everything in the store, with provenance, trust checks, the paper's
    reference numbers where the protocol matches, and paired statistics between models."""
    _single_process("report")
    formats = tuple(part.strip() for part in format.split(",") if part.strip())
    for part in formats:
        _check_choice(part, ("md", "csv", "png"), "format")
    if not formats:
        raise EllbenchError("--format needs at least one of md, csv, png")
    _positive(resamples, "--resamples", MAX_RESAMPLES)
    _check_seed(seed)
    pairs = []
    for text in compare or []:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise EllbenchError(f"--compare takes two models separated by a comma, got {text!r}")
        pairs.append(tuple(parts))
    from ellbench.io import default_out_dir
    from ellbench.store import STORE_FILENAME

    folder = out if out is not None else default_out_dir()
    if not (folder / STORE_FILENAME).is_file():
        raise EllbenchError(f"no results store in {folder} (expected {folder / STORE_FILENAME}); run an evaluation "
                            "first or pass --out")
    target = _out_dir(report_dir if report_dir is not None else folder)
    from ellbench.report.build import build_report
    from ellbench.store import Store

    store = Store(folder / STORE_FILENAME, read_only=True)
    written = build_report(store, target, formats=formats, reference=reference, compare=pairs or None, seed=seed,
                           resamples=resamples,
                           models=[m.strip() for m in models.split(",") if m.strip()] if models else None)
    store.close()
    if as_json:
        _print_json(written)
        return
    for path in written.get("files", []):
        typer.echo(f"wrote {path}")
    for name, where in written.get("plots", {}).items():
        if str(where).startswith("skipped"):
            typer.echo(f"plot {name} {where}")
    for note in written.get("notes", []):
        typer.echo(f"note: {note}")
    checks = written.get("checks", {})
    if checks:
        typer.echo("trust checks: " + ", ".join(f"{count} {status}" for status, count in checks.items()))


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise EllbenchError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    if not seeds or any(not 0 <= seed <= MAX_SEED for seed in seeds):
        raise EllbenchError(f"--seeds must be integers between 0 and 2**63-1, got {text!r}")
    return seeds


def _check_model(name: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    if not timm.is_model(name):
        raise EllbenchError(f"unknown model {name!r}; `ellbench models` lists the registered ones")


INTERRUPTED = "error: interrupted{how}; every finished batch is stored, run the same command again to resume\n"
# What to lower when a command runs out of memory, by command.
MEMORY_HINTS = {"profile": "--batch-size or --img-size", "report": "--resamples", "train": "--batch-size",
                "corrupt": "--batch-size or --workers", "demo": "--limit"}


def _out_of_memory(error: BaseException) -> str | None:
    """The one line for an allocation failure (MemoryError, torch.OutOfMemoryError, torch's CPU allocator refusing),
    or None when `error` is something else."""
    text = str(error).strip()
    if not isinstance(error, MemoryError) and type(error).__name__ != "OutOfMemoryError" \
            and "out of memory" not in text.lower() and "DefaultCPUAllocator" not in text:
        return None
    detail = next((line.strip() for line in text.splitlines() if "allocat" in line or "memory" in line), "")
    detail = (detail[:160] + "...") if len(detail) > 160 else detail
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    lower = MEMORY_HINTS.get(command, "--batch-size (or --img-size)")
    kept = " (finished batches are stored)" if command in ("eval", "attack", "corrupt", "shift", "collapse") else ""
    return f"out of memory{f' ({detail})' if detail else ''}; lower {lower} and run again{kept}"


def main() -> None:
    """Console entry point: one-line errors (exit 2) for bad input, never a traceback.

    Ctrl-C (SIGINT) and SIGTERM both stop the run the same way: the running attempt is closed as 'interrupted', one
    line says so, and the exit code is 130 or 143 (128 + the signal's number).
    """
    import signal

    from typer._click import exceptions as click_exceptions  # typer vendors click

    received = []

    def on_sigterm(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

    def interrupted() -> None:
        sys.stderr.write(INTERRUPTED.format(how=" by SIGTERM" if received else ""))
        sys.exit(128 + (received[0] if received else signal.SIGINT))

    # No HF_HUB_OFFLINE default here: only --pretrained or a tagged model name asks the hub for anything, and then a
    # user with a network should get the weights (offline machines set HF_HUB_OFFLINE=1 themselves).
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
        interrupted()
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        message = _out_of_memory(exc)
        if message is None:
            raise  # a bug keeps its traceback
        sys.stderr.write(f"error: {' '.join(message.split())}\n")
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if code == 130:  # typer turns a Ctrl-C inside a command into exit code 130 without a word
        interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
