"""PixelEvaluator on what data sets and models produce: semantic maps and (C, H, W) probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytobench.errors import CytobenchError
from cytobench.evaluation import PixelEvaluator, metrics_from_confusion

TARGET = np.array([[0, 1, 2], [2, 2, 0]])
LABELS = np.array([[0, 2, 2], [2, 1, 0]])  # pairs (true, predicted): (0,0) (1,2) (2,2) (2,2) (2,1) (0,0)
CM = np.array([[2, 0, 0], [0, 0, 1], [0, 1, 2]])


def _probs(labels: np.ndarray, classes: int) -> torch.Tensor:
    """(C, H, W) soft probabilities whose argmax is ``labels``."""
    onehot = np.eye(classes)[labels].transpose(2, 0, 1)
    return torch.from_numpy(0.6 * onehot + 0.4 / classes).float()


def _target(semantic: np.ndarray, image_id: int = 1) -> dict:
    return {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "image_id": image_id,
        "semantic": torch.from_numpy(semantic),
    }


def _prediction(semantic: torch.Tensor) -> dict:
    return {
        "boxes": torch.zeros((0, 4)),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0),
        "semantic": semantic,
    }


def test_dataset_targets_and_model_probabilities_give_the_hand_computed_matrix() -> None:
    evaluator = PixelEvaluator(num_classes=3)
    evaluator.process([_target(TARGET)], [_prediction(_probs(LABELS, 3))])
    np.testing.assert_array_equal(evaluator.confusion, CM)
    metrics = evaluator.compute()
    assert metrics["pix/iou_c0"] == 1.0 and metrics["pix/iou_c1"] == 0.0 and metrics["pix/iou_c2"] == 0.5
    assert metrics["pix/miou"] == pytest.approx(0.5) and metrics["pix/miou_fg"] == pytest.approx(0.25)
    assert metrics["pix/pixel_accuracy"] == pytest.approx(4 / 6)
    assert metrics["pix/precision_c2"] == pytest.approx(2 / 3) and metrics["pix/recall_c2"] == pytest.approx(
        2 / 3
    )


def test_classes_are_inferred_from_probabilities_and_grow_for_label_maps() -> None:
    evaluator = PixelEvaluator()
    evaluator.process([_target(TARGET)], [_prediction(_probs(LABELS, 4))])  # class 3 never occurs
    assert evaluator.confusion.shape == (4, 4)
    assert math.isnan(evaluator.compute()["pix/iou_c3"])
    grow = PixelEvaluator()
    grow.process([_target(np.array([[0, 1]]))], [_prediction(torch.tensor([[0, 1]]))])
    assert grow.confusion.shape == (2, 2)
    grow.process([_target(np.array([[3, 1]]), 2)], [_prediction(torch.tensor([[3, 0]]))])
    np.testing.assert_array_equal(grow.confusion, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    empty = PixelEvaluator().compute()
    assert math.isnan(empty["pix/pixel_accuracy"]) and math.isnan(empty["pix/miou"])


def test_state_is_the_confusion_matrix_and_rank_states_merge() -> None:
    a, b = PixelEvaluator(), PixelEvaluator()
    a.process([_target(TARGET)], [_prediction(_probs(LABELS, 3))])
    b.process([_target(np.array([[1, 4]]), 2)], [_prediction(torch.tensor([[1, 4]]))])  # 5 classes inferred
    merged = PixelEvaluator()
    merged.load_states([a.state(), b.state()])
    expected = np.zeros((5, 5), np.int64)
    expected[:3, :3] = CM
    expected[1, 1] += 1
    expected[4, 4] += 1
    np.testing.assert_array_equal(merged.confusion, expected)
    assert merged.compute()["pix/iou_c4"] == 1.0
    assert set(a.state()) == {"confusion"}
    assert metrics_from_confusion(merged.confusion)["iou"].shape == (5,)


def test_missing_or_mismatched_semantic_is_reported_with_the_image() -> None:
    evaluator = PixelEvaluator(num_classes=3)
    target = _target(TARGET, image_id=7)
    with pytest.raises(CytobenchError, match="target of image 7 has no 'semantic' map .*with_semantic=True"):
        evaluator.process(
            [{k: v for k, v in target.items() if k != "semantic"}], [_prediction(_probs(LABELS, 3))]
        )
    with pytest.raises(CytobenchError, match="prediction for image 7 has no 'semantic'"):
        evaluator.process([target], [{"boxes": torch.zeros((0, 4))}])
    with pytest.raises(ValueError, match=r"image 7: prediction 'semantic' of shape \(3, 2, 2\) does not fit"):
        evaluator.process([target], [_prediction(torch.rand(3, 2, 2))])
    with pytest.raises(ValueError, match="image 7: prediction 'semantic' has 4 classes, the evaluator 3"):
        evaluator.process([target], [_prediction(_probs(LABELS, 4))])
    with pytest.raises(ValueError, match=r"image 7: target labels must lie in \[0, 3\)"):
        evaluator.process([_target(TARGET + 1, image_id=7)], [_prediction(_probs(LABELS, 3))])
    assert evaluator.confusion.sum() == 0  # nothing half-counted
