"""Plots of the long format (matplotlib, Agg backend, PNG bytes); each has a tested data function beside it."""

from __future__ import annotations


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

    rows = long[(long["metric"] == "robust_accuracy") & long["eps"].notna()]
    if rows.empty:
        return rows
    rows = rows.assign(eps=rows["eps"].astype(float))
    clean = long[(long["task"] == "clean") & (long["metric"] == "accuracy")]
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
    backend = rows["corruption_backend"].fillna("") if "corruption_backend" in rows else ""
    table = _mean_over_checkpoints(rows.assign(severity=rows["severity"].astype(int), corruption_backend=backend),
                                   ["model", "corruption", "data_name", "corruption_backend", "severity"])
    # each backend its own curve: torch-corrupted accuracies are not imagecorruptions' numbers
    torch_rows = table["corruption_backend"].str.startswith("torch")
    return table.assign(series=_series_name(table).where(~torch_rows, _series_name(table) + " [torch corruptions]"))


def collapse_data(long):
    """Collapse per (model, data, layer): mean, std and runs over checkpoints."""
    rows = long[long["table"] == "collapse"]
    if rows.empty:
        return rows
    table = _mean_over_checkpoints(rows.assign(layer=rows["layer"].astype(int)), ["model", "data_name", "layer"])
    return table.assign(series=_series_name(table))


def training_data(long):
    """Accuracy per (model, metric, epoch) of the training curves: mean, std and runs over checkpoints (seeds)."""
    rows = long[long["table"] == "training"]
    if rows.empty:
        return rows
    table = _mean_over_checkpoints(rows.assign(epoch=rows["epoch"].astype(int)), ["model", "metric", "epoch"])
    return table.assign(series=table["model"])


def robustness_throughput_data(long):
    """Per model: robust accuracy under PGD at its smallest eps (paper protocol when stored) vs throughput.

    The paper's Figure 4 view. Means over checkpoints; models lacking either number are left out.
    """
    import pandas as pd

    columns = ["model", "robust_accuracy", "attack", "throughput_img_s", "throughput_label"]
    pgd = long[(long["metric"] == "robust_accuracy") & (long["attack"] == "PGD") & long["eps"].notna()]
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


def plot_training(data) -> bytes:
    """Training curves: accuracy per epoch on the training batches and on the test set, one line per model."""
    metrics = [m for m in ("train_accuracy", "test_accuracy") if (data["metric"] == m).any()]
    figure, axes = _panels(len(metrics), width=5.0, height=3.8)
    for ax, metric in zip(axes, metrics, strict=True):
        for series, line in data[data["metric"] == metric].groupby("series", sort=True):
            line = line.sort_values("epoch")
            _line(ax, line["epoch"], line["mean"], line["std"], series)
        ax.set(title=metric.replace("_", " ") + " per epoch", xlabel="epoch", ylabel="accuracy")
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
    "training_curves": (training_data, plot_training, "no training curves in the store"),
}
