"""Ranked-detection curves shared by the enumeration and localisation metrics.

Every function takes detections already decided as true / false positives and ranks
them by descending score with a *stable* sort, so detections with equal scores keep
the order in which they were given (image order, then detection order).
"""

from __future__ import annotations

import numpy as np

#: The nine FPPI references of the log-average miss rate (Dollár et al.): 10^-2 ... 10^0.
FPPI_REFERENCES: np.ndarray = np.logspace(-2.0, 0.0, 9)


def rank_detections(tp: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative TP / FP counts over detections ranked by descending score.

    Args:
        tp: (M,) bool, True where the detection is a true positive.
        scores: (M,) float confidence of each detection.

    Returns:
        ``(cum_tp, cum_fp)``: two (M,) int64 arrays; entry k counts the first k+1 ranked detections.
    """
    tp = np.asarray(tp, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if tp.shape != scores.shape:
        raise ValueError(f"tp and scores must have the same length, got {tp.shape} and {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    tp_sorted = tp[order]
    cum_tp = np.cumsum(tp_sorted, dtype=np.int64)
    cum_fp = np.cumsum(~tp_sorted, dtype=np.int64)
    return cum_tp, cum_fp


def pr_curve(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision / recall at every rank of the detections.

    Args:
        tp: (M,) bool true-positive flags of all detections (all images concatenated).
        scores: (M,) float scores of the same detections.
        n_gt: number of ground-truth objects over all images.

    Returns:
        ``(recall, precision, thresholds)``, each (M,) float64: after keeping the detections with
        score >= ``thresholds[k]`` (in rank order) the recall is ``recall[k]`` and the precision
        ``precision[k]``. Recall is NaN everywhere when ``n_gt == 0``.
    """
    cum_tp, cum_fp = rank_detections(tp, scores)
    thresholds = np.sort(np.asarray(scores, dtype=np.float64).ravel(), kind="stable")[::-1]
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1)
    recall = cum_tp / n_gt if n_gt > 0 else np.full(cum_tp.shape, np.nan)
    return recall.astype(np.float64), precision.astype(np.float64), thresholds


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under a precision / recall curve (PASCAL VOC 2010+ style).

    The curve is padded with (recall 0, precision 0) in front and (recall 1, precision 0) at the
    end, precision is replaced by its monotone envelope ``p_interp(r) = max_{r' >= r} p(r')``,
    and the area is ``sum_i (r_{i+1} - r_i) * p_interp(r_{i+1})`` over the points where recall
    changes.

    Args:
        recall: (K,) recall at each rank, non-decreasing.
        precision: (K,) precision at each rank.

    Returns:
        The area in [0, 1]; 0.0 for an empty curve; NaN if recall is NaN (no ground truth).
    """
    recall = np.asarray(recall, dtype=np.float64).ravel()
    precision = np.asarray(precision, dtype=np.float64).ravel()
    if recall.size and np.isnan(recall).any():
        return float("nan")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def miss_rate_fppi(
    tp: np.ndarray, scores: np.ndarray, n_gt: int, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """Miss rate against false positives per image at every rank of the detections.

    Args:
        tp: (M,) bool true-positive flags of all detections.
        scores: (M,) float scores.
        n_gt: number of ground-truth objects over all images (> 0).
        n_images: number of images (> 0).

    Returns:
        ``(fppi, miss_rate)``, each (M,) float64: ``fppi = cumFP / n_images`` and
        ``miss_rate = 1 - cumTP / n_gt`` after keeping the first k+1 ranked detections.
    """
    cum_tp, cum_fp = rank_detections(tp, scores)
    return cum_fp / float(n_images), 1.0 - cum_tp / float(n_gt)


def log_average_miss_rate(
    fppi: np.ndarray, miss_rate: np.ndarray, references: np.ndarray = FPPI_REFERENCES
) -> float:
    """Log-average miss rate ``MR^-2`` (Dollár et al., Caltech pedestrian benchmark).

    At each FPPI reference the miss rate of the operating point with the largest FPPI not
    above the reference is taken (1.0 when every operating point exceeds it); the result is
    the geometric mean ``exp(mean(log(max(mr, 1e-10))))`` over the references.

    Args:
        fppi: (K,) non-decreasing false positives per image of the operating points.
        miss_rate: (K,) miss rate of the same operating points.
        references: (R,) FPPI references, by default the nine values 10^linspace(-2, 0, 9).

    Returns:
        ``MR^-2`` in [1e-10, 1]; NaN if any miss rate is NaN.
    """
    fppi = np.asarray(fppi, dtype=np.float64).ravel()
    miss_rate = np.asarray(miss_rate, dtype=np.float64).ravel()
    if np.isnan(miss_rate).any():
        return float("nan")
    # index of the last operating point with fppi <= ref (fppi is sorted ascending)
    idx = np.searchsorted(fppi, np.asarray(references, dtype=np.float64), side="right") - 1
    at_refs = np.where(idx >= 0, miss_rate[np.clip(idx, 0, None)] if miss_rate.size else 1.0, 1.0)
    return float(np.exp(np.mean(np.log(np.maximum(at_refs, 1e-10)))))
