"""Figure helpers of the DeepACEv2 test-set tables: the MR-FPPI curve (Fig. 8) and the choice of
overlay examples (Fig. 10)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mr_fppi_curve(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], iou_thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Miss rate against FPPI over all detections (the curve behind MR^-2, Fig. 8)."""
    from cytobench.evaluation.base import non_crowd, to_numpy
    from cytobench.evaluation.curves import miss_rate_fppi
    from cytobench.evaluation.enumeration import match_detections

    flags, scores, n_gt = [], [], 0
    for target, pred in zip(targets, predictions):
        gt = to_numpy(target["boxes"]).reshape(-1, 4)[non_crowd(target)]
        tp, _, _ = match_detections(gt, pred["boxes"], pred["scores"], iou_thr)
        flags.append(tp)
        scores.append(np.asarray(pred["scores"], dtype=np.float64).ravel())
        n_gt += len(gt)
    return miss_rate_fppi(np.concatenate(flags), np.concatenate(scores), max(n_gt, 1), max(len(targets), 1))


def pick_examples(
    targets: Sequence[Mapping[str, Any]],
    first: Sequence[Mapping[str, Any]],
    second: Sequence[Mapping[str, Any]],
    n: int = 2,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
) -> list[int]:
    """Indices of the ``n`` images where ``second`` makes the fewest errors (FP + FN) relative to ``first``.

    Ties go to the image where ``first`` errs most (the harder image), then to the lower index.
    """
    from cytobench.reporting.overlays import classify_predictions

    gains = []
    for k, (target, a, b) in enumerate(zip(targets, first, second)):
        errors = []
        for pred in (a, b):
            split = classify_predictions(target["boxes"], pred["boxes"], pred["scores"], score_thr, iou_thr)
            errors.append(int(split["fp"].sum() + split["missed"].sum()))
        gains.append((errors[1] - errors[0], -errors[0], k))
    return [k for _, _, k in sorted(gains)[:n]]
