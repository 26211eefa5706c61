"""Mosaicism corrected for counting errors: EM unmixing and its bootstrap interval.

Model: a sample's observed pattern counts ``o`` (``P`` patterns) follow ``Multinomial(N, p @ M)`` where
``p`` (``K``) is the karyotype mix and ``M`` (``K x P``) the confusion matrix ``P(pattern | karyotype)``
measured on simulated nuclei. The point estimate is the maximum-likelihood ``p`` (EM on the simplex).

Interval: the wider (union) of two percentile bootstraps, each redrawing the sample and the calibration:

* **parametric**: sample counts from the fitted model and confusion rows from their calibration counts,
  both slightly smoothed (half a nucleus per karyotype, 1/P of a count per calibration pattern) so that a
  level estimated at exactly 0 still gets an upper bound above 0;
* **image clusters** (when the sample's nuclei carry their image, and the matrix its per-image counts):
  whole images are resampled with replacement, in the sample and in the calibration set. Signal
  detection errors are correlated within an image (its probe brightness, focus and background are shared),
  so the multinomial model alone understates the spread; resampling images keeps that correlation.

Patterns never seen in calibration cannot be explained by any karyotype; their nuclei are left out of the
fit and reported as ``unexplained``. With no nucleus left to fit, every level is undefined (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cytobench.fish.intervals import wilson_interval
from cytobench.fish.mosaicism import ConfusionMatrix, KaryotypeLevel, MosaicismEstimate

__all__ = ["corrected_estimate", "unmix_patterns"]

_ZERO = 1e-6  # EM converges slowly to the boundary: fractions below this are zero


def unmix_patterns(
    observed: np.ndarray, probabilities: np.ndarray, n_iter: int = 2000, tol: float = 1e-10
) -> np.ndarray:
    """Maximum-likelihood mix ``p`` of ``observed ~ Multinomial(N, p @ M)`` by EM on the simplex.

    Args:
        observed: ``(..., P)`` pattern counts (a leading batch axis fits several samples at once).
        probabilities: ``(..., K, P)`` rows ``P(pattern | class)``, broadcast against ``observed``.
        n_iter: maximum EM iterations.
        tol: stop when no class fraction changes by more than this.

    Returns:
        ``(..., K)`` fractions summing to 1 (uniform when nothing is observed).
    """
    obs = np.asarray(observed, np.float64)
    m = np.asarray(probabilities, np.float64)
    total = obs.sum(axis=-1, keepdims=True)
    k = m.shape[-2]
    p = np.full((*np.broadcast_shapes(obs.shape[:-1], m.shape[:-2]), k), 1.0 / k)
    share = obs / np.maximum(total, 1e-300)
    for _ in range(n_iter):
        q = np.einsum("...k,...kp->...p", p, m)
        ratio = np.divide(share, q, out=np.zeros_like(q), where=q > 0)
        new = p * np.einsum("...kp,...p->...k", m, ratio)
        new /= np.maximum(new.sum(axis=-1, keepdims=True), 1e-300)
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def _normalise_rows(counts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Row-normalise ``(..., K, P)`` counts; an empty row takes the ``fallback`` row."""
    totals = counts.sum(axis=-1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1), fallback)


def corrected_estimate(
    red: np.ndarray,
    green: np.ndarray,
    confusion: ConfusionMatrix,
    plain: dict[str, int],
    groups: Sequence[Any] | np.ndarray | None,
    confidence: float,
    n_boot: int,
    seed: int,
) -> MosaicismEstimate:
    """EM estimate and bootstrap interval (see the module docstring).

    Args:
        red: ``(N,)`` red counts per whole nucleus.
        green: ``(N,)`` green counts.
        confusion: the counting-error matrix.
        plain: exact-pattern nucleus count per karyotype (reported beside the estimate).
        groups: ``(N,)`` image of each nucleus, or None.
        confidence: interval level.
        n_boot: replicates per bootstrap.
        seed: seeds the ``numpy.random.Generator``.
    """
    n_total = int(red.size)
    probs = confusion.probabilities
    seen = confusion.counts.sum(axis=0) > 0  # patterns that occurred in calibration
    index = confusion.pattern_index(red, green)
    observed = np.bincount(index, minlength=probs.shape[1])
    unexplained = int(observed[~seen].sum())
    observed = np.where(seen, observed, 0)
    n = int(observed.sum())
    lo_u, hi_u = wilson_interval(unexplained, n_total, confidence)
    frac_u = unexplained / n_total if n_total else float("nan")
    other = KaryotypeLevel("unexplained", frac_u, float(lo_u), float(hi_u), unexplained)
    if n == 0:  # nothing to unmix: EM would return its uniform start, which is no estimate
        nan = float("nan")
        levels = [KaryotypeLevel(k, nan, nan, nan, plain.get(k, 0)) for k in confusion.karyotypes]
        return MosaicismEstimate(n_total, "corrected", "undefined (no nuclei to unmix)", levels, other)
    p_hat = unmix_patterns(observed, probs)
    p_hat = np.where(p_hat < _ZERO, 0.0, p_hat)
    rng = np.random.default_rng(seed)

    smooth = confusion.counts + np.where(seen, 1.0 / max(int(seen.sum()), 1), 0.0)
    smooth = smooth / smooth.sum(axis=1, keepdims=True)
    row_totals = confusion.counts.sum(axis=1)
    boot_m = np.stack(
        [rng.multinomial(t, row, size=n_boot) / max(t, 1) for t, row in zip(row_totals, smooth)], axis=1
    )  # (B, K, P)
    p_gen = (n * p_hat + 0.5) / (n + 0.5 * len(p_hat))
    q_gen = p_gen @ smooth
    boot_obs = rng.multinomial(n, q_gen / q_gen.sum(), size=n_boot)
    replicates = [unmix_patterns(boot_obs, boot_m, n_iter=1000, tol=1e-8)]
    label = "parametric"

    keys = list(groups) if groups is not None else []
    if len(set(keys)) >= 2:
        ids = {g: i for i, g in enumerate(dict.fromkeys(keys))}
        per_image = np.zeros((len(ids), probs.shape[1]))
        np.add.at(per_image, (np.array([ids[g] for g in keys]), index), 1.0)
        per_image[:, ~seen] = 0.0
        pick = rng.integers(0, len(ids), size=(n_boot, len(ids)))
        obs_c = per_image[pick].sum(axis=1)
        m_c = boot_m
        cal = confusion.image_counts
        if cal is not None and len(cal) >= 2:
            pick_cal = rng.integers(0, len(cal), size=(n_boot, len(cal)))
            m_c = _normalise_rows(cal[pick_cal].sum(axis=1).astype(np.float64), probs)
        replicates.append(unmix_patterns(obs_c, m_c, n_iter=1000, tol=1e-8))
        label = "union of parametric and image-cluster"
    alpha = 1.0 - confidence
    lower, upper = p_hat.copy(), p_hat.copy()
    for boot_p in replicates:
        boot_p = np.where(boot_p < _ZERO, 0.0, boot_p)
        lo, hi = np.quantile(boot_p, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
        lower, upper = np.minimum(lower, lo), np.maximum(upper, hi)
    levels = [
        KaryotypeLevel(name, float(p_hat[i]), float(lower[i]), float(upper[i]), plain.get(name, 0))
        for i, name in enumerate(confusion.karyotypes)
    ]
    text = f"{label} bootstrap {confidence:.0%} ({n_boot} replicates each, sample + calibration)"
    return MosaicismEstimate(n_total, "corrected", text, levels, other)
