"""The long format: one row per (model, checkpoint, metric), recomputed from the per-example rows the store holds.

Every number in a report comes from here. A job's summary is only read where a job has no rows (a profile), and
every row names the job it came from with its provenance (job id, data fingerprint, settings, versions, git commit,
finish time), so any cell of any table can be traced.
"""

from __future__ import annotations

import json

from ellbench.attacks.checks import format_eps, summarize_attack, trust_checks
from ellbench.corruptions.mce import summarize_corruptions
from ellbench.errors import EllbenchError

# Order of the pivot table's column groups, left to right.
TASK_ORDER = ("clean", "attack", "corruption", "corruption-summary", "imagenet-a", "imagenet-r", "collapse",
              "profile")
OUTCOME_TASKS = ("clean", "attack", "corruption", "imagenet-a", "imagenet-r")  # paired per-example accuracy
PROFILE_METRICS = (  # summary key, column label, unit
    ("throughput_img_s", "throughput", "img/s"),
    ("latency_ms_median", "latency", "ms"),
    ("peak_memory_mib", "peak memory", "MiB"),
    ("gflops_per_image", "GFLOPs", "per image"),
    ("params", "params", "count"),
)
LONG_COLUMNS = ("model", "checkpoint", "seed", "task", "metric", "label", "table", "attack", "name", "protocol", "eps",
                "corruption", "severity", "layer", "epoch", "value", "n", "note", "job_id", "data", "data_name",
                "transform", "corruption_backend", "settings", "ellbench_version", "torch", "timm", "git_commit",
                "device", "finished_utc", "source")
TOP5_METRICS = ("top5_accuracy", "robust_top5_accuracy")  # top-5 beside top-1 where the paper gives it


def data_name(fingerprint: str) -> str:
    """A readable name for a data fingerprint: 'digits', the folder's name, 'imagenet-c' for released ImageNet-C."""
    base = str(fingerprint).split("|", 1)[0]
    parts = base.split(":")
    name = parts[1] if parts[0] == "folder" and len(parts) > 1 else parts[0]
    return name.split("/", 1)[0]


def _job_fields(job: dict) -> dict:
    """The provenance columns every long-format row carries."""
    record = job.get("provenance") or {}
    return {"model": job["model"], "checkpoint": job["checkpoint"], "seed": job["seed"], "task": job["task"],
            "job_id": job["id"], "data": job["data"], "data_name": data_name(job["data"]),
            "transform": job["settings"].get("transform"), "corruption_backend": corruption_backend_label(job),
            "settings": json.dumps(job["settings"], sort_keys=True),
            "ellbench_version": job["version"],
            "torch": record.get("torch") or record.get("torch_version"), "timm": record.get("timm"),
            "git_commit": record.get("git_commit"), "device": record.get("device"),
            "finished_utc": job["finished_utc"]}


def amp_of(job: dict) -> str:
    """The autocast a job's model ran under: 'off' (float32), 'bf16' or 'fp16' (job keys carry it when on)."""
    return (job.get("settings") or {}).get("amp") or "off"


CORRUPTION_TASKS = ("corruption", "corruption-summary")


def corruption_backend_of(job: dict) -> str | None:
    """Who corrupted a corruption job's images: 'imagecorruptions', 'torch' or 'released' (ImageNet-C files); None
    for other tasks. Keys of imagecorruptions jobs carry no backend (they kept their form from before torch's)."""
    settings = job.get("settings") or {}
    if job["task"] not in CORRUPTION_TASKS:
        return None
    if settings.get("source") == "imagenet-c":
        return "released"
    return settings.get("corruption_backend") or "imagecorruptions"


def corruption_backend_label(job: dict) -> str | None:
    """The backend with its version, as reports show it: 'imagecorruptions 1.1.2', 'torch torch-1', 'released'."""
    backend = corruption_backend_of(job)
    if backend == "imagecorruptions":
        marker = next((part for part in str(job["data"]).split(":") if part.startswith("ic=")), None)
        return f"imagecorruptions {marker[3:]}" if marker else backend
    if backend == "torch":
        return f"torch {job['settings'].get('corruption_backend_version', '')}".strip()
    return backend


