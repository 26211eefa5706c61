"""Dense predictions of ``cytobench predict`` written to disk: per-head probability PNGs and RLE masks.

A model of the dense contract returns, per image, ``maps`` (head -> (H, W) probability, e.g. SEU-Net)
and / or ``semantic`` ((C, H, W) class probabilities, e.g. ``tiny_segnet``). :class:`DenseMapWriter`
writes, as each image streams past (nothing image-sized is kept):

* ``<folder>/<stem>_<head>.png``: the probability as 8-bit grey (``round(255 p)``), one file per head;
  for ``semantic``, ``<stem>_classes.png``: the argmax class per pixel (8-bit labels);
* one record per image and head in :attr:`DenseMapWriter.records`: ``{"image_id", "file_name", "head",
  "threshold", "png", "segmentation"}`` where ``segmentation`` is the compressed RLE of ``p > threshold``
  (the head's threshold: ``model.map_thresholds`` when the model states them, else 0.5); ``semantic``
  gives one record per class ``k > 0`` (``head: "class_k"``, the argmax mask, threshold null).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.evaluation.base import Evaluator
from cytobench.io.coco_convert import encode_masks, to_numpy
from cytobench.io.images import write_image

__all__ = ["DenseMapWriter", "has_dense_output"]


def has_dense_output(prediction: Mapping[str, Any]) -> bool:
    """Whether a prediction carries per-pixel maps (``maps`` or ``semantic``)."""
    return bool(prediction.get("maps")) or prediction.get("semantic") is not None


class DenseMapWriter(Evaluator):
    """Writes each image's dense predictions into ``folder`` and keeps a small record per map.

    Args:
        folder: where the PNGs go (created; the caller decides whether an existing one may be reused).
        thresholds: head -> probability threshold of the RLE mask (others: ``default_threshold``).
    """

    state_fields = ("records",)

    def __init__(
        self,
        folder: str | Path,
        thresholds: Mapping[str, float] | None = None,
        default_threshold: float = 0.5,
    ) -> None:
        self.folder = Path(folder)
        self.thresholds = dict(thresholds or {})
        self.default_threshold = float(default_threshold)
        self.reset()

    def reset(self) -> None:
        self.records: list[dict[str, Any]] = []

    def process_image(self, target: Mapping[str, Any], prediction: Mapping[str, Any]) -> None:
        if not has_dense_output(prediction):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        image_id = int(to_numpy(target["image_id"]).reshape(-1)[0])
        name = (target.get("meta") or {}).get("file_name") or f"image_{image_id}"
        stem = Path(name).stem
        for head, prob in (prediction.get("maps") or {}).items():
            p = to_numpy(prob).astype(np.float32)
            threshold = float(self.thresholds.get(head, self.default_threshold))
            png = f"{stem}_{head}.png"
            write_image(self.folder / png, np.rint(np.clip(p, 0.0, 1.0) * 255).astype(np.uint8))
            self._record(image_id, name, head, threshold, png, p > threshold)
        if prediction.get("semantic") is not None:
            labels = to_numpy(prediction["semantic"]).argmax(axis=0)
            png = f"{stem}_classes.png"
            write_image(self.folder / png, labels.astype(np.uint8))
            for k in range(1, int(to_numpy(prediction["semantic"]).shape[0])):
                self._record(image_id, name, f"class_{k}", None, png, labels == k)

    def _record(
        self, image_id: int, name: str, head: str, threshold: float | None, png: str, mask: np.ndarray
    ) -> None:
        self.records.append(
            {
                "image_id": image_id,
                "file_name": name,
                "head": head,
                "threshold": threshold,
                "png": png,
                "segmentation": encode_masks(mask[None])[0],
            }
        )

    def compute(self) -> dict[str, float]:
        return {"n_maps": float(len(self.records))}
