"""Paired statistics against hand-worked cases, exact enumeration and an index-resampling bootstrap."""

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ellbench.errors import EllbenchError
from ellbench.stats import (
    bh_q_values,
    compare_paired,
    compare_paired_by,
    mcnemar_exact,
    mcnemar_p_value,
    median_interval,
    paired_bootstrap_ci,
    summarize_seeds,
)


def outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes with the given contingency counts."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array(a), np.array(b)


def exact_two_sided(only_a: int, only_b: int) -> Fraction:
    """Textbook exact McNemar: twice the smaller binomial tail with p = 1/2, capped at 1 (in exact fractions)."""
    n = only_a + only_b
    tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(min(only_a, only_b) + 1))
    return min(Fraction(1), 2 * tail)


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (1, 5, 14 / 64),  # P[X <= 1] for n=6 is (1 + 6) / 64
        (5, 1, 14 / 64),
        (0, 10, 2 / 1024),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),
    ],
)
def test_mcnemar_hand_worked(only_a, only_b, expected):
    assert mcnemar_p_value(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_exact_fractions_on_larger_counts():
    for only_a, only_b in [(17, 31), (40, 41), (0, 57), (120, 90)]:
        assert mcnemar_p_value(only_a, only_b) == pytest.approx(float(exact_two_sided(only_a, only_b)), rel=1e-9)


def test_mcnemar_counts_discordant_pairs_only():
    a, b = outcomes(both=50, only_a=1, only_b=5, neither=40)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (1, 5)
    assert result.p_value == pytest.approx(14 / 64)


def test_bootstrap_hand_worked_single_discordant_example():
    # d = (+1, 0 x 9): the resampled count of +1 is Binomial(10, 0.1), whose CDF is 0.349, 0.736, 0.930, 0.987 at
    # 0..3, so the 2.5% quantile of the mean is 0 and the 97.5% quantile 0.3.
    a, b = outcomes(both=0, only_a=1, only_b=0, neither=9)
    interval = paired_bootstrap_ci(a, b, seed=0)
    assert interval.diff == pytest.approx(0.1)
    assert (interval.low, interval.high) == (pytest.approx(0.0), pytest.approx(0.3))


def test_bootstrap_degenerate_cases_are_exact():
    same = paired_bootstrap_ci(*outcomes(both=7, only_a=0, only_b=0, neither=3), seed=0)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    all_a = paired_bootstrap_ci(*outcomes(both=0, only_a=6, only_b=0, neither=0), seed=0)
    assert (all_a.diff, all_a.low, all_a.high) == (1.0, 1.0, 1.0)


def test_bootstrap_agrees_with_index_resampling_and_normal_approximation():
    a, b = outcomes(both=1200, only_a=200, only_b=100, neither=500)  # n = 2000, diff = 0.05
    interval = paired_bootstrap_ci(a, b, seed=3, n_resamples=4000)

    rng = np.random.default_rng(11)  # the textbook paired bootstrap: resample example indices
    diffs = []
    for _ in range(4000):
        picked = rng.integers(0, a.size, a.size)
        diffs.append(a[picked].mean() - b[picked].mean())
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert interval.low == pytest.approx(low, abs=0.002)
    assert interval.high == pytest.approx(high, abs=0.002)

    # Var(mean d) = (P(d != 0) - diff^2) / n for d in {-1, 0, 1}
    half_width = 1.959964 * math.sqrt((0.15 - 0.05**2) / 2000)
    assert interval.low == pytest.approx(0.05 - half_width, abs=0.002)
    assert interval.high == pytest.approx(0.05 + half_width, abs=0.002)


def test_bootstrap_is_reproducible_by_seed():
    a, b = outcomes(both=30, only_a=9, only_b=4, neither=7)
    # few resamples, so that the quantiles move with the draw (with many they settle on the same grid points)
    runs = [paired_bootstrap_ci(a, b, seed=seed, n_resamples=20) for seed in (5, 5, 6, 7, 8)]
    assert runs[0] == runs[1]
    assert any(run != runs[0] for run in runs[2:])


def test_compare_paired_uses_only_shared_examples():
    rows_a = pd.DataFrame({"idx": [0, 1, 2, 3, 9], "correct": [True, True, False, True, True]})
    rows_b = pd.DataFrame({"idx": [3, 2, 1, 0, 7], "correct": [False, False, False, True] + [False]})
    result = compare_paired(rows_a, rows_b, seed=0)
    # shared idx 0..3: a = 1,1,0,1 and b = 1,0,0,0
    assert result.n == 4
    assert (result.accuracy_a, result.accuracy_b, result.diff) == (0.75, 0.25, 0.5)
    assert (result.only_a, result.only_b) == (2, 0)
    assert result.p_value == pytest.approx(0.5)


def test_compare_paired_by_group_keeps_empty_eps():
    rows_a = pd.DataFrame(
        {
            "attack": ["none", "none", "pgd", "pgd"],
            "eps": [None, None, 0.1, 0.1],
            "idx": [0, 1, 0, 1],
            "correct": [1, 1, 1, 0],
        }
    )
    rows_b = rows_a.assign(correct=[1, 0, 0, 0])
    table = compare_paired_by(rows_a, rows_b, ["attack", "eps"], seed=0)
    assert list(table["attack"]) == ["none", "pgd"]
    assert list(table["diff"]) == [0.5, 0.5]
    assert list(table["only_a"]) == [1, 1]


def test_bad_inputs_are_refused():
    with pytest.raises(EllbenchError, match="equal length"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(EllbenchError, match="0/1"):
        mcnemar_exact([2, 0], [1, 0])
    with pytest.raises(EllbenchError, match="no examples"):
        compare_paired(pd.DataFrame({"idx": [0], "correct": [1]}), pd.DataFrame({"idx": [1], "correct": [1]}), seed=0)
    with pytest.raises(EllbenchError, match="more than one row"):
        compare_paired(
            pd.DataFrame({"idx": [0, 0], "correct": [1, 0]}), pd.DataFrame({"idx": [0], "correct": [1]}), seed=0
        )


def test_summarize_seeds_per_group():
    frame = pd.DataFrame({"model": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "accuracy": [0.70, 0.72, 0.74, 0.6]})
    table = summarize_seeds(frame, ["model"], "accuracy").set_index("model")
    assert table.loc["a", "mean"] == pytest.approx(0.72)
    assert table.loc["a", "std"] == pytest.approx(0.02)
    assert table.loc["a", "n"] == 3
    assert math.isnan(table.loc["b", "std"]) and table.loc["b", "n"] == 1


def test_reference_tables_name_real_models_and_known_protocols():
    # The shipped tables that paired comparisons and reports are read beside (reports/reference/README.md).
    import timm

    import ellbench  # noqa: F401  (registers ellbench's models)
    from ellbench.resources import resource_dir

    columns = ["model", "metric", "attack", "eps", "value", "source", "protocol", "notes"]
    tables = sorted(resource_dir("reference").glob("*_repo_logs.csv"))
    assert [path.name for path in tables] == ["elliptical_repo_logs.csv", "rkde_repo_logs.csv"]
    for path in tables:
        table = pd.read_csv(path)
        assert list(table.columns) == columns
        assert table["value"].notna().all() and (table["value"] > 0).all()
        assert set(table["protocol"]) <= {"paper", "clean", "unclear", "wikitext103-wordswap"}
        vision = table[table["protocol"] != "wikitext103-wordswap"]
        assert set(vision["attack"]) <= {"clean", "PGD", "FGSM", "SPSA-cleverhans", "AutoAttack"}
        assert (vision["value"] <= 100).all()  # accuracies in percent
        assert vision["model"].str.split("+").str[0].map(timm.is_model).all()
        budgets = table["eps"].dropna() * 255
        assert np.allclose(budgets, budgets.round()) and budgets.between(1, 6).all()  # i/255, i = 1..6


def test_bh_q_values_hand_worked():
    # p = 0.01, 0.04, 0.03, 0.5 (m = 4). Sorted with ranks 1..4: 0.01, 0.03, 0.04, 0.5; p * m / rank gives
    # 0.04, 0.06, 0.05333, 0.5; the running minimum from the largest rank down gives q = 0.04, 0.05333, 0.05333, 0.5,
    # returned in the original order.
    q = bh_q_values([0.01, 0.04, 0.03, 0.5])
    assert q.tolist() == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert bh_q_values([0.9, 0.95]).tolist() == pytest.approx([0.95, 0.95])  # 0.9 * 2 / 1 = 1.8 is capped by 0.95
    assert bh_q_values([]).size == 0
    with pytest.raises(EllbenchError, match="in \\[0, 1\\]"):
        bh_q_values([0.5, 1.5])


def test_median_interval_hand_worked_order_statistics():
    # n = 21: P(Binomial(21, 1/2) <= 5) = 27896 / 2^21 = 0.0133 and P(<= 6) = 82160 / 2^21 = 0.0392. The interval
    # [x_(j), x_(22-j)] misses the median with probability 2 P(B <= j - 1): j = 6 gives 0.027 (coverage 0.973), j = 7
    # would give 0.078 (coverage 0.922 < 0.95), so the interval is [x_(6), x_(16)].
    values = np.random.default_rng(3).permutation(np.arange(1.0, 22.0)) / 10  # 0.1 .. 2.1, shuffled
    assert median_interval(values) == pytest.approx((0.6, 1.6))
    # n = 7: j = 1 covers 1 - 2 / 128 = 0.984, j = 2 only 1 - 2 * 8 / 128 = 0.875, so the whole range.
    assert median_interval([5.0, 1.0, 4.0, 2.0, 7.0, 3.0, 6.0]) == pytest.approx((1.0, 7.0))
    # At 80% the n = 7 interval narrows to j = 2: coverage 0.875 >= 0.8.
    assert median_interval([5.0, 1.0, 4.0, 2.0, 7.0, 3.0, 6.0], confidence=0.8) == pytest.approx((2.0, 6.0))
    # n = 5: even the whole range covers only 1 - 2 / 32 = 0.9375 < 0.95, so no interval exists.
    assert all(np.isnan(end) for end in median_interval([1.0, 2.0, 3.0, 4.0, 5.0]))
    with pytest.raises(EllbenchError, match="non-empty"):
        median_interval([])
