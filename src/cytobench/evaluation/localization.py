"""Point-localisation metrics with an L2 distance tolerance (QD paper, Sec. 4.8).

Per image, detections are visited in descending score (stable: equal scores keep their
order) and each is matched to the nearest *unmatched* ground-truth point within distance
``<= eps`` (true positive), otherwise it is a false positive (so a second detection on an
already matched point is a false positive); unmatched ground-truth points are false
negatives. Equal distances go to the lowest ground-truth index. The precision / recall
curve ranks the detections of all images by score; AUC is its all-point interpolated area
(:func:`cytobench.evaluation.curves.average_precision`, the same function as enumeration mAP).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cytobench.evaluation.base import Evaluator, check_one_score_each, non_crowd, to_numpy
from cytobench.evaluation.curves import average_precision, pr_curve
from cytobench.types import Prediction, Target


def _points(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def localize_match(
    gt_points: np.ndarray, det_points: np.ndarray, det_scores: np.ndarray, eps: float
) -> np.ndarray:
    """Greedy score-ordered nearest-point matching of one image.

    Args:
        gt_points: (N, 2) ground-truth (x, y) positions in pixels.
        det_points: (M, 2) detected (x, y) positions in pixels.
        det_scores: (M,) detection scores.
        eps: matching tolerance in pixels; distance ``<= eps`` matches.

    Returns:
        (M,) bool, True for true positives (the number of false negatives is ``N - tp.sum()``).
    """
    gts = _points(gt_points)
    dets = _points(det_points)
    scores = np.asarray(det_scores, dtype=np.float64).ravel()
    tp = np.zeros(len(dets), dtype=bool)
    if len(gts) == 0 or len(dets) == 0:
        return tp
    dist = np.sqrt(((dets[:, None, :] - gts[None, :, :]) ** 2).sum(axis=-1))  # (M, N)
    dist[dist > eps] = np.inf
    candidates = np.flatnonzero(np.isfinite(dist).any(axis=1))
    if candidates.size == 0:
        return tp
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    taken = np.zeros(len(gts), dtype=bool)
    for i in order:
        row = np.where(taken, np.inf, dist[i])
        j = int(row.argmin())
        if np.isfinite(row[j]):
            taken[j] = True
            tp[i] = True
    return tp


def localization_curve(
    gt_points: Sequence[np.ndarray],
    det_points: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision / recall curve of point detections over several images.

    Args:
        gt_points: per image (N_k, 2) ground-truth points.
        det_points: per image (M_k, 2) detected points.
        det_scores: per image (M_k,) scores.
        eps: matching tolerance in pixels.

    Returns:
        ``(recall, precision, thresholds)``, each (M,) over all detections ranked by score
        (see :func:`cytobench.evaluation.curves.pr_curve`).
    """
    if not len(gt_points) == len(det_points) == len(det_scores):
        raise ValueError("gt_points, det_points and det_scores must have one entry per image")
    tps = [localize_match(g, d, s, eps) for g, d, s in zip(gt_points, det_points, det_scores)]
    n_gt = sum(len(_points(g)) for g in gt_points)
    tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
    scores = (
        np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in det_scores]) if tps else np.zeros(0)
    )
    return pr_curve(tp, scores, n_gt)


def localization_metrics(
    gt_points: Sequence[np.ndarray],
    det_points: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    eps: float,
) -> dict[str, float]:
    """AUC, precision and recall (all detections kept) at one tolerance.

    Returns:
        ``{"auc", "precision", "recall"}``; ``auc`` and ``recall`` are NaN without ground
        truth, ``precision`` is NaN without detections.
    """
    recall, precision, _ = localization_curve(gt_points, det_points, det_scores, eps)
    n_gt = sum(len(_points(g)) for g in gt_points)
    precision_all = float(precision[-1]) if precision.size else float("nan")
    if n_gt == 0:
        return {"auc": float("nan"), "precision": precision_all, "recall": float("nan")}
    recall_all = float(recall[-1]) if recall.size else 0.0
    return {"auc": average_precision(recall, precision), "precision": precision_all, "recall": recall_all}


def _eps_tag(eps: float) -> str:
    return f"eps{eps:g}"


def _keypoint_positions(item: Target | Prediction, index: int, visible_only: bool) -> np.ndarray:
    """(K, 2) positions of keypoint ``index`` of each instance; box centres if there are no keypoints."""
    if "keypoints" in item and item["keypoints"] is not None:
        kps = to_numpy(item["keypoints"]).astype(np.float64)
        if kps.size == 0:
            return np.zeros((0, 2))
        kps = kps.reshape(kps.shape[0], -1, kps.shape[-1])[:, index, :]
        keep = kps[:, 2] > 0 if (visible_only and kps.shape[-1] > 2) else np.ones(len(kps), dtype=bool)
        if "iscrowd" in item:  # targets only: crowd regions are not particles to find
            keep &= non_crowd(item)
        return kps[keep, :2]
    boxes = to_numpy(item["boxes"]).astype(np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


class LocalizationEvaluator(Evaluator):
    """Accumulates keypoint positions and reports epsilon-distance precision / recall / AUC.

    Ground truth: keypoint ``keypoint_index`` of each annotation in ``target["keypoints"]``
    (N, K, 3), only where its visibility is > 0. Predictions: the same keypoint of every
    detection with the detection's score. Without a ``keypoints`` entry the box centres are
    used (e.g. for point detectors that output tiny boxes). Keys: ``loc/auc@eps1``,
    ``loc/precision@eps1``, ``loc/recall@eps1`` for each eps (formatted with ``:g``).

    Args:
        eps: tolerances in pixels.
        keypoint_index: which keypoint of an instance is its position.
        prefix: namespace of the metric keys.
    """

    def __init__(
        self, eps: Sequence[float] = (1.0, 2.0, 3.0), keypoint_index: int = 0, prefix: str = "loc"
    ) -> None:
        self.eps = tuple(float(e) for e in eps)
        self.keypoint_index = int(keypoint_index)
        self.prefix = prefix
        self.reset()

    state_fields = ("_gt", "_det", "_scores")

    def reset(self) -> None:
        self._gt: list[np.ndarray] = []
        self._det: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def process_image(self, target: Target, pred: Prediction) -> None:
        dets = _keypoint_positions(pred, self.keypoint_index, visible_only=False)
        scores = to_numpy(pred["scores"]).astype(np.float64).ravel()
        check_one_score_each(target, len(dets), len(scores))
        self._gt.append(_keypoint_positions(target, self.keypoint_index, visible_only=True))
        self._det.append(dets)
        self._scores.append(scores)

    def pr_curves(self) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{eps: (recall, precision, thresholds)}`` over everything processed, for plotting."""
        return {e: localization_curve(self._gt, self._det, self._scores, e) for e in self.eps}

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in self.eps:
            metrics = localization_metrics(self._gt, self._det, self._scores, e)
            for key, value in metrics.items():
                out[f"{self.prefix}/{key}@{_eps_tag(e)}"] = value
        return out


__all__ = ["LocalizationEvaluator", "localization_curve", "localization_metrics", "localize_match"]
