"""Precision and recall of a detector at one operating point: the confidence of the best class-mean F1.

This is ultralytics' choice of operating point for its P / R columns (FISH paper Table 1), computed
with COCO's greedy matching:

* Matching (:func:`greedy_match`, per image and class): detections are visited in descending score
  (stable: equal scores keep their order); each takes the *unmatched* ground truth with the highest
  IoU, if that IoU is ``>= iou_thr`` (true positive), else it is a false positive. Equal IoUs go to
  the lowest ground-truth index. A second detection on an already matched object is a false positive.
* Operating point (:func:`best_f1_operating_point`): the candidate thresholds are the distinct
  detection scores; at threshold ``t`` a class keeps its detections with ``score >= t``, precision is
  ``tp / kept`` (1 when nothing is kept, ultralytics' convention), recall ``tp / n_gt``, F1 their
  harmonic mean (0 when both are 0). The chosen threshold maximises the mean F1 over the classes that
  have ground truth; ties keep the highest threshold. Classes without ground truth are left out.

ultralytics interpolates on a 1000-point grid and smooths the F1 curve first, so its P / R can differ
by a few thousandths from these exact values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.errors import BadInputError

__all__ = [
    "best_f1_operating_point",
    "greedy_match",
    "match_coco_detections",
    "precision_recall_at_best_f1",
]

ClassMatches = tuple[np.ndarray, np.ndarray, int]  # (scores (D,) descending, is_tp (D,) bool, n_gt)


def greedy_match(ious: np.ndarray, iou_thr: float = 0.5) -> np.ndarray:
    """COCO's greedy matching of one image and class.

    Args:
        ious: (D, G) IoU of each detection (rows already in descending score) with each ground truth.
        iou_thr: lowest IoU of a match (inclusive).

    Returns:
        (D,) bool, True for true positives (false negatives: ``G - tp.sum()``).
    """
    ious = np.asarray(ious, dtype=np.float64)
    n_det, n_gt = ious.shape
    tp = np.zeros(n_det, dtype=bool)
    if n_gt == 0:
        return tp
    taken = np.zeros(n_gt, dtype=bool)
    for i in range(n_det):
        candidates = np.where(~taken & (ious[i] >= iou_thr), ious[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= 0:
            taken[j] = True
            tp[i] = True
    return tp


def best_f1_operating_point(matches: Mapping[int, ClassMatches]) -> dict[str, float]:
    """Class-mean precision, recall and F1 at the shared threshold of the best class-mean F1.

    Args:
        matches: ``{class: (scores (D,) in descending order, is_tp (D,) bool, number of ground truths)}``,
            e.g. from :func:`match_coco_detections`.

    Returns:
        ``{"precision", "recall", "f1", "conf"}``; ``conf`` NaN and the rest 0 when no class has both
        ground truth and detections (see the module docstring for the rule).
    """
    kept = {c: m for c, m in matches.items() if m[2] > 0}
    scores_all = [np.asarray(m[0], dtype=np.float64) for m in kept.values()]
    thresholds = np.unique(np.concatenate(scores_all or [np.zeros(0)]))[::-1]
    if not kept or thresholds.size == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "conf": float("nan")}
    p = np.zeros((len(kept), thresholds.size))
    r = np.zeros_like(p)
    for k, (scores, tps, n_gt) in enumerate(kept.values()):
        scores = np.asarray(scores, dtype=np.float64)
        # detections with score >= t: scores are descending, so count them with a search on -scores
        n_det = np.searchsorted(-scores, -thresholds, side="right")
        n_tp = np.concatenate([[0], np.cumsum(np.asarray(tps, dtype=bool))])[n_det]
        p[k] = np.where(n_det > 0, n_tp / np.maximum(n_det, 1), 1.0)
        r[k] = n_tp / n_gt
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    best = int(np.argmax(f1.mean(axis=0)))
    return {
        "precision": float(p[:, best].mean()),
        "recall": float(r[:, best].mean()),
        "f1": float(f1[:, best].mean()),
        "conf": float(thresholds[best]),
    }


def _coco_items(items: Sequence[Mapping[str, Any]], height: int, width: int, iou_type: str) -> list[Any]:
    """RLEs (segm) or xywh boxes (bbox) of annotations / results of one image, for ``mask.iou``."""
    from pycocotools import mask as mask_utils

    if iou_type == "bbox":
        return [list(map(float, a["bbox"])) for a in items]
    out = []
    for a in items:
        seg = a["segmentation"]
        if isinstance(seg, list):
            out.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        else:
            rle = dict(seg)
            if isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode("ascii")
            out.append(rle)
    return out


def match_coco_detections(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm", iou_thr: float = 0.5
) -> dict[int, ClassMatches]:
    """:func:`greedy_match` of COCO results against a COCO dataset, per image and class.

    Args:
        gt: COCO dataset (``segmentation`` polygons or RLE for segm, ``bbox`` xywh for bbox); crowd ignored.
        results: COCO results with ``image_id``, ``category_id``, ``score`` and ``segmentation`` / ``bbox``.
        iou_type: ``"segm"`` or ``"bbox"``.
        iou_thr: lowest IoU of a match.

    Returns:
        ``{category_id: (scores (D,) descending, is_tp (D,) bool, number of ground-truth objects)}`` for
        every category of ``gt`` (and any other a result names).
    """
    from pycocotools import mask as mask_utils

    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    gts: dict[tuple[Any, int], list[Mapping[str, Any]]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            gts.setdefault((a["image_id"], int(a["category_id"])), []).append(a)
    dts: dict[tuple[Any, int], list[Mapping[str, Any]]] = {}
    for r in results:
        if r["image_id"] not in sizes:
            raise BadInputError("results", f"image_id {r['image_id']} is not in the ground truth")
        dts.setdefault((r["image_id"], int(r["category_id"])), []).append(r)
    per_class: dict[int, tuple[list[float], list[bool], int]] = {
        int(c["id"]): ([], [], 0) for c in gt["categories"]
    }
    for key in set(gts) | set(dts):
        image_id, cat = key
        g, d = gts.get(key, []), sorted(dts.get(key, []), key=lambda r: -float(r["score"]))
        scores, tps, n_gt = per_class.setdefault(cat, ([], [], 0))
        per_class[cat] = (scores, tps, n_gt + len(g))
        if not d:
            continue
        height, width = sizes[image_id]
        ious = (
            np.asarray(
                mask_utils.iou(
                    _coco_items(d, height, width, iou_type),
                    _coco_items(g, height, width, iou_type),
                    [0] * len(g),
                )
            ).reshape(len(d), len(g))
            if g
            else np.zeros((len(d), 0))
        )
        scores.extend(float(det["score"]) for det in d)
        tps.extend(greedy_match(ious, iou_thr).tolist())
    out = {}
    for cat, (scores, tps, n_gt) in per_class.items():
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        out[cat] = (np.asarray(scores, dtype=np.float64)[order], np.asarray(tps, dtype=bool)[order], n_gt)
    return out


def precision_recall_at_best_f1(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm", iou_thr: float = 0.5
) -> dict[str, float]:
    """:func:`best_f1_operating_point` of COCO results matched by :func:`match_coco_detections`.

    Returns:
        ``{"precision", "recall", "f1", "conf"}`` (``conf`` NaN and the rest 0 when there are no results).
    """
    return best_f1_operating_point(match_coco_detections(gt, results, iou_type, iou_thr))
