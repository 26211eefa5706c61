"""Conversion of cytobench targets / predictions to COCO ground truth and results.

Also :func:`prepare_gt` / :func:`prepare_results`: validated copies of COCO json that
``evaluate_coco`` hands to the COCO libraries (which write into the dicts they get).

Used by :class:`cytobench.evaluation.coco.CocoEvaluator`, the ``eval`` and ``predict``
commands: a model's output written with :func:`coco_results_from_predictions` and scored
with ``evaluate_coco`` gives the same numbers as the evaluator.

Formats: cytobench boxes are (N, 4) xyxy absolute pixels, COCO boxes are [x, y, w, h];
masks become compressed RLE with ``counts`` as ``str`` (JSON-serialisable); keypoints
(N, K, 3) become flat [x1, y1, v1, x2, ...] lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.errors import BadInputError
from cytobench.evaluation.base import to_numpy
from cytobench.types import Prediction, Target


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) xywh."""
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs of binary masks.

    Args:
        masks: (N, H, W) bool / uint8, nonzero = object.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}``.
    """
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def binarize_masks(masks: Any, threshold: float = 0.5) -> np.ndarray:
    """Prediction masks (M, 1, H, W) float probabilities or (M, H, W) uint8 -> (M, H, W) bool.

    Float masks count as foreground where ``> threshold`` (torchvision convention).
    """
    arr = to_numpy(masks)
    if arr.ndim == 4:
        arr = arr[:, 0]
    if np.issubdtype(arr.dtype, np.floating):
        return arr > threshold
    return arr != 0


def _image_id(item: Mapping[str, Any]) -> int:
    return int(np.asarray(to_numpy(item["image_id"])).reshape(-1)[0])


def image_size(target: Target, prediction: Prediction | None = None) -> tuple[int, int]:
    """(H, W) of an image: ``meta["orig_size"]``, else the target / prediction mask shape, else
    the largest box extent (rounded up, at least 1)."""
    meta = target.get("meta") or {}
    if meta.get("orig_size") is not None:
        h, w = (int(v) for v in to_numpy(meta["orig_size"]).reshape(-1)[:2])
        return h, w
    for item in (target, prediction):
        if item is not None and item.get("masks") is not None:
            shape = to_numpy(item["masks"]).shape
            if len(shape) >= 3:
                return int(shape[-2]), int(shape[-1])
    extent = np.zeros(2)
    for item in (target, prediction):
        if item is not None:
            boxes = to_numpy(item["boxes"]).reshape(-1, 4)
            if len(boxes):
                extent = np.maximum(extent, boxes[:, 2:].max(axis=0))
    return max(1, math.ceil(extent[1])), max(1, math.ceil(extent[0]))


def target_to_coco(
    target: Target,
    first_ann_id: int = 1,
    size: tuple[int, int] | None = None,
    include_masks: bool = True,
    include_keypoints: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One target as a COCO image entry and its annotations.

    Args:
        target: boxes (N, 4) xyxy, labels (N,), image_id, optional masks (N, H, W), keypoints
            (N, K, 3), iscrowd (N,), area (N,), meta {"file_name", "orig_size": (H, W)}.
        first_ann_id: id of the first annotation (COCO ids must be >= 1).
        size: (H, W) of the image; None = :func:`image_size`.
        include_masks: add ``segmentation`` RLEs when the target has masks.
        include_keypoints: add ``keypoints`` / ``num_keypoints`` when the target has keypoints.

    Returns:
        ``(image, annotations)``. ``area`` is ``target["area"]`` if given, else the mask area if
        there are masks, else the box area.
    """
    image_id = _image_id(target)
    height, width = size if size is not None else image_size(target)
    image: dict[str, Any] = {"id": image_id, "height": height, "width": width}
    meta = target.get("meta") or {}
    if meta.get("file_name") is not None:
        image["file_name"] = str(meta["file_name"])
    boxes = to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = to_numpy(target["labels"]).reshape(-1).astype(np.int64)
    crowd = to_numpy(target["iscrowd"]).reshape(-1) if target.get("iscrowd") is not None else np.zeros(n)
    masks = to_numpy(target["masks"]) if target.get("masks") is not None else None
    if target.get("area") is not None:
        area = to_numpy(target["area"]).astype(np.float64).reshape(-1)
    elif masks is not None and n > 0:
        area = (masks.reshape(n, -1) != 0).sum(axis=1).astype(np.float64)
    else:
        xywh = _xywh(boxes)
        area = xywh[:, 2] * xywh[:, 3]
    rles = encode_masks(masks) if (include_masks and masks is not None) else None
    kps = to_numpy(target["keypoints"]).astype(np.float64) if target.get("keypoints") is not None else None
    anns = []
    for i, box in enumerate(_xywh(boxes).tolist()):
        ann: dict[str, Any] = {
            "id": first_ann_id + i,
            "image_id": image_id,
            "category_id": int(labels[i]),
            "bbox": box,
            "area": float(area[i]),
            "iscrowd": int(crowd[i]),
        }
        if rles is not None:
            ann["segmentation"] = rles[i]
        if include_keypoints and kps is not None:
            ann["keypoints"] = kps[i].reshape(-1).tolist()
            ann["num_keypoints"] = int(np.count_nonzero(kps[i].reshape(-1, 3)[:, 2] > 0))
        anns.append(ann)
    return image, anns


