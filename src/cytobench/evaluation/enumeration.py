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
from cytobench.evaluation.curves import average_precision, log_average_miss_rate, rank_detections
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
    Images with fewer than two ground truths have no S_o.

    Computed for all images at once (the same numbers as :func:`match_detections` and
    :func:`overlapping_subset` image by image): IoU and IoG on image blocks padded to their largest
    image, then the matching rule on the flat detections of all images.

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
    gts = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    dets = [np.asarray(d, dtype=np.float64).reshape(-1, 4) for d in det_boxes]
    scores_k = [np.asarray(v, dtype=np.float64).ravel() for v in det_scores]
    n_gt = np.array([len(g) for g in gts], dtype=np.int64)
    n_det = np.array([len(d) for d in dets], dtype=np.int64)
    for k in np.flatnonzero(n_det != [len(v) for v in scores_k]):
        raise ValueError(f"image {k}: {n_det[k]} detected boxes but {len(scores_k[k])} scores")
    # per detection (all images, image order): best ground truth and its IoU; per ground truth: in S_o
    best, best_iou, in_so = _best_gt_and_overlap(gts, dets, n_gt, n_det, overlap_tau)
    image = np.repeat(np.arange(n_images), n_det)
    scores = np.concatenate(scores_k) if n_images else np.zeros(0)
    ok = best_iou >= iou_thr  # assigned to its best ground truth
    gt_offset = np.cumsum(n_gt) - n_gt
    gt_key = gt_offset[image] + best  # the best ground truth's index over all images
    tp = _true_positives(gt_key, ok, scores, int(n_gt.sum()))
    kept = scores >= score_thr
    tp_k = tp & kept
    n_tp = np.bincount(image[tp_k], minlength=n_images)
    n_fp = np.bincount(image[kept], minlength=n_images) - n_tp
    n_fn = n_gt - n_tp
    detected = np.zeros(int(n_gt.sum()), dtype=bool)
    detected[gt_key[tp_k]] = True
    fp_k = kept & ~tp & (n_gt[image] > 0)
    over = (
        int((detected & in_so).sum()),
        int((in_so[gt_key[fp_k]] & (best_iou[fp_k] > 0)).sum()),
        int((~detected & in_so).sum()),
        int(in_so.sum()),
    )

    tp_sum, fp_sum, fn_sum = int(n_tp.sum()), int(n_fp.sum()), int(n_fn.sum())
    out: dict[str, float] = {
        "wcr": _ratio(int(np.sum((n_fp == 0) & (n_fn == 0))), n_images),
        "aer": _ratio(fp_sum + fn_sum, tp_sum + fn_sum),
    }
    out.update(count_metrics(tp_sum, fp_sum, fn_sum))
    n_gt_total = int(n_gt.sum())
    if n_gt_total > 0:
        out["map"], out["mr2"] = _threshold_free(tp, scores, n_gt_total, n_images)
    else:
        out["map"] = out["mr2"] = float("nan")
    out.update({"tp": float(tp_sum), "fp": float(fp_sum), "fn": float(fn_sum), "n_images": float(n_images)})
    out.update({f"overlap_{key}": value for key, value in count_metrics(*over[:3]).items()})
    out["overlap_n"] = float(over[3])
    return out


def _true_positives(gt_key: np.ndarray, ok: np.ndarray, scores: np.ndarray, n_keys: int) -> np.ndarray:
    """The matching rule's winners: per ground truth, its assigned detection ranked first.

    The ranking is that of a stable sort by descending score within the image (equal scores: the
    earlier detection), as in :func:`match_detections`.

    Args:
        gt_key: (D,) int64 index of each detection's best ground truth over all images.
        ok: (D,) bool, the detection is assigned to it (IoU >= the threshold).
        scores: (D,) float64 scores.
        n_keys: number of ground truths over all images.

    Returns:
        (D,) bool true-positive flags.
    """
    tp = np.zeros(len(scores), dtype=bool)
    idx = np.flatnonzero(ok)
    key, s = gt_key[idx], scores[idx]
    if np.isnan(s).any():  # NaN ranks last in the sort: keep the sort for this case
        order = np.lexsort((-s, key))
        _, first = np.unique(key[order], return_index=True)
        tp[idx[order[first]]] = True
        return tp
    top = np.full(n_keys, -np.inf)
    np.maximum.at(top, key, s)
    best = s == top[key]  # the highest score of its ground truth; ties: the earliest detection
    first = np.full(n_keys, len(scores))
    np.minimum.at(first, key[best], idx[best])
    tp[first[first < len(scores)]] = True
    return tp


def _threshold_free(tp: np.ndarray, scores: np.ndarray, n_gt: int, n_images: int) -> tuple[float, float]:
    """``(map, mr2)`` from one ranking: :func:`pr_curve` and :func:`miss_rate_fppi`'s expressions."""
    cum_tp, cum_fp = rank_detections(tp, scores)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1)
    recall = cum_tp / n_gt
    fppi, miss_rate = cum_fp / float(n_images), 1.0 - cum_tp / float(n_gt)
    return average_precision(recall, precision), log_average_miss_rate(fppi, miss_rate)


