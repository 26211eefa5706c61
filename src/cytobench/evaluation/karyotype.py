"""Karyotyping metrics for the 24 chromosome classes: per-class detection, confusion, Denver groups, cells.

Classes are the category ids of ``label_mode="karyotype"`` (:mod:`cytobench.simulate.metaphase`): 1-22,
X = 23, Y = 24; the Denver groups are those of :data:`cytobench.simulate.chromosomes.CLASSES` (KTH thesis
Table 3.1). Precision / recall / F1 per class are what the thesis reports (Table 5.1).

Matching (:func:`greedy_match`, per image): detections are taken by descending score (stable: equal
scores keep their order); each takes the still-unmatched truth of highest IoU (lowest index on ties) if
that IoU is >= ``iou_thr``, else stays unmatched (a false detection). *Per-class* matching lets a
detection take only truths of its own class; *class-agnostic* matching lets it take any truth.

Thresholded metrics use the detections with ``score >= score_thr``. They come first in the score
ranking, so the greedy decisions for them do not depend on the lower-scored ones: per-class matching is
done once on all detections, its flags give AP50 (threshold-free) and, restricted to the kept
detections, the per-class counts.

* Per class c (per-class matching, kept detections): TP_c, FP_c (kept detections of class c left
  unmatched), FN_c (truths of class c left unmatched); precision TP/(TP+FP), recall TP/(TP+FN), F1
  2TP/(2TP+FP+FN), NaN where the denominator is 0. Macro values average the classes where they are
  defined; micro values come from the counts summed over classes.
* AP50_c: every detection of class c over all images, ranked by score with its per-class TP flag;
  all-point interpolated area under precision / recall (:func:`~cytobench.evaluation.curves.average_precision`);
  NaN for a class without truth; mAP50 averages the classes with truth.
* Confusion (class-agnostic matching, kept detections): ``confusion[t-1, p-1]`` counts the truths of class
  t matched by a detection labelled p; ``missed[t-1]`` the truths of class t left unmatched;
  ``false_detections[p-1]`` the detections labelled p left unmatched. Class accuracy = trace / total;
  Denver accuracy = fraction of the matched pairs whose predicted class is in the true class's group
  (a 21 <-> 22 swap stays in G, a 21 -> 13 swap leaves it).
* Whole cells: *exact match* = no missed truth, no false detection and every matched pair classed
  right; *count match* = the kept detections' class counts equal the truth's (same ISCN string, wherever
  the chromosomes are); *aneuploidy*: a cell is abnormal unless its class counts are 46,XX or 46,XY
  (two of each autosome, XX or XY); the predicted call (from the kept detections' labels) is scored
  against the truth's with sensitivity (abnormal cells called abnormal) and specificity (normal cells
  called normal), each with a Wilson interval.
* Best-F1 operating point (``best_f1*``): the class-mean precision, recall and F1 at the one confidence
  that maximises the class-mean F1 over the classes with truth
  (:func:`~cytobench.evaluation.operating_point.best_f1_operating_point`, on the per-class flags of all
  detections). This is how YOLOv5's validation reports P and R, so the thesis' YOLO row of Table 5.1; the
  threshold is chosen on the scored images themselves, so it is optimistic beside the fixed ``score_thr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from cytobench.evaluation.base import Evaluator, check_one_score_each, non_crowd, to_numpy
from cytobench.evaluation.boxes import box_iou
from cytobench.evaluation.curves import average_precision, pr_curve
from cytobench.evaluation.operating_point import best_f1_operating_point
from cytobench.types import Prediction, Target

__all__ = [
    "N_CLASSES",
    "KaryotypeEvaluator",
    "KaryotypeResult",
    "class_names",
    "denver_same_group",
    "greedy_match",
    "is_normal_karyotype",
    "karyotype_metrics",
    "prf_from_counts",
    "sensitivity_specificity",
]

N_CLASSES = 24  # 1-22, X = 23, Y = 24


# The chromosome tables live in the simulator, which imports OpenCV and SciPy; imported on first use so that
# `import cytobench.evaluation` stays light (as evaluation/stats.py does for scipy.stats).
@cache
def class_names() -> tuple[str, ...]:
    """The 24 class names ``"1"`` .. ``"22"``, ``"X"``, ``"Y"`` (index = class id - 1)."""
    from cytobench.simulate.chromosomes import CLASS_NAMES

    return CLASS_NAMES


@cache
def _same_group_table() -> np.ndarray:
    """(24, 24) bool: ``[t-1, p-1]`` is True when classes t and p share a Denver group."""
    from cytobench.simulate.chromosomes import CLASSES

    groups = np.array([c.group for c in CLASSES])
    table = groups[:, None] == groups[None, :]
    table.setflags(write=False)
    return table


def denver_same_group(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Element-wise: is each predicted class (1-24) in the Denver group of its true class?"""
    t = _check_labels(true_labels, "true labels")
    p = _check_labels(pred_labels, "predicted labels")
    return _same_group_table()[t - 1, p - 1]


