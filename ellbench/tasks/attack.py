"""The attack task: one job per suite entry (attack x eps x protocol), then trust checks over the finished jobs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ellbench import distributed
from ellbench.attacks.checks import result_record, summarize_attack, trust_checks
from ellbench.attacks.suite import AttackEntry
from ellbench.runner import Batch, JobSpec, LoaderPool, job_key, outcome_rows, provenance, run
from ellbench.tasks.eval import top5_hits, transform_settings


def attack_evaluator(model, entry: AttackEntry, *, seed: int) -> Callable[[Batch], list[dict]]:
    """Per-batch evaluation of one attack entry: one row per example.

    Rows: idx, label, pred (adversarial prediction), correct (pred == label), top5 (label among the adversarial
    top-5, ellbench.tasks.eval.top5_hits), clean_pred, clean_correct, target (the label attacked), linf and l2 (the
    perturbation's size in the protocol's space). The batch's random state
    comes from (seed, first index of the batch), so a resumed run reproduces an uninterrupted one. The model is put
    in eval mode.
    """
    from ellbench.attacks.protocol import batch_seed, check_images, make_attack, seeded_rng
    from ellbench.attacks.suite import forward_passes

    model.eval()
    device = next(model.parameters()).device
    attack = make_attack(model, entry)
    expected = forward_passes(entry)
    network = getattr(model, "model", model)  # the raw network: both protocols call it once per forward pass

    def evaluate(batch: Batch) -> list[dict]:
        check_images(batch.images)
        calls = [0]

        def count(module, args, output) -> None:
            calls[0] += 1
            batch.progress(calls[0] / (expected + 2))  # + the clean and the final forward pass

        hook = network.register_forward_hook(count) if expected else None
        try:
            with seeded_rng(device, batch_seed(seed, int(batch.indices[0]))):
                outcome = attack(batch.images, batch.labels)
        finally:
            if hook is not None:
                hook.remove()
        perturbation = (outcome.adversarial_input - outcome.clean_input).detach().flatten(1).double()  # [B, C*H*W]
        return outcome_rows(batch.indices, batch.labels, outcome.logits.argmax(1),
                            top5=top5_hits(outcome.logits.detach(), batch.labels), clean_pred=outcome.clean_pred,
                            clean_correct=(outcome.clean_pred == batch.labels).int(),
                            target=outcome.target, linf=perturbation.abs().amax(1), l2=perturbation.norm(dim=1))

    return evaluate


def attack_task_settings(entry: AttackEntry, batch_size: int, dataset=None) -> dict:
    """Job-key settings of one attack job; the batch size is part of it because random draws are made per batch, and
    the data's image transform when it has one."""
    return {**entry.settings(), "batch_size": int(batch_size), **transform_settings(dataset)}


def attack_specs(loaded, dataset, entries: list[AttackEntry], *, batch_size: int, seed: int = 0,
                 workers: int | None = None) -> list[JobSpec]:
    """The plan: one job spec per entry. `loaded` is an ellbench.models.loading.LoadedModel."""
    return [
        JobSpec(key=job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint,
                            task="attack", settings=attack_task_settings(entry, batch_size, dataset),
                            seed=seed, amp=loaded.amp),
                dataset=dataset, evaluate=attack_evaluator(loaded.module, entry, seed=seed), batch_size=batch_size,
                device=loaded.device, description=f"{entry.label} ({entry.protocol}) {loaded.name}",
                summarize=summarize_attack, loader_workers=workers)
        for entry in entries
    ]


def run_attack_suite(store, loaded, dataset, entries: list[AttackEntry], *, batch_size: int, seed: int = 0,
                     progress: bool = True, workers: int | None = None, loaders: LoaderPool | None = None) -> dict:
    """Run (or resume, or reuse) one 'attack' job per entry, then record the trust checks over their results.

    Returns {"jobs": [job rows], "checks": [check rows]}; the checks are stored as one 'attack-checks' result keyed by
    the jobs they read, so a report finds them next to the jobs. The jobs share one pool of loader workers
    (`loaders`, or one of their own).
    """
    jobs, results = [], []
    specs = attack_specs(loaded, dataset, entries, batch_size=batch_size, seed=seed, workers=workers)
    with contextlib.ExitStack() as stack:
        pool = loaders if loaders is not None else stack.enter_context(LoaderPool())
        for entry, spec in zip(entries, specs, strict=True):
            job = run(store, spec, progress=progress, loaders=pool)
            jobs.append(job)
            if job and job.get("summary"):
                results.append(result_record(entry, job["summary"]))
    checks = trust_checks(results)
    if distributed.is_writer() and jobs:
        key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint,
                      task="attack-checks", settings={"jobs": sorted(job["id"] for job in jobs)}, seed=seed)
        summary = {"checks": checks, "fail": sum(c["status"] == "fail" for c in checks),
                   "warn": sum(c["status"] == "warn" for c in checks)}
        store.record_result(key, summary, provenance(loaded.device))
    return {"jobs": jobs, "checks": checks}