_BLOCK_ELEMENTS = 1 << 16  # images per block: padded images x max(detections, gts) x gts <= this


def _best_gt_and_overlap(
    gts: list[np.ndarray], dets: list[np.ndarray], n_gt: np.ndarray, n_det: np.ndarray, overlap_tau: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each detection's highest-IoU ground truth and each ground truth's S_o membership, all images.

    Images go in blocks, each padded to its largest image; the IoU and IoG values are those of
    :func:`~cytobench.evaluation.boxes.box_iou` / ``box_iog`` (the same operations element by element,
    IoG summed over ``j`` in the same order), so every decision equals the per-image one.

    Returns:
        ``(best, best_iou, in_so)``: (sum M_k,) int64 ground-truth index within its image (0 where
        the image has none), (sum M_k,) float64 its IoU (-1 where the image has no ground truth), and
        (sum N_k,) bool membership of S_o (False in images with fewer than two ground truths).
    """
    best, best_iou, in_so = [], [], []
    start = 0
    while start < len(gts):
        stop, m_max, n_max = start, 0, 0
        while stop < len(gts):  # grow the block while its padded size stays within the budget
            m, n = max(m_max, int(n_det[stop])), max(n_max, int(n_gt[stop]))
            if stop > start and (stop - start + 1) * max(m, n, 1) * max(n, 1) > _BLOCK_ELEMENTS:
                break
            stop, m_max, n_max = stop + 1, m, n
        g, g_ok = _pad(gts[start:stop], max(n_max, 1))  # one padded column at least: argmax needs it
        d, d_ok = _pad(dets[start:stop], m_max)
        iou = _batched_iou(d, g)  # (B, M, N)
        iou[~np.broadcast_to(g_ok[:, None, :], iou.shape)] = -1.0  # padding never wins
        b = iou.argmax(axis=2)  # first maximum: the lowest ground-truth index on ties
        best.append(b[d_ok])
        best_iou.append(np.take_along_axis(iou, b[..., None], axis=2)[..., 0][d_ok])
        in_so.append(_batched_overlap(g, g_ok, overlap_tau)[g_ok])
        start = stop
    if not best:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(best), np.concatenate(best_iou), np.concatenate(in_so)


def _pad(boxes: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, B, size) box coordinates (x1, y1, x2, y2 planes) padded with zero boxes, and the (B, size)
    mask of the real ones."""
    out = np.zeros((len(boxes), size, 4))
    ok = np.zeros((len(boxes), size), dtype=bool)
    for k, b in enumerate(boxes):
        out[k, : len(b)] = b
        ok[k, : len(b)] = True
    return np.ascontiguousarray(out.transpose(2, 0, 1)), ok


def _area(b: np.ndarray) -> np.ndarray:
    """(B, K) areas of (4, B, K) boxes, as ``box_area``."""
    w = b[2] - b[0]
    h = b[3] - b[1]
    return np.maximum(w, 0.0, out=w) * np.maximum(h, 0.0, out=h)


def _batched_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, M, N) intersections of (4, B, M) and (4, B, N) boxes, as ``box_intersection`` per image."""
    w = np.minimum(a[2, :, :, None], b[2, :, None, :])
    w -= np.maximum(a[0, :, :, None], b[0, :, None, :])
    h = np.minimum(a[3, :, :, None], b[3, :, None, :])
    h -= np.maximum(a[1, :, :, None], b[1, :, None, :])
    np.maximum(w, 0.0, out=w)
    np.maximum(h, 0.0, out=h)
    w *= h
    return w


def _batched_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, M, N) IoU of (4, B, M) and (4, B, N) boxes, as ``box_iou`` per image (0 where the union is 0)."""
    inter = _batched_intersection(a, b)
    union = _area(a)[:, :, None] + _area(b)[:, None, :]
    union -= inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _batched_overlap(g: np.ndarray, g_ok: np.ndarray, tau: float) -> np.ndarray:
    """(B, N) S_o membership (Eq. 14) of (4, B, N) padded ground truths, as :func:`overlapping_subset`."""
    inter = _batched_intersection(g, g)  # [b, j, i] = |G_j ∩ G_i|
    area = np.broadcast_to(_area(g)[:, None, :], inter.shape)
    iog = np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)
    n = g.shape[2]
    iog[:, np.arange(n), np.arange(n)] = 0.0
    iog[~np.broadcast_to(g_ok[:, :, None], iog.shape)] = 0.0  # padded G_j cover nothing (summed last)
    member = iog.sum(axis=1) >= tau
    return member & (g_ok.sum(axis=1) >= 2)[:, None]


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
