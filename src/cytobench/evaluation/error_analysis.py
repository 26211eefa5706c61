"""Error analysis of instance masks (thesis Sec. 5.7.4, Table 5.11): is it the masks or the ranking?

COCO mask AP mixes two faults: masks that are drawn badly and scores that rank the good masks below the bad
ones. The thesis separates them with two re-scorings of the same predictions, both built on one matching:
each prediction is paired with the ground-truth object whose mask has the best dice with its own mask.

* **"w/ gt mask"** (:func:`replace_with_gt_masks`): every prediction's mask is replaced by the mask of its
  best-dice ground truth; its score (hence the ranking) is kept. What remains of the AP gap to 1 is due to
  detection and ranking alone (missed objects, duplicates that map onto one object, false positives),
  since every mask is now perfect.
* **"gt matched"** (:func:`keep_gt_matched`): the thesis "set[s] up the same prediction-ground truth
  matching scheme and only keep[s] predicted masks that resolve in high dice scores with their
  corresponding ground truth annotations". So: the predictions whose best dice is at least ``dice_thr``
  are kept with their own masks and scores, the others are dropped. The thesis gives no threshold;
  ``dice_thr = 0.5`` is our choice (dice 0.5 is IoU 1/3). ``one_per_gt=True`` is a stricter reading of
  its table caption ("the best-matched predictions"): of the kept predictions only the one with the best
  dice per ground-truth object stays (ties: the higher score, then the earlier prediction).

Matching details (our choices where the thesis is silent): the dice is taken against every non-crowd
ground-truth object whatever its class, ties go to the earlier object, and a prediction that overlaps no
object (best dice 0) has no match: it keeps its own mask in "w/ gt mask" (it stays a false positive) and
is dropped in "gt matched". Labels are never changed. Because dice = 2 IoU / (1 + IoU) is increasing in
IoU, the best-dice object is the best-IoU object; the evaluator computes the IoUs on RLEs
(``pycocotools.mask.iou``), which is what makes dense images (hundreds of objects) cheap.

:class:`ErrorAnalysisEvaluator` reports the COCO AP of the predictions as they are and of both variants in
one pass: ``coco/segm_AP`` (the baseline, under ``prefix``), ``gt_mask/segm_AP``, ``gt_matched/segm_AP``
and the other summary numbers of :func:`~cytobench.evaluation.coco.summarize_coco` under each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.evaluation.coco import CocoEvaluator, evaluate_coco
from cytobench.io.coco_convert import binarize_masks, to_numpy
from cytobench.types import Prediction, Target

__all__ = [
    "ErrorAnalysisEvaluator",
    "best_dice_match",
    "dice_from_iou",
    "keep_gt_matched",
    "mask_dice",
    "matched_subset",
    "replace_with_gt_masks",
]

#: Dice a prediction needs with its best ground truth to be kept by "gt matched" (our choice; see above).
DEFAULT_DICE_THR = 0.5


def _bool_masks(masks: Any) -> np.ndarray:
    """(N, H, W) bool from (N, H, W) bool / uint8 or (N, 1, H, W) probabilities (``> 0.5``)."""
    arr = to_numpy(masks)
    if arr.ndim == 2:
        arr = arr[None]
    return binarize_masks(arr)


def mask_dice(pred_masks: Any, gt_masks: Any) -> np.ndarray:
    """Pairwise dice 2 |P n G| / (|P| + |G|) of binary masks.

    Args:
        pred_masks: (P, H, W) bool / uint8, or (P, 1, H, W) probabilities (foreground ``> 0.5``).
        gt_masks: (G, H, W), the same conventions.

    Returns:
        (P, G) float64 in [0, 1]; 0 where both masks are empty.
    """
    pred_b, gt_b = _bool_masks(pred_masks), _bool_masks(gt_masks)
    pred = pred_b.reshape(len(pred_b), int(np.prod(pred_b.shape[1:]))).astype(np.float64)
    gt = gt_b.reshape(len(gt_b), int(np.prod(gt_b.shape[1:]))).astype(np.float64)
    inter = pred @ gt.T
    total = pred.sum(1)[:, None] + gt.sum(1)[None, :]
    return np.divide(2.0 * inter, total, out=np.zeros_like(inter), where=total > 0)


def dice_from_iou(iou: np.ndarray) -> np.ndarray:
    """Dice of mask pairs from their IoU: 2 IoU / (1 + IoU) (same intersection, |P| + |G| = union + inter)."""
    iou = np.asarray(iou, dtype=np.float64)
    return 2.0 * iou / (1.0 + iou)


def _best(dice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (P, G) dice matrix: the best column (-1 where the best dice is 0) and that dice."""
    if dice.shape[1] == 0:
        return np.full(dice.shape[0], -1, dtype=np.int64), np.zeros(dice.shape[0])
    index = np.argmax(dice, axis=1).astype(np.int64)  # first maximum: ties go to the earlier object
    best = dice[np.arange(len(dice)), index]
    index[best <= 0] = -1
    return index, best


