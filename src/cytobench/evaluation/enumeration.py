"""Chromosome enumeration metrics of DeepACEv2 (Sec. 3.2 and 3.6, Eq. 9-11 and 14).

Matching rule (paper Sec. 3.2 / Eq. 13): every detection is *assigned* to the ground truth
with which it has the highest IoU, provided that IoU is >= ``iou_thr``; among the
detections assigned to one ground truth the highest-scored is the true positive, the others
are false positives (duplicates); unassigned detections are false positives; ground truths
without a true positive are false negatives. A detection whose best ground truth is taken
does *not* fall back to its second-best ground truth (unlike COCO / VOC greedy matching).

Deterministic ties: equal IoU -> the lowest ground-truth index; equal score -> the earlier
detection (stable sort by descending score).

Threshold independence: assignment depends only on geometry, and keeping detections with
``score >= score_thr`` removes a suffix of the score ranking, so the winner of a ground
truth is kept whenever any of its detections is kept. The TP flag of a kept detection is
therefore the same whether the rule runs on all detections or only on the kept ones; flags
are computed once on the full detection set and reused for the thresholded counts and for
the threshold-free curves (mAP, MR^-2).

All metrics are class-agnostic: labels are ignored ("chromosome" is the only class).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cytobench.evaluation.base import Evaluator, check_one_score_each, non_crowd, to_numpy
from cytobench.evaluation.boxes import box_iog, box_iou
from cytobench.evaluation.curves import average_precision, log_average_miss_rate, miss_rate_fppi, pr_curve
from cytobench.types import Prediction, Target


def match_detections(
    gt_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, iou_thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match the detections of one image to its ground truth with the DeepACEv2 rule.

    Args:
        gt_boxes: (N, 4) xyxy ground-truth boxes.
        det_boxes: (M, 4) xyxy detected boxes.
        det_scores: (M,) detection scores.
        iou_thr: minimum IoU (inclusive) for a detection to be assigned to a ground truth.

    Returns:
        ``(tp, assigned, detected)``: ``tp`` (M,) bool, True for true positives; ``assigned``
        (M,) int64, the index of the ground truth the detection is assigned to (its highest-IoU
        ground truth with IoU >= ``iou_thr``; also set for duplicate false positives) or -1;
        ``detected`` (N,) bool, True for ground truths that have a true positive.
    """
    iou = box_iou(gt_boxes, det_boxes).T  # (M, N)
    scores = np.asarray(det_scores, dtype=np.float64).ravel()
    return _match_from_iou(iou, scores, iou_thr)


def _match_from_iou(
    iou: np.ndarray, scores: np.ndarray, iou_thr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matching rule on a precomputed (M, N) detection x ground-truth IoU matrix."""
    m, n = iou.shape
    tp = np.zeros(m, dtype=bool)
    assigned = np.full(m, -1, dtype=np.int64)
    detected = np.zeros(n, dtype=bool)
    if m == 0 or n == 0:
        return tp, assigned, detected
    best = iou.argmax(axis=1)  # first maximum -> lowest gt index on ties
    ok = iou[np.arange(m), best] >= iou_thr
    assigned[ok] = best[ok]
    order = np.argsort(-scores, kind="stable")
    ranked = assigned[order]
    keep = ranked >= 0
    gt_ids, first = np.unique(ranked[keep], return_index=True)  # first = best-scored per gt
    tp[order[np.flatnonzero(keep)[first]]] = True
    detected[gt_ids] = True
    return tp, assigned, detected


def overlapping_subset(gt_boxes: np.ndarray, tau: float = 0.5) -> np.ndarray:
    """Severely overlapping ground truths S_o of one image (DeepACEv2 Eq. 14).

    ``G_i`` is in S_o when ``sum_{j != i} IoG(G_j, G_i) >= tau`` with ``IoG(G_j, G_i) =
    |G_j ∩ G_i| / |G_i|`` (the fraction of ``G_i`` covered by each other box, summed).

    Args:
        gt_boxes: (N, 4) xyxy ground-truth boxes of one image.
        tau: threshold on the summed IoG (0.5 in the paper).

    Returns:
        (N,) bool membership mask.
    """
    iog = box_iog(gt_boxes, gt_boxes)  # [j, i] = IoG(G_j, G_i)
    np.fill_diagonal(iog, 0.0)
    return iog.sum(axis=0) >= tau


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def count_metrics(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 and Acc (Eq. 9-10) from summed counts; undefined ratios are NaN.

    F1 is computed as ``2TP / (2TP + FP + FN)``, equal to Eq. 9 whenever precision and recall
    are defined, and 0 (not NaN) when both are 0.
    """
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tp, tp + fp + fn),
    }


