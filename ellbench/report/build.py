"""`ellbench report`: every table, the trust checks, the reference comparison, paired comparisons and the plots of a
store, written to a folder as one set.

Several checkpoints of one model name (e.g. trained with seeds 0, 1, 2) are summarised as mean, sample standard
deviation and count.
"""

from __future__ import annotations

from pathlib import Path

from ellbench.errors import EllbenchError
from ellbench.report.compare import compare_models, comparison_markdown, comparison_over_seeds
from ellbench.report.plots import PLOTS
from ellbench.report.reference import SPSA_NOTE, reference_comparison
from ellbench.report.results import attack_checks_table, done_jobs, long_results
from ellbench.report.tables import (
    detail_table,
    label_groups,
    markdown_table,
    pivot_markdown,
    pivot_table,
    seed_table,
    short_checkpoint,
)

FORMATS = ("md", "csv", "png")


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

    Files (written as one set, see write_file_set): results.csv (models x metrics, means over checkpoints),
    results_seeds.csv (mean, std, n per cell), results_long.csv (every value with its job id and provenance),
    corruptions.csv, collapse_layers.csv, checks.csv, reference.csv, comparison.csv (with
    `compare=[(model_a, model_b), ...]`), results.md / comparison.md, and the PNG plots. Returns what was written,
    the plots skipped and why, and notes.
    """
    import pandas as pd

    formats = _check_formats(formats)
    out_dir = Path(out_dir)
    jobs = done_jobs(store, models)
    if not jobs:
        raise EllbenchError(f"the store {store.path} holds no finished results to report")
    long, notes = long_results(store, jobs=jobs)
    if long["attack"].isin(["SPSA", "SPSA-cleverhans"]).any():
        notes = [f"{SPSA_NOTE}.", *notes]
    checks = attack_checks_table(store, jobs)
    references, reference_notes = reference_comparison(long) if reference else (pd.DataFrame(), [])
    comparisons = [compare_models(store, a, b, seed=seed, resamples=resamples) for a, b in (compare or [])]
    tables = {"results": pivot_table(long), "results_seeds": seed_table(long), "results_long": long,
              "corruptions": detail_table(long, "corruption", "label"),
              "collapse_layers": detail_table(long, "collapse", "label"), "training": training_table(long),
              "checks": checks}
    if reference:
        tables["reference"] = references
    if comparisons:
        tables["comparison"] = pd.concat(comparisons, ignore_index=True)
        tables["comparison_seeds"] = comparison_over_seeds(tables["comparison"])
    files: dict[str, bytes] = {}  # every file of the set, made in memory first, then written as one set
    plots = {}
    if "csv" in formats:
        for stem, frame in tables.items():
            if len(frame):
                files[f"{stem}.csv"] = frame.to_csv(index=False).encode("utf-8")
    if "png" in formats:
        for stem, (data_of, draw, missing) in PLOTS.items():
            data = data_of(long)
            if data.empty:
                plots[stem] = f"skipped: {missing}"
                continue
            files[f"{stem}.png"] = draw(data)
            plots[stem] = str(out_dir / f"{stem}.png")
    if "md" in formats:
        text = _report_markdown(long, tables, checks, references, reference_notes, notes, plots, reference)
        files["results.md"] = text.encode("utf-8")
        if comparisons:
            files["comparison.md"] = comparison_markdown(tables["comparison"],
                                                         tables["comparison_seeds"]).encode("utf-8")
    written = write_file_set(out_dir, files)
    return {"out": str(out_dir), "files": written, "plots": plots, "notes": reference_notes + notes,
            "models": sorted(set(long["model"])), "checks": {s: int((checks["status"] == s).sum())
                                                              for s in ("ok", "warn", "fail")}}


def write_file_set(out_dir: Path, files: dict[str, bytes]) -> list[str]:
    """Write `files` (name -> bytes) into `out_dir` as one set: all of them into a staging folder inside it first, then
    each renamed over its target (renames need no space and take microseconds).

    A full disk or a kill while writing leaves the previous set as it was (and no staging folder behind after an
    error); each file is also whole on its own, as every rename is atomic.
    """
    import os
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".ellbench-report-{os.getpid()}.tmp"
    try:
        staging.mkdir(exist_ok=True)
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for name in files:
            os.replace(staging / name, out_dir / name)
    except OSError as error:
        raise EllbenchError(f"cannot write the report into {out_dir}: {error.strerror or error}; the previous report "
                            "files there are unchanged (free some space or pass --report-dir)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [str(out_dir / name) for name in files]


def _report_markdown(long, tables, checks, references, reference_notes, notes, plots, reference: bool) -> str:
    intro = ("Accuracies are fractions in [0, 1], recomputed from the stored per-example rows; a model with several "
             "checkpoints shows mean ± sample std (n = checkpoints). results_long.csv names the job behind every "
             "value.")
    parts = ["# ellbench report\n", intro + "\n"]
    for title, labels in label_groups(long).items():
        if labels:
            parts.append(_section(title, pivot_markdown(long, labels)))
    detail_sections = [  # (title, table, what it shows): written when the table has rows
        ("Image transforms", transform_table(long),
         "How image-folder data reached each model: its own timm eval transform (input size, interpolation, "
         "crop_pct, crop mode), or its overrides; built-in sets are used as stored."),
        ("Corruption backends", corruption_backend_table(long),
         "Who corrupted the images of each corruption result: imagecorruptions (the published ImageNet-C code), "
         "ellbench's torch port (its rows say [torch corruptions]), or released ImageNet-C files."),
        ("Accuracy by corruption and severity", tables["corruptions"], ""),
        ("Collapse per layer", tables["collapse_layers"],
         "Mean pairwise cosine similarity of the tokens leaving each attention layer."),
        ("Training curves", tables["training"],
         "Accuracy per epoch (mean over checkpoints of each model): on the training batches seen during the epoch, "
         "and on the test set after it where training had one (the demo and the study train with their test set)."),
    ]
    for title, table, intro in detail_sections:
        if len(table):
            parts.append(_section(title, markdown_table(table), intro))
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


def training_table(long):
    """Models x epochs of the training curves: one row per (model, metric), means over checkpoints."""
    rows = long[long["table"] == "training"]
    if rows.empty:
        return rows
    rows = rows.assign(value=rows["value"].astype(float), epoch=rows["epoch"].astype(int))
    wide = rows.groupby(["model", "metric", "epoch"], sort=False)["value"].mean().unstack("epoch")
    wide.columns = [f"epoch {epoch}" for epoch in wide.columns]
    return wide.reset_index()


def transform_table(long):
    """One row per (model, data set, task, transform) read through an image transform."""
    rows = long[long["transform"].notna()] if "transform" in long else long.iloc[0:0]
    columns = ["model", "data_name", "task", "transform"]
    return rows[columns].drop_duplicates().reset_index(drop=True) if len(rows) else rows.reindex(columns=columns)


def corruption_backend_table(long):
    """One row per (model, data set, corruption backend) of the corruption results."""
    rows = long[long["corruption_backend"].notna()] if "corruption_backend" in long else long.iloc[0:0]
    columns = ["model", "data_name", "corruption_backend"]
    return rows[columns].drop_duplicates().reset_index(drop=True) if len(rows) else rows.reindex(columns=columns)


def _checks_markdown(checks) -> str:
    """Counts of passed (ok), warning and failed checks per model and checkpoint, then every check that did not pass."""
    counts = checks.assign(n=1).pivot_table(index=["model", "checkpoint"], columns="status", values="n",
                                            aggfunc="sum", fill_value=0)
    counts = counts.reindex(columns=["ok", "warn", "fail"], fill_value=0).reset_index()
    counts["checkpoint"] = counts["checkpoint"].map(short_checkpoint)
    flagged = checks[checks["status"] != "ok"].drop(columns=["job_id", "checkpoint"])
    detail = markdown_table(flagged) if len(flagged) else "Every check passed."
    return f"{markdown_table(counts)}\n{detail}"
