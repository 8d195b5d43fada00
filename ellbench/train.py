"""Small-image training for the demo and the Fashion-MNIST study (not an ImageNet trainer).

Every family gets the same budget: same epochs, batch size, optimiser (AdamW), schedule (linear warm-up then
cosine), label smoothing and augmentation. A run is resumable: after every epoch, and every minute within one, the
model, optimiser, schedule and RNG states (within an epoch also its order and position) go to `<checkpoint>.state.pt`;
the final weights go to a `.safetensors` file with a JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ellbench._version import __version__
from ellbench.errors import EllbenchError
from ellbench.io import ProgressBar, atomic_path, atomic_write_text, ensure_writable_dir
from ellbench.models.loading import model_kwargs_for

AUGMENTATIONS = ("none", "crop", "crop-flip")
# Within an epoch the state file is rewritten at most this often (seconds of training), so an interrupted run loses at
# most this much work; saving draws no random numbers, so the weights do not depend on it.
STATE_EVERY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so its checkpoint)."""

    model: str
    dataset: str = "digits"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    # From-scratch ViTs on a few thousand 8-28 px images learn fastest without either (digits, 15 epochs:
    # 0.895 test accuracy without, 0.51 with shifts and smoothing 0.1); both stay available.
    label_smoothing: float = 0.0
    augment: str = "none"
    seed: int = 0
    limit: int | None = None
    # Patch side (None: model_kwargs_for's rule, 2 below 16 px, else 4). The study uses 7 on 28 px Fashion-MNIST.
    patch_size: int | None = None
    # torch threads while training (None: the process's setting). Recorded because the order of float sums, and so
    # the weights' last bits, depend on it: the study trains at 1 thread per worker process.
    threads: int | None = None

    def settings(self) -> dict:
        """The settings as recorded in the sidecar and the job key (patch_size and threads only when set, so records
        made before they existed still match)."""
        settings = dataclasses.asdict(self)
        for optional in ("patch_size", "threads"):
            if settings[optional] is None:
                del settings[optional]
        return settings

    def validate(self) -> None:
        if self.epochs <= 0:
            raise EllbenchError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise EllbenchError(f"--batch-size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise EllbenchError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.label_smoothing < 1:
            raise EllbenchError("--weight-decay and --warmup-epochs must be >= 0 and --label-smoothing in [0, 1)")
        if self.patch_size is not None and self.patch_size <= 0:
            raise EllbenchError(f"--patch-size must be positive, got {self.patch_size}")
        if self.threads is not None and self.threads <= 0:
            raise EllbenchError(f"--threads must be positive, got {self.threads}")
        if self.augment not in AUGMENTATIONS:
            raise EllbenchError(f"unknown augmentation {self.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")


def checkpoint_path(out_dir: Path, config: TrainConfig) -> Path:
    return Path(out_dir) / f"{config.model}-{config.dataset}-seed{config.seed}.safetensors"


def _augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shifts by up to 1/8 of the side (zero padding) and, for 'crop-flip', horizontal flips."""
    if kind == "none":
        return images
    b, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, images.shape[1], h, w + 2 * pad)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, images.shape[1], h, w)
    shifted = shifted.gather(3, cols)
    if kind == "crop-flip":
        flip = torch.rand(b, generator=generator) < 0.5
        shifted = torch.where(flip[:, None, None, None], shifted.flip(3), shifted)
    return shifted


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _module_generators(model: torch.nn.Module) -> dict[str, torch.Generator]:
    """Random generators that modules own for training-time draws (MoM's subsets), by module name."""
    return {name: module._train_generator for name, module in model.named_modules()
            if isinstance(getattr(module, "_train_generator", None), torch.Generator)}


def _accuracy(model: torch.nn.Module, dataset, device: str, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on a whole in-memory data set, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images, labels = dataset.get_batch(torch.arange(start, min(len(dataset), start + batch_size)))
            correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
    model.train(was_training)
    return correct / len(dataset)


def train(config: TrainConfig, out_dir: str | Path, *, data_root: str | None = None, progress: bool = True,
          device: str = "cpu", eval_set=None) -> dict:
    """Train one model (or resume, or reuse a finished checkpoint); return the sidecar record of the result.

    With `eval_set` (an in-memory data set, e.g. the test split), each epoch's history also holds the model's
    accuracy on it: the training curve. Evaluating draws no random numbers, so the weights are the same either way.
    """
    from safetensors.torch import save_file

    from ellbench.data import open_dataset
    from ellbench.models.factory import build_model
    from ellbench.profile import torch_threads

    config.validate()
    train_set = open_dataset(config.dataset, "train", root=data_root, limit=config.limit)
    out = ensure_writable_dir(out_dir)
    final = checkpoint_path(out, config)
    sidecar = final.with_suffix(".json")
    settings = config.settings()
    if final.is_file() and sidecar.is_file():
        record = json.loads(sidecar.read_text())
        if record.get("train") == settings:
            record["reused"] = True
            return record

    model_kwargs = model_kwargs_for(config.model, train_set.image_size, train_set.num_classes)
    if config.patch_size is not None:
        if "patch_size" not in model_kwargs:
            raise EllbenchError(f"--patch-size: {config.model} has no patch size to set")
        if train_set.image_size % config.patch_size:
            raise EllbenchError(f"--patch-size {config.patch_size} does not divide the {train_set.image_size} px "
                                f"images of {config.dataset}")
        model_kwargs["patch_size"] = config.patch_size
    torch.manual_seed(config.seed)
    model = build_model(config.model, seed=config.seed, **model_kwargs).to(device)
    # foreach: one kernel per op over all parameters instead of a Python loop per tensor (torch's default on CPU).
    # It computes the same float32 operations in the same order, so the weights are bitwise those of the loop;
    # fused=True would not be (tests/test_cli.py checks both).
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    start_epoch = 0
    resume_order, resume_start, resume_sums = None, 0, (0.0, 0, 0)  # set when the state is from within an epoch

    state_file = final.with_suffix(".state.pt")
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state.get("train") == json.dumps(settings, sort_keys=True):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            for name, module_generator in _module_generators(model).items():
                module_generator.set_state(state["module_generators"][name])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"])
            if state.get("start"):
                resume_order, resume_start = state["order"], int(state["start"])
                resume_sums = (float(state["loss_sum"]), int(state["correct"]), int(state["seen"]))

    def save_state(epoch_done: int, order=None, start: int = 0, sums=(0.0, 0, 0)) -> None:
        """Everything a re-run needs to continue bit for bit: after an epoch (start 0) or within one."""
        with atomic_path(state_file) as tmp:
            torch.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "history": json.dumps(history), "epoch": epoch_done,
                "train": json.dumps(settings, sort_keys=True),
                "module_generators": {name: g.get_state() for name, g in _module_generators(model).items()},
                "order": order, "start": start, "loss_sum": sums[0], "correct": sums[1], "seen": sums[2],
            }, tmp)

    done_steps = start_epoch * steps_per_epoch + resume_start // config.batch_size
    with torch_threads(config.threads), ProgressBar(f"train {config.model}", config.epochs * steps_per_epoch,
                     completed=done_steps, unit="steps", enabled=progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            if resume_order is not None:  # within an interrupted epoch: its order, position and running sums
                order, first = resume_order, resume_start
                loss_sum, correct, seen = resume_sums
                resume_order = None
            else:
                order, first = torch.randperm(len(train_set), generator=generator), 0
                loss_sum, correct, seen = 0.0, 0, 0
            last_save = time.monotonic()
            for start in range(first, len(train_set), config.batch_size):
                images, labels = train_set.get_batch(order[start:start + config.batch_size])
                images = _augment(images, config.augment, generator).to(device)
                labels = labels.to(device)
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                if not torch.isfinite(loss):
                    raise EllbenchError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                bar.advance(info=f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.3f}")
                following = start + config.batch_size
                if following < len(train_set) and time.monotonic() - last_save >= STATE_EVERY_SECONDS:
                    save_state(epoch, order, following, (loss_sum, correct, seen))
                    last_save = time.monotonic()
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen})
            if eval_set is not None:
                history[-1]["test_accuracy"] = _accuracy(model, eval_set, device)
            save_state(epoch + 1)

    record = {
        "model": config.model, "model_kwargs": model_kwargs, "dataset": train_set.fingerprint,
        "train": settings, "history": history, "ellbench": __version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata={"model": config.model})
    atomic_write_text(sidecar, json.dumps(record, indent=2))
    state_file.unlink(missing_ok=True)
    record["checkpoint"] = str(final)
    return record


def record_training(store, record: dict, *, checkpoint_id: str) -> dict:
    """Store a finished training's curve (its sidecar record) as a 'train' result of its checkpoint, for reports."""
    from ellbench.runner import job_key, provenance

    settings = record["train"]
    key = job_key(model=record["model"], checkpoint=checkpoint_id, data=record["dataset"], task="train",
                  settings=settings, seed=settings["seed"])
    summary = {"history": record["history"], "parameters": record["parameters"], "epochs": settings["epochs"]}
    return store.record_result(key, summary, provenance())
