"""Run a trained checkpoint on image files and return COCO results (the ``cytobench predict`` command)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from cytobench.engine.checkpoint import load_checkpoint
from cytobench.engine.distributed import local_device
from cytobench.errors import BadInputError


def load_model_from_checkpoint(
    path: str | Path, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a training run saved (its config travels inside the checkpoint)."""
    ckpt = load_checkpoint(path, map_location=device)
    if "model_config" not in ckpt or "model" not in ckpt:
        raise BadInputError(path, "not a cytobench training checkpoint (no model_config)")
    model = instantiate(ckpt["model_config"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def predictions_to_results(
    predictions: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    label_to_cat_id: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results (bbox xywh, score, category_id, keypoints when predicted) from model predictions."""
    results: list[dict[str, Any]] = []
    for image_id, pred in zip(image_ids, predictions):
        boxes = _np(pred["boxes"]).reshape(-1, 4)
        scores, labels = _np(pred["scores"]), _np(pred["labels"])
        keypoints = _np(pred["keypoints"]) if "keypoints" in pred else None
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            label = int(labels[i])
            item: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(label_to_cat_id.get(label, label)) if label_to_cat_id else label,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[i]),
            }
            if keypoints is not None:
                item["keypoints"] = keypoints[i].reshape(-1).tolist()
            results.append(item)
    return results


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    images: Sequence[Path],
    *,
    device: str = "auto",
    batch_size: int = 2,
    image_ids: Sequence[int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict on ``images``; returns (COCO results, COCO dataset dict listing the images and categories).

    Images are numbered 1..N in the given order unless ``image_ids`` (e.g. a ground truth's ids) are given.
    """
    from cytobench.io.images import read_image_tensor

    dev = local_device(device)
    model, ckpt = load_model_from_checkpoint(checkpoint, dev)
    label_to_cat_id = {int(k): int(v) for k, v in (ckpt.get("label_to_cat_id") or {}).items()}
    dataset: dict[str, Any] = {"images": [], "annotations": [], "categories": ckpt.get("categories", [])}
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        tensors = [read_image_tensor(p) for p in chunk]
        ids = (
            list(image_ids[start : start + len(chunk)])
            if image_ids
            else list(range(start + 1, start + 1 + len(chunk)))
        )
        for image_id, path, tensor in zip(ids, chunk, tensors):
            h, w = tensor.shape[-2:]
            dataset["images"].append(
                {"id": image_id, "file_name": path.name, "height": int(h), "width": int(w)}
            )
        predictions = model([t.to(dev) for t in tensors])
        results += predictions_to_results(predictions, ids, label_to_cat_id)
    return results, dataset


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
