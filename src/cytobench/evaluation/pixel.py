"""Pixel-level (semantic) segmentation metrics: per-class accuracy, precision, recall, F1, IoU.

Everything is derived from a (C, C) confusion matrix ``cm[true, predicted]`` of pixel counts,
so an evaluator only keeps C x C integers, never images. Per class c (one-vs-rest):
``TP = cm[c, c]``, ``FP = cm[:, c].sum() - TP``, ``FN = cm[c, :].sum() - TP``,
``TN = total - TP - FP - FN``; accuracy ``(TP + TN) / total``, precision ``TP / (TP + FP)``,
recall ``TP / (TP + FN)``, F1 ``2TP / (2TP + FP + FN)``, IoU ``TP / (TP + FP + FN)``. A ratio
with a zero denominator is NaN (e.g. precision of a class never predicted) and is skipped by
the class means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cytobench.evaluation.base import Evaluator, to_numpy
from cytobench.types import Prediction, Target

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "iou")


def to_label_map(pred: Any, target_ndim: int, threshold: float = 0.5) -> np.ndarray:
    """Turn a prediction into an integer label map.

    Args:
        pred: one of: integer / bool labels with the target's shape ((H, W) or (B, H, W));
            float foreground probabilities with the target's shape (binary: label 1 where
            ``prob > threshold``); float class scores with one more dimension, the class axis
            third from the end ((C, H, W) or (B, C, H, W)), reduced by argmax.
        target_ndim: number of dimensions of the target label map.
        threshold: binary probability threshold (strictly greater than counts as foreground).

    Returns:
        int64 label map with ``target_ndim`` dimensions.
    """
    arr = to_numpy(pred)
    if arr.ndim == target_ndim + 1:
        return arr.argmax(axis=-3).astype(np.int64)
    if arr.ndim != target_ndim:
        raise ValueError(f"prediction of shape {arr.shape} does not fit a target with {target_ndim} dims")
    if np.issubdtype(arr.dtype, np.floating):
        return (arr > threshold).astype(np.int64)
    return arr.astype(np.int64)


def confusion_matrix(
    pred_labels: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Pixel confusion matrix.

    Args:
        pred_labels: int label map, same shape as ``target``.
        target: int label map (any shape, e.g. (H, W) or (B, H, W)), values in [0, num_classes).
        num_classes: C.
        ignore_index: target value whose pixels are left out.

    Returns:
        (C, C) int64, ``cm[t, p]`` = number of pixels of true class t predicted as p.
    """
    p = np.asarray(pred_labels, dtype=np.int64).ravel()
    t = np.asarray(target, dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in size: {p.size} vs {t.size} pixels")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, arr in (("target", t), ("prediction", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}]")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class metrics of a (C, C) confusion matrix.

    Returns:
        ``{"accuracy", "precision", "recall", "f1", "iou"}`` each a (C,) float64 array (NaN where
        undefined), plus ``"pixel_accuracy"``: a 0-d array, ``trace / total``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    return {
        "accuracy": _div(tp + tn, np.full_like(tp, total)),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "iou": _div(tp, tp + fp + fn),
        "pixel_accuracy": _div(np.asarray(tp.sum()), np.asarray(total)),
    }


def pixel_metrics(
    pred: Any,
    target: Any,
    threshold: float = 0.5,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-class pixel metrics of one or a batch of label maps.

    Args:
        pred: labels (H, W) / (B, H, W), binary probabilities of the same shape, or class
            scores (C, H, W) / (B, C, H, W) (see :func:`to_label_map`).
        target: int label map (H, W) or (B, H, W).
        threshold: binary probability threshold.
        num_classes: C; by default 2 for binary probabilities, the class-axis length for class
            scores, ``max label + 1`` (at least 2) for label maps.
        ignore_index: target value whose pixels are left out.

    Returns:
        See :func:`metrics_from_confusion`; arrays are indexed by class id.
    """
    tgt = to_numpy(target).astype(np.int64)
    raw = to_numpy(pred)
    labels = to_label_map(raw, tgt.ndim, threshold)
    if num_classes is None:
        if raw.ndim == tgt.ndim + 1:
            num_classes = raw.shape[-3]
        elif np.issubdtype(raw.dtype, np.floating):
            num_classes = 2
        else:
            valid = tgt[tgt != ignore_index] if ignore_index is not None else tgt
            num_classes = max(2, int(max(labels.max(initial=0), valid.max(initial=0))) + 1)
    return metrics_from_confusion(confusion_matrix(labels, tgt, num_classes, ignore_index))


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class PixelEvaluator(Evaluator):
    """Accumulates a pixel confusion matrix over semantic label maps.

    ``process`` reads ``target["semantic"]``, an (H, W) int label map, and
    ``prediction["semantic"]``: (H, W) labels, (H, W) foreground probabilities (binary, thresholded
    at ``threshold``) or (C, H, W) class scores (argmax). Keys (default prefix):
    ``pix/{accuracy,precision,recall,f1,iou}_c{k}`` per class k, ``pix/m{metric}`` = mean over
    all classes (NaN classes skipped), ``pix/m{metric}_fg`` = mean over classes >= 1, and
    ``pix/pixel_accuracy``.

    Args:
        num_classes: C, background included (2 for binary segmentation).
        threshold: binary probability threshold.
        ignore_index: target value whose pixels are left out.
        prefix: namespace of the metric keys.
    """

    def __init__(
        self,
        num_classes: int = 2,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        prefix: str = "pix",
    ) -> None:
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.ignore_index = ignore_index
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def process(self, targets: Sequence[Target], predictions: Sequence[Prediction]) -> None:
        if len(targets) != len(predictions):
            raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")
        for target, pred in zip(targets, predictions):
            tgt = to_numpy(target["semantic"]).astype(np.int64)  # type: ignore[typeddict-item]
            labels = to_label_map(pred["semantic"], tgt.ndim, self.threshold)  # type: ignore[typeddict-item]
            self.confusion += confusion_matrix(labels, tgt, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, float]:
        metrics = metrics_from_confusion(self.confusion)
        out: dict[str, float] = {f"{self.prefix}/pixel_accuracy": float(metrics["pixel_accuracy"])}
        for name in METRIC_NAMES:
            values = metrics[name]
            for c, value in enumerate(values):
                out[f"{self.prefix}/{name}_c{c}"] = float(value)
            out[f"{self.prefix}/m{name}"] = _nanmean(values)
            out[f"{self.prefix}/m{name}_fg"] = _nanmean(values[1:])
        return out


__all__ = ["PixelEvaluator", "confusion_matrix", "metrics_from_confusion", "pixel_metrics", "to_label_map"]
