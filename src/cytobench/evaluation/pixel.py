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

from cytobench.errors import CytobenchError
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
    """Accumulates a pixel confusion matrix over semantic label maps (its only state).

    ``process`` reads what data sets and models produce: ``target["semantic"]``, the (H, W) int class map
    of :class:`~cytobench.data.coco_dataset.CocoDetectionDataset` (``with_semantic=True``), and
    ``prediction["semantic"]``: (C, H, W) class probabilities (argmax; the model contract), or (H, W)
    labels, or (H, W) foreground probabilities (binary, thresholded at ``threshold``). Keys (default
    prefix): ``pix/{accuracy,precision,recall,f1,iou}_c{k}`` per class k, ``pix/m{metric}`` = mean over
    all classes (NaN classes skipped), ``pix/m{metric}_fg`` = mean over classes >= 1, and
    ``pix/pixel_accuracy``.

    Args:
        num_classes: C, background included (2 for binary segmentation; the data set's
            ``num_semantic_classes``). None: taken from the predictions (the class axis of probabilities,
            2 for binary probabilities, else the largest label seen + 1), growing as needed.
        threshold: binary probability threshold.
        ignore_index: target value whose pixels are left out.
        prefix: namespace of the metric keys.

    Raises (in ``process``):
        CytobenchError: a target or prediction without ``semantic``.
        ValueError: a prediction of another size or class count than its target / ``num_classes``.
    """

    state_fields = ("confusion",)

    def __init__(
        self,
        num_classes: int | None = None,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        prefix: str = "pix",
    ) -> None:
        self.num_classes = None if num_classes is None else int(num_classes)
        self.threshold = float(threshold)
        self.ignore_index = ignore_index
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        size = self.num_classes or 0
        self.confusion = np.zeros((size, size), dtype=np.int64)

    def _grow(self, size: int) -> None:
        """Pad the confusion matrix to ``size`` classes (only when ``num_classes`` is None)."""
        old = len(self.confusion)
        if size > old:
            grown = np.zeros((size, size), dtype=np.int64)
            grown[:old, :old] = self.confusion
            self.confusion = grown

    def process_image(self, target: Target, prediction: Prediction) -> None:
        image = f"image {target.get('image_id', '?')}"
        if target.get("semantic") is None:
            raise CytobenchError(
                f"PixelEvaluator: the target of {image} has no 'semantic' map "
                "(build the data set with with_semantic=True)"
            )
        if prediction.get("semantic") is None:
            raise CytobenchError(
                f"PixelEvaluator: the prediction for {image} has no 'semantic' (C, H, W) class probabilities"
            )
        tgt = to_numpy(target["semantic"]).astype(np.int64)
        raw = to_numpy(prediction["semantic"])
        scores = raw.ndim == tgt.ndim + 1
        if raw.shape[-tgt.ndim :] != tgt.shape or raw.ndim not in (tgt.ndim, tgt.ndim + 1):
            raise ValueError(
                f"{image}: prediction 'semantic' of shape {raw.shape} does not fit target {tgt.shape}"
            )
        if scores and self.num_classes is not None and raw.shape[-3] != self.num_classes:
            raise ValueError(
                f"{image}: prediction 'semantic' has {raw.shape[-3]} classes, the evaluator {self.num_classes}"
            )
        labels = to_label_map(raw, tgt.ndim, self.threshold)
        if self.num_classes is None:
            valid = tgt[tgt != self.ignore_index] if self.ignore_index is not None else tgt
            seen = max(int(labels.max(initial=0)), int(valid.max(initial=0))) + 1
            if scores:
                seen = max(seen, raw.shape[-3])
            self._grow(max(2, seen))
        try:
            self.confusion += confusion_matrix(labels, tgt, len(self.confusion), self.ignore_index)
        except ValueError as err:
            raise ValueError(f"{image}: {err}") from None

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Sum the confusion matrices of ``states`` (padded to the largest when classes were inferred)."""
        self.reset()
        for state in states:
            part = np.asarray(state["confusion"], dtype=np.int64)
            self._grow(len(part))
            self.confusion[: len(part), : len(part)] += part

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