def _row(job: dict, metric: str, label: str, value, n, *, table: str = "main", source: str = "outcomes",
         **detail) -> dict:
    if job["task"] != "profile" and amp_of(job) != "off":  # profiles name their AMP with the device
        label = f"{label} [{amp_of(job)} autocast]"
    if corruption_backend_of(job) == "torch":  # not comparable cell for cell with imagecorruptions' numbers
        label = f"{label} [torch corruptions]"
    return {**_job_fields(job), "metric": metric, "label": label, "table": table, "value": value, "n": n,
            "source": source, **detail}


def _accuracy(outcomes) -> tuple[float, int]:
    n = int(len(outcomes))
    return (float(outcomes["correct"].astype(float).mean()) if n else float("nan")), n


def _top5(outcomes) -> tuple[float, int] | None:
    """Top-5 accuracy of stored rows (label among the top-5 classes), or None for rows stored without it."""
    if "top5" not in outcomes or not len(outcomes) or outcomes["top5"].isna().any():
        return None
    return float(outcomes["top5"].astype(float).mean()), int(len(outcomes))


def _clean_rows(job: dict, outcomes) -> list[dict]:
    """Top-1, then top-5 beside it (the paper's clean columns)."""
    value, n = _accuracy(outcomes)
    rows = [_row(job, "accuracy", "clean", value, n)]
    top5 = _top5(outcomes)
    if top5:
        rows.append(_row(job, "top5_accuracy", "clean top-5", *top5))
    return rows


def _shift_rows(job: dict, outcomes) -> list[dict]:
    value, n = _accuracy(outcomes)
    return [_row(job, "accuracy", job["task"], value, n)]


def _attack_rows(job: dict, outcomes) -> list[dict]:
    """Robust accuracy (adversarial prediction == true label over all examples, the paper's measure)."""
    settings = job["settings"]
    value, n = _accuracy(outcomes)
    label = f"{settings['name']} {format_eps(settings.get('eps'))} ({settings['protocol']})"
    detail = dict(attack=settings["attack"], name=settings["name"], protocol=settings["protocol"],
                  eps=settings.get("eps"))
    rows = [_row(job, "robust_accuracy", label, value, n, **detail)]
    top5 = _top5(outcomes)
    if top5:  # the paper's Table 2 gives top-1 and top-5 under each attack
        rows.append(_row(job, "robust_top5_accuracy", f"{label} top-5", *top5, **detail))
    return rows


def _corruption_rows(job: dict, outcomes) -> list[dict]:
    settings = job["settings"]
    value, n = _accuracy(outcomes)
    corruption, severity = settings["corruption"], int(settings["severity"])
    return [_row(job, "accuracy", f"{corruption} s{severity}", value, n, table="corruption", corruption=corruption,
                 severity=severity)]


def _collapse_rows(job: dict, outcomes) -> list[dict]:
    """Per-layer collapse (mean over examples of the stored per-example lists) and its mean over layers."""
    import numpy as np

    per_example = np.array(list(outcomes["collapse"]), dtype=float)  # [examples, layers]
    per_layer = per_example.mean(axis=0)
    n = int(per_example.shape[0])
    names = job["settings"].get("layers") or [str(i) for i in range(len(per_layer))]
    rows = [_row(job, "collapse", f"collapse layer {i}", float(v), n, table="collapse", layer=i,
                 note=names[i] if i < len(names) else None) for i, v in enumerate(per_layer)]
    return [*rows, _row(job, "collapse_mean", "collapse mean", float(per_layer.mean()), n)]


def _profile_rows(job: dict) -> list[dict]:
    """Efficiency figures from a profile result's summary (profiles have no per-example rows)."""
    summary = job.get("summary") or {}
    where = summary.get("device") or (job.get("provenance") or {}).get("device") or "?"
    if summary.get("amp") not in (None, "off"):
        where += f", {summary['amp']}"
    rows = []
    for key, name, unit in PROFILE_METRICS:
        value = summary.get(key)
        if value is None and key == "gflops_per_image" and summary.get("flops_per_image") is not None:
            value = summary["flops_per_image"] / 1e9
        if value is None:
            continue
        label = f"{name} {unit}" if key in ("params", "gflops_per_image") else f"{name} {unit} ({where})"
        rows.append(_row(job, key, label, float(value), None, source="summary",
                         note=f"batch {summary.get('batch_size')}" if key == "throughput_img_s" else None))
    return rows


TRAINING_METRICS = {"train_accuracy": "train accuracy", "test_accuracy": "test accuracy"}