def _check_labels(labels: Any, what: str) -> np.ndarray:
    """``labels`` as a flat int64 array of class ids 1-24.

    Raises:
        ValueError: a label outside 1-24 (e.g. a model trained with ``label_mode="chromosome"``).
    """
    arr = np.asarray(labels).ravel().astype(np.int64)
    bad = (arr < 1) | (arr > N_CLASSES)
    if bad.any():
        raise ValueError(f"{what} must be class ids 1-{N_CLASSES}, got {sorted(set(arr[bad].tolist()))[:5]}")
    return arr


def greedy_match(
    gt_boxes: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    iou_thr: float = 0.5,
    gt_labels: np.ndarray | None = None,
    det_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one image's detections to its truth (see the module docstring).

    Args:
        gt_boxes: (N, 4) xyxy truth boxes.
        det_boxes: (M, 4) xyxy detected boxes.
        det_scores: (M,) scores; higher-scored detections choose first.
        iou_thr: minimum IoU (inclusive) of a match.
        gt_labels: (N,) truth classes; with ``det_labels``, only same-class pairs match (per-class).
        det_labels: (M,) detected classes; both label arrays or neither (class-agnostic).

    Returns:
        ``(det_to_gt, gt_to_det)``: (M,) and (N,) int64 index of the partner, -1 where unmatched.
    """
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    det = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det_scores, dtype=np.float64).ravel()
    if len(scores) != len(det):
        raise ValueError(f"{len(det)} detected boxes but {len(scores)} scores")
    if (gt_labels is None) != (det_labels is None):
        raise ValueError("give both gt_labels and det_labels (per-class matching) or neither")
    iou = box_iou(det, gt)  # (M, N)
    if gt_labels is not None and det_labels is not None:
        same = np.asarray(det_labels).ravel()[:, None] == np.asarray(gt_labels).ravel()[None, :]
        iou = np.where(same, iou, -1.0)
    det_to_gt = np.full(len(det), -1, dtype=np.int64)
    gt_to_det = np.full(len(gt), -1, dtype=np.int64)
    if len(det) == 0 or len(gt) == 0:
        return det_to_gt, gt_to_det
    for d in np.argsort(-scores, kind="stable"):  # NaN scores rank last
        j = int(iou[d].argmax())
        if iou[d, j] >= iou_thr:
            det_to_gt[d], gt_to_det[j] = j, d
            iou[:, j] = -1.0  # taken
    return det_to_gt, gt_to_det


def prf_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (``2TP / (2TP + FP + FN)``) element-wise; NaN where a denominator is 0."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return precision, recall, f1


def is_normal_karyotype(labels: np.ndarray) -> bool:
    """True for 46,XX and 46,XY: exactly two of each autosome 1-22 and XX or XY."""
    counts = np.bincount(_check_labels(labels, "labels"), minlength=N_CLASSES + 1)
    sex = (int(counts[23]), int(counts[24]))
    return bool(np.all(counts[1:23] == 2)) and sex in ((2, 0), (1, 1))


def sensitivity_specificity(
    true_abnormal: np.ndarray, pred_abnormal: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Sensitivity and specificity of a per-cell abnormal / normal call, with Wilson intervals.

    Args:
        true_abnormal: (K,) bool, the cell's true karyotype is abnormal.
        pred_abnormal: (K,) bool, the cell was called abnormal.
        confidence: two-sided level of the intervals.

    Returns:
        ``sensitivity``, ``sensitivity_lo``, ``sensitivity_hi``, ``specificity``, ``specificity_lo``,
        ``specificity_hi`` (NaN without abnormal / normal cells), ``n_abnormal``, ``n_normal``.
    """
    from cytobench.fish.intervals import wilson_interval  # scipy.stats: imported when needed

    truth = np.asarray(true_abnormal, dtype=bool).ravel()
    called = np.asarray(pred_abnormal, dtype=bool).ravel()
    if truth.shape != called.shape:
        raise ValueError(f"{truth.size} true flags but {called.size} predicted flags")
    out: dict[str, float] = {}
    for name, k, n in (
        ("sensitivity", int(np.sum(truth & called)), int(truth.sum())),
        ("specificity", int(np.sum(~truth & ~called)), int((~truth).sum())),
    ):
        lo, hi = wilson_interval(k, n, confidence)
        out[name] = k / n if n else float("nan")
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    out["n_abnormal"], out["n_normal"] = float(truth.sum()), float((~truth).sum())
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True)
class KaryotypeResult:
    """Everything :func:`karyotype_metrics` measures; per-class arrays are indexed by class id - 1.

    Attributes:
        tp, fp, fn: (24,) int64 per-class counts (per-class matching, kept detections).
        precision, recall, f1, ap50: (24,) float64 per class, NaN where undefined.
        confusion: (24, 24) int64, rows true class, columns predicted class (class-agnostic matching).
        missed: (24,) int64 unmatched truths per true class.
        false_detections: (24,) int64 unmatched kept detections per predicted class.
        exact: (K,) bool per image, the cell is exactly right.
        true_abnormal, pred_abnormal: (K,) bool per image, the truth / the kept detections are not 46,XX/XY.
        true_karyotype, pred_karyotype: per image ISCN strings (``format_karyotype``).
        confidence: level of the aneuploidy intervals.
        best_f1: ``{"precision", "recall", "f1", "conf"}`` at the best class-mean F1 (module docstring).
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    ap50: np.ndarray
    confusion: np.ndarray
    missed: np.ndarray
    false_detections: np.ndarray
    exact: np.ndarray
    true_abnormal: np.ndarray
    pred_abnormal: np.ndarray
    true_karyotype: list[str]
    pred_karyotype: list[str]
    confidence: float = 0.95
    best_f1: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """The scalar metrics (unprefixed keys, plain floats; see :class:`KaryotypeEvaluator`)."""
        micro = prf_from_counts(self.tp.sum(), self.fp.sum(), self.fn.sum())
        pairs = int(self.confusion.sum())
        n_images = len(self.exact)
        out = {
            "precision": _nanmean(self.precision),
            "recall": _nanmean(self.recall),
            "f1": _nanmean(self.f1),
            "micro_precision": float(micro[0]),
            "micro_recall": float(micro[1]),
            "micro_f1": float(micro[2]),
            "mAP50": _nanmean(self.ap50),
            "class_accuracy": float(np.trace(self.confusion) / pairs) if pairs else float("nan"),
            "denver_accuracy": (
                float(self.confusion[_same_group_table()].sum() / pairs) if pairs else float("nan")
            ),
            "exact_match": float(self.exact.mean()) if n_images else float("nan"),
            "count_match": (
                float(np.mean([t == p for t, p in zip(self.true_karyotype, self.pred_karyotype)]))
                if n_images
                else float("nan")
            ),
            "n_images": float(n_images),
        }
        rates = sensitivity_specificity(self.true_abnormal, self.pred_abnormal, self.confidence)
        out.update({f"aneuploidy_{key}": value for key, value in rates.items()})
        out.update({"best_f1" if key == "f1" else f"best_f1_{key}": v for key, v in self.best_f1.items()})
        out.update({f"f1_{name}": float(v) for name, v in zip(class_names(), self.f1)})
        return out


def karyotype_metrics(
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_labels: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_thr: float = 0.5,
    score_thr: float = 0.5,
    confidence: float = 0.95,
) -> KaryotypeResult:
    """All karyotyping metrics over a set of images (see the module docstring for the definitions).

    Args:
        gt_boxes: per image (N_k, 4) xyxy truth boxes.
        gt_labels: per image (N_k,) truth classes 1-24.
        det_boxes: per image (M_k, 4) xyxy detected boxes.
        det_labels: per image (M_k,) detected classes 1-24.
        det_scores: per image (M_k,) scores.
        iou_thr: minimum IoU (inclusive) of a match.
        score_thr: detections with score >= this count in every thresholded metric (all but AP50).
        confidence: level of the aneuploidy Wilson intervals.

    Returns:
        The per-class, confusion and per-image results; :meth:`KaryotypeResult.summary` gives the scalars.
    """
    from cytobench.simulate.chromosomes import format_karyotype

    n_images = len(gt_boxes)
    if not n_images == len(gt_labels) == len(det_boxes) == len(det_labels) == len(det_scores):
        raise ValueError("gt_boxes, gt_labels, det_boxes, det_labels and det_scores need one entry per image")
    tp = np.zeros(N_CLASSES, dtype=np.int64)
    fp = np.zeros(N_CLASSES, dtype=np.int64)
    fn = np.zeros(N_CLASSES, dtype=np.int64)
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    missed = np.zeros(N_CLASSES, dtype=np.int64)
    false_det = np.zeros(N_CLASSES, dtype=np.int64)
    exact = np.zeros(n_images, dtype=bool)
    true_abnormal = np.zeros(n_images, dtype=bool)
    pred_abnormal = np.zeros(n_images, dtype=bool)
    true_karyotype: list[str] = []
    pred_karyotype: list[str] = []
    ranked_hit, ranked_score, ranked_label = [], [], []  # every detection, for AP50

    def per_class(labels: np.ndarray) -> np.ndarray:
        return np.bincount(labels - 1, minlength=N_CLASSES)

    for k in range(n_images):
        g = np.asarray(gt_boxes[k], dtype=np.float64).reshape(-1, 4)
        gl = _check_labels(gt_labels[k], f"image {k}: true labels")
        d = np.asarray(det_boxes[k], dtype=np.float64).reshape(-1, 4)
        dl = _check_labels(det_labels[k], f"image {k}: predicted labels")
        s = np.asarray(det_scores[k], dtype=np.float64).ravel()
        if len(gl) != len(g) or not len(dl) == len(s) == len(d):
            raise ValueError(f"image {k}: boxes, labels and scores differ in length")
        kept = s >= score_thr

        # per-class matching on all detections: AP50 flags, and the counts of the kept ones
        d2g, _ = greedy_match(g, d, s, iou_thr, gl, dl)
        hit = d2g >= 0
        ranked_hit.append(hit)
        ranked_score.append(s)
        ranked_label.append(dl)
        found = np.zeros(len(g), dtype=bool)
        found[d2g[hit & kept]] = True
        tp += per_class(dl[hit & kept])
        fp += per_class(dl[~hit & kept])
        fn += per_class(gl[~found])

        # class-agnostic matching on the kept detections: confusion, missed, false detections
        kl = dl[kept]
        a2g, g2a = greedy_match(g, d[kept], s[kept], iou_thr)
        pair = a2g >= 0
        np.add.at(confusion, (gl[a2g[pair]] - 1, kl[pair] - 1), 1)
        missed += per_class(gl[g2a < 0])
        false_det += per_class(kl[~pair])
        exact[k] = bool(np.all(g2a >= 0) and np.all(pair) and np.all(gl[a2g[pair]] == kl[pair]))

        true_abnormal[k] = not is_normal_karyotype(gl)
        pred_abnormal[k] = not is_normal_karyotype(kl)
        true_karyotype.append(format_karyotype(sorted(gl.tolist())))
        pred_karyotype.append(format_karyotype(sorted(kl.tolist())))

    hits = np.concatenate(ranked_hit) if n_images else np.zeros(0, dtype=bool)
    scores = np.concatenate(ranked_score) if n_images else np.zeros(0)
    labels = np.concatenate(ranked_label) if n_images else np.zeros(0, dtype=np.int64)
    n_gt = tp + fn
    ap50 = np.full(N_CLASSES, np.nan)
    ranked: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # class -> scores descending, flags, n_gt
    for c in np.flatnonzero(n_gt > 0):
        sel = labels == c + 1
        recall, precision, _ = pr_curve(hits[sel], scores[sel], int(n_gt[c]))
        ap50[c] = average_precision(recall, precision)
        order = np.argsort(-scores[sel], kind="stable")
        ranked[int(c) + 1] = (scores[sel][order], hits[sel][order], int(n_gt[c]))
    precision, recall, f1 = prf_from_counts(tp, fp, fn)
    return KaryotypeResult(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        ap50=ap50,
        confusion=confusion,
        missed=missed,
        false_detections=false_det,
        exact=exact,
        true_abnormal=true_abnormal,
        pred_abnormal=pred_abnormal,
        true_karyotype=true_karyotype,
        pred_karyotype=pred_karyotype,
        confidence=confidence,
        best_f1=best_f1_operating_point(ranked),
    )


class KaryotypeEvaluator(Evaluator):
    """Accumulates 24-class boxes per image and reports the karyotyping metrics.

    Crowd annotations (``iscrowd`` = 1) are not chromosomes to find. Keys (default prefix ``karyo``):
    ``karyo/precision``, ``karyo/recall``, ``karyo/f1`` (macro over classes), ``karyo/micro_precision``,
    ``karyo/micro_recall``, ``karyo/micro_f1``, ``karyo/mAP50``, ``karyo/class_accuracy``,
    ``karyo/denver_accuracy``, ``karyo/exact_match``, ``karyo/count_match``, ``karyo/n_images``,
    ``karyo/aneuploidy_sensitivity`` and ``karyo/aneuploidy_specificity`` (each with ``_lo`` / ``_hi``),
    ``karyo/aneuploidy_n_abnormal``, ``karyo/aneuploidy_n_normal``, ``karyo/best_f1`` with
    ``karyo/best_f1_precision``, ``karyo/best_f1_recall`` and ``karyo/best_f1_conf`` (YOLOv5's way),
    and ``karyo/f1_<name>`` per class (``f1_1`` .. ``f1_22``, ``f1_X``, ``f1_Y``). :meth:`result` gives the arrays (confusion matrix for
    :func:`cytobench.reporting.karyotype_plots.plot_confusion_matrix`), :meth:`karyotypes` the ISCN
    strings per image.

    Args:
        iou_thr: minimum IoU (inclusive) of a match.
        score_thr: detections with score >= it count in the thresholded metrics.
        confidence: level of the aneuploidy Wilson intervals.
        prefix: namespace of the metric keys.
    """

    state_fields = ("_image_ids", "_gt_boxes", "_gt_labels", "_det_boxes", "_det_labels", "_scores")

    def __init__(
        self, iou_thr: float = 0.5, score_thr: float = 0.5, confidence: float = 0.95, prefix: str = "karyo"
    ) -> None:
        self.iou_thr = float(iou_thr)
        self.score_thr = float(score_thr)
        self.confidence = float(confidence)
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        self._image_ids: list[Any] = []
        self._gt_boxes: list[np.ndarray] = []
        self._gt_labels: list[np.ndarray] = []
        self._det_boxes: list[np.ndarray] = []
        self._det_labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def process_image(self, target: Target, pred: Prediction) -> None:
        keep = non_crowd(target)
        gt = to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)[keep]
        gl = to_numpy(target["labels"]).astype(np.int64).ravel()[keep]
        det = to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        dl = to_numpy(pred["labels"]).astype(np.int64).ravel()
        scores = to_numpy(pred["scores"]).astype(np.float64).ravel()
        check_one_score_each(target, len(det), len(scores))
        image_id = target.get("image_id")
        self._image_ids.append(to_numpy(image_id).item() if image_id is not None else None)
        self._gt_boxes.append(gt)
        self._gt_labels.append(gl)
        self._det_boxes.append(det)
        self._det_labels.append(dl)
        self._scores.append(scores)

    def result(self) -> KaryotypeResult:
        """The full result (per-class arrays, confusion matrix, per-image flags) of what was processed."""
        return karyotype_metrics(
            self._gt_boxes,
            self._gt_labels,
            self._det_boxes,
            self._det_labels,
            self._scores,
            self.iou_thr,
            self.score_thr,
            self.confidence,
        )

    def compute(self) -> dict[str, float]:
        return {f"{self.prefix}/{key}": value for key, value in self.result().summary().items()}

    def karyotypes(self) -> list[dict[str, Any]]:
        """Per image: ``{"image_id", "true", "predicted", "exact"}`` with ISCN strings, for reports."""
        res = self.result()
        return [
            {"image_id": image_id, "true": t, "predicted": p, "exact": bool(e)}
            for image_id, t, p, e in zip(self._image_ids, res.true_karyotype, res.pred_karyotype, res.exact)
        ]
