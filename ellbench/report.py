"""Tables (CSV, Markdown) and plots from the store, written atomically.

Every number in a report is recomputed from the per-example rows the store holds (a job's summary is only read
where a job has no rows, e.g. a profile), and every cell of the pivot tables can be traced to the jobs it came
from through results_long.csv: one row per (model, checkpoint, metric) with the job id, data fingerprint,
settings, versions, git commit and finish time. Several checkpoints of one model name (e.g. trained with seeds
0, 1, 2) are summarised as mean, sample standard deviation and count.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ellbench.errors import EllbenchError

FORMATS = ("md", "csv", "png")
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
# The reference logs' attack protocol (reports/reference/README.md): attack settings that must agree.
REFERENCE_ATTACK_SETTINGS = {
    "PGD": {"steps": 20, "alpha_per_eps": 0.15},
    "FGSM": {},
    "SPSA": {"nb_iter": 40, "lr": 0.01, "delta": 0.01, "nb_sample": 128},
}
BUILTIN_DATA = ("digits", "fashion-mnist")
SMALL_IMAGE_NOTE = ("Small-image models (micro, built-in 8-32 px data sets) never match the reference tables, which "
                    "are ImageNet-1k numbers at 224 px")
LONG_COLUMNS = ("model", "checkpoint", "seed", "task", "metric", "label", "table", "attack", "name", "protocol", "eps",
                "corruption", "severity", "layer", "value", "n", "note", "job_id", "data", "data_name", "settings",
                "ellbench_version", "torch", "timm", "git_commit", "device", "finished_utc", "source")


# ---------------------------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary sibling, then an atomic rename."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Bytes version of atomic_write (PNG files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def format_cell(value, floatfmt: str = ".4f") -> str:
    """Table text of one value: floats formatted, missing values (None, NaN, pandas' NA) empty."""
    if isinstance(value, float):
        return "" if value != value else format(value, floatfmt)
    return "" if value is None or type(value).__name__ == "NAType" else str(value)


def markdown_table(frame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (pandas' to_markdown needs an extra package)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(format_cell(v, floatfmt).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_summary(out_dir: Path, rows: list[dict], *, title: str, print_table: bool = True) -> None:
    """summary.csv and summary.md for the demo: one row per model."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write(Path(out_dir) / "summary.csv", frame.to_csv(index=False))
    atomic_write(Path(out_dir) / "summary.md", f"# {title}\n\n{markdown_table(frame)}")
    if print_table:
        from rich.console import Console
        from rich.table import Table

        table = Table(*frame.columns, title=title)
        for record in frame.itertuples(index=False):
            table.add_row(*[format_cell(v) for v in record])
        Console().print(table)


# ---------------------------------------------------------------------------------------------------------------
# Long format: one row per (model, checkpoint, metric), recomputed from the stored per-example rows


def data_name(fingerprint: str) -> str:
    """A readable name for a data fingerprint: 'digits', the folder's name, 'imagenet-c' for released ImageNet-C."""
    base = str(fingerprint).split("|", 1)[0]
    parts = base.split(":")
    name = parts[1] if parts[0] == "folder" and len(parts) > 1 else parts[0]
    return name.split("/", 1)[0]


def format_eps(eps) -> str:
    """'4/255' for whole 255ths, as ellbench.attacks writes budgets (imported on first use: it loads torchattacks)."""
    from ellbench.attacks import format_eps as attack_eps_text

    return attack_eps_text(eps)


def _job_fields(job: dict) -> dict:
    """The provenance columns every long-format row carries."""
    record = job.get("provenance") or {}
    return {"model": job["model"], "checkpoint": job["checkpoint"], "seed": job["seed"], "task": job["task"],
            "job_id": job["id"], "data": job["data"], "data_name": data_name(job["data"]),
            "settings": json.dumps(job["settings"], sort_keys=True), "ellbench_version": job["version"],
            "torch": record.get("torch") or record.get("torch_version"), "timm": record.get("timm"),
            "git_commit": record.get("git_commit"), "device": record.get("device"),
            "finished_utc": job["finished_utc"]}


def _row(job: dict, metric: str, label: str, value, n, *, table: str = "main", source: str = "outcomes",
         **detail) -> dict:
    return {**_job_fields(job), "metric": metric, "label": label, "table": table, "value": value, "n": n,
            "source": source, **detail}


def _accuracy(outcomes) -> tuple[float, int]:
    n = int(len(outcomes))
    return (float(outcomes["correct"].astype(float).mean()) if n else float("nan")), n


def _clean_rows(job: dict, outcomes) -> list[dict]:
    value, n = _accuracy(outcomes)
    return [_row(job, "accuracy", "clean", value, n)]


def _shift_rows(job: dict, outcomes) -> list[dict]:
    value, n = _accuracy(outcomes)
    return [_row(job, "accuracy", job["task"], value, n)]


def _attack_rows(job: dict, outcomes) -> list[dict]:
    """Robust accuracy (adversarial prediction == true label over all examples, the paper's measure)."""
    settings = job["settings"]
    value, n = _accuracy(outcomes)
    label = f"{settings['name']} {format_eps(settings.get('eps'))} ({settings['protocol']})"
    return [_row(job, "robust_accuracy", label, value, n, attack=settings["attack"], name=settings["name"],
                 protocol=settings["protocol"], eps=settings.get("eps"))]


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


_OUTCOME_ROWS = {"clean": _clean_rows, "attack": _attack_rows, "corruption": _corruption_rows,
                 "imagenet-a": _shift_rows, "imagenet-r": _shift_rows, "collapse": _collapse_rows}


def done_jobs(store, models=None) -> list[dict]:
    """Finished jobs in the order they finished, optionally only those of the given model names.

    Jobs finished within the same second keep the order they were created in (SQLite's rowid), so 'the newest run
    of a cell' is well defined. Unknown model names are an error.
    """
    created = dict(store.conn.execute("SELECT id, rowid FROM jobs"))
    jobs = sorted(store.jobs(status="done"), key=lambda job: (job["finished_utc"] or "", created[job["id"]]))
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
        if job["task"] in _OUTCOME_ROWS:
            outcomes = store.outcomes(job["id"])
            if len(outcomes):
                rows += _OUTCOME_ROWS[job["task"]](job, outcomes)
                accuracy_by_job[job["id"]] = _accuracy(outcomes)
        elif job["task"] == "profile":
            rows += _profile_rows(job)
    rows += _corruption_aggregate_rows(jobs, accuracy_by_job)
    frame = pd.DataFrame(rows, columns=list(LONG_COLUMNS)) if rows else pd.DataFrame(columns=list(LONG_COLUMNS))
    frame = _label_data_sets(frame.astype({"n": "Int64", "severity": "Int64", "layer": "Int64"}))
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
        if (job["model"], job["checkpoint"], job["seed"]) == (summary_job["model"], summary_job["checkpoint"],
                                                              summary_job["seed"])
        and job["settings"].get("source") == settings.get("source")
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
            key = (job["model"], job["checkpoint"], job["seed"], _corruption_base(job), job["settings"].get("source"))
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
    from ellbench.corruptions import summarize_corruptions

    settings = summary_job["settings"]
    errors = {(j["settings"]["corruption"], int(j["settings"]["severity"])): 1.0 - accuracy_by_job[j["id"]][0]
              for j in members}
    clean_jobs = [j for j in jobs if j["task"] == "clean" and j["data"] == settings.get("clean")
                  and (j["model"], j["checkpoint"]) == (summary_job["model"], summary_job["checkpoint"])
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
                               note=note))
    rows += [_group_row(members, "ce", f"CE {c}", value, None, corruption=c) for c, value in result["ce"].items()]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Pivot tables: models x metrics, several checkpoints of a model summarised as mean, std and n


def seed_table(long):
    """Per (model, metric label) of the main table: mean, sample std (NaN for one checkpoint) and n checkpoints."""
    import pandas as pd

    from ellbench.stats import summarize_seeds

    main = long[long["table"] == "main"]
    if main.empty:
        return pd.DataFrame(columns=["model", "label", "mean", "std", "n"])
    summary = summarize_seeds(main.assign(value=main["value"].astype(float)), ["model", "label"], "value")
    order = {label: i for i, label in enumerate(dict.fromkeys(main["label"]))}
    summary = summary.assign(_order=summary["label"].map(order)).sort_values(["model", "_order"], kind="stable")
    return summary.drop(columns="_order").reset_index(drop=True)


def pivot_table(long, labels=None):
    """Models x metric labels, each cell the mean over the model's checkpoints (column 'checkpoints' counts them)."""
    import pandas as pd

    seeds = seed_table(long)
    if seeds.empty:
        return pd.DataFrame(columns=["model", "checkpoints"])
    main = long[long["table"] == "main"]
    labels = [label for label in dict.fromkeys(main["label"]) if labels is None or label in labels]
    wide = seeds.pivot(index="model", columns="label", values="mean").reindex(columns=labels)
    checkpoints = main.groupby("model")["checkpoint"].nunique().rename("checkpoints")
    return pd.concat([checkpoints, wide], axis=1).reset_index().rename(columns={"index": "model"})


def _cell_text(label: str, mean: float, std: float, n: int) -> str:
    if mean != mean:
        return ""
    fmt = ",.0f" if label.startswith("params") else ".1f" if label.startswith(("throughput", "peak memory")) else \
        ".2f" if label.startswith("latency") else ".3f" if label.startswith("GFLOPs") else ".4f"
    text = format(mean, fmt)
    return text if n <= 1 else f"{text} ± {format(std, fmt)} (n={n})"


def pivot_markdown(long, labels) -> str:
    """The Markdown form of pivot_table for the given labels: 'mean ± std (n=k)' where a model has several runs."""
    import pandas as pd

    seeds = seed_table(long)
    seeds = seeds[seeds["label"].isin(labels)]
    if seeds.empty:
        return ""
    cells = {(r.model, r.label): _cell_text(r.label, r.mean, r.std, int(r.n)) for r in seeds.itertuples()}
    present = [label for label in labels if label in set(seeds["label"])]
    models = list(dict.fromkeys(seeds["model"]))
    frame = pd.DataFrame([[m, *[cells.get((m, label), "") for label in present]] for m in models],
                         columns=["model", *present])
    return markdown_table(frame)


def _label_groups(long) -> dict[str, list[str]]:
    """Main-table labels split into the report's sections."""
    main = long[long["table"] == "main"]
    sections = {"Accuracy and adversarial robustness": ("clean", "attack", "imagenet-a", "imagenet-r"),
                "Corruptions": ("corruption-summary",), "Representation collapse": ("collapse",),
                "Efficiency": ("profile",)}
    return {title: list(dict.fromkeys(main.loc[main["task"].isin(tasks), "label"]))
            for title, tasks in sections.items()}


def detail_table(long, table: str, column: str):
    """Models x (corruption, severity) or models x layer: means over checkpoints from the detail rows."""
    rows = long[long["table"] == table]
    if rows.empty:
        return rows
    grouped = rows.assign(value=rows["value"].astype(float)).groupby(["model", column], sort=False)["value"].mean()
    wide = grouped.unstack(column)
    return wide.reindex(columns=list(dict.fromkeys(rows[column]))).reset_index()


# ---------------------------------------------------------------------------------------------------------------
# Attack trust checks, re-run on the recomputed attack results


def attack_checks_table(store, jobs: list[dict]):
    """One row per trust check of each stored 'attack-checks' result, recomputed from its attack jobs' rows.

    `status` is the recomputed verdict (ok / warn / fail), `stored_status` the one recorded when the suite ran.
    """
    import pandas as pd

    from ellbench.attacks import summarize_attack, trust_checks

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


# ---------------------------------------------------------------------------------------------------------------
# Reference tables (reports/reference/): put beside ellbench's numbers only when the protocol matches


def load_reference():
    """All shipped reference rows (reports/reference/*.csv) with the file each came from."""
    import pandas as pd

    from ellbench.resources import resource_dir

    frames = [pd.read_csv(path).assign(file=path.name) for path in sorted(resource_dir("reference").glob("*.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def is_small_image(row) -> bool:
    """A result of a small-image model or on a built-in small-image data set: never comparable with ImageNet logs."""
    return "micro" in row["model"] or row["model"].endswith("_32") or row["data_name"] in BUILTIN_DATA


def _protocol_difference(row) -> str | None:
    """Why an ellbench attack result is not measured like the reference logs, or None when it is."""
    settings = json.loads(row["settings"])
    if settings.get("protocol") != "paper":
        return f"ellbench protocol {settings.get('protocol')!r}, reference protocol 'paper' (normalised space)"
    wanted = REFERENCE_ATTACK_SETTINGS.get(settings.get("attack"))
    if wanted is None:
        return f"no reference protocol for {settings.get('attack')}"
    params, eps = settings.get("params", {}), settings.get("eps") or 0.0
    for key, value in wanted.items():
        if key == "alpha_per_eps":
            actual = params.get("alpha", float("nan")) / eps if eps else float("nan")
        else:
            actual = params.get(key)
        if actual is None or not math.isclose(float(actual), value, rel_tol=1e-6):
            return f"{key} {actual} here, {value} in the reference protocol"
    return None


def reference_comparison(long):
    """Per ellbench clean/attack result of a model the reference tables name: the reference numbers and the verdict.

    Returns (frame, notes). Accuracies are in percent in this table, as the reference logs give them.
    """
    import pandas as pd

    reference = load_reference()
    rows, notes = [], []
    candidates = long[(long["table"] == "main") & long["task"].isin(["clean", "attack"])]
    small = candidates[candidates.apply(is_small_image, axis=1)] if len(candidates) else candidates
    if len(small):
        notes.append(f"{SMALL_IMAGE_NOTE} ({', '.join(sorted(set(small['model'])))}).")
    unnamed = set()
    for _, row in candidates.drop(index=small.index).iterrows():
        same_model = reference[(reference["model"] == row["model"]) & (reference["metric"] == "top1")]
        if same_model.empty:
            unnamed.add(row["model"])
            continue
        attack = "clean" if row["task"] == "clean" else row["attack"]
        if attack == "clean":
            same = same_model[same_model["attack"] == "clean"]
        else:
            same = same_model[(same_model["attack"] == attack)
                              & same_model["eps"].apply(lambda e, x=row["eps"]: _same_eps(e, x))]
        # rows logged under another protocol (e.g. 'unclear') are compared with nothing
        other = same[same["protocol"] != attack_protocol(attack)]
        same = same[same["protocol"] == attack_protocol(attack)]
        if same.empty:
            verdict = f"no match: only rows of protocol {', '.join(sorted(set(other['protocol'])))}" if len(other) \
                else None
        elif attack == "clean":
            verdict = "match (assumes the data is the ImageNet-1k validation set)"
        else:
            difference = _protocol_difference(row)
            verdict = f"protocol differs: {difference}" if difference else "match"
        if verdict and len(other) and len(same):
            verdict += f" ({len(other)} reference row(s) of another protocol left out)"
        rows.append({"model": row["model"], "checkpoint": row["checkpoint"], "metric": row["label"],
                     "ellbench_pct": 100.0 * float(row["value"]),
                     "reference_pct": "; ".join(f"{v:.2f}" for v in same["value"]) if len(same) else "",
                     "status": verdict or "no match: no reference number for this attack and eps",
                     "reference_source": "; ".join(same["source"]) if len(same) else "", "job_id": row["job_id"]})
    if unnamed:
        notes.append(f"No reference numbers for {', '.join(sorted(unnamed))}.")
    return pd.DataFrame(rows, columns=["model", "checkpoint", "metric", "ellbench_pct", "reference_pct", "status",
                                       "reference_source", "job_id"]), notes


def attack_protocol(attack: str) -> str:
    """The reference tables' protocol name for a clean result or an attack of ellbench's paper protocol."""
    return "clean" if attack == "clean" else "paper"


def _same_eps(reference_eps, eps) -> bool:
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return False
    return reference_eps == reference_eps and math.isclose(float(reference_eps), float(eps), rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Is the difference real? Paired comparison of two models on the examples both saw


def _select_checkpoint(jobs: list[dict], spec: str) -> str:
    """The checkpoint 'MODEL' (which must have one) or 'MODEL@CHECKPOINT-PREFIX' names."""
    model, _, prefix = spec.partition("@")
    own = [j for j in jobs if j["model"] == model]
    if not own:
        raise EllbenchError(f"no finished results for model {model!r} in the store")
    checkpoints = sorted({j["checkpoint"] for j in own})
    chosen = [c for c in checkpoints if c.startswith(prefix) or c.removeprefix("sha256:").startswith(prefix)] \
        if prefix else checkpoints
    if prefix in checkpoints:
        chosen = [prefix]  # an exact name wins over longer names it is a prefix of (seed=1 vs seed=10)
    if len(chosen) != 1:
        listing = ", ".join(checkpoints)
        raise EllbenchError(f"{spec} names {len(chosen)} checkpoints; pick one as {model}@<checkpoint>: {listing}")
    return chosen[0]


def paired_rows(store, jobs: list[dict]):
    """Per-example correctness of one checkpoint's accuracy jobs, keyed by (task, data, label, idx)."""
    import pandas as pd

    frames = {}
    for job in sorted(jobs, key=lambda j: j["finished_utc"] or ""):
        if job["task"] not in OUTCOME_TASKS:
            continue
        outcomes = store.outcomes(job["id"])
        if not len(outcomes):
            continue
        label = _OUTCOME_ROWS[job["task"]](job, outcomes)[0]["label"]
        frames[job["task"], job["data"], label] = outcomes[["idx", "correct"]].assign(
            task=job["task"], data=job["data"], label=label)  # the newest job of a cell wins
    if not frames:
        return pd.DataFrame(columns=["task", "data", "label", "idx", "correct"])
    return pd.concat(frames.values(), ignore_index=True)


def _checkpoint_pairs(jobs: list[dict], model_a: str, model_b: str) -> list[tuple[int | None, str, str]]:
    """(seed, checkpoint A, checkpoint B) to compare.

    Named checkpoints (MODEL@CHECKPOINT) or models with one checkpoint each give one pair. Two models stored with
    several checkpoints each (e.g. trained with seeds 0, 1, 2) are paired by the seed their jobs were run with.
    """
    def checkpoints(spec: str) -> list[str]:
        return sorted({j["checkpoint"] for j in jobs if j["model"] == spec.partition("@")[0]})

    several = "@" not in model_a + model_b and len(checkpoints(model_a)) > 1 and len(checkpoints(model_b)) > 1
    if not several:
        return [(None, _select_checkpoint(jobs, model_a), _select_checkpoint(jobs, model_b))]
    by_seed = []
    for model in (model_a, model_b):
        seeds: dict = {}
        for job in jobs:
            if job["model"] == model:
                seeds.setdefault(job["seed"], set()).add(job["checkpoint"])
        if any(len(found) > 1 for found in seeds.values()):
            raise EllbenchError(f"{model} has several checkpoints run with one seed; name one as {model}@<checkpoint>")
        by_seed.append({seed: found.pop() for seed, found in seeds.items()})
    shared = sorted(set(by_seed[0]) & set(by_seed[1]))
    if not shared:
        raise EllbenchError(f"{model_a} and {model_b} share no seed; name the checkpoints as MODEL@<checkpoint>")
    return [(seed, by_seed[0][seed], by_seed[1][seed]) for seed in shared]


def compare_models(store, model_a: str, model_b: str, *, seed: int = 0, resamples: int = 10000):
    """Model A vs model B on the examples both saw, per task / attack and eps / corruption and severity.

    Columns: model and checkpoint of each side, run_seed (the seed pairing the checkpoints when both models have
    several, else empty), task, data, label, n shared examples, accuracy_a, accuracy_b, diff (A - B), a paired
    bootstrap 95% interval (ci_low, ci_high; `seed` and `resamples` drive it), the exact McNemar p-value and the
    discordant counts only_a (A right, B wrong) and only_b. A side can name its checkpoint as MODEL@CHECKPOINT.
    """
    import pandas as pd

    from ellbench.stats import compare_paired_by

    jobs = [job for job in done_jobs(store) if job["task"] in OUTCOME_TASKS]  # a profile's checkpoint pairs nothing
    tables = []
    for run_seed, checkpoint_a, checkpoint_b in _checkpoint_pairs(jobs, model_a, model_b):
        rows_a = paired_rows(store, [j for j in jobs if (j["model"], j["checkpoint"]) == (model_a.partition("@")[0],
                                                                                          checkpoint_a)])
        rows_b = paired_rows(store, [j for j in jobs if (j["model"], j["checkpoint"]) == (model_b.partition("@")[0],
                                                                                          checkpoint_b)])
        table = compare_paired_by(rows_a, rows_b, ["task", "data", "label"], seed=seed, n_resamples=resamples)
        order = {task: i for i, task in enumerate(TASK_ORDER)}
        table = table.assign(_order=table["task"].map(order)).sort_values(["_order", "data"], kind="stable")
        table = table.drop(columns="_order").reset_index(drop=True)
        names = {"model_a": model_a.partition("@")[0], "checkpoint_a": checkpoint_a,
                 "model_b": model_b.partition("@")[0], "checkpoint_b": checkpoint_b, "run_seed": run_seed}
        for position, (column, value) in enumerate(names.items()):
            table.insert(position, column, value)
        table.insert(7, "data_name", table["data"].map(data_name))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def comparison_over_seeds(table):
    """Per (model A, model B, task, data set, metric): mean, sample std and number of seeds of the difference A - B.

    Only pairs compared over several seeds appear (run_seed set); data sets are matched by name, because each seed's
    corrupted images differ.
    """
    from ellbench.stats import summarize_seeds

    seeded = table[table["run_seed"].notna()]
    if seeded.empty:
        return seeded
    return summarize_seeds(seeded.assign(diff=seeded["diff"].astype(float)),
                           ["model_a", "model_b", "task", "data_name", "label"], "diff")


# ---------------------------------------------------------------------------------------------------------------
# Plot data (tested) and plots (matplotlib Agg, PNG)


def _mean_over_checkpoints(rows, by: list[str]):
    """Mean, sample std and number of checkpoints of `value` per group."""
    from ellbench.stats import summarize_seeds

    table = summarize_seeds(rows.assign(value=rows["value"].astype(float)), by, "value")
    return table.rename(columns={"n": "runs"})


def _series_name(frame):
    """Model name, with the data set when the frame holds several."""
    if frame["data_name"].nunique() > 1:
        return frame["model"] + " @ " + frame["data_name"]
    return frame["model"]


def robust_vs_eps_data(long):
    """Robust accuracy per (model, attack name, protocol, data, eps): mean, std and runs over checkpoints.

    Each curve starts at eps = 0 with the model's clean accuracy on the same data set, where the store has it.
    """
    import pandas as pd

    rows = long[(long["task"] == "attack") & long["eps"].notna()]
    if rows.empty:
        return rows
    rows = rows.assign(eps=rows["eps"].astype(float))
    clean = long[long["task"] == "clean"]
    curves = rows[["model", "name", "protocol", "data_name"]].drop_duplicates()
    starts = curves.merge(clean[["model", "data_name", "checkpoint", "value"]], on=["model", "data_name"])
    table = _mean_over_checkpoints(pd.concat([rows, starts.assign(eps=0.0)], ignore_index=True),
                                   ["model", "name", "protocol", "data_name", "eps"])
    return table.assign(eps_255=table["eps"] * 255, series=_series_name(table))


def severity_data(long):
    """Accuracy per (model, corruption, severity, data): mean, std and runs over checkpoints."""
    rows = long[long["table"] == "corruption"]
    if rows.empty:
        return rows
    table = _mean_over_checkpoints(rows.assign(severity=rows["severity"].astype(int)),
                                   ["model", "corruption", "data_name", "severity"])
    return table.assign(series=_series_name(table))


def collapse_data(long):
    """Collapse per (model, data, layer): mean, std and runs over checkpoints."""
    rows = long[long["table"] == "collapse"]
    if rows.empty:
        return rows
    table = _mean_over_checkpoints(rows.assign(layer=rows["layer"].astype(int)), ["model", "data_name", "layer"])
    return table.assign(series=_series_name(table))


def robustness_throughput_data(long):
    """Per model: robust accuracy under PGD at its smallest eps (paper protocol when stored) vs throughput.

    The paper's Figure 4 view. Means over checkpoints; models lacking either number are left out.
    """
    import pandas as pd

    columns = ["model", "robust_accuracy", "attack", "throughput_img_s", "throughput_label"]
    pgd = long[(long["task"] == "attack") & (long["attack"] == "PGD") & long["eps"].notna()]
    speed = long[long["metric"] == "throughput_img_s"]
    records = []
    for model in sorted(set(pgd["model"]) & set(speed["model"])):
        own = pgd[pgd["model"] == model]
        protocol = "paper" if (own["protocol"] == "paper").any() else own["protocol"].iloc[0]
        own = own[own["protocol"] == protocol]
        smallest = own[own["eps"].astype(float) == own["eps"].astype(float).min()]
        label = smallest["label"].iloc[0]
        fast = speed[speed["model"] == model]
        speed_label = sorted(set(fast["label"]))[0]  # one device per plot: the first in name order
        records.append({"model": model, "robust_accuracy": float(smallest["value"].astype(float).mean()),
                        "attack": label, "throughput_img_s":
                        float(fast.loc[fast["label"] == speed_label, "value"].astype(float).mean()),
                        "throughput_label": speed_label})
    return pd.DataFrame(records, columns=columns)


def _figure_png(figure) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def _panels(count: int, width: float = 4.2, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(count, 4)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.6), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return figure, list(axes.flat[:count])


def _line(ax, x, y, err, label):
    ax.errorbar(x, y, yerr=err.fillna(0.0) if err.notna().any() else None, marker="o", capsize=3, label=label)


def plot_robust_vs_eps(data) -> bytes:
    """One panel per (attack, protocol): robust accuracy (%) vs eps (in 1/255 units), one line per model."""
    panels = list(data.groupby(["name", "protocol"], sort=True))
    figure, axes = _panels(len(panels))
    for ax, ((name, protocol), group) in zip(axes, panels, strict=True):
        for series, line in group.groupby("series", sort=True):
            line = line.sort_values("eps")
            _line(ax, line["eps_255"], 100 * line["mean"], 100 * line["std"], series)
        unit = "normalised input" if protocol == "paper" else "pixels in [0, 1]"
        ax.set(title=f"{name} ({protocol} protocol)", xlabel=f"eps (x 1/255, {unit}); 0 = clean",
               ylabel="robust accuracy (%)")
        ax.set_xlim(left=-0.2)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Robust accuracy vs attack budget (higher is more robust)")
    return _figure_png(figure)


def plot_severity(data) -> bytes:
    """Small multiples, one per corruption: accuracy (%) vs severity 1-5, one line per model."""
    panels = list(data.groupby("corruption", sort=False))
    figure, axes = _panels(len(panels), width=3.6, height=3.0)
    for ax, (corruption, group) in zip(axes, panels, strict=True):
        for series, line in group.groupby("series", sort=True):
            line = line.sort_values("severity")
            _line(ax, line["severity"], 100 * line["mean"], 100 * line["std"], series)
        ax.set(title=corruption.replace("_", " "), xlabel="severity", ylabel="accuracy (%)", xticks=range(1, 6))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Accuracy vs corruption severity")
    return _figure_png(figure)


def plot_collapse(data) -> bytes:
    """Collapse (mean token cosine similarity) per attention layer, one line per model."""
    figure, (ax,) = _panels(1, width=6.0, height=4.0)
    for series, line in data.groupby("series", sort=True):
        line = line.sort_values("layer")
        _line(ax, line["layer"] + 1, line["mean"], line["std"], series)
    ax.set(title="Representation collapse per layer (lower = tokens more diverse)", xlabel="attention layer",
           ylabel="mean pairwise cosine similarity")
    ax.margins(y=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(figure)


def plot_robustness_throughput(data) -> bytes:
    """Scatter of robust accuracy (%) vs throughput (img/s), one labelled point per model (the paper's Fig. 4 view)."""
    figure, (ax,) = _panels(1, width=6.0, height=4.2)
    for row in data.itertuples():
        ax.scatter(row.throughput_img_s, 100 * row.robust_accuracy, s=60)
        ax.annotate(row.model, (row.throughput_img_s, 100 * row.robust_accuracy), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    attacks = ", ".join(sorted(set(data["attack"])))
    ax.set(title="Robustness vs speed (up and right is better)", ylabel=f"robust accuracy (%) under {attacks}",
           xlabel=data["throughput_label"].iloc[0])
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    return _figure_png(figure)


PLOTS = {  # file stem: (data function, plot function, what is missing when the data is empty)
    "robust_vs_eps": (robust_vs_eps_data, plot_robust_vs_eps, "no attack results with an eps"),
    "accuracy_vs_severity": (severity_data, plot_severity, "no corruption results"),
    "collapse_per_layer": (collapse_data, plot_collapse, "no collapse results"),
    "robustness_vs_throughput": (robustness_throughput_data, plot_robustness_throughput,
                                 "no model has both a PGD result and a profile"),
}


# ---------------------------------------------------------------------------------------------------------------
# The entry point `ellbench report` calls


def _check_formats(formats) -> tuple[str, ...]:
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise EllbenchError(f"unknown report format(s) {', '.join(unknown) or 'none given'}; use {', '.join(FORMATS)}")
    return formats


def _section(title: str, body: str, intro: str = "") -> str:
    return f"## {title}\n\n{intro + chr(10) + chr(10) if intro else ''}{body or 'No results.'}\n"


def build_report(store, out_dir, *, formats=("md", "csv", "png"), models=None, reference: bool = True,
                 compare=None, seed: int = 0, resamples: int = 10000) -> dict:
    """Tables, trust checks, reference comparison, paired comparisons and plots of a store, written to `out_dir`.

    Files (each written atomically): results.csv (models x metrics, means over checkpoints), results_seeds.csv
    (mean, std, n per cell), results_long.csv (every value with its job id and provenance), corruptions.csv,
    collapse_layers.csv, checks.csv, reference.csv, comparison.csv (with `compare=[(model_a, model_b), ...]`),
    results.md / comparison.md, and the PNG plots. Returns what was written, the plots skipped and why, and notes.
    """
    import pandas as pd

    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    jobs = done_jobs(store, models)
    if not jobs:
        raise EllbenchError(f"the store {store.path} holds no finished results to report")
    long, notes = long_results(store, jobs=jobs)
    checks = attack_checks_table(store, jobs)
    references, reference_notes = reference_comparison(long) if reference else (pd.DataFrame(), [])
    comparisons = [compare_models(store, a, b, seed=seed, resamples=resamples) for a, b in (compare or [])]
    tables = {"results": pivot_table(long), "results_seeds": seed_table(long), "results_long": long,
              "corruptions": detail_table(long, "corruption", "label"),
              "collapse_layers": detail_table(long, "collapse", "label"), "checks": checks}
    if reference:
        tables["reference"] = references
    if comparisons:
        tables["comparison"] = pd.concat(comparisons, ignore_index=True)
        tables["comparison_seeds"] = comparison_over_seeds(tables["comparison"])
    written, plots = [], {}
    if "csv" in formats:
        for stem, frame in tables.items():
            if len(frame):
                atomic_write(out_dir / f"{stem}.csv", frame.to_csv(index=False))
                written.append(str(out_dir / f"{stem}.csv"))
    if "png" in formats:
        for stem, (data_of, draw, missing) in PLOTS.items():
            data = data_of(long)
            if data.empty:
                plots[stem] = f"skipped: {missing}"
                continue
            atomic_write_bytes(out_dir / f"{stem}.png", draw(data))
            plots[stem] = str(out_dir / f"{stem}.png")
            written.append(plots[stem])
    if "md" in formats:
        text = _report_markdown(long, tables, checks, references, reference_notes, notes, plots, reference)
        atomic_write(out_dir / "results.md", text)
        written.append(str(out_dir / "results.md"))
        if comparisons:
            atomic_write(out_dir / "comparison.md", _comparison_markdown(tables["comparison"],
                                                                         tables["comparison_seeds"]))
            written.append(str(out_dir / "comparison.md"))
    return {"out": str(out_dir), "files": written, "plots": plots, "notes": reference_notes + notes,
            "models": sorted(set(long["model"])), "checks": {s: int((checks["status"] == s).sum())
                                                              for s in ("ok", "warn", "fail")}}


def _report_markdown(long, tables, checks, references, reference_notes, notes, plots, reference: bool) -> str:
    intro = ("Accuracies are fractions in [0, 1], recomputed from the stored per-example rows; a model with several "
             "checkpoints shows mean ± sample std (n = checkpoints). results_long.csv names the job behind every "
             "value.")
    parts = ["# ellbench report\n", intro + "\n"]
    for title, labels in _label_groups(long).items():
        if labels:
            parts.append(_section(title, pivot_markdown(long, labels)))
    if len(tables["corruptions"]):
        parts.append(_section("Accuracy by corruption and severity", markdown_table(tables["corruptions"])))
    if len(tables["collapse_layers"]):
        parts.append(_section("Collapse per layer", markdown_table(tables["collapse_layers"]),
                              "Mean pairwise cosine similarity of the tokens leaving each attention layer."))
    if len(checks):
        parts.append(_section("Attack trust checks", _checks_markdown(checks),
                              "Budget respected, robust <= clean, monotone in eps, PGD at least as strong as FGSM; "
                              "recomputed from the stored rows (every check in checks.csv)."))
    if reference:
        body = markdown_table(references.drop(columns=["job_id"])) if len(references) else ""
        body = "\n\n".join([body or "No result can be compared.", *reference_notes])
        parts.append(_section("Reference numbers (reports/reference/)", body,
                              "Accuracies in percent. Reference rows are logged numbers of other repositories, put "
                              "beside a result only when model, metric, attack, eps and protocol agree."))
    if notes:
        parts.append(_section("Notes", "\n".join(f"- {note}" for note in notes)))
    if "comparison" in tables:
        parts.append(_section("Paired comparisons", "Is the difference real? See comparison.md (comparison.csv)."))
    images = [f"![{stem}]({Path(path).name})" for stem, path in plots.items() if not path.startswith("skipped")]
    skipped = [f"- {stem}: {path}" for stem, path in plots.items() if path.startswith("skipped")]
    if plots:
        parts.append(_section("Plots", "\n\n".join(images + skipped)))
    return "\n".join(parts)


def _checks_markdown(checks) -> str:
    """Counts of passed (ok), warning and failed checks per model and checkpoint, then every check that did not pass."""
    counts = checks.assign(n=1).pivot_table(index=["model", "checkpoint"], columns="status", values="n",
                                            aggfunc="sum", fill_value=0)
    counts = counts.reindex(columns=["ok", "warn", "fail"], fill_value=0).reset_index()
    counts["checkpoint"] = counts["checkpoint"].map(short_checkpoint)
    flagged = checks[checks["status"] != "ok"].drop(columns=["job_id", "checkpoint"])
    detail = markdown_table(flagged) if len(flagged) else "Every check passed."
    return f"{markdown_table(counts)}\n{detail}"


def short_checkpoint(checkpoint: str) -> str:
    """'sha256:' plus the first 12 hex digits (enough to tell runs apart in a table); other ids unchanged."""
    return checkpoint[:19] if checkpoint.startswith("sha256:") else checkpoint


def _comparison_markdown(table, over_seeds) -> str:
    """One section per pair of checkpoints (a row per task / attack and eps / corruption and severity), then the
    differences summarised over seeds where models were compared seed by seed."""
    parts = ["# Paired comparison\n", "On the examples both models saw: accuracy difference A - B with a paired "
             "bootstrap confidence interval, and the exact McNemar p-value from the discordant counts (only A: A "
             "right and B wrong; only B: the reverse).\n"]
    for (model_a, checkpoint_a, model_b, checkpoint_b), pair in table.groupby(
            ["model_a", "checkpoint_a", "model_b", "checkpoint_b"], sort=False):
        confidence = f"{100 * float(pair['confidence'].iloc[0]):g}% CI"
        shown = _frame({
            "task": pair["task"], "data": pair["data_name"], "metric": pair["label"], "n": pair["n"],
            "acc A": pair["accuracy_a"].astype(float), "acc B": pair["accuracy_b"].astype(float),
            "A - B": pair["diff"].astype(float),
            confidence: [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(pair["ci_low"], pair["ci_high"], strict=True)],
            "only A": pair["only_a"], "only B": pair["only_b"],
            "McNemar p": [f"{p:.3g}" for p in pair["p_value"]]})
        parts.append(f"## A = {model_a} ({short_checkpoint(checkpoint_a)}), B = {model_b} "
                     f"({short_checkpoint(checkpoint_b)})\n\n{markdown_table(shown)}")
    if len(over_seeds):
        shown = over_seeds.rename(columns={"model_a": "A", "model_b": "B", "data_name": "data", "label": "metric",
                                           "mean": "mean A - B", "std": "std over seeds", "n": "seeds"})
        parts.append(f"## Over seeds\n\nThe difference A - B of each seed's pair of checkpoints: mean, sample "
                     f"standard deviation and number of seeds.\n\n{markdown_table(shown)}")
    return "\n".join(parts)


def _frame(columns: dict):
    """A DataFrame from named columns (lists or Series, aligned by position)."""
    import pandas as pd

    return pd.DataFrame({name: list(values) for name, values in columns.items()})
