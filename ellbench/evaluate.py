"""Shared evaluation pieces: resolve a model for evaluation, and the clean-accuracy job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ellbench.errors import EllbenchError


@dataclasses.dataclass
class LoadedModel:
    """A model ready for evaluation plus the identity fields its job keys use."""

    name: str
    module: object  # NormalizedModel: takes [0, 1] images
    checkpoint_id: str  # "sha256:<hex>" or "random-init:seed=<n>"
    device: str


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EllbenchError(f"--device {device} asked for, but no CUDA GPU is available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise EllbenchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return device


def load_for_eval(name: str, checkpoint: str | None, *, dataset=None, seed: int = 0, device: str = "cpu",
                  model_kwargs: dict | None = None) -> LoadedModel:
    """Build `name` (with a checkpoint's weights, or random init from `seed`) sized for `dataset`, in eval mode."""
    from ellbench.distributed import local_device
    from ellbench.models.factory import build_model, checkpoint_sha256
    from ellbench.train import model_kwargs_for

    device = local_device(resolve_device(device))
    kwargs = dict(model_kwargs or {})
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise EllbenchError(f"checkpoint {checkpoint} not found")
        sidecar = _sidecar(path)
        if sidecar and not model_kwargs:
            kwargs = dict(sidecar.get("model_kwargs", {}))
    elif dataset is not None and dataset.image_size is not None and dataset.image_size < 64 and not kwargs:
        kwargs = model_kwargs_for(name, dataset.image_size, dataset.num_classes)
    module = build_model(name, checkpoint=checkpoint, seed=seed, **kwargs)
    module.eval().to(device)
    checkpoint_id = f"sha256:{checkpoint_sha256(checkpoint)}" if checkpoint else f"random-init:seed={seed}"
    return LoadedModel(name=name, module=module, checkpoint_id=checkpoint_id, device=device)


def _sidecar(path: Path) -> dict | None:
    import json

    candidate = path.with_suffix(".json")
    if not candidate.is_file():
        return None
    try:
        return json.loads(candidate.read_text())
    except (OSError, ValueError) as exc:
        raise EllbenchError(f"checkpoint sidecar {candidate} is unreadable: {exc}") from exc


def clean_evaluator(model, device: str):
    """evaluate_batch for clean top-1 accuracy (with the top logit margin as an extra)."""
    import torch

    @torch.no_grad()
    def evaluate_batch(indices, images, labels):
        logits = model(images.to(device)).float().cpu()
        preds = logits.argmax(1)
        return [
            {"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y)}
            for i, y, p in zip(indices.tolist(), labels.tolist(), preds.tolist(), strict=True)
        ]

    return evaluate_batch


def run_clean(store, loaded: LoadedModel, dataset, *, batch_size: int, seed: int = 0, progress: bool = True) -> dict:
    """Clean top-1 accuracy of one model on one data set, stored as a 'clean' job."""
    from ellbench.runner import job_key, run_job

    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task="clean",
                  settings={"batch_size": batch_size}, seed=seed)
    return run_job(store, key, dataset, clean_evaluator(loaded.module, loaded.device), batch_size=batch_size,
                   description=f"clean {loaded.name}", progress=progress, device=loaded.device)


def run_profile(store, name: str, *, checkpoint: str | None = None, seed: int = 0, **settings) -> dict:
    """Profile one model (ellbench.profile.profile_model) and store it as a 'profile' result; returns the result.

    Timings are measurements of a moment, so a profile is measured anew on every call: the stored job is keyed by
    the settings and the machine, and a repeat with the same key replaces the earlier figures.
    """
    from ellbench.models.factory import checkpoint_sha256
    from ellbench.profile import profile_model
    from ellbench.runner import job_key, provenance

    result = profile_model(name, checkpoint=checkpoint, seed=seed, **settings)
    checkpoint_id = f"sha256:{checkpoint_sha256(checkpoint)}" if checkpoint else f"random-init:seed={seed}"
    keyed = {k: result.get(k) for k in ("batch_size", "img_size", "device", "device_name", "amp", "compile",
                                        "threads", "num_classes", "fused_attention")}
    key = job_key(model=name, checkpoint=checkpoint_id, data=f"synthetic:{result.get('img_size')}px", task="profile",
                  settings=keyed, seed=seed)
    store.replace_result(key, result, provenance(result.get("device", "cpu")))
    return result