def best_dice_match(pred_masks: Any, gt_masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's best-dice ground-truth object.

    Returns:
        ``(index (P,) int64, dice (P,) float64)``: the ground-truth index with the highest dice (the
        first one on ties), -1 where the prediction overlaps no object (dice 0).
    """
    return _best(mask_dice(pred_masks, gt_masks))


def replace_with_gt_masks(gt_masks: Any, pred_masks: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """The "w/ gt mask" variant: each prediction's mask becomes its best-dice ground-truth mask.

    Args:
        gt_masks: (G, H, W) ground-truth masks of one image (leave crowd regions out).
        pred_masks: (P, H, W) or (P, 1, H, W) predicted masks of the same image.
        scores: (P,) prediction scores.

    Returns:
        ``(masks (P, H, W) bool, scores (P,) float64)``: the scores unchanged; a prediction that overlaps
        no object keeps its own mask.
    """
    pred = _bool_masks(pred_masks)
    gt = _bool_masks(gt_masks)
    index, _ = best_dice_match(pred, gt)
    out = pred.copy()
    hit = index >= 0
    out[hit] = gt[index[hit]]
    return out, to_numpy(scores).astype(np.float64).reshape(-1)


def matched_subset(
    index: np.ndarray,
    dice: np.ndarray,
    scores: np.ndarray,
    dice_thr: float = DEFAULT_DICE_THR,
    one_per_gt: bool = False,
) -> np.ndarray:
    """Indices (ascending) of the predictions "gt matched" keeps, from their best match and its dice.

    Args:
        index: (P,) best ground-truth index per prediction, -1 for none (:func:`best_dice_match`).
        dice: (P,) the dice of that match.
        scores: (P,) prediction scores (tie-break of ``one_per_gt``).
        dice_thr: the least dice kept (> 0).
        one_per_gt: keep only the best-dice prediction per ground-truth object.
    """
    if not 0.0 < dice_thr <= 1.0:
        raise ValueError(f"dice_thr must be in (0, 1], got {dice_thr}")
    index, dice = np.asarray(index), np.asarray(dice, dtype=np.float64)
    keep = np.flatnonzero((index >= 0) & (dice >= dice_thr))
    if not one_per_gt or keep.size == 0:
        return keep
    scores = np.asarray(scores, dtype=np.float64)
    # best dice first, then the higher score, then the earlier prediction; the first of each object stays
    order = keep[np.lexsort((keep, -scores[keep], -dice[keep]))]
    _, first = np.unique(index[order], return_index=True)
    return np.sort(order[first])


def keep_gt_matched(
    gt_masks: Any,
    pred_masks: Any,
    scores: Any,
    dice_thr: float = DEFAULT_DICE_THR,
    one_per_gt: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The "gt matched" variant: only predictions whose best dice with the ground truth is high.

    Args:
        gt_masks: (G, H, W) ground-truth masks of one image (leave crowd regions out).
        pred_masks: (P, H, W) or (P, 1, H, W) predicted masks.
        scores: (P,) prediction scores.
        dice_thr: the least best-dice kept (see the module docstring: the thesis gives none).
        one_per_gt: keep one prediction per ground-truth object (the best dice).

    Returns:
        ``(masks (K, H, W) bool, scores (K,) float64, kept (K,) int64 indices into the predictions)``,
        the kept predictions with their own masks and scores, in their original order.
    """
    pred = _bool_masks(pred_masks)
    score = to_numpy(scores).astype(np.float64).reshape(-1)
    index, dice = best_dice_match(pred, gt_masks)
    kept = matched_subset(index, dice, score, dice_thr, one_per_gt)
    return pred[kept], score[kept], kept


def _rle_best_match(
    results: Sequence[Mapping[str, Any]], anns: Sequence[Mapping[str, Any]]
) -> tuple[list, list]:
    """Best-dice non-crowd annotation (index into ``anns``, -1 for none) and its dice, per result, from RLEs."""
    from pycocotools import mask as mask_utils

    objects = [i for i, ann in enumerate(anns) if not ann.get("iscrowd", 0)]
    if not results:
        return [], []
    if not objects:
        return [-1] * len(results), [0.0] * len(results)

    def rle(item: Mapping[str, Any]) -> dict[str, Any]:
        seg = item["segmentation"]
        return {"size": seg["size"], "counts": seg["counts"].encode("ascii")}

    dt = [rle(r) for r in results]
    gt = [rle(anns[i]) for i in objects]
    iou = np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)), dtype=np.float64).reshape(len(dt), len(gt))
    local, dice = _best(dice_from_iou(iou))
    index = np.where(local >= 0, np.asarray(objects)[np.maximum(local, 0)], -1)
    return index.tolist(), dice.tolist()


