"""Precision / recall at the best-F1 operating point (FISH Table 1) on hand-computed cases."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cytobench.errors import BadInputError
from cytobench.evaluation.operating_point import (
    best_f1_operating_point,
    greedy_match,
    match_coco_detections,
    precision_recall_at_best_f1,
)
from cytobench.io.coco_convert import encode_mask


# ------------------------------------------------------------------------------------------ greedy matching
def test_greedy_match_takes_the_highest_unmatched_iou_in_row_order() -> None:
    # rows in descending score: the first detection takes gt 1 (0.9 > 0.6); the second would prefer gt 1
    # too but it is taken, so it falls back to gt 0 (0.55 >= 0.5); the third has nothing left above 0.5
    ious = np.array([[0.6, 0.9], [0.55, 0.95], [0.7, 0.0]])
    assert greedy_match(ious, 0.5).tolist() == [True, True, False]
    # at 0.56 the second detection's fallback (0.55) misses, so gt 0 is left for the third (0.7)
    assert greedy_match(ious, 0.56).tolist() == [True, False, True]


def test_greedy_match_threshold_is_inclusive_and_ties_go_to_the_lowest_index() -> None:
    assert greedy_match(np.array([[0.5]]), 0.5).tolist() == [True]
    assert greedy_match(np.array([[0.4999]]), 0.5).tolist() == [False]
    # equal IoU with two ground truths: the first detection takes gt 0, the second gt 1
    assert greedy_match(np.array([[0.7, 0.7], [0.7, 0.7]]), 0.5).tolist() == [True, True]
    assert greedy_match(np.zeros((2, 0)), 0.5).tolist() == [False, False]
    assert greedy_match(np.zeros((0, 3)), 0.5).tolist() == []


# ------------------------------------------------------------------------------------------ operating point
def test_best_f1_operating_point_by_hand() -> None:
    # class 1: 2 objects, detections TP (0.9), FP (0.8), TP (0.7)
    # t=0.9: P 1, R 1/2, F1 2/3; t=0.8: P 1/2, R 1/2, F1 1/2; t=0.7: P 2/3, R 1, F1 4/5 (best)
    matches = {1: (np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)}
    out = best_f1_operating_point(matches)
    assert out == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "conf": 0.7})


def test_best_f1_is_the_class_mean_and_empty_classes_have_precision_one() -> None:
    # class 1: TP (0.9), FP (0.5) over 1 object: t=0.9 F1 1; t=0.5 P 1/2, R 1, F1 2/3.
    # class 2: 1 object, no detection: P 1 (nothing kept), R 0, F1 0 at every threshold.
    # class 3 has no ground truth: left out of the means (its 0.95 is not a candidate threshold).
    matches = {
        1: (np.array([0.9, 0.5]), np.array([True, False]), 1),
        2: (np.zeros(0), np.zeros(0, dtype=bool), 1),
        3: (np.array([0.95]), np.array([False]), 0),
    }
    # mean F1: t=0.9 (1 + 0) / 2 = 0.5 (best), t=0.5 (2/3 + 0) / 2; P (1 + 1) / 2, R (1 + 0) / 2
    out = best_f1_operating_point(matches)
    assert out == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 0.5, "conf": 0.9})


def test_best_f1_ties_keep_the_highest_threshold() -> None:
    # 2 objects; TP (0.9), FP (0.8), FP (0.7), TP (0.6):
    # t=0.9: P 1, R 1/2, F1 2/3; t=0.8: F1 1/2; t=0.7: P 1/3, R 1/2, F1 2/5; t=0.6: P 1/2, R 1, F1 2/3
    matches = {1: (np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, False, True]), 2)}
    out = best_f1_operating_point(matches)
    assert out == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "conf": 0.9})


def test_best_f1_without_detections_or_ground_truth() -> None:
    empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    out = best_f1_operating_point({1: (np.zeros(0), np.zeros(0, dtype=bool), 3)})
    assert {k: out[k] for k in empty} == empty and np.isnan(out["conf"])
    assert np.isnan(best_f1_operating_point({})["conf"])
    assert np.isnan(best_f1_operating_point({1: (np.array([0.9]), np.array([False]), 0)})["conf"])


# ------------------------------------------------------------------------------------------ on COCO data
def _box(x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {"bbox": [x, y, w, h]}


def _dataset(gts: list[tuple[int, list[float]]]) -> dict[str, Any]:
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (c, b) in enumerate(gts)
    ]
    return {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}],
    }


def _results(dets: list[tuple[int, list[float], float]]) -> list[dict[str, Any]]:
    return [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]


def test_best_f1_operating_point_one_class_by_hand() -> None:
    gt = _dataset([(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10])])
    res = _results([(1, [0, 0, 10, 10], 0.9), (1, [50, 50, 5, 5], 0.8), (1, [20, 20, 10, 10], 0.7)])
    # t=0.9: P 1, R 1/2, F1 2/3; t=0.8: P 1/2, R 1/2; t=0.7: P 2/3, R 1, F1 0.8 (best)
    out = precision_recall_at_best_f1(gt, res, "bbox")
    assert out["conf"] == 0.7
    assert (
        out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0 and out["f1"] == pytest.approx(0.8)
    )


def test_best_f1_is_the_class_mean_at_one_shared_threshold() -> None:
    gt = _dataset([(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10]), (2, [40, 0, 10, 10])])
    res = _results(
        [
            (1, [0, 0, 10, 10], 0.9),
            (1, [50, 50, 5, 5], 0.8),
            (1, [20, 20, 10, 10], 0.7),
            (2, [40, 0, 10, 10], 0.75),
            (2, [60, 60, 4, 4], 0.72),
        ]
    )
    # mean F1 per threshold: .9 -> (2/3 + 0)/2, .8 -> (1/2 + 0)/2, .75 -> (1/2 + 1)/2 = 0.75 (best),
    # .72 -> (1/2 + 2/3)/2, .7 -> (0.8 + 2/3)/2 = 0.733
    out = precision_recall_at_best_f1(gt, res, "bbox")
    assert out["conf"] == 0.75
    assert out["precision"] == pytest.approx(0.75) and out["recall"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.75)


def test_matching_is_greedy_by_score_and_duplicates_are_false_positives() -> None:
    gt = _dataset([(1, [0, 0, 10, 10])])
    res = _results([(1, [0, 0, 10, 10], 0.6), (1, [0, 0, 10, 9], 0.95), (2, [0, 0, 10, 10], 0.99)])
    matched = match_coco_detections(gt, res, "bbox")
    scores, tps, n_gt = matched[1]
    assert scores.tolist() == [0.95, 0.6] and tps.tolist() == [True, False] and n_gt == 1
    assert matched[2][1].tolist() == [False] and matched[2][2] == 0  # wrong class: no ground truth there
    assert precision_recall_at_best_f1(gt, [], "bbox")["recall"] == 0.0


def test_mask_iou_threshold_is_inclusive_at_one_half() -> None:
    square = np.zeros((20, 20), np.uint8)
    square[0:10, 0:10] = 1
    half, less = np.zeros_like(square), np.zeros_like(square)
    half[0:10, 0:5] = 1  # IoU exactly 50 / 100
    less[0:10, 0:5] = 1
    less[9, 4] = 0  # IoU 49 / 100
    gt = {
        "images": [{"id": 1, "width": 20, "height": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": encode_mask(square),
            }
        ],
        "categories": [{"id": 1, "name": "whole"}],
    }
    for mask, expected in ((half, True), (less, False)):
        res = [
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 5, 10],
                "score": 0.5,
                "segmentation": encode_mask(mask),
            }
        ]
        assert match_coco_detections(gt, res, "segm", 0.5)[1][1].tolist() == [expected]


def test_results_on_unknown_images_are_one_line_errors() -> None:
    gt = _dataset([(1, [0, 0, 10, 10])])
    with pytest.raises(BadInputError, match="results: image_id 7 is not in the ground truth"):
        match_coco_detections(
            gt, [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], "bbox"
        )