def _train_rows(job: dict) -> list[dict]:
    """The training curve of a checkpoint (a 'train' result: its sidecar's per-epoch history), one row per epoch and
    metric: accuracy on the training batches seen that epoch and, where training had a test set, on it after the
    epoch."""
    rows = []
    for entry in (job.get("summary") or {}).get("history", []):
        for metric, name in TRAINING_METRICS.items():
            if entry.get(metric) is not None:
                rows.append(_row(job, metric, f"{name} epoch {entry['epoch']}", float(entry[metric]), None,
                                 table="training", source="summary", epoch=int(entry["epoch"])))
    return rows


OUTCOME_ROWS = {"clean": _clean_rows, "attack": _attack_rows, "corruption": _corruption_rows,
                 "imagenet-a": _shift_rows, "imagenet-r": _shift_rows, "collapse": _collapse_rows}


def done_jobs(store, models=None) -> list[dict]:
    """Finished jobs in the order they finished (Store.done_jobs), optionally only those of the given model names.

    Unknown model names are an error.
    """
    jobs = store.done_jobs()
    if models:
        known = {job["model"] for job in jobs}
        missing = [m for m in models if m not in known]
        if missing:
            raise EllbenchError(f"no finished results for model(s) {', '.join(missing)} in {store.path}; "
                                f"stored: {', '.join(sorted(known)) or 'none'}")
        jobs = [job for job in jobs if job["model"] in set(models)]
    return jobs


def long_results(store, *, models=None, jobs=None):
    """One row per (model, checkpoint, metric) with provenance; values recomputed from per-example rows.

    Returns (frame, notes): `notes` lists superseded duplicate jobs (an older run of the same cell; the newest wins).
    """
    import pandas as pd

    jobs = done_jobs(store, models) if jobs is None else jobs
    rows, accuracy_by_job = [], {}
    for job in jobs:
        if job["task"] in OUTCOME_ROWS:
            outcomes = store.outcomes(job["id"])
            if len(outcomes):
                rows += OUTCOME_ROWS[job["task"]](job, outcomes)
                accuracy_by_job[job["id"]] = _accuracy(outcomes)
        elif job["task"] == "profile":
            rows += _profile_rows(job)
        elif job["task"] == "train":
            rows += _train_rows(job)
    rows += _corruption_aggregate_rows(jobs, accuracy_by_job)
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS)) if rows else pd.DataFrame(columns=list(LONG_COLUMNS))
    frame = _label_data_sets(frame.astype({"n": "Int64", "severity": "Int64", "layer": "Int64", "epoch": "Int64"}))
    return _newest_per_cell(frame)


def _label_data_sets(frame):
    """Add ' @ <data>' to labels of tasks that the store holds on more than one data set.

    Data sets are told apart by their fingerprint (before any corruption suffix), so two subsets of one set
    (e.g. 'digits' with different limits) are two data sets; their names then carry the fingerprint's hash.
    """
    if frame.empty:
        return frame
    tasks = frame["task"].replace({"corruption-summary": "corruption"})
    keys = frame["data"].map(_data_key)
    for task in set(tasks) - {"profile"}:
        rows = tasks == task
        distinct = sorted(set(keys[rows]))
        if len(distinct) < 2:
            continue
        names = {key: data_name(key) for key in distinct}
        if len(set(names.values())) < len(distinct):
            names = {key: f"{data_name(key)}:{key.rsplit(':', 1)[-1][:8]}" for key in distinct}
        frame.loc[rows, "label"] = frame.loc[rows, "label"] + " @ " + keys[rows].map(names)
    return frame


def _data_key(fingerprint: str) -> str:
    """The data set a fingerprint belongs to: its clean base; every released ImageNet-C folder is one set."""
    base = str(fingerprint).split("|", 1)[0]
    return "imagenet-c" if data_name(base) == "imagenet-c" else base