class ErrorAnalysisEvaluator(CocoEvaluator):
    """COCO mask AP of the predictions, of "w/ gt mask" and of "gt matched" (Table 5.11) in one pass.

    Each image is converted once (masks to RLE, as :class:`~cytobench.evaluation.coco.CocoEvaluator`), and
    each prediction's best-dice object and dice are stored beside it (two numbers), so the variants cost
    no extra state; ``compute`` builds the three results lists and scores each with
    :func:`~cytobench.evaluation.coco.evaluate_coco`.

    Keys: ``{prefix}/segm_{stat}`` (the predictions as they are; ``include_baseline=False`` leaves them
    out, e.g. beside a :class:`CocoEvaluator` with the same prefix), ``{gt_mask_prefix}/segm_{stat}`` and
    ``{gt_matched_prefix}/segm_{stat}``.

    Args:
        max_dets, area_ranges, categories, prefix, backend, class_agnostic, truth_masks, segm_det_area: as
            :class:`~cytobench.evaluation.coco.CocoEvaluator` (``iou_types`` is ``("segm",)``).
        dice_thr: "gt matched" keeps predictions whose best dice is at least this.
        one_per_gt: "gt matched" keeps one prediction per object (see :func:`matched_subset`).
        gt_mask_prefix: namespace of the "w/ gt mask" keys.
        gt_matched_prefix: namespace of the "gt matched" keys.
        include_baseline: also report the unchanged predictions under ``prefix``.
    """

    def __init__(
        self,
        max_dets: Sequence[int] | None = None,
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
        categories: Sequence[Any] | None = None,
        prefix: str = "coco",
        backend: str = "faster",
        class_agnostic: bool = False,
        truth_masks: str = "masks",
        segm_det_area: str = "box",
        dice_thr: float = DEFAULT_DICE_THR,
        one_per_gt: bool = False,
        gt_mask_prefix: str = "gt_mask",
        gt_matched_prefix: str = "gt_matched",
        include_baseline: bool = True,
    ) -> None:
        if not 0.0 < dice_thr <= 1.0:
            raise ValueError(f"dice_thr must be in (0, 1], got {dice_thr}")
        prefixes = [
            p
            for p, on in ((prefix, include_baseline), (gt_mask_prefix, True), (gt_matched_prefix, True))
            if on
        ]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"the variants need distinct prefixes, got {prefixes}")
        self.dice_thr = float(dice_thr)
        self.one_per_gt = bool(one_per_gt)
        self.gt_mask_prefix = gt_mask_prefix
        self.gt_matched_prefix = gt_matched_prefix
        self.include_baseline = bool(include_baseline)
        super().__init__(
            ("segm",),
            max_dets,
            area_ranges,
            categories,
            prefix,
            backend,
            class_agnostic=class_agnostic,
            truth_masks=truth_masks,
            segm_det_area=segm_det_area,
        )

    def process_image(self, target: Target, pred: Prediction) -> None:
        image, anns, results = self._convert(target, pred)
        self._add_image(image)
        index, dice = _rle_best_match(results, anns)
        packed = [anns, results, index, dice]
        self._packed.append(json.dumps(packed, separators=(",", ":")).encode())

    def _unpacked_variants(self) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """All annotations (ids 1..N) and the three results lists: baseline, gt_mask, gt_matched."""
        anns: list[dict[str, Any]] = []
        variants: dict[str, list[dict[str, Any]]] = {"baseline": [], "gt_mask": [], "gt_matched": []}
        for packed in self._packed:
            image_anns, results, index, dice = json.loads(packed)
            for res, i in zip(results, index):
                replaced = dict(res)
                if i >= 0:
                    replaced["segmentation"] = image_anns[i]["segmentation"]
                    replaced["bbox"] = image_anns[i]["bbox"]
                variants["gt_mask"].append(replaced)
            scores = np.array([r["score"] for r in results], dtype=np.float64)
            kept = matched_subset(
                np.array(index, dtype=np.int64), np.array(dice), scores, self.dice_thr, self.one_per_gt
            )
            variants["gt_matched"].extend(results[k] for k in kept.tolist())
            variants["baseline"].extend(results)
            anns.extend(image_anns)
        for i, ann in enumerate(anns, start=1):
            ann["id"] = i
        return anns, variants

    def _unpacked(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        anns, variants = self._unpacked_variants()
        return anns, variants["baseline"]

    def compute(self) -> dict[str, float]:
        anns, variants = self._unpacked_variants()
        gt = self._gt(anns, variants["baseline"])
        runs = [(self.gt_mask_prefix, variants["gt_mask"]), (self.gt_matched_prefix, variants["gt_matched"])]
        if self.include_baseline:
            runs.insert(0, (self.prefix, variants["baseline"]))
        out: dict[str, float] = {}
        for prefix, results in runs:
            # gt is reused by the next run, so the libraries get copies; results are this run's own
            stats = evaluate_coco(
                gt, self._scored(results, "segm"), "segm", self.max_dets, self.area_ranges, self.backend
            )
            out.update({f"{prefix}/segm_{key}": value for key, value in stats.items()})
        return out
