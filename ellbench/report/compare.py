"""Is the difference real? Paired comparison of two models on the examples both saw (ellbench.stats does the
statistics), per task, attack and eps, corruption and severity."""

from __future__ import annotations

from ellbench.errors import EllbenchError
from ellbench.report.results import OUTCOME_ROWS, OUTCOME_TASKS, TASK_ORDER, data_name, done_jobs
from ellbench.report.tables import frame_of, markdown_table, short_checkpoint

Q_THRESHOLD = 0.05  # false discovery rate at which a comparison's cell is marked as a difference


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
        label = OUTCOME_ROWS[job["task"]](job, outcomes)[0]["label"]
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
    bootstrap 95% interval (ci_low, ci_high; `seed` and `resamples` drive it), the exact McNemar p-value, its
    Benjamini-Hochberg q-value across every cell of this comparison (every seed pair included: one family of tests)
    and the discordant counts only_a (A right, B wrong) and only_b. A side can name its checkpoint as
    MODEL@CHECKPOINT.
    """
    import pandas as pd

    from ellbench.stats import bh_q_values, compare_paired_by

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
    table = pd.concat(tables, ignore_index=True)
    table.insert(table.columns.get_loc("p_value") + 1, "q_value", bh_q_values(table["p_value"].astype(float)))
    return table


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


def comparison_markdown(table, over_seeds) -> str:
    """One section per pair of checkpoints (a row per task / attack and eps / corruption and severity), then the
    differences summarised over seeds where models were compared seed by seed."""
    parts = ["# Paired comparison\n", "On the examples both models saw: accuracy difference A - B with a paired "
             "bootstrap confidence interval, and the exact McNemar p-value from the discordant counts (only A: A "
             "right and B wrong; only B: the reverse). Many cells are tested at once, so a cell counts as a "
             f"difference only by its Benjamini-Hochberg q-value (false discovery rate across all cells of the "
             f"comparison, every seed pair included): **marked** where q < {Q_THRESHOLD:g}. Raw p-values below "
             "0.05 are expected by chance in about 1 cell in 20.\n"]
    for (model_a, model_b), comparison in table.groupby(["model_a", "model_b"], sort=False):
        discoveries, raw = int((comparison["q_value"] < Q_THRESHOLD).sum()), int((comparison["p_value"] < 0.05).sum())
        parts.append(f"{model_a} vs {model_b}: {discoveries} of {len(comparison)} cells have q < {Q_THRESHOLD:g} "
                     f"({raw} have p < 0.05 before the correction).\n")
    for (model_a, checkpoint_a, model_b, checkpoint_b), pair in table.groupby(
            ["model_a", "checkpoint_a", "model_b", "checkpoint_b"], sort=False):
        confidence = f"{100 * float(pair['confidence'].iloc[0]):g}% CI"
        shown = frame_of({
            "task": pair["task"], "data": pair["data_name"], "metric": pair["label"], "n": pair["n"],
            "acc A": pair["accuracy_a"].astype(float), "acc B": pair["accuracy_b"].astype(float),
            "A - B": pair["diff"].astype(float),
            confidence: [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(pair["ci_low"], pair["ci_high"], strict=True)],
            "only A": pair["only_a"], "only B": pair["only_b"],
            "McNemar p": [f"{p:.3g}" for p in pair["p_value"]],
            "q (BH)": [f"**{q:.3g}**" if q < Q_THRESHOLD else f"{q:.3g}" for q in pair["q_value"]]})
        parts.append(f"## A = {model_a} ({short_checkpoint(checkpoint_a)}), B = {model_b} "
                     f"({short_checkpoint(checkpoint_b)})\n\n{markdown_table(shown)}")
    if len(over_seeds):
        shown = over_seeds.rename(columns={"model_a": "A", "model_b": "B", "data_name": "data", "label": "metric",
                                           "mean": "mean A - B", "std": "std over seeds", "n": "seeds"})
        parts.append(f"## Over seeds\n\nThe difference A - B of each seed's pair of checkpoints: mean, sample "
                     f"standard deviation and number of seeds.\n\n{markdown_table(shown)}")
    return "\n".join(parts)