def prediction_to_coco(
    prediction: Prediction, image_id: int, include_masks: bool = True, include_keypoints: bool = True
) -> list[dict[str, Any]]:
    """One prediction as COCO results.

    Each result has ``image_id``, ``category_id``, ``score``, ``bbox`` (xywh), plus
    ``segmentation`` (RLE of the mask thresholded at 0.5) when there are masks and
    ``keypoints`` (flat, scored by the detection score) when there are keypoints.
    """
    boxes = _xywh(to_numpy(prediction["boxes"]).reshape(-1, 4)).tolist()
    if not boxes:
        return []
    scores = to_numpy(prediction["scores"]).astype(np.float64).reshape(-1).tolist()
    labels = to_numpy(prediction["labels"]).reshape(-1).astype(np.int64).tolist()
    rles = None
    if include_masks and prediction.get("masks") is not None:
        rles = encode_masks(binarize_masks(prediction["masks"]))
    kps = None
    if include_keypoints and prediction.get("keypoints") is not None:
        kps = to_numpy(prediction["keypoints"]).astype(np.float64).reshape(len(boxes), -1).tolist()
    out = []
    for i, box in enumerate(boxes):
        res: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": labels[i],
            "bbox": box,
            "score": scores[i],
        }
        if rles is not None:
            res["segmentation"] = rles[i]
        if kps is not None:
            res["keypoints"] = kps[i]
        out.append(res)
    return out


def make_categories(categories: Sequence[Any] | None, label_ids: Iterable[int] = ()) -> list[dict[str, Any]]:
    """COCO ``categories`` list.

    Args:
        categories: None (one category per id in ``label_ids``, named by its id), a list of
            names (ids 1, 2, ...), or a list of COCO category dicts (used as given).
        label_ids: ids seen in the data, used when ``categories`` is None.
    """
    if categories is None:
        return [{"id": int(c), "name": str(int(c))} for c in sorted({int(c) for c in label_ids})]
    out = []
    for i, cat in enumerate(categories):
        out.append(dict(cat) if isinstance(cat, Mapping) else {"id": i + 1, "name": str(cat)})
    return out


def coco_gt_from_targets(
    targets: Sequence[Target],
    categories: Sequence[Any] | None = None,
    include_masks: bool = True,
    include_keypoints: bool = True,
) -> dict[str, Any]:
    """COCO ground-truth dataset dict of a sequence of targets (annotation ids from 1).

    Args:
        targets: one :class:`~cytobench.types.Target` per image (distinct ``image_id``).
        categories: see :func:`make_categories`.
        include_masks: encode masks as RLE ``segmentation``.
        include_keypoints: add flat ``keypoints`` and ``num_keypoints``.
    """
    images, anns = [], []
    for target in targets:
        image, image_anns = target_to_coco(target, len(anns) + 1, None, include_masks, include_keypoints)
        images.append(image)
        anns.extend(image_anns)
    cats = make_categories(categories, (a["category_id"] for a in anns))
    return {"images": images, "annotations": anns, "categories": cats}


