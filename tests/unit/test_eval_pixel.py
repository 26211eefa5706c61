"""Pixel segmentation metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytobench.evaluation import PixelEvaluator, confusion_matrix, metrics_from_confusion, pixel_metrics

TARGET = np.array([[0, 1], [1, 1]])
PROBS = np.array([[0.2, 0.7], [0.4, 0.9]])


def test_binary_probabilities_by_hand() -> None:
    m = pixel_metrics(PROBS, TARGET, threshold=0.5)  # prediction [[0, 1], [0, 1]]
    # class 1: TP 2, FP 0, FN 1, TN 1; class 0: TP 1, FP 1, FN 0, TN 2
    np.testing.assert_allclose(m["accuracy"], [0.75, 0.75])
    np.testing.assert_allclose(m["precision"], [0.5, 1.0])
    np.testing.assert_allclose(m["recall"], [1.0, 2 / 3])
    np.testing.assert_allclose(m["f1"], [2 / 3, 0.8])
    np.testing.assert_allclose(m["iou"], [0.5, 2 / 3])
    assert float(m["pixel_accuracy"]) == 0.75


def test_threshold_is_strict_and_changes_result() -> None:
    m = pixel_metrics(PROBS, TARGET, threshold=0.3)
    np.testing.assert_allclose(m["iou"], [1.0, 1.0])
    m = pixel_metrics(PROBS, TARGET, threshold=0.7)  # 0.7 is not > 0.7
    np.testing.assert_allclose(m["recall"], [1.0, 1 / 3])


def test_multiclass_scores_labels_and_undefined_class() -> None:
    target = np.array([[0, 1, 2], [2, 2, 0]])
    labels = np.array([[0, 2, 2], [2, 1, 0]])
    scores = np.eye(4)[labels].transpose(2, 0, 1)  # (C=4, H, W) one-hot, class 3 never occurs
    for pred in (scores, torch.from_numpy(scores)):
        m = pixel_metrics(pred, target)
        assert m["iou"].shape == (4,)
        # pairs (true, predicted): (0,0) (1,2) (2,2) (2,2) (2,1) (0,0)
        cm = confusion_matrix(labels, target, 4)
        np.testing.assert_array_equal(cm[:3, :3], [[2, 0, 0], [0, 0, 1], [0, 1, 2]])
        np.testing.assert_allclose(m["iou"][:3], [1.0, 0.0, 2 / 4])
        np.testing.assert_allclose(m["precision"][:3], [1.0, 0.0, 2 / 3])
        assert math.isnan(m["iou"][3]) and math.isnan(m["precision"][3]) and m["accuracy"][3] == 1.0
    m = pixel_metrics(labels, target)  # label maps: C inferred as max + 1
    assert m["iou"].shape == (3,)
    np.testing.assert_allclose(m["iou"], [1.0, 0.0, 0.5])


def test_batched_maps_and_ignore_index() -> None:
    target = np.stack([TARGET, np.array([[255, 1], [0, 0]])])
    probs = np.stack([PROBS, np.array([[0.9, 0.9], [0.1, 0.6]])])
    m = pixel_metrics(probs, target, ignore_index=255)
    cm = confusion_matrix((probs > 0.5).astype(int), target, 2, ignore_index=255)
    np.testing.assert_array_equal(
        cm, [[2, 1], [1, 3]]
    )  # image 1: [[1, 0], [1, 2]], image 2: [[1, 1], [0, 1]]
    np.testing.assert_allclose(m["iou"], [2 / 4, 3 / 5])
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 3), 2)


def test_evaluator_accumulates_confusion() -> None:
    evaluator = PixelEvaluator(num_classes=2)
    evaluator.process([{"semantic": torch.from_numpy(TARGET)}], [{"semantic": torch.from_numpy(PROBS)}])
    evaluator.process([{"semantic": TARGET}], [{"semantic": np.ones((2, 2), np.uint8)}])  # label map input
    metrics = evaluator.compute()
    expected = metrics_from_confusion(np.array([[1, 0], [1, 2]]) + np.array([[0, 1], [0, 3]]))
    assert metrics["pix/iou_c1"] == pytest.approx(float(expected["iou"][1]))
    assert metrics["pix/iou_c1"] == pytest.approx(5 / 7)  # TP 5, FP 1, FN 1
    assert metrics["pix/miou"] == pytest.approx(float(np.mean(expected["iou"])))
    assert metrics["pix/miou_fg"] == metrics["pix/iou_c1"]
    assert metrics["pix/pixel_accuracy"] == pytest.approx(6 / 8)
    assert {f"pix/{m}_c{c}" for m in ("accuracy", "precision", "recall", "f1", "iou") for c in (0, 1)} <= set(
        metrics
    )
    evaluator.reset()
    assert math.isnan(evaluator.compute()["pix/miou"])