def _newest_per_cell(frame):
    """Keep the most recently finished job per (model, checkpoint, label); report the others."""
    if frame.empty:
        return frame.reset_index(drop=True), []
    ordered = frame.sort_values("finished_utc", kind="stable")
    keep = ~ordered.duplicated(["model", "checkpoint", "label"], keep="last")
    dropped = ordered[~keep]
    notes = [f"{r.model} {r.checkpoint} {r.label}: job {r.job_id[:12]} superseded by a newer run"
             for r in dropped.itertuples()]
    kept = ordered[keep]
    order = {task: i for i, task in enumerate(TASK_ORDER)}
    kept = kept.assign(_task_order=kept["task"].map(order).fillna(len(order)))
    kept = kept.sort_values(["_task_order", "model", "checkpoint"], kind="stable").drop(columns="_task_order")
    return kept.reset_index(drop=True), notes


def _newest_by(jobs: list[dict], key) -> dict:
    """Jobs indexed by key(job), the most recently finished one winning."""
    chosen = {}
    for job in sorted(jobs, key=lambda j: j["finished_utc"] or ""):
        chosen[key(job)] = job
    return chosen


def _corruption_base(job: dict) -> str:
    """The clean data a corruption job was made from (released ImageNet-C folders have no clean twin)."""
    return "imagenet-c" if job["settings"].get("source") == "imagenet-c" else job["data"].split("|", 1)[0]


def _suite_members(summary_job: dict, corruption_jobs: list[dict]) -> list[dict]:
    """The corruption jobs one 'corruption-summary' result was computed from."""
    settings = summary_job["settings"]
    entries = {(c, int(s)) for c, s in settings.get("entries", [])}
    clean = settings.get("clean")
    candidates = [
        job for job in corruption_jobs
        if (job["model"], job["checkpoint"], job["seed"], amp_of(job)) == (
            summary_job["model"], summary_job["checkpoint"], summary_job["seed"], amp_of(summary_job))
        and job["settings"].get("source") == settings.get("source")
        and corruption_backend_of(job) == corruption_backend_of(summary_job)
        and (job["settings"]["corruption"], int(job["settings"]["severity"])) in entries
        and (settings.get("source") == "imagenet-c" or clean is None or _corruption_base(job) == clean)
    ]
    return list(_newest_by(candidates, _corruption_entry).values())


def _corruption_entry(job: dict) -> tuple[str, int]:
    return job["settings"]["corruption"], int(job["settings"]["severity"])


def _group_row(members: list[dict], metric: str, label: str, value, n, **detail) -> dict:
    """A row computed from several jobs: provenance of the newest, all job ids listed."""
    newest = max(members, key=lambda j: j["finished_utc"] or "")
    row = _row(newest, metric, label, value, n, **detail)
    row.update(job_id=";".join(sorted(j["id"] for j in members)), data=_corruption_base(newest),
               data_name=data_name(_corruption_base(newest)), task="corruption-summary")
    return row


def _corruption_aggregate_rows(jobs: list[dict], accuracy_by_job: dict) -> list[dict]:
    """mCE and per-corruption CE (ImageNet-1k data), else accuracy by corruption, from the per-(c, s) jobs' rows."""
    corruption_jobs = [j for j in jobs if j["task"] == "corruption" and j["id"] in accuracy_by_job]
    summaries = [j for j in jobs if j["task"] == "corruption-summary" and (j.get("summary") or {}).get("mce")
                 is not None]
    rows, used = [], set()
    for summary_job in summaries:
        members = _suite_members(summary_job, corruption_jobs)
        if members:
            rows += _mce_rows(summary_job, members, jobs, accuracy_by_job)
            used |= {j["id"] for j in members}
    groups: dict = {}
    for job in corruption_jobs:
        if job["id"] not in used:
            key = (job["model"], job["checkpoint"], job["seed"], _corruption_base(job), job["settings"].get("source"),
                   amp_of(job), corruption_backend_of(job))
            groups.setdefault(key, []).append(job)
    for members in groups.values():
        rows += _accuracy_by_corruption_rows(members, accuracy_by_job)
    return rows


def _accuracy_by_corruption_rows(members: list[dict], accuracy_by_job: dict) -> list[dict]:
    """Per corruption, the mean accuracy over its severities; and the mean over every (corruption, severity)."""
    newest = _newest_by(members, _corruption_entry)
    by_corruption: dict = {}
    for (corruption, _), job in sorted(newest.items()):
        by_corruption.setdefault(corruption, []).append(job)
    rows = []
    for corruption, group in by_corruption.items():
        values = [accuracy_by_job[j["id"]][0] for j in group]
        severities = sorted(int(j["settings"]["severity"]) for j in group)
        rows.append(_group_row(group, "corruption_accuracy", f"acc {corruption}", sum(values) / len(values),
                               sum(accuracy_by_job[j["id"]][1] for j in group), corruption=corruption,
                               note=f"mean over severities {severities}"))
    values = [accuracy_by_job[j["id"]][0] for j in newest.values()]
    rows.append(_group_row(list(newest.values()), "mean_corruption_accuracy", "acc corruptions mean",
                           sum(values) / len(values), sum(accuracy_by_job[j["id"]][1] for j in newest.values()),
                           note=f"mean over {len(values)} (corruption, severity) pairs"))
    return rows


