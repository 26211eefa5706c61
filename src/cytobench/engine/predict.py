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
from cytobench.io.coco import encode_mask


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
    """COCO results (bbox xywh, score, category_id; keypoints and RLE masks when predicted)."""
    results: list[dict[str, Any]] = []
    for image_id, pred in zip(image_ids, predictions):
        boxes = _np(pred["boxes"]).reshape(-1, 4)
        scores, labels = _np(pred["scores"]), _np(pred["labels"])
        keypoints = _np(pred["keypoints"]) if "keypoints" in pred else None
        masks = _np(pred["masks"]) if "masks" in pred else None
        if masks is not None and masks.ndim == 4:  # torchvision (N, 1, H, W) probabilities
            masks = masks[:, 0] >= 0.5
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
            if masks is not None:
                item["segmentation"] = encode_mask(masks[i])
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

    Works for checkpoints of the shared trainer and for YOLO runs (ultralytics weights carrying
    cytobench's metadata, see :mod:`cytobench.models.yolo`); predicted masks become RLE
    ``segmentation`` entries. Images are numbered 1..N in the given order unless ``image_ids`` (e.g. a
    ground truth's ids) are given.
    """
    from cytobench.io.images import read_image_tensor

    dev = local_device(device)
    yolo = _yolo_metadata(checkpoint)
    if yolo:
        from omegaconf import OmegaConf

        from cytobench.engine.ultralytics_run import prediction_kwargs
        from cytobench.models.yolo import load_yolo_segmenter, to_uint8_rgb

        segmenter = load_yolo_segmenter(checkpoint, device=str(dev))
        label_to_cat_id, categories = segmenter.label_to_cat_id, list(segmenter.categories)
        kwargs = prediction_kwargs(OmegaConf.create(yolo.get("model_config") or {"imgsz": segmenter.imgsz}))
        kwargs.pop("batch_size")

        def model(tensors: list[torch.Tensor]) -> list[dict[str, Any]]:
            images_rgb = [to_uint8_rgb(t.permute(1, 2, 0).numpy()) for t in tensors]
            return segmenter.predict(images_rgb, **kwargs)  # as the run scored its val set

    else:
        torch_model, ckpt = load_model_from_checkpoint(checkpoint, dev)
        label_to_cat_id = {int(k): int(v) for k, v in (ckpt.get("label_to_cat_id") or {}).items()}
        categories = ckpt.get("categories", [])

        def model(tensors: list[torch.Tensor]) -> list[dict[str, Any]]:
            return torch_model([t.to(dev) for t in tensors])

    dataset: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
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
        with torch.no_grad():
            results += predictions_to_results(model(tensors), ids, label_to_cat_id)
    return results, dataset


def _yolo_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """cytobench's metadata when ``checkpoint`` is a YOLO run's weights, else empty (a torch run).

    ultralytics is imported only for files whose pickle names its modules: importing it patches
    global state (PIL plugins, its logger), which torch-only runs should not inherit.
    """
    if not _pickle_mentions(checkpoint, b"ultralytics"):
        return {}
    from cytobench.models.yolo import CKPT_KEY, setup_ultralytics_offline

    setup_ultralytics_offline()  # before unpickling, which imports ultralytics
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    return dict(ckpt.get(CKPT_KEY) or {}) if "model_config" not in ckpt else {}


def _pickle_mentions(checkpoint: str | Path, name: bytes) -> bool:
    """Whether the pickle inside a torch zip checkpoint refers to ``name`` (read as bytes, nothing executed)."""
    import zipfile

    try:
        with zipfile.ZipFile(checkpoint) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return any(name in archive.read(n) for n in pickles)
    except (OSError, zipfile.BadZipFile):
        return False  # not a zip: load_checkpoint reports it


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
