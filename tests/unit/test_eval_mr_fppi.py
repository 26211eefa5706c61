"""Miss rate against FPPI over a test set (DeepACEv2 Fig. 8) on hand-computed cases."""

from __future__ import annotations

import numpy as np

from cytobench.evaluation.mr_fppi import mr_fppi_curve


def test_mr_fppi_curve_by_hand() -> None:
    targets = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)}, {"boxes": np.zeros((0, 4))}]
    predictions = [
        {"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), "scores": np.array([0.9, 0.8])},
        {"boxes": np.array([[1, 1, 5, 5]], float), "scores": np.array([0.7])},
    ]
    fppi, mr = mr_fppi_curve(targets, predictions)
    # ranked: TP (0.9), FP (0.8), FP (0.7); 2 ground truths, 2 images
    np.testing.assert_allclose(fppi, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(mr, [0.5, 0.5, 0.5])


def test_mr_fppi_ranks_across_images_and_leaves_crowd_out() -> None:
    # image 0: one real object and one crowd region; image 1: one object
    targets = [
        {"boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), "iscrowd": np.array([0, 1])},
        {"boxes": np.array([[0, 0, 10, 10]], float)},
    ]
    predictions = [
        # a duplicate of the object (the lower-scored one is a FP) and a hit on the crowd region (FP)
        {"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10]], float),
         "scores": np.array([0.5, 0.4, 0.95])},
        {"boxes": np.array([[0, 0, 10, 10]], float), "scores": np.array([0.6])},
    ]  # fmt: skip
    fppi, mr = mr_fppi_curve(targets, predictions)
    # ranked: FP (0.95, crowd), TP (0.6), TP (0.5), FP (0.4); 2 ground truths, 2 images
    np.testing.assert_allclose(fppi, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(mr, [1.0, 0.5, 0.0, 0.0])


def test_mr_fppi_of_an_empty_test_set() -> None:
    fppi, mr = mr_fppi_curve([], [])
    assert fppi.shape == mr.shape == (0,)
