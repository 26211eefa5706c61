"""Run statistics: mean / std and Welch's t-test against the hand formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from cytobench.evaluation import compare_groups, mean_std, paired_ttest, summarize_runs, welch_ttest


def welch_by_hand(a: list[float], b: list[float]) -> float:
    """t = (ma - mb) / sqrt(va/na + vb/nb), Welch-Satterthwaite df, two-sided p via the t CDF."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    # two-sided p = I_{df / (df + t^2)}(df / 2, 1 / 2) (regularised incomplete beta)
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def test_mean_std_sample_and_nan_safe() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    mean, std = mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


def test_welch_matches_hand_formula() -> None:
    a = [0.71, 0.69, 0.73, 0.70, 0.72]
    b = [0.66, 0.69, 0.61, 0.64]
    p = welch_ttest(a, b)
    assert p == pytest.approx(welch_by_hand(a, b), rel=1e-10)
    assert 0.0 < p < 0.05
    assert welch_ttest(b, a) == pytest.approx(p)  # two-sided
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(0, 1, 6).tolist(), rng.normal(0.5, 2, 9).tolist()
        assert welch_ttest(x, y) == pytest.approx(welch_by_hand(x, y), rel=1e-10)


def test_welch_undefined_cases() -> None:
    assert math.isnan(welch_ttest([1.0], [2.0, 3.0]))
    assert math.isnan(welch_ttest([1.0, 1.0], [2.0, 2.0]))
    assert welch_ttest([1.0, 2.0, float("nan"), 3.0], [4.0, 5.0, 6.0]) == pytest.approx(
        welch_by_hand([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    )


def test_summarize_runs_and_compare_groups() -> None:
    runs = [{"wcr": 0.6, "aer": 0.02}, {"wcr": 0.7, "aer": float("nan")}, {"wcr": 0.8}]
    summary = summarize_runs(runs)
    assert summary["wcr"] == (pytest.approx(0.7), pytest.approx(0.1), 3)
    assert summary["aer"][0] == 0.02 and math.isnan(summary["aer"][1]) and summary["aer"][2] == 1
    a_runs = [{"wcr": v, "only_a": 1.0} for v in (0.61, 0.63, 0.60)]
    b_runs = [{"wcr": v} for v in (0.70, 0.72, 0.69, 0.71)]
    result = compare_groups(a_runs, b_runs)
    assert list(result) == ["wcr"]
    row = result["wcr"]
    assert row["mean_a"] == pytest.approx(0.6133333333) and row["n_b"] == 4
    assert row["std_b"] == pytest.approx(np.std([0.70, 0.72, 0.69, 0.71], ddof=1))
    assert row["p"] == pytest.approx(welch_by_hand([0.61, 0.63, 0.60], [0.70, 0.72, 0.69, 0.71]))
    assert math.isnan(compare_groups(a_runs, b_runs, keys=["only_a"])["only_a"]["p"])


def test_paired_ttest_matches_hand_formula() -> None:
    a = [0.70, 0.72, 0.68, 0.75, 0.71]
    b = [0.66, 0.70, 0.67, 0.70, 0.69]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    p_hand = 2 * stats.t.sf(abs(t), df=d.size - 1)
    assert paired_ttest(a, b) == pytest.approx(p_hand, rel=1e-10)
    # pairing matters: the same numbers unpaired are far less significant
    assert paired_ttest(a, b) < welch_ttest(a, b)


def test_paired_ttest_undefined_and_bad_cases() -> None:
    assert math.isnan(paired_ttest([1.0, 2.0], [0.0, 1.0]))  # constant difference
    assert math.isnan(paired_ttest([1.0, float("nan")], [0.0, 1.0]))  # one complete pair
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ttest([1.0, 2.0], [1.0])
