"""The clean task: top-1 accuracy of one model on one data set, one row per example (timm validate.py's job)."""

from __future__ import annotations

from collections.abc import Callable

from ellbench.runner import Batch, JobSpec, job_key, outcome_rows, run


def clean_evaluator(model) -> Callable[[Batch], list[dict]]:
    """Per-batch evaluation: the model's top-1 prediction for each example."""
    import torch

    @torch.no_grad()
    def evaluate(batch: Batch) -> list[dict]:
        logits = model(batch.images).float()  # [B, classes]
        return outcome_rows(batch.indices, batch.labels, logits.argmax(1))

    return evaluate


def clean_spec(loaded, dataset, *, batch_size: int, seed: int = 0, task: str = "clean", settings: dict | None = None,
               description: str | None = None, provenance: dict | None = None,
               workers: int | None = None) -> JobSpec:
    """The job spec of a clean evaluation; `loaded` is an ellbench.models.loading.LoadedModel.

    Other tasks whose jobs are clean evaluations of other data (a corruption, ImageNet-A/R) name their own task,
    settings and provenance. `workers`: loader processes (None: runner.default_loader_workers).
    """
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task=task,
                  settings=settings if settings is not None else {"batch_size": batch_size}, seed=seed,
                  amp=loaded.amp)
    return JobSpec(key=key, dataset=dataset, evaluate=clean_evaluator(loaded.module), batch_size=batch_size,
                   device=loaded.device, description=description or f"{task} {loaded.name}",
                   provenance=dict(provenance or {}), loader_workers=workers)


def run_clean(store, loaded, dataset, *, batch_size: int, seed: int = 0, progress: bool = True,
              workers: int | None = None, loaders=None) -> dict:
    """Clean top-1 accuracy of one model on one data set, stored as a 'clean' job; returns the job row.

    `loaders` (a runner.LoaderPool) keeps loader workers alive for later jobs on the same data.
    """
    return run(store, clean_spec(loaded, dataset, batch_size=batch_size, seed=seed, workers=workers),
               progress=progress, loaders=loaders)
