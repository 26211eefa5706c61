"""Miss rate against false positives per image over a test set (the curve behind MR^-2, DeepACEv2 Fig. 8).

Each image's detections are matched to its non-crowd ground-truth boxes with the DeepACEv2 rule
(:func:`cytobench.evaluation.enumeration.match_detections`: each detection goes to its highest-IoU
ground truth at IoU >= ``iou_thr``, the best-scored of them is the true positive). All detections of
all images are then ranked by descending score (stable) and the curve has one point per rank:
``fppi = cumFP / n_images`` and ``miss_rate = 1 - cumTP / n_gt``
(:func:`cytobench.evaluation.curves.miss_rate_fppi`). With no ground truth or no image the
denominators are taken as 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.evaluation.base import non_crowd, to_numpy
from cytobench.evaluation.curves import miss_rate_fppi
from cytobench.evaluation.enumeration import match_detections

__all__ = ["mr_fppi_curve"]


def mr_fppi_curve(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], iou_thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Miss rate against FPPI over all detections of a test set.

    Args:
        targets: per image ``boxes`` (N, 4) xyxy (and optional ``iscrowd``), NumPy or torch.
        predictions: per image ``boxes`` (M, 4) xyxy and ``scores`` (M,), in the targets' order.
        iou_thr: lowest IoU of a match (inclusive).

    Returns:
        ``(fppi, miss_rate)``, each (D,) float64 over the D detections ranked by score.
    """
    flags, scores, n_gt = [], [], 0
    for target, pred in zip(targets, predictions):
        gt = to_numpy(target["boxes"]).reshape(-1, 4)[non_crowd(target)]
        tp, _, _ = match_detections(gt, pred["boxes"], pred["scores"], iou_thr)
        flags.append(tp)
        scores.append(np.asarray(pred["scores"], dtype=np.float64).ravel())
        n_gt += len(gt)
    if not flags:
        return np.zeros(0), np.zeros(0)
    return miss_rate_fppi(np.concatenate(flags), np.concatenate(scores), max(n_gt, 1), max(len(targets), 1))
