"""Epsilon-distance point localisation metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytobench.evaluation import (
    LocalizationEvaluator,
    localization_curve,
    localization_metrics,
    localize_match,
)


def pts(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def test_nearest_unmatched_within_eps() -> None:
    gts = pts((0, 0), (3, 0))
    dets = pts((1, 0), (0.5, 0))
    scores = np.array([0.9, 0.8])
    # (1, 0) takes (0, 0) (distance 1 < 2); (0.5, 0): (0, 0) is taken, (3, 0) is 2.5 away
    assert localize_match(gts, dets, scores, eps=2.0).tolist() == [True, False]
    assert localize_match(gts, dets, scores, eps=3.0).tolist() == [True, True]


def test_distance_equal_to_eps_matches() -> None:
    assert localize_match(pts((0, 0)), pts((3, 4)), np.array([0.5]), eps=5.0).tolist() == [True]
    assert localize_match(pts((0, 0)), pts((3, 4)), np.array([0.5]), eps=4.999).tolist() == [False]


def test_score_order_beats_distance_and_duplicates_are_fp() -> None:
    gts = pts((0, 0))
    dets = pts((0, 0), (1, 0), (0.2, 0))  # the exact hit has the lowest score
    assert localize_match(gts, dets, np.array([0.3, 0.9, 0.5]), eps=2.0).tolist() == [False, True, False]


def test_ties_are_deterministic() -> None:
    gts = pts((-1, 0), (1, 0))
    assert localize_match(gts, pts((0, 0)), np.array([0.5]), eps=1.0).tolist() == [True]
    # equal scores: the earlier detection is served first and takes the lower-index point
    tp = localize_match(pts((0, 0)), pts((0.5, 0), (0.1, 0)), np.array([0.5, 0.5]), eps=1.0)
    assert tp.tolist() == [True, False]


def test_empty_inputs() -> None:
    assert localize_match(pts(), pts((1, 1)), np.array([0.5]), 1.0).tolist() == [False]
    assert localize_match(pts((1, 1)), pts(), np.array([]), 1.0).size == 0
    m = localization_metrics([pts(), pts()], [pts(), pts()], [np.array([]), np.array([])], 1.0)
    assert all(math.isnan(v) for v in m.values())
    m = localization_metrics([pts((1, 1))], [pts()], [np.array([])], 1.0)
    assert m["auc"] == 0.0 and m["recall"] == 0.0 and math.isnan(m["precision"])


def test_curve_and_auc_over_images_by_hand() -> None:
    """Ranked over two images: TP(.9) FP(.8) TP(.7) FP(.6) TP(.5) with 4 points in total."""
    gts = [pts((0, 0), (10, 10)), pts((5, 5), (20, 20))]
    dets = [pts((0, 0), (40, 40), (10, 11)), pts((30, 30), (5, 5))]
    scores = [np.array([0.9, 0.8, 0.5]), np.array([0.6, 0.7])]
    recall, precision, thresholds = localization_curve(gts, dets, scores, eps=1.0)
    np.testing.assert_allclose(recall, [0.25, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])
    m = localization_metrics(gts, dets, scores, eps=1.0)
    assert m["auc"] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5)
    assert m["precision"] == pytest.approx(3 / 5) and m["recall"] == pytest.approx(3 / 4)
    m = localization_metrics(gts, dets, scores, eps=0.5)  # (10, 11) no longer matches
    assert m["precision"] == pytest.approx(2 / 5) and m["recall"] == pytest.approx(2 / 4)


def test_evaluator_keys_visibility_and_box_fallback() -> None:
    # two instances with 2 keypoints each; keypoint 0 of the second one is invisible
    target = {
        "boxes": torch.zeros(2, 4),
        "labels": torch.ones(2, dtype=torch.int64),
        "image_id": 1,
        "keypoints": torch.tensor([[[0.0, 0.0, 2.0], [50, 50, 2]], [[10.0, 0.0, 0.0], [60, 60, 2]]]),
    }
    pred = {
        "boxes": torch.zeros(2, 4),
        "labels": torch.ones(2, dtype=torch.int64),
        "scores": torch.tensor([0.9, 0.8]),
        "keypoints": torch.tensor([[[0.5, 0.0, 1.0], [0, 0, 1]], [[10.0, 0.0, 1.0], [0, 0, 1]]]),
    }
    evaluator = LocalizationEvaluator(eps=(1.0, 1.5), keypoint_index=0)
    evaluator.process([target], [pred])
    metrics = evaluator.compute()
    assert sorted(metrics) == sorted(
        f"loc/{k}@{e}" for k in ("auc", "precision", "recall") for e in ("eps1", "eps1.5")
    )
    # one visible ground-truth point; the detection on the invisible point is a false positive
    assert metrics["loc/recall@eps1"] == 1.0 and metrics["loc/precision@eps1"] == 0.5
    assert metrics["loc/auc@eps1"] == 1.0
    curves = evaluator.pr_curves()
    np.testing.assert_allclose(curves[1.0][1], [1.0, 0.5])

    # without keypoints, box centres are used
    evaluator = LocalizationEvaluator(eps=(1.0,))
    evaluator.process(
        [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.ones(1), "image_id": 2}],
        [
            {
                "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
                "labels": torch.ones(1),
                "scores": torch.tensor([0.7]),
            }
        ],
    )
    assert evaluator.compute()["loc/recall@eps1"] == 0.0  # centres (2, 2) and (3, 3): distance 1.41
    evaluator = LocalizationEvaluator(eps=(2.0,))
    evaluator.process(
        [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.ones(1), "image_id": 2}],
        [
            {
                "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
                "labels": torch.ones(1),
                "scores": torch.tensor([0.7]),
            }
        ],
    )
    assert evaluator.compute()["loc/recall@eps2"] == 1.0
    evaluator.reset()
    assert math.isnan(evaluator.compute()["loc/auc@eps2"])


def test_crowd_keypoints_are_not_truth() -> None:
    from cytobench.evaluation import LocalizationEvaluator

    evaluator = LocalizationEvaluator(eps=(1.0,))
    target = {
        "boxes": np.zeros((2, 4)),
        "keypoints": np.array([[[5.0, 5.0, 2]], [[20.0, 20.0, 2]]]),
        "iscrowd": np.array([0, 1]),
    }
    pred = {"boxes": np.zeros((1, 4)), "scores": np.array([0.9]), "keypoints": np.array([[[5.0, 5.5, 1]]])}
    evaluator.process([target], [pred])
    assert evaluator.compute()["loc/recall@eps1"] == 1.0
