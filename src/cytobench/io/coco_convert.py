"""Two-way conversion between cytobench targets / predictions and COCO json.

cytobench -> COCO: :func:`target_to_coco` / :func:`coco_gt_from_targets` (ground truth) and
:func:`prediction_to_coco` / :func:`coco_results_from_predictions` (results). COCO -> cytobench:
:func:`coco_to_targets` and :func:`results_to_predictions`. Used by the evaluators, ``cytobench
predict`` and ``cytobench eval``, so a prediction written to json and scored from it gives the same
numbers as the evaluator scoring it in memory: there is one RLE encoder (:func:`encode_masks`) and one
mask threshold (:data:`MASK_THRESHOLD`, probabilities ``> 0.5`` as torchvision).

Formats: cytobench boxes are (N, 4) xyxy absolute pixels, COCO boxes are [x, y, w, h]; masks become
compressed RLE with ``counts`` as ``str`` (json-ready); keypoints (N, K, 3) become flat
[x1, y1, v1, x2, ...] lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.types import Prediction, Target

__all__ = [
    "MASK_THRESHOLD",
    "annotation_to_mask",
    "binarize_masks",
    "coco_gt_from_targets",
    "coco_results_from_predictions",
    "coco_to_targets",
    "encode_mask",
    "encode_masks",
    "image_size",
    "make_categories",
    "prediction_to_coco",
    "results_to_predictions",
    "target_to_coco",
    "to_numpy",
    "xywh_to_xyxy",
]

#: Probability masks count as foreground where ``> MASK_THRESHOLD`` (torchvision's convention).
MASK_THRESHOLD = 0.5


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (detached, on CPU), list or array as a NumPy array."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) xywh."""
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def binarize_masks(masks: Any, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Prediction masks (M, 1, H, W) float probabilities or (M, H, W) uint8 -> (M, H, W) bool.

    Float masks count as foreground where ``> threshold`` (torchvision convention).
    """
    arr = to_numpy(masks)
    if arr.ndim == 4:
        arr = arr[:, 0]
    if np.issubdtype(arr.dtype, np.floating):
        return arr > threshold
    return arr != 0


def encode_masks(masks: Any, chunk: int = 32) -> list[dict[str, Any]]:
    """Compressed RLEs of masks, binarised by :func:`binarize_masks` a few at a time.

    Args:
        masks: (N, H, W) bool / uint8 (nonzero = object) or prediction masks (N, 1, H, W) float
            probabilities; a torch tensor or NumPy array.
        chunk: masks binarised and encoded at once (bounds the temporary copies for dense images).

    Returns:
        N dicts ``{"size": [H, W], "counts": str}``.
    """
    from pycocotools import mask as mask_utils

    arr = to_numpy(masks)
    rles: list[dict[str, Any]] = []
    for start in range(0, len(arr), chunk):
        part = binarize_masks(arr[start : start + chunk])
        rles += mask_utils.encode(np.asfortranarray(np.moveaxis(part, 0, -1).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` binary mask as compressed RLE with ``str`` counts (json-ready)."""
    return encode_masks(np.asarray(mask)[None])[0]


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
        area = np.count_nonzero(masks.reshape(n, -1), axis=1).astype(np.float64)
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
    prediction: Prediction,
    image_id: int,
    include_masks: bool = True,
    include_keypoints: bool = True,
    label_to_cat_id: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One prediction as COCO results.

    Each result has ``image_id``, ``category_id`` (the label, or ``label_to_cat_id[label]``),
    ``score``, ``bbox`` (xywh), plus ``segmentation`` (RLE of the mask binarised by
    :func:`binarize_masks`) when there are masks and ``keypoints`` (flat, scored by the detection
    score) when there are keypoints.
    """
    boxes = _xywh(to_numpy(prediction["boxes"]).reshape(-1, 4)).tolist()
    if not boxes:
        return []
    scores = to_numpy(prediction["scores"]).astype(np.float64).reshape(-1).tolist()
    labels = to_numpy(prediction["labels"]).reshape(-1).astype(np.int64).tolist()
    if label_to_cat_id:
        labels = [int(label_to_cat_id.get(label, label)) for label in labels]
    rles = None
    if include_masks and prediction.get("masks") is not None:
        rles = encode_masks(prediction["masks"])
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
    label_to_cat_id: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results list of predictions; ``image_ids[i]`` is the image of ``predictions[i]``.

    ``label_to_cat_id`` maps model labels to the dataset's category ids (a run's checkpoint stores it).
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"got {len(predictions)} predictions but {len(image_ids)} image ids")
    out: list[dict[str, Any]] = []
    for pred, image_id in zip(predictions, image_ids):
        out.extend(prediction_to_coco(pred, int(image_id), include_masks, include_keypoints, label_to_cat_id))
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert ``(N, 4)`` COCO ``[x, y, w, h]`` boxes to ``(N, 4)`` float32 ``xyxy``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def annotation_to_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Rasterise an annotation's ``segmentation`` (polygons, uncompressed or compressed RLE).

    Args:
        ann: a COCO annotation (or result) with a ``segmentation`` entry.
        height: image height H.
        width: image width W.

    Returns:
        ``(H, W)`` uint8 mask in {0, 1}; all zeros when there is no segmentation.
    """
    from pycocotools import mask as mask_utils

    segm = ann.get("segmentation")
    if not segm:
        return np.zeros((height, width), dtype=np.uint8)
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        counts = segm["counts"]
        rle = {"size": list(segm["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def coco_to_targets(
    gt: dict[str, Any], *, with_masks: bool = False, cat_id_to_label: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Group ground-truth annotations per image, in the order of ``gt["images"]``.

    Crowd annotations are kept (``iscrowd`` = 1) so that evaluators can ignore matches to them.

    Args:
        gt: a COCO dataset dict (e.g. from :func:`load_coco`).
        with_masks: also rasterise ``masks``.
        cat_id_to_label: maps COCO category ids to labels; None keeps the category ids as labels
            (the same default as :func:`results_to_predictions`, so the two always agree).

    Returns:
        One dict per image: ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``iscrowd`` (N,) int64,
        ``area`` (N,) float32, ``keypoints`` (N, K, 3) float32 when any category has keypoints, ``masks``
        (N, H, W) uint8 if asked, ``image_id`` and ``meta`` {``file_name``, ``orig_size`` (H, W)}.
    """
    per_image = _group_by_image(gt["annotations"], [img["id"] for img in gt["images"]])
    num_kp = max((len(c.get("keypoints") or []) for c in gt["categories"]), default=0)
    targets = []
    for img in gt["images"]:
        anns = per_image[img["id"]]
        h, w = int(img["height"]), int(img["width"])
        target: dict[str, Any] = {
            "boxes": xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float32)),
            "labels": _labels([a["category_id"] for a in anns], cat_id_to_label),
            "iscrowd": np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64),
            "area": np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float32),
            "image_id": img["id"],
            "meta": {"file_name": img["file_name"], "orig_size": (h, w)},
        }
        if num_kp:
            target["keypoints"] = _keypoints(anns, num_kp)
        if with_masks:
            target["masks"] = _stack_masks([annotation_to_mask(a, h, w) for a in anns], h, w)
        targets.append(target)
    return targets


def results_to_predictions(
    results: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    *,
    cat_id_to_label: dict[int, int] | None = None,
    image_sizes: dict[int, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Group a COCO results list per image, in the order of ``image_ids`` (others are dropped).

    Args:
        results: COCO results (``bbox`` may be missing when a ``segmentation`` RLE is given).
        image_ids: the images to produce predictions for.
        cat_id_to_label: maps category ids to labels; None keeps category ids (see :func:`coco_to_targets`).
        image_sizes: ``{image_id: (H, W)}``; when given, ``masks`` (M, H, W) uint8 are rasterised.

    Returns:
        One dict per image: ``boxes`` (M, 4) float32 xyxy, ``scores`` (M,) float32, ``labels`` (M,) int64,
        ``keypoints`` (M, K, 3) float32 when any result has keypoints, ``masks`` if ``image_sizes``.
    """
    from pycocotools import mask as mask_utils

    per_image = _group_by_image(results, image_ids)
    num_kp = max((len(r.get("keypoints") or []) // 3 for r in results), default=0)
    predictions = []
    for image_id in image_ids:
        res = per_image[image_id]
        boxes = []
        for r in res:
            if "bbox" in r:
                boxes.append(r["bbox"])
            elif isinstance(r.get("segmentation"), dict):
                segm = r["segmentation"]
                counts = segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"]
                boxes.append(mask_utils.toBbox({"size": segm["size"], "counts": counts}).tolist())
            else:
                boxes.append([0.0, 0.0, 0.0, 0.0])
        pred: dict[str, Any] = {
            "boxes": xywh_to_xyxy(np.array(boxes, dtype=np.float32)),
            "scores": np.array([r["score"] for r in res], dtype=np.float32),
            "labels": _labels([r["category_id"] for r in res], cat_id_to_label),
            "image_id": image_id,
        }
        if num_kp:
            pred["keypoints"] = _keypoints(res, num_kp)
        if image_sizes is not None:
            h, w = image_sizes[image_id]
            pred["masks"] = _stack_masks([annotation_to_mask(r, h, w) for r in res], h, w)
        predictions.append(pred)
    return predictions


# ----------------------------------------------------------------------------------------------- helpers


def _group_by_image(
    anns: Iterable[dict[str, Any]], image_ids: Iterable[int]
) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    for ann in anns:
        if ann["image_id"] in groups:
            groups[ann["image_id"]].append(ann)
    return groups


def _labels(cat_ids: list[int], mapping: dict[int, int] | None) -> np.ndarray:
    values = cat_ids if mapping is None else [mapping[c] for c in cat_ids]
    return np.array(values, dtype=np.int64).reshape(-1)


def _keypoints(anns: list[dict[str, Any]], num_kp: int) -> np.ndarray:
    """``(N, K, 3)`` float32; annotations without keypoints get zeros (visibility 0)."""
    out = np.zeros((len(anns), num_kp, 3), dtype=np.float32)
    for i, ann in enumerate(anns):
        kps = np.asarray(ann.get("keypoints") or [], dtype=np.float32).reshape(-1, 3)[:num_kp]
        out[i, : len(kps)] = kps
    return out


def _stack_masks(masks: list[np.ndarray], height: int, width: int) -> np.ndarray:
    return np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), dtype=np.uint8)
