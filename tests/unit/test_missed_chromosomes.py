"""experiments/karyotype/missed_chromosomes.py: why chromosomes are missed, on a hand-built cell."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "missed_chromosomes", ROOT / "experiments" / "karyotype" / "missed_chromosomes.py"
)
missed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(missed)

# six chromosomes 10 px wide: one alone and found, an overlapping pair (box IoU 2/3) boxed once, a touching
# pair (IoU 1/19) one boxed below the threshold and one by a part of it, one alone and never seen
TRUTH = np.array(
    [[0, 0, 10, 10], [20, 0, 30, 10], [22, 0, 32, 10], [50, 0, 60, 10], [59, 0, 69, 10], [80, 0, 90, 10]],
    float,
)
CLASSES = np.array([1, 21, 23, 5, 24, 13])
DETECTIONS = np.array([[0, 0, 10, 10], [21, 0, 31, 10], [50, 0, 60, 10], [59, 0, 63, 10]], float)
SCORES = np.array([0.9, 0.8, 0.3, 0.9])


def test_each_miss_gets_its_reason_and_crowding() -> None:
    records = missed.image_records(TRUTH, CLASSES, DETECTIONS, SCORES, score_thr=0.5)
    assert [r["found"] for r in records] == [True, True, False, False, False, False]
    # -1 found; 0 its box went to the neighbour (tie: the lower index takes it); 1 only a box below the
    # threshold; 2 best IoU 0.4; 3 nothing near
    assert [r["why"] for r in records] == [-1, -1, 0, 1, 2, 3]
    assert [r["crowding"] for r in records] == pytest.approx([0, 2 / 3, 2 / 3, 1 / 19, 1 / 19, 0])


def test_miss_table_splits_by_crowding_group_and_reason() -> None:
    rows = {
        name: (n, k)
        for name, n, k in missed.miss_table(missed.image_records(TRUTH, CLASSES, DETECTIONS, SCORES, 0.5))
    }
    assert rows["all"] == (6, 4)
    assert rows["free-standing"] == (2, 1)
    assert rows["touching (IoU <= 0.1)"] == (2, 2)
    assert rows["overlapping (> 0.1)"] == (2, 1)
    assert rows["group A"] == (1, 0) and rows["group G"] == (1, 0) and rows["group B"] == (1, 1)
    assert rows["group X"] == (1, 1) and rows["group Y"] == (1, 1) and rows["group D"] == (1, 1)
    assert [rows[f"missed: {name}"] for name in missed.WHY_MISSED] == [(4, 1)] * 4


def test_a_lower_threshold_finds_the_box_below_it() -> None:
    records = missed.image_records(TRUTH, CLASSES, DETECTIONS, SCORES, score_thr=0.2)
    assert [r["why"] for r in records] == [-1, -1, 0, -1, 2, 3]


def test_an_image_without_detections_misses_everything_unseen() -> None:
    records = missed.image_records(TRUTH, CLASSES, np.zeros((0, 4)), np.zeros(0), 0.5)
    assert [r["why"] for r in records] == [3] * 6
