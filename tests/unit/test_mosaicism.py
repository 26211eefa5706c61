"""Mosaicism maths: binomial intervals (hand-checked, coverage, edges), patterns, EM unmixing, bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cytobench.errors import BadInputError
from cytobench.fish.corrected import unmix_patterns
from cytobench.fish.mosaicism import (
    ConfusionMatrix,
    clopper_pearson_interval,
    estimate_mosaicism,
    measure_confusion,
    pattern_fractions,
    wilson_interval,
)

Z2 = 1.959963984540054**2


def test_wilson_hand_checked() -> None:
    # 5/100: centre (0.05 + z^2/200) / (1 + z^2/100), half z sqrt(0.05*0.95/100 + z^2/40000) / (1 + z^2/100)
    lo, hi = wilson_interval(5, 100)
    assert float(lo) == pytest.approx(0.021544, abs=1e-6)
    assert float(hi) == pytest.approx(0.111750, abs=1e-6)
    # 0/n and n/n have closed forms: [0, z^2/(n+z^2)] and [n/(n+z^2), 1]
    lo, hi = wilson_interval(0, 10)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(Z2 / (10 + Z2), rel=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert float(lo) == pytest.approx(10 / (10 + Z2), rel=1e-12) and float(hi) == 1.0
    lo, hi = wilson_interval([0, 3], [0, 6])  # n = 0 is undefined; 3/6 is symmetric about 1/2
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    assert lo[1] + hi[1] == pytest.approx(1.0)


def test_clopper_pearson_hand_checked() -> None:
    lo, hi = clopper_pearson_interval(0, 10)  # upper = 1 - (alpha/2)^(1/n)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = clopper_pearson_interval(10, 10)
    assert float(lo) == pytest.approx(0.025 ** (1 / 10), rel=1e-9) and float(hi) == 1.0
    lo, hi = clopper_pearson_interval(5, 100)
    assert float(lo) == pytest.approx(0.016432, abs=1e-6) and float(hi) == pytest.approx(0.112835, abs=1e-6)
    w_lo, w_hi = wilson_interval(5, 100)
    assert lo < w_lo and hi > w_hi  # the exact interval is the wider (conservative) one here


@pytest.mark.parametrize("p", [0.05, 0.13, 0.5])
def test_wilson_coverage_on_simulated_binomials(p: float) -> None:
    rng = np.random.default_rng(1)
    n, repeats = 200, 4000
    k = rng.binomial(n, p, size=repeats)
    lo, hi = wilson_interval(k, n)
    coverage = float(np.mean((lo <= p) & (p <= hi)))
    assert 0.93 <= coverage <= 0.97, coverage  # binomial sd of the coverage estimate is 0.0034
    lo, hi = clopper_pearson_interval(k, n)
    assert float(np.mean((lo <= p) & (p <= hi))) >= 0.945


def test_pattern_fractions_counts_and_order() -> None:
    red = [2, 2, 3, 2, 2, 1, 2, 3]
    green = [2, 2, 2, 1, 2, 2, 2, 2]
    rows = pattern_fractions(red, green)
    assert [(r.name, r.count) for r in rows] == [("2R2G", 4), ("3R2G", 2), ("1R2G", 1), ("2R1G", 1)]
    assert rows[0].fraction == 0.5 and rows[0].n == 8
    lo, hi = wilson_interval(4, 8)
    assert rows[0].lower == pytest.approx(float(lo)) and rows[0].upper == pytest.approx(float(hi))
    assert pattern_fractions([], []) == []


def test_plain_estimate_counts_exact_patterns() -> None:
    red = np.array([2] * 90 + [3] * 6 + [2] * 3 + [4] * 1)
    green = np.array([2] * 90 + [2] * 6 + [1] * 3 + [2] * 1)
    est = estimate_mosaicism(red, green)
    assert est.method == "plain" and est.n_nuclei == 100
    assert est.level("trisomy21").count == 6 and est.level("trisomy21").fraction == 0.06
    assert est.level("monosomyX").fraction == 0.03 and est.level("normal").fraction == 0.90
    assert est.other.count == 1  # 4R2G matches no karyotype
    lo, hi = wilson_interval(6, 100)
    assert est.level("trisomy21").lower == pytest.approx(float(lo))
    assert est.level("trisomy21").upper == pytest.approx(float(hi))
    all_normal = estimate_mosaicism([2] * 50, [2] * 50)
    assert all_normal.level("normal").upper == 1.0 and all_normal.level("trisomy21").lower == 0.0


def test_unmix_recovers_mix_from_expected_counts() -> None:
    m = np.array([[0.8, 0.1, 0.1, 0.0], [0.1, 0.7, 0.0, 0.2], [0.2, 0.0, 0.8, 0.0]])
    p = np.array([0.85, 0.1, 0.05])
    observed = 1e6 * (p @ m)  # the exact expected counts: the MLE is the truth
    np.testing.assert_allclose(unmix_patterns(observed, m, tol=1e-13, n_iter=20000), p, atol=1e-5)
    # identity confusion: the MLE is the plain fraction
    np.testing.assert_allclose(unmix_patterns(np.array([3.0, 1.0]), np.eye(2)), [0.75, 0.25], atol=1e-9)


def _confusion_from_truth(rng: np.random.Generator, n_per_class: int) -> tuple[ConfusionMatrix, dict]:
    """Calibration: each signal is missed with probability 0.1 (drawn per nucleus)."""
    names = {"normal": (2, 2), "trisomy21": (3, 2), "monosomyX": (2, 1)}
    truth, red, green = [], [], []
    for name, (r, g) in names.items():
        truth += [name] * n_per_class
        red.append(rng.binomial(r, 0.9, size=n_per_class))
        green.append(rng.binomial(g, 0.9, size=n_per_class))
    return measure_confusion(truth, np.concatenate(red), np.concatenate(green)), names


def test_corrected_estimate_removes_the_missed_signal_bias() -> None:
    rng = np.random.default_rng(2)
    confusion, names = _confusion_from_truth(rng, 3000)
    assert confusion.karyotypes == ["normal", "trisomy21", "monosomyX"]
    assert confusion.counts.sum() == 9000
    # P(2R2G | normal) = 0.9^4
    assert confusion.probabilities[0, confusion.pattern_index(2, 2)] == pytest.approx(0.9**4, abs=0.02)
    mix = {"normal": 0.8, "trisomy21": 0.12, "monosomyX": 0.08}
    kinds = rng.choice(list(mix), p=list(mix.values()), size=1500)
    red = np.array([rng.binomial(names[k][0], 0.9) for k in kinds])
    green = np.array([rng.binomial(names[k][1], 0.9) for k in kinds])
    plain = estimate_mosaicism(red, green)
    fixed = estimate_mosaicism(red, green, confusion=confusion, n_boot=300, seed=0)
    # a missed green dot makes a normal nucleus look like X monosomy: the plain level is far too high
    assert plain.level("monosomyX").lower > 0.15
    for name, true in mix.items():
        level = fixed.level(name)
        assert level.lower <= true <= level.upper, (name, level)
        assert level.upper - level.lower < 0.12
    assert sum(lv.fraction for lv in fixed.levels) == pytest.approx(1.0)


def test_confusion_round_trip_and_bad_file(tmp_path) -> None:
    confusion = measure_confusion(["normal", "trisomy21"], [2, 3], [2, 9], max_count=4)
    assert confusion.counts[1, confusion.pattern_index(3, 4)] == 1  # 9 greens clipped to 4
    back = ConfusionMatrix.load(confusion.save(tmp_path / "c.json"))
    np.testing.assert_array_equal(back.counts, confusion.counts)
    (tmp_path / "bad.json").write_text('{"karyotypes": ["a"], "counts": [[1, 2]]}')
    with pytest.raises(BadInputError, match=r"bad\.json: counts must be 1 x 25"):
        ConfusionMatrix.load(tmp_path / "bad.json")


@pytest.mark.slow
def test_corrected_interval_coverage_over_repeats() -> None:
    """Calibration of 1000 nuclei per karyotype, samples of 500 nuclei, 10% of signals missed."""
    names = {"normal": (2, 2), "trisomy21": (3, 2), "monosomyX": (2, 1)}
    mix = {"normal": 0.87, "trisomy21": 0.08, "monosomyX": 0.05}
    repeats, hits = 60, dict.fromkeys(mix, 0)
    for rep in range(repeats):
        rng = np.random.default_rng([7, rep])
        truth = [k for k in names for _ in range(1000)]
        red = np.concatenate([rng.binomial(names[k][0], 0.9, 1000) for k in names])
        green = np.concatenate([rng.binomial(names[k][1], 0.9, 1000) for k in names])
        confusion = measure_confusion(truth, red, green)
        kinds = rng.choice(list(mix), p=list(mix.values()), size=500)
        r = np.array([rng.binomial(names[k][0], 0.9) for k in kinds])
        g = np.array([rng.binomial(names[k][1], 0.9) for k in kinds])
        est = estimate_mosaicism(r, g, confusion=confusion, n_boot=300, seed=rep)
        for name, true in mix.items():
            hits[name] += est.level(name).lower <= true <= est.level(name).upper
    for name, hit in hits.items():  # 95% nominal; 60 repeats give a binomial sd of 0.028
        assert hit / repeats >= 0.85, (name, hit)


def test_image_clusters_widen_the_corrected_interval(tmp_path) -> None:
    """Detection rates that vary per image (shared brightness) make counts overdispersed."""
    names = {"normal": (2, 2), "trisomy21": (3, 2), "monosomyX": (2, 1)}
    rng = np.random.default_rng(4)

    def nuclei(n_images: int, mix: dict[str, float]) -> tuple[list, np.ndarray, np.ndarray, list]:
        kinds, red, green, image = [], [], [], []
        for i in range(n_images):
            hit = rng.uniform(0.7, 1.0)  # this image's detection probability per signal
            for k in rng.choice(list(mix), p=list(mix.values()), size=20):
                kinds.append(k)
                red.append(rng.binomial(names[k][0], hit))
                green.append(rng.binomial(names[k][1], hit))
                image.append(i)
        return kinds, np.array(red), np.array(green), image

    kinds, red, green, image = nuclei(20, {k: 1 / 3 for k in names})
    confusion = measure_confusion(kinds, red, green, groups=image)
    assert confusion.image_counts.shape == (20, 3, 25)
    np.testing.assert_array_equal(confusion.image_counts.sum(axis=0), confusion.counts)
    back = ConfusionMatrix.load(confusion.save(tmp_path / "c.json"))
    np.testing.assert_array_equal(back.image_counts, confusion.image_counts)
    _, r, g, img = nuclei(10, {"normal": 0.8, "trisomy21": 0.1, "monosomyX": 0.1})
    flat = estimate_mosaicism(r, g, confusion=confusion, n_boot=400, seed=1)
    clustered = estimate_mosaicism(r, g, confusion=confusion, n_boot=400, seed=1, groups=img)
    assert clustered.interval.startswith("union of parametric and image-cluster")
    for name in names:
        a, b = flat.level(name), clustered.level(name)
        assert a.fraction == b.fraction  # same point estimate
        assert b.lower <= a.lower and b.upper >= a.upper  # the union is never narrower
    width = sum(clustered.level(k).upper - clustered.level(k).lower for k in names)
    assert width > 1.1 * sum(flat.level(k).upper - flat.level(k).lower for k in names)


def test_no_whole_nuclei_gives_undefined_levels_not_a_made_up_mix() -> None:
    """Zero nuclei: every level is NaN (json null), plain and corrected; EM's uniform start is no estimate."""
    confusion = measure_confusion(["normal", "trisomy21", "monosomyX"] * 4, [2, 3, 2] * 4, [2, 2, 1] * 4)
    for est in (
        estimate_mosaicism([], []),
        estimate_mosaicism([], [], confusion=confusion, n_boot=50),
        estimate_mosaicism([7], [7], confusion=confusion, n_boot=50),  # only a never-calibrated pattern
    ):
        assert [lv.karyotype for lv in est.levels] == ["normal", "trisomy21", "monosomyX"]
        assert all(np.isnan([lv.fraction, lv.lower, lv.upper]).all() for lv in est.levels)
        data = est.to_json()
        assert all(lv[k] is None for lv in data["levels"] for k in ("fraction", "lower", "upper"))
        json.dumps(data, allow_nan=False)  # valid json: null, never NaN
    unexplained = estimate_mosaicism([7], [7], confusion=confusion, n_boot=50).other
    assert unexplained.count == 1 and unexplained.fraction == 1.0
    assert estimate_mosaicism([], []).to_json()["other"]["fraction"] is None
