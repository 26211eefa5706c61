"""Statistics over repeated runs (seeds, folds): mean / std summaries, Welch's and the paired t-test.

NaN policy: NaN values (a metric undefined in a run) are dropped before any statistic and
the returned ``n`` counts the finite values actually used. With fewer than two values the
sample standard deviation and the t-test are undefined and come back as NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the non-NaN values.

    Args:
        values: scalars, e.g. one metric over several seeds.

    Returns:
        ``(mean, std)``; the mean is NaN without values, the std is NaN with fewer than two.
    """
    arr = _finite(values)
    mean = float(arr.mean()) if arr.size else float("nan")
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return mean, std


def welch_ttest(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test of mean(a) == mean(b).

    ``t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` with Welch-Satterthwaite degrees of
    freedom (``scipy.stats.ttest_ind(equal_var=False)``). NaN values are dropped first.

    Returns:
        The p-value in [0, 1]; NaN if either group has fewer than two values or both groups
        have zero variance.
    """
    xa, xb = _finite(a), _finite(b)
    if xa.size < 2 or xb.size < 2:
        return float("nan")
    if xa.var(ddof=1) == 0 and xb.var(ddof=1) == 0:
        return float("nan")
    from scipy import stats  # imported here: 1 s that `cytobench eval` does not need

    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def paired_ttest(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of the paired t-test of mean(a - b) == 0 (``scipy.stats.ttest_rel``).

    For repeats that share everything but the compared factor, e.g. one trained model per seed
    post-processed with Soft-NMS (a) and Embedding-Guided NMS (b). Pairs with a NaN are dropped.

    Returns:
        The p-value in [0, 1]; NaN with fewer than two complete pairs or when every difference is
        the same (zero variance).
    """
    xa = np.asarray(list(a), dtype=np.float64).ravel()
    xb = np.asarray(list(b), dtype=np.float64).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples need equal lengths, got {xa.size} and {xb.size}")
    diff = (xa - xb)[~(np.isnan(xa) | np.isnan(xb))]
    if diff.size < 2 or diff.var(ddof=1) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def summarize_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float, int]]:
    """Summarise metric dicts of several runs key by key.

    Args:
        runs: one ``{metric: value}`` dict per run; keys missing in a run count as NaN.

    Returns:
        ``{metric: (mean, std, n)}`` over the union of keys (sorted), ``n`` = number of finite values.
    """
    keys = sorted({key for run in runs for key in run})
    out: dict[str, tuple[float, float, int]] = {}
    for key in keys:
        values = _finite(run.get(key, float("nan")) for run in runs)
        mean, std = mean_std(values)
        out[key] = (mean, std, int(values.size))
    return out


def compare_groups(
    a_runs: Sequence[Mapping[str, float]],
    b_runs: Sequence[Mapping[str, float]],
    keys: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Compare two groups of runs (e.g. baseline vs. method) metric by metric.

    Args:
        a_runs: metric dicts of group A, one per run.
        b_runs: metric dicts of group B.
        keys: metrics to compare; by default those present in both groups.

    Returns:
        ``{metric: {"mean_a", "std_a", "n_a", "mean_b", "std_b", "n_b", "p"}}`` with ``p`` the
        two-sided Welch p-value.
    """
    if keys is None:
        keys = sorted({k for r in a_runs for k in r} & {k for r in b_runs for k in r})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        va = _finite(run.get(key, float("nan")) for run in a_runs)
        vb = _finite(run.get(key, float("nan")) for run in b_runs)
        mean_a, std_a = mean_std(va)
        mean_b, std_b = mean_std(vb)
        out[key] = {
            "mean_a": mean_a,
            "std_a": std_a,
            "n_a": float(va.size),
            "mean_b": mean_b,
            "std_b": std_b,
            "n_b": float(vb.size),
            "p": welch_ttest(va, vb),
        }
    return out


__all__ = ["compare_groups", "mean_std", "paired_ttest", "summarize_runs", "welch_ttest"]