def _mce_rows(summary_job: dict, members: list[dict], jobs: list[dict], accuracy_by_job: dict) -> list[dict]:
    """AlexNet-normalised CE per corruption and mCE (Hendrycks & Dietterich) from recomputed errors."""
    settings = summary_job["settings"]
    errors = {(j["settings"]["corruption"], int(j["settings"]["severity"])): 1.0 - accuracy_by_job[j["id"]][0]
              for j in members}
    clean_jobs = [j for j in jobs if j["task"] == "clean" and j["data"] == settings.get("clean")
                  and (j["model"], j["checkpoint"], amp_of(j)) == (summary_job["model"], summary_job["checkpoint"],
                                                                    amp_of(summary_job))
                  and j["id"] in accuracy_by_job]
    clean_error = 1.0 - accuracy_by_job[clean_jobs[-1]["id"]][0] if clean_jobs else None
    result = summarize_corruptions(errors, clean_error=clean_error, baseline=settings.get("baseline") or "hendrycks")
    n = sum(accuracy_by_job[j["id"]][1] for j in members)
    complete = result["mce_complete"]
    note = "all 15 corruptions x 5 severities" if complete else "partial: not the published mCE setting"
    # a partial mCE (fewer corruptions or severities) is not the number papers report: its label says so
    suffix = "" if complete else f" ({len(result['mce_corruptions'])} of 15 corruptions, partial)"
    rows = [_group_row(members, "mce", "mCE" + suffix, result["mce"], n, note=note)]
    if result.get("relative_mce") is not None:
        rows.append(_group_row(members, "relative_mce", "relative mCE" + suffix, result["relative_mce"], n,
                               note=f"{note}; {result['relative_mce_note']}"))
    rows += [_group_row(members, "ce", f"CE {c}", value, None, corruption=c) for c, value in result["ce"].items()]
    return rows


def attack_checks_table(store, jobs: list[dict]):
    """One row per trust check of each stored 'attack-checks' result, recomputed from its attack jobs' rows.

    `status` is the recomputed verdict (ok / warn / fail), `stored_status` the one recorded when the suite ran.
    """
    import pandas as pd

    rows = []
    for checks_job in [j for j in jobs if j["task"] == "attack-checks"]:
        results = []
        for job_id in checks_job["settings"].get("jobs", []):
            job = store.get_job(job_id)
            outcomes = store.outcomes(job_id) if job else None
            if job is None or job["status"] != "done" or not len(outcomes):
                continue
            settings = job["settings"]
            summary = summarize_attack(outcomes)
            results.append({"suite": settings.get("suite"), "name": settings["name"], "attack": settings["attack"],
                            "protocol": settings["protocol"],
                            "eps": settings.get("eps"), "clean_accuracy": summary["clean_accuracy"],
                            "robust_accuracy": summary["robust_accuracy"], "max_linf": summary["max_linf"],
                            "n": summary["n"]})
        stored = {(c["check"], c.get("suite"), c["name"], c["protocol"], c["eps"]): c["status"]
                  for c in (checks_job.get("summary") or {}).get("checks", [])}
        for check in trust_checks(results):
            where = (check["check"], check.get("suite"), check["name"], check["protocol"], check["eps"])
            rows.append({"model": checks_job["model"], "checkpoint": checks_job["checkpoint"],
                         "data_name": data_name(checks_job["data"]), "check": check["check"],
                         "attack": f"{check['name']} {format_eps(check['eps'])} ({check['protocol']})",
                         "status": check["status"], "stored_status": stored.get(where), "detail": check["detail"],
                         "job_id": checks_job["id"]})
    return pd.DataFrame(rows, columns=["model", "checkpoint", "data_name", "check", "attack", "status",
                                       "stored_status", "detail", "job_id"])
