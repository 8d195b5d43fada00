"""The clean task: top-1 and top-5 accuracy of one model on one data set, one row per example (timm validate.py's job).

Top-k follows timm's `accuracy(output, target, topk=(1, 5))` (timm/utils/metrics.py, used by validate.py in
huggingface/pytorch-image-models): the k classes with the largest logits, `output.topk(k)`, with k capped at the
number of classes, so with fewer than 5 classes top-5 counts every example as a hit. The prediction is the first of
them. The loss is the per-example cross-entropy of the logits (validate.py averages the same CrossEntropyLoss).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ellbench.errors import EllbenchError
from ellbench.runner import Batch, JobSpec, accuracy_summary, job_key, outcome_rows, run

TOP_K = 5


def top_k(num_classes: int) -> int:
    """The k of 'top-5' for a model with `num_classes` outputs: min(5, classes), as timm's accuracy() caps it."""
    return min(TOP_K, num_classes)


def top_classes(logits):
    """The top-5 (or all, when fewer) classes of each example, largest logit first: [B, classes] -> [B, k]."""
    return logits.topk(top_k(logits.shape[1]), dim=1).indices


def top5_hits(logits, labels):
    """1 where the label is among the example's top-5 classes, else 0: [B] int."""
    return (top_classes(logits) == labels[:, None]).any(dim=1).int()


def classification_columns(logits, labels) -> tuple:
    """(predictions [B], {"top5": [B] 0/1, "loss": [B]}) of float logits [B, classes] against labels [B]."""
    import torch.nn.functional as F

    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise EllbenchError(f"the data has labels up to {int(labels.max())} but the model has {logits.shape[1]} "
                            "outputs; evaluate a model made for this data set's classes")
    top = top_classes(logits)  # [B, k], largest first
    hits = (top == labels[:, None]).any(dim=1).int()
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return top[:, 0], {"top5": hits, "loss": loss.double().cpu()}


def eval_summary(frame) -> dict:
    """Summary of a clean-evaluation job's rows: n, top-1 accuracy, top-5 accuracy and mean loss."""
    summary = accuracy_summary(frame)
    if "top5" in frame and len(frame):
        summary["top5_accuracy"] = float(frame["top5"].astype(float).mean())
    if "loss" in frame and len(frame):
        summary["loss"] = float(frame["loss"].astype(float).mean())
    return summary


def clean_evaluator(model, logits_sink: dict | None = None) -> Callable[[Batch], list[dict]]:
    """Per-batch evaluation: each example's top-1 prediction, whether its label is in the top 5, and its loss.

    When `logits_sink` is a dict, each evaluated batch's float32 logits [B, classes] (CPU) are put there under the
    batch number.
    """
    import torch

    @torch.no_grad()
    def evaluate(batch: Batch) -> list[dict]:
        logits = model(batch.images).float()  # [B, classes]
        if logits_sink is not None:
            logits_sink[batch.number] = logits.cpu()
        preds, columns = classification_columns(logits, batch.labels)
        return outcome_rows(batch.indices, batch.labels, preds, **columns)

    return evaluate


def transform_settings(dataset) -> dict:
    """{"transform": its one-line description} for a data set read through an image transform, else {}."""
    description = getattr(dataset, "transform_description", None)
    return {"transform": description} if description else {}


def clean_spec(loaded, dataset, *, batch_size: int, seed: int = 0, task: str = "clean", settings: dict | None = None,
               description: str | None = None, provenance: dict | None = None,
               workers: int | None = None, logits_sink: dict | None = None) -> JobSpec:
    """The job spec of a clean evaluation; `loaded` is an ellbench.models.loading.LoadedModel.

    Other tasks whose jobs are clean evaluations of other data (a corruption, ImageNet-A/R) name their own task,
    settings and provenance. The data's transform is part of the settings. `workers`: loader processes (None:
    runner.default_loader_workers).
    """
    settings = dict(settings) if settings is not None else {"batch_size": batch_size}
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task=task,
                  settings={**settings, **transform_settings(dataset)}, seed=seed, amp=loaded.amp)
    return JobSpec(key=key, dataset=dataset, evaluate=clean_evaluator(loaded.module, logits_sink),
                   batch_size=batch_size, device=loaded.device, description=description or f"{task} {loaded.name}",
                   summarize=eval_summary, provenance=dict(provenance or {}), loader_workers=workers)


def run_clean(store, loaded, dataset, *, batch_size: int, seed: int = 0, progress: bool = True,
              workers: int | None = None, loaders=None) -> dict:
    """Clean top-1 and top-5 accuracy of one model on one data set, stored as a 'clean' job; returns the job row.

    `loaders` (a runner.LoaderPool) keeps loader workers alive for later jobs on the same data.
    """
    return run(store, clean_spec(loaded, dataset, batch_size=batch_size, seed=seed, workers=workers),
               progress=progress, loaders=loaders)


def run_eval(store, loaded, dataset, *, batch_size: int, seed: int = 0, save_logits: str | Path | None = None,
             progress: bool = True, workers: int | None = None, loaders=None) -> dict:
    """`ellbench eval`: the clean job (run, resumed or reused) and, with `save_logits`, its logits as a .npy file.

    The file holds float32 logits [N, classes] in data-set order. Batches evaluated before (a resumed or reused job)
    are evaluated again for their logits. Returns the job row, with "logits" (the path written) and
    "logits_disagree" (how many recomputed predictions differ from the stored ones: 0 unless the evaluation is not
    deterministic, e.g. on a GPU) when asked.
    """
    from ellbench import distributed

    if save_logits is not None and distributed.world_size() > 1:
        raise EllbenchError("--save-logits runs in one process; run it without torchrun")
    sink: dict | None = {} if save_logits is not None else None
    spec = clean_spec(loaded, dataset, batch_size=batch_size, seed=seed, logits_sink=sink, workers=workers)
    job = run(store, spec, progress=progress, loaders=loaders)
    if save_logits is not None:
        path, disagree = _write_logits(store, loaded, job, spec, sink, Path(save_logits))
        job.update(logits=str(path), logits_disagree=disagree)
    return job


def _write_logits(store, loaded, job: dict, spec: JobSpec, sink: dict, path: Path) -> tuple[Path, int]:
    """Fill in the logits of batches this run did not evaluate, write the file; also count how many of their
    predictions differ from the stored rows."""
    import numpy as np
    import torch

    from ellbench.io import atomic_path
    from ellbench.runner import load_batches

    n_batches = (len(spec.dataset) + spec.batch_size - 1) // spec.batch_size
    missing = [b for b in range(n_batches) if b not in sink]
    evaluate = clean_evaluator(loaded.module, sink)
    for batch in load_batches(spec.dataset, missing, spec.batch_size, device=spec.device):
        evaluate(batch)
    logits = torch.cat([sink[b] for b in range(n_batches)])  # [N, classes]
    stored = store.outcomes(job["id"])
    recomputed = top_classes(logits)[:, 0].numpy()
    if len(stored) != len(logits):
        raise EllbenchError(f"job {job['id'][:12]} stores {len(stored)} rows for {len(logits)} examples")
    disagree = int((stored["pred"].to_numpy() != recomputed).sum())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, logits.numpy().astype(np.float32, copy=False))
    return path, disagree
