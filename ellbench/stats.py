"""Is the difference real? Paired statistics for two models scored on the same examples, and seed summaries.

Two models evaluated on the same examples give paired 0/1 outcomes. Their accuracy difference gets a paired
bootstrap confidence interval, and the null "both models are equally accurate" an exact McNemar test, which looks only
at the discordant examples (one model right, the other wrong). Runs repeated with several seeds are summarised by
their mean, sample standard deviation and count. Everything here is a pure function of arrays or DataFrames.
"""

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest, false_discovery_control, quantile_test

from ellbench.errors import EllbenchError


@dataclass(frozen=True)
class BootstrapCI:
    """Accuracy difference (A minus B) with its percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    confidence: float
    n_resamples: int


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts and the exact two-sided McNemar p-value."""

    only_a: int  # examples A gets right and B gets wrong
    only_b: int  # examples B gets right and A gets wrong
    p_value: float


@dataclass(frozen=True)
class PairedComparison:
    """Everything `ellbench report --compare` shows for one pair of runs."""

    n: int
    accuracy_a: float
    accuracy_b: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    only_a: int
    only_b: int
    p_value: float


def paired_outcomes(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert two equally long sequences of per-example 0/1 outcomes to boolean arrays."""
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise EllbenchError(f"paired outcomes need two 1-d arrays of equal length, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise EllbenchError("paired outcomes are empty: the two runs share no examples")
    for values in (a, b):
        if not np.isin(values, (0, 1)).all():
            raise EllbenchError("paired outcomes must be 0/1 or booleans")
    return a.astype(bool), b.astype(bool)


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under the null each discordant example is a fair coin.

    p = min(1, 2 P[X <= min(only_a, only_b)]) with X ~ Binomial(only_a + only_b, 1/2); 1 when nothing is discordant.
    """
    if only_a < 0 or only_b < 0:
        raise EllbenchError("discordant counts must be non-negative")
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), discordant, 0.5, alternative="two-sided").pvalue)


def mcnemar_exact(correct_a, correct_b) -> McNemarResult:
    """Exact McNemar test of equal accuracy from paired per-example outcomes."""
    a, b = paired_outcomes(correct_a, correct_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return McNemarResult(only_a=only_a, only_b=only_b, p_value=mcnemar_p_value(only_a, only_b))


def paired_bootstrap_ci(
    correct_a, correct_b, *, seed: int, n_resamples: int = 10_000, confidence: float = 0.95
) -> BootstrapCI:
    """Percentile bootstrap interval of accuracy(A) - accuracy(B), resampling examples (pairs kept together).

    Each example contributes d = a - b in {-1, 0, +1}, and the difference is the mean of d. Resampling n examples with
    replacement only changes how many of each kind are drawn, so a multinomial draw of those three counts gives the
    same bootstrap distribution as drawing indices, in O(n_resamples) memory whatever the data set size.
    """
    if not 0 < confidence < 1:
        raise EllbenchError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise EllbenchError(f"n_resamples must be at least 1, got {n_resamples}")
    a, b = paired_outcomes(correct_a, correct_b)
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    kinds = np.array([only_a, only_b, n - only_a - only_b]) / n  # P(d = +1), P(d = -1), P(d = 0)
    counts = np.random.default_rng(seed).multinomial(n, kinds, size=n_resamples)  # [n_resamples, 3]
    resampled_diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled_diffs, [tail, 1 - tail])
    return BootstrapCI(
        diff=(only_a - only_b) / n,
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
    )


def compare_paired(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    *,
    seed: int,
    on: str = "idx",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare two runs on the examples both saw: per-example rows with columns `on` (the example id) and `correct`."""
    for name, rows in (("A", rows_a), ("B", rows_b)):
        missing = {on, "correct"} - set(rows.columns)
        if missing:
            raise EllbenchError(f"rows of run {name} lack the column(s) {', '.join(sorted(missing))}")
        if rows[on].duplicated().any():
            raise EllbenchError(f"run {name} has more than one row for some {on!r}; compare needs one per example")
    paired = rows_a[[on, "correct"]].merge(rows_b[[on, "correct"]], on=on, suffixes=("_a", "_b"))
    if paired.empty:
        raise EllbenchError("the two runs share no examples")
    a, b = paired_outcomes(paired["correct_a"].to_numpy(), paired["correct_b"].to_numpy())
    interval = paired_bootstrap_ci(a, b, seed=seed, n_resamples=n_resamples, confidence=confidence)
    test = mcnemar_exact(a, b)
    return PairedComparison(
        n=int(a.size),
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        diff=interval.diff,
        ci_low=interval.low,
        ci_high=interval.high,
        confidence=confidence,
        only_a=test.only_a,
        only_b=test.only_b,
        p_value=test.p_value,
    )


def compare_paired_by(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    by: list[str],
    *,
    seed: int,
    on: str = "idx",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """`compare_paired` within each group (e.g. attack and eps, or corruption and severity) both runs have.

    Returns one row per shared group: the `by` columns followed by the fields of `PairedComparison`.
    """
    groups_a, groups_b = _groups(rows_a, by), _groups(rows_b, by)
    shared = [key for key in groups_a if key in groups_b]
    if not shared:
        raise EllbenchError(f"the two runs share no ({', '.join(by)}) group")
    records = []
    for key in shared:
        result = compare_paired(
            groups_a[key], groups_b[key], seed=seed, on=on, n_resamples=n_resamples, confidence=confidence
        )
        records.append({**dict(zip(by, key, strict=True)), **asdict(result)})
    return pd.DataFrame.from_records(records)


def _groups(rows: pd.DataFrame, by: list[str]) -> dict[tuple, pd.DataFrame]:
    """Rows split by the `by` columns; an empty value (a clean run's eps) is a group too, keyed by None."""
    missing = set(by) - set(rows.columns)
    if missing:
        raise EllbenchError(f"rows lack the column(s) {', '.join(sorted(missing))}")
    # NaN keys never compare equal across two frames, so they become None
    return {
        tuple(None if pd.isna(value) else value for value in key): group
        for key, group in rows.groupby(by, sort=True, dropna=False)
    }


def summarize_seeds(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by` columns, the mean, sample std (NaN for one seed) and count of `value` over runs."""
    missing = (set(by) | {value}) - set(frame.columns)
    if missing:
        raise EllbenchError(f"cannot summarise seeds: no column(s) {', '.join(sorted(missing))}")
    grouped = frame.groupby(by, sort=True, dropna=False)[value]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def median_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of `values` (order statistics; scipy's quantile_test).

    [x_(j), x_(n+1-j)] of the sorted values, with j the largest rank whose binomial(n, 1/2) coverage still reaches
    `confidence`. It assumes only independent draws, nothing about their distribution, which suits timings: passes on a
    shared CPU have long slow tails. With too few values for the confidence asked (fewer than 6 at 95%), both ends are
    nan.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise EllbenchError("median_interval needs a non-empty 1-D sequence of numbers")
    interval = quantile_test(values, q=float(np.median(values)), p=0.5).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def bh_q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family of tests, in the order given.

    q_(i) = min over j >= i of p_(j) m / j for the sorted p-values, capped at 1 (scipy's false_discovery_control):
    a cell with q < 0.05 is a discovery at a 5% false discovery rate across the family.
    """
    values = np.asarray(p_values, dtype=float)
    if values.ndim != 1:
        raise EllbenchError(f"q-values need a 1-d list of p-values, got shape {values.shape}")
    if values.size == 0:
        return values
    if not ((values >= 0) & (values <= 1)).all():
        raise EllbenchError("q-values need p-values in [0, 1]")
    return false_discovery_control(values, method="bh")