def enumeration_metrics(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    overlap_tau: float = 0.5,
) -> dict[str, float]:
    """All DeepACEv2 enumeration metrics over a set of images (class-agnostic).

    Thresholded metrics use the detections with ``score >= score_thr``; per image k they count
    TP_k, FP_k, FN_k, then WCR = fraction of images with FP_k = FN_k = 0, AER = sum(FP+FN) /
    sum(TP+FN) (Eq. 11), Acc = sum TP / sum(TP+FP+FN) (Eq. 10), precision, recall and F1 (Eq. 9).
    Threshold-free metrics rank all detections of all images by score: ``map`` = AP@0.5 with
    all-point interpolation, ``mr2`` = log-average miss rate over FPPI 10^-2..10^0 with
    FPPI = cumFP / n_images.

    Overlap subset S_o (Eq. 14, Table 5), at the same score threshold: TP = true positives
    matched to a ground truth in S_o; FN = ground truths in S_o not detected; FP = false
    positives whose highest-IoU ground truth is in S_o with IoU > 0 (duplicates and
    mislocalisations near overlapping chromosomes; the paper does not define this set).

    Args:
        gt_boxes: per image (N_k, 4) xyxy ground-truth boxes.
        det_boxes: per image (M_k, 4) xyxy detected boxes.
        det_scores: per image (M_k,) scores.
        score_thr: detections with score >= this are kept for the thresholded metrics.
        iou_thr: IoU for assignment (inclusive).
        overlap_tau: threshold of Eq. 14.

    Returns:
        Keys ``wcr, aer, acc, f1, precision, recall, map, mr2, tp, fp, fn, n_images`` and
        ``overlap_precision, overlap_recall, overlap_f1, overlap_acc, overlap_n``. Ratios whose
        denominator is 0 are NaN (e.g. ``aer``, ``map``, ``mr2`` without any ground truth).
    """
    if not len(gt_boxes) == len(det_boxes) == len(det_scores):
        raise ValueError("gt_boxes, det_boxes and det_scores must have one entry per image")
    n_images = len(gt_boxes)
    per_image = np.zeros((n_images, 3), dtype=np.int64)  # TP, FP, FN at the threshold
    over = np.zeros(4, dtype=np.int64)  # TP, FP, FN, |S_o|
    all_tp: list[np.ndarray] = []
    all_scores: list[np.ndarray] = []
    n_gt_total = 0
    for k in range(n_images):
        gts = np.asarray(gt_boxes[k], dtype=np.float64).reshape(-1, 4)
        dets = np.asarray(det_boxes[k], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det_scores[k], dtype=np.float64).ravel()
        n_gt_total += len(gts)
        iou = box_iou(dets, gts)  # (M, N)
        tp, assigned, _ = _match_from_iou(iou, scores, iou_thr)
        all_tp.append(tp)
        all_scores.append(scores)
        kept = scores >= score_thr
        tp_k = tp & kept
        n_tp = int(tp_k.sum())
        per_image[k] = n_tp, int(kept.sum()) - n_tp, len(gts) - n_tp
        if len(gts) < 2:
            continue
        in_so = overlapping_subset(gts, overlap_tau)
        n_so = int(in_so.sum())
        if n_so == 0:
            continue
        detected = np.zeros(len(gts), dtype=bool)
        detected[assigned[tp_k]] = True
        so_tp = int((detected & in_so).sum())
        fp_k = kept & ~tp
        if fp_k.any() and len(dets):
            near = iou[fp_k]
            best = near.argmax(axis=1)
            so_fp = int((in_so[best] & (near[np.arange(len(best)), best] > 0)).sum())
        else:
            so_fp = 0
        over += (so_tp, so_fp, n_so - so_tp, n_so)

    tp_sum, fp_sum, fn_sum = (int(v) for v in per_image.sum(axis=0))
    out: dict[str, float] = {
        "wcr": _ratio(int(np.sum((per_image[:, 1] == 0) & (per_image[:, 2] == 0))), n_images),
        "aer": _ratio(fp_sum + fn_sum, tp_sum + fn_sum),
    }
    out.update(count_metrics(tp_sum, fp_sum, fn_sum))
    tp_flat = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    scores_flat = np.concatenate(all_scores) if all_scores else np.zeros(0)
    if n_gt_total > 0:
        recall, precision, _ = pr_curve(tp_flat, scores_flat, n_gt_total)
        out["map"] = average_precision(recall, precision)
        fppi, mr = miss_rate_fppi(tp_flat, scores_flat, n_gt_total, n_images)
        out["mr2"] = log_average_miss_rate(fppi, mr)
    else:
        out["map"] = out["mr2"] = float("nan")
    out.update({"tp": float(tp_sum), "fp": float(fp_sum), "fn": float(fn_sum), "n_images": float(n_images)})
    out.update({f"overlap_{key}": value for key, value in count_metrics(*(int(v) for v in over[:3])).items()})
    out["overlap_n"] = float(over[3])
    return out


