"""Tables from the long format: pivots of models x metrics (mean, std and n over checkpoints), Markdown."""

from __future__ import annotations

from pathlib import Path

from ellbench.io import atomic_write_text


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


def write_summary(out_dir: Path, rows: list[dict], *, title: str) -> None:
    """summary.csv and summary.md for the demo: one row per model."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write_text(Path(out_dir) / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(Path(out_dir) / "summary.md", f"# {title}\n\n{markdown_table(frame)}")


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


def label_groups(long) -> dict[str, list[str]]:
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


def short_checkpoint(checkpoint: str) -> str:
    """'sha256:' plus the first 12 hex digits (enough to tell runs apart in a table); other ids unchanged."""
    return checkpoint[:19] if checkpoint.startswith("sha256:") else checkpoint


def frame_of(columns: dict):
    """A DataFrame from named columns (lists or Series, aligned by position)."""
    import pandas as pd

    return pd.DataFrame({name: list(values) for name, values in columns.items()})