def coco_results_from_predictions(
    predictions: Sequence[Prediction],
    image_ids: Sequence[int],
    include_masks: bool = True,
    include_keypoints: bool = True,
) -> list[dict[str, Any]]:
    """COCO results list of predictions; ``image_ids[i]`` is the image of ``predictions[i]``."""
    if len(predictions) != len(image_ids):
        raise ValueError(f"got {len(predictions)} predictions but {len(image_ids)} image ids")
    out: list[dict[str, Any]] = []
    for pred, image_id in zip(predictions, image_ids):
        out.extend(prediction_to_coco(pred, int(image_id), include_masks, include_keypoints))
    return out


def _segmentation_area(seg: Any, height: int, width: int) -> float:
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, Mapping) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(dict(seg), height, width)
    else:
        rle = dict(seg)
    return float(mask_utils.area(rle))


def prepare_gt(gt: Mapping[str, Any], iou_type: str, copy: bool = True) -> dict[str, Any]:
    """Shallow copy of a COCO dataset dict with per-annotation copies and filled defaults.

    The libraries write into annotation dicts (``ignore``, RLE conversion); copies keep the
    caller's data intact. ``copy=False`` skips the per-item copies for inputs the caller owns
    and will not reuse (e.g. json just loaded from disk). Missing ``iscrowd`` becomes 0,
    missing ``area`` the segmentation area (else the box area), missing ``num_keypoints`` the
    number of visible keypoints.
    """
    if not isinstance(gt, Mapping) or "images" not in gt:
        raise BadInputError("ground truth", "not a COCO dataset dict (no 'images' list)")
    sizes = {img["id"]: (img.get("height", 0), img.get("width", 0)) for img in gt["images"]}
    need = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    anns = []
    for i, src in enumerate(gt.get("annotations", [])):
        ann = dict(src) if copy else src
        if ann.get("image_id") not in sizes:
            raise BadInputError(
                "ground truth", f"image_id {ann.get('image_id')} is not in 'images'", _ann_item(ann, i)
            )
        if need not in ann:
            raise BadInputError(
                "ground truth", f"has no '{need}' (needed for {iou_type} evaluation)", _ann_item(ann, i)
            )
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
        if "area" not in ann:
            if "segmentation" in ann and ann["segmentation"]:
                ann["area"] = _segmentation_area(ann["segmentation"], *sizes[ann["image_id"]])
            elif "bbox" in ann:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            else:
                raise BadInputError(
                    "ground truth", "has neither 'area', 'segmentation' nor 'bbox'", _ann_item(ann, i)
                )
        if iou_type == "keypoints" and "num_keypoints" not in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"])[2::3] > 0))
        anns.append(ann)
    out = {key: value for key, value in gt.items() if key != "annotations"}
    out["images"] = [dict(img) for img in gt["images"]] if copy else list(gt["images"])
    out["annotations"] = anns
    out.setdefault("categories", [])
    return out


def _ann_item(ann: Mapping[str, Any], index: int) -> str:
    return f"annotation {ann.get('id', index)}"


def prepare_results(
    results: Sequence[Mapping[str, Any]], image_ids: set[Any], iou_type: str, copy: bool = True
) -> list[dict]:
    """Validate a COCO results list against the ground-truth image ids; copies items unless ``copy=False``."""
    need = {"bbox": ("bbox", "segmentation"), "segm": ("segmentation",), "keypoints": ("keypoints",)}[
        iou_type
    ]
    out = []
    for i, src in enumerate(results):
        if not isinstance(src, Mapping):
            raise BadInputError("predictions", "is not a dict", f"result {i}")
        if src.get("image_id") not in image_ids:
            raise BadInputError(
                "predictions", f"image_id {src.get('image_id')} is not in the ground truth", f"result {i}"
            )
        if "category_id" not in src or "score" not in src:
            missing = "category_id" if "category_id" not in src else "score"
            raise BadInputError("predictions", f"has no '{missing}'", f"result {i}")
        if need[0] not in src and not any(key in src for key in need):
            raise BadInputError(
                "predictions", f"has no '{need[0]}' (needed for {iou_type} evaluation)", f"result {i}"
            )
        out.append(dict(src) if copy else src)
    return out