class EnumerationEvaluator(Evaluator):
    """Accumulates boxes and scores per image and reports the DeepACEv2 metrics.

    Class-agnostic: ``labels`` of targets and predictions are ignored; crowd annotations
    (``iscrowd`` = 1) are not counted as chromosomes. Keys (with the default
    prefix): ``enum/wcr, enum/aer, enum/acc, enum/f1, enum/precision, enum/recall, enum/map,
    enum/mr2, enum/tp, enum/fp, enum/fn, enum/n_images, enum/overlap_precision,
    enum/overlap_recall, enum/overlap_f1, enum/overlap_acc, enum/overlap_n``.

    Args:
        score_thr: score threshold of the counting metrics (detections with score >= it count).
        iou_thr: IoU needed to assign a detection to a ground truth.
        overlap_tau: summed-IoG threshold of the overlapping subset S_o (Eq. 14).
        prefix: namespace of the metric keys.
    """

    def __init__(
        self, score_thr: float = 0.5, iou_thr: float = 0.5, overlap_tau: float = 0.5, prefix: str = "enum"
    ) -> None:
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)
        self.overlap_tau = float(overlap_tau)
        self.prefix = prefix
        self.reset()

    state_fields = ("_gt", "_det", "_scores")

    def reset(self) -> None:
        self._gt: list[np.ndarray] = []
        self._det: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def process_image(self, target: Target, pred: Prediction) -> None:
        boxes = to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)
        dets = to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = to_numpy(pred["scores"]).astype(np.float64).ravel()
        check_one_score_each(target, len(dets), len(scores))
        self._gt.append(boxes[non_crowd(target)])
        self._det.append(dets)
        self._scores.append(scores)

    def compute(self) -> dict[str, float]:
        metrics = enumeration_metrics(
            self._gt, self._det, self._scores, self.score_thr, self.iou_thr, self.overlap_tau
        )
        return {f"{self.prefix}/{key}": value for key, value in metrics.items()}


__all__ = [
    "EnumerationEvaluator",
    "count_metrics",
    "enumeration_metrics",
    "match_detections",
    "overlapping_subset",
]
