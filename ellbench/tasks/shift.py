"""The shift task: top-1 and top-5 accuracy on ImageNet-A or ImageNet-R, logits restricted to their 200 classes."""

from __future__ import annotations

from collections.abc import Callable

from ellbench.data.shift import check_shift_set, open_shift_dataset, restrict_logits
from ellbench.data.transforms import DEFAULT_TRANSFORM, EvalTransform
from ellbench.runner import Batch, JobSpec, job_key, outcome_rows, run
from ellbench.tasks.eval import classification_columns, eval_summary, transform_settings


def shift_evaluator(model, name: str) -> Callable[[Batch], list[dict]]:
    """Per-batch evaluation for ImageNet-A/R: logits restricted to the subset's 200 classes, then top-1, top-5 and
    loss over those 200 (ellbench.tasks.eval.classification_columns)."""
    import torch

    check_shift_set(name)

    @torch.no_grad()
    def evaluate(batch: Batch) -> list[dict]:
        logits = restrict_logits(model(batch.images).float(), name)  # [B, 200]
        preds, columns = classification_columns(logits, batch.labels)
        return outcome_rows(batch.indices, batch.labels, preds, **columns)

    return evaluate


def shift_spec(loaded, name: str, dataset, *, batch_size: int, seed: int = 0, workers: int | None = None) -> JobSpec:
    """The job spec of one model on an opened ImageNet-A/R folder; unreadable files skipped go into provenance."""
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task=name,
                  settings={"batch_size": batch_size, "logits": "restricted to the 200 subset classes",
                            **transform_settings(dataset)}, seed=seed, amp=loaded.amp)
    return JobSpec(key=key, dataset=dataset, evaluate=shift_evaluator(loaded.module, name), batch_size=batch_size,
                   device=loaded.device, description=f"{name} {loaded.name}", summarize=eval_summary,
                   provenance={"skipped_images": dataset.skipped}, loader_workers=workers)


def run_shift(store, loaded, name: str, root, *, batch_size: int = 64, seed: int = 0, skip_bad_images: bool = False,
              limit: int | None = None, transform: EvalTransform = DEFAULT_TRANSFORM, progress: bool = True,
              workers: int | None = None) -> dict:
    """Top-1 and top-5 accuracy of one model on an ImageNet-A/R folder read through `transform` (the model's own eval
    transform, ellbench.tasks.inputs.eval_transform), as a resumable job; returns the stored job row.

    `workers`: loader processes (None: runner.default_loader_workers). The row carries `skipped_images`: unreadable
    files left out with `skip_bad_images`.
    """
    dataset = open_shift_dataset(name, root, transform=transform, skip_bad_images=skip_bad_images, limit=limit)
    job = run(store, shift_spec(loaded, name, dataset, batch_size=batch_size, seed=seed, workers=workers),
              progress=progress)
    return {**job, "skipped_images": dataset.skipped} if job else job
