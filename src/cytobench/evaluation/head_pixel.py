"""Per-head binary pixel metrics of multi-head probability-map models (SEU-Net, thesis Tables 5.1-5.6).

SEU-Net predicts one probability map per head (``prediction["maps"][head]``, (H, W)): cytoplasm (the whole
cell), nuclei, border, background, overlap. Each head is an independent binary segmentation, so each is
scored on its own:

* the map is thresholded at the head's threshold (``prob > threshold`` is foreground, the rule of
  :func:`cytobench.evaluation.pixel.to_label_map`); default thresholds are the thesis' ones,
  :data:`cytobench.models.seunet.INFERENCE_THRESHOLDS` (0.5; overlap 0.3, Sec. 5.3-5.4);
* the target is the head's binary map, :func:`cytobench.models.seunet.head_target` (the one definition
  the loss uses too); target pixels equal to ``ignore_index`` are left out;
* one 2 x 2 confusion matrix per head is the whole state; the metrics are those of its positive class
  (:func:`cytobench.evaluation.pixel.metrics_from_confusion`, class 1): accuracy, precision, recall, F1
  and IoU, the thesis' Acc., Prec., Rec., F1 and IoU columns.

Keys: ``pix/<head>_<metric>``, e.g. ``pix/cytoplasm_f1``, ``pix/nuclei_iou``, ``pix/overlap_recall``. A head
that no prediction carried has no keys at all (a base model predicts only cytoplasm: its nuclei metrics are
absent, the thesis' '-' entries), which also keeps the keys apart from :class:`PixelEvaluator`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.errors import BadInputError, CytobenchError
from cytobench.evaluation.base import Evaluator, to_numpy
from cytobench.evaluation.pixel import METRIC_NAMES, confusion_matrix, metrics_from_confusion
from cytobench.types import Prediction, Target

__all__ = ["HEAD_METRICS", "HeadPixelEvaluator", "head_metric_key"]

HEAD_METRICS = METRIC_NAMES
"""Metric names per head, in the thesis' column order: accuracy, precision, recall, f1, iou."""


def head_metric_key(head: str, metric: str, prefix: str = "pix") -> str:
    """The metric key of one head, e.g. ``head_metric_key("overlap", "f1") == "pix/overlap_f1"``."""
    return f"{prefix}/{head}_{metric}"


class HeadPixelEvaluator(Evaluator):
    """Scores every head's probability map as a binary segmentation (module docstring for the rules).

    Args:
        heads: heads to score, from :data:`cytobench.models.seunet.HEAD_NAMES`; None scores every known
            head a prediction carries (maps of other names are ignored). A listed head that a prediction
            lacks is skipped for that image.
        thresholds: ``{head: threshold}`` overriding the thesis' defaults; each in [0, 1).
        ignore_index: target value left out (255: the data contract's unlabelled pixels).
        prefix: namespace of the metric keys.

    Raises:
        BadInputError: an unknown head or a threshold outside [0, 1) (at construction).
        CytobenchError (in ``process``): a prediction without ``maps``, or a target without the map a head
            needs (``semantic`` / ``overlap``; the message names the data option).
        ValueError (in ``process``): a map whose size differs from its target's.
    """

    state_fields = ("confusion", "images")

    def __init__(
        self,
        heads: Sequence[str] | None = None,
        thresholds: Mapping[str, float] | None = None,
        ignore_index: int = 255,
        prefix: str = "pix",
    ) -> None:
        from cytobench.models.seunet.heads import HEAD_NAMES, INFERENCE_THRESHOLDS

        self.head_names: tuple[str, ...] = HEAD_NAMES  # fixed order: rows of the state arrays
        chosen = list(HEAD_NAMES) if heads is None else [str(h) for h in heads]
        unknown = [h for h in chosen if h not in HEAD_NAMES]
        if unknown or not chosen:
            raise BadInputError(
                "evaluator.heads", f"needs heads from {list(HEAD_NAMES)}, got {chosen or 'none'}"
            )
        self.heads = [h for h in HEAD_NAMES if h in chosen]
        self.thresholds = dict(INFERENCE_THRESHOLDS)
        for head, value in dict(thresholds or {}).items():
            if str(head) not in HEAD_NAMES:
                raise BadInputError("evaluator.thresholds", f"names unknown head {head!r}")
            if not 0.0 <= float(value) < 1.0:  # NaN fails too
                raise BadInputError("evaluator.thresholds", f"{head}: must lie in [0, 1), got {value}")
            self.thresholds[str(head)] = float(value)
        self.ignore_index = int(ignore_index)
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        # confusion[k] = the 2 x 2 matrix cm[true, predicted] of head_names[k]; images[k] = images it scored
        self.confusion = np.zeros((len(self.head_names), 2, 2), dtype=np.int64)
        self.images = np.zeros(len(self.head_names), dtype=np.int64)

    def process_image(self, target: Target, prediction: Prediction) -> None:
        from cytobench.models.seunet.heads import head_target

        image = f"image {target.get('image_id', '?')}"
        maps = prediction.get("maps")
        if not isinstance(maps, Mapping):
            raise CytobenchError(
                f"HeadPixelEvaluator: the prediction for {image} has no 'maps' {{head: (H, W) probability}} "
                "(a multi-head map model such as SEU-Net)"
            )
        for head in self.heads:
            if maps.get(head) is None:
                continue
            prob = to_numpy(maps[head])
            truth = to_numpy(head_target(head, target, self.ignore_index))
            if prob.shape != truth.shape:
                raise ValueError(
                    f"{image}: the {head} map is {prob.shape}, its target {truth.shape} "
                    "(model and data disagree)"
                )
            predicted = (prob > self.thresholds[head]).astype(np.int64)
            row = self.head_names.index(head)
            self.confusion[row] += confusion_matrix(predicted, truth, 2, self.ignore_index)
            self.images[row] += 1

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Sum the per-head matrices and image counts of ``states`` (e.g. one per DDP rank)."""
        self.reset()
        for state in states:
            confusion = np.asarray(state["confusion"], dtype=np.int64)
            images = np.asarray(state["images"], dtype=np.int64)
            if confusion.shape != self.confusion.shape or images.shape != self.images.shape:
                raise ValueError(
                    f"HeadPixelEvaluator state of shape {confusion.shape} / {images.shape}, expected "
                    f"{self.confusion.shape} / {self.images.shape}"
                )
            self.confusion += confusion
            self.images += images

    def scored_heads(self) -> list[str]:
        """Heads that at least one image was scored on, in :data:`HEAD_NAMES` order."""
        return [h for k, h in enumerate(self.head_names) if self.images[k] > 0]

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for head in self.scored_heads():
            metrics = metrics_from_confusion(self.confusion[self.head_names.index(head)])
            for name in HEAD_METRICS:
                out[head_metric_key(head, name, self.prefix)] = float(metrics[name][1])
        return out
