"""COCO json: validated loading, atomic saving, and conversion to per-image targets / predictions.

Ground truth is a COCO *dataset dict* (``images``, ``annotations``, ``categories``); predictions are a COCO
*results list* (``image_id``, ``category_id``, ``score`` and ``bbox`` / ``segmentation`` / ``keypoints``).
COCO boxes are ``[x, y, w, h]`` in absolute pixels; everything returned to Python is ``xyxy``.

Every fault found while loading raises a one-line :class:`~cytobench.errors.BadInputError` (or its
subclass :class:`~cytobench.errors.CorruptAnnotation`) naming the file, the item and the fault, e.g.
``CorruptAnnotation: train.json: annotation 17: bbox has a negative width (-3.0)``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.errors import BadInputError, CorruptAnnotation

__all__ = [
    "annotation_to_mask",
    "coco_to_targets",
    "encode_mask",
    "json_default",
    "load_coco",
    "load_coco_results",
    "results_to_predictions",
    "save_coco",
    "save_coco_results",
    "write_json_atomic",
    "xywh_to_xyxy",
]

BOX_TOLERANCE = 1.0  # pixels a box may exceed its image by (rounding in external tools)


def load_coco(path: str | Path, *, tolerance: float = BOX_TOLERANCE) -> dict[str, Any]:
    """Load and validate a COCO ground-truth json.

    Checks: required keys, unique image / annotation / category ids, annotation image and category ids
    that exist, boxes of 4 finite numbers with positive width and height lying inside their image (up to
    ``tolerance`` pixels), keypoint counts matching the category, RLE sizes matching the image.

    Args:
        path: the json file.
        tolerance: how far (pixels) a box may exceed the image border.

    Returns:
        The dataset dict as stored (``annotations`` defaults to ``[]`` only if the key is present).

    Raises:
        BadInputError: the file is missing.
        CorruptAnnotation: the json is malformed or violates one of the checks.
    """
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CorruptAnnotation(path, "expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CorruptAnnotation(path, f"missing required key '{key}'")
        if not isinstance(data[key], list):
            raise CorruptAnnotation(path, f"'{key}' must be a list, got {type(data[key]).__name__}")
    categories = _index_items(path, data["categories"], "category", ("id", "name"))
    images = _index_items(path, data["images"], "image", ("id", "file_name", "width", "height"))
    _index_items(path, data["annotations"], "annotation", ("id", "image_id", "category_id", "bbox"))
    for ann in data["annotations"]:
        item = f"annotation {ann['id']}"
        image = images.get(ann["image_id"])
        if image is None:
            raise CorruptAnnotation(path, f"image_id {ann['image_id']} is not in images", item)
        category = categories.get(ann["category_id"])
        if category is None:
            raise CorruptAnnotation(path, f"category_id {ann['category_id']} is not in categories", item)
        x, y, w, h = _check_bbox(path, item, ann["bbox"])
        width, height = float(image["width"]), float(image["height"])
        edges = (
            (x, -tolerance, "left edge", ">="),
            (y, -tolerance, "top edge", ">="),
            (x + w, width + tolerance, "right edge", "<="),
            (y + h, height + tolerance, "bottom edge", "<="),
        )
        for value, limit, name, op in edges:
            if (value < limit) if op == ">=" else (value > limit):
                raise CorruptAnnotation(
                    path,
                    f"bbox {_fmt_box(ann['bbox'])} lies outside image {image['id']} "
                    f"({image['width']}x{image['height']}): {name} at {value:g}",
                    item,
                )
        _check_keypoints(path, item, ann, category)
        _check_segmentation(path, item, ann, int(image["height"]), int(image["width"]))
    return data


def load_coco_results(path: str | Path, gt: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Load and validate a COCO results list (also accepts ``{"annotations": [...]}``).

    A score outside [0, 1] is accepted; a missing score, a malformed box or a box with non-positive
    width / height is an error, and so are image / category ids unknown to ``gt`` when it is given.

    Args:
        path: the json file.
        gt: the ground-truth dataset dict to check ids against, or None.

    Returns:
        The list of result dicts.

    Raises:
        BadInputError, CorruptAnnotation: as for :func:`load_coco`.
    """
    data = _read_json(path)
    results = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise CorruptAnnotation(path, "expected a results list or an object with an 'annotations' list")
    image_ids = {img["id"] for img in gt["images"]} if gt is not None else None
    cat_ids = {cat["id"] for cat in gt["categories"]} if gt is not None else None
    for i, res in enumerate(results):
        item = f"result {i}"
        if not isinstance(res, dict):
            raise CorruptAnnotation(path, f"expected an object, got {type(res).__name__}", item)
        for key in ("image_id", "category_id", "score"):
            if key not in res:
                raise CorruptAnnotation(path, f"missing required key '{key}'", item)
        if not any(k in res for k in ("bbox", "segmentation", "keypoints")):
            raise CorruptAnnotation(path, "has none of 'bbox', 'segmentation', 'keypoints'", item)
        if not _is_number(res["score"]):
            raise CorruptAnnotation(path, f"score must be a number, got {res['score']!r}", item)
        if "bbox" in res:
            _check_bbox(path, item, res["bbox"])
        if image_ids is not None and res["image_id"] not in image_ids:
            raise CorruptAnnotation(
                path, f"image_id {res['image_id']} is not in the ground truth images", item
            )
        if cat_ids is not None and res["category_id"] not in cat_ids:
            raise CorruptAnnotation(
                path, f"category_id {res['category_id']} is not in the ground truth categories", item
            )
    return results


def save_coco(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a COCO dataset dict atomically (temp file in the same folder, then ``os.replace``)."""
    return write_json_atomic(path, data)


def save_coco_results(path: str | Path, results: Sequence[dict[str, Any]]) -> Path:
    """Write a COCO results list atomically (numpy scalars / arrays and bytes RLE counts are converted)."""
    return write_json_atomic(path, list(results))


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


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` binary mask as compressed RLE with ``str`` counts (json-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


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
def _read_json(path: str | Path) -> Any:
    if not Path(path).is_file():
        raise BadInputError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise CorruptAnnotation(
            path, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except UnicodeDecodeError as err:
        raise CorruptAnnotation(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _index_items(path: str | Path, items: list[Any], kind: str, required: tuple[str, ...]) -> dict[Any, Any]:
    """Check required keys and unique ids; return ``{id: item}``."""
    index: dict[Any, Any] = {}
    for i, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise CorruptAnnotation(path, f"expected an object, got {type(entry).__name__}", f"{kind} #{i}")
        item = f"{kind} {entry['id']}" if "id" in entry else f"{kind} #{i}"
        for key in required:
            if key not in entry:
                raise CorruptAnnotation(path, f"missing required key '{key}'", item)
        if entry["id"] in index:
            raise CorruptAnnotation(path, f"duplicate {kind} id {entry['id']}", item)
        index[entry["id"]] = entry
    return index


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_box(bbox: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in bbox) + "]"


def _check_bbox(path: str | Path, item: str, bbox: Any) -> tuple[float, float, float, float]:
    """Validate ``[x, y, w, h]``: 4 finite numbers, positive width and height."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise CorruptAnnotation(path, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}", item)
    if not all(math.isfinite(v) for v in bbox):
        raise CorruptAnnotation(path, f"bbox has a non-finite value {_fmt_box(bbox)}", item)
    x, y, w, h = (float(v) for v in bbox)
    for value, name in ((w, "width"), (h, "height")):
        if value < 0:
            raise CorruptAnnotation(path, f"bbox has a negative {name} ({value})", item)
        if value == 0:
            raise CorruptAnnotation(path, f"bbox has a zero {name}", item)
    return x, y, w, h


def _check_keypoints(path: str | Path, item: str, ann: dict[str, Any], category: dict[str, Any]) -> None:
    kps = ann.get("keypoints")
    if kps is None:
        return
    if not isinstance(kps, list) or len(kps) % 3 or not all(_is_number(v) for v in kps):
        raise CorruptAnnotation(path, "keypoints must be a flat list of (x, y, v) numbers", item)
    expected = len(category.get("keypoints") or [])
    if expected and len(kps) != 3 * expected:
        raise CorruptAnnotation(
            path,
            f"keypoints has {len(kps)} values, expected {3 * expected} for category {category['id']}",
            item,
        )


def _check_segmentation(path: str | Path, item: str, ann: dict[str, Any], height: int, width: int) -> None:
    segm = ann.get("segmentation")
    if not segm:
        return
    if isinstance(segm, list):
        for polygon in segm:
            if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
                raise CorruptAnnotation(
                    path, "segmentation polygon needs an even number (>= 6) of coordinates", item
                )
    elif isinstance(segm, dict):
        if "size" not in segm or "counts" not in segm:
            raise CorruptAnnotation(path, "segmentation RLE needs 'size' and 'counts'", item)
        if [int(s) for s in segm["size"]] != [height, width]:
            raise CorruptAnnotation(
                path,
                f"segmentation RLE size {list(segm['size'])} differs from the image size [{height}, {width}]",
                item,
            )
    else:
        raise CorruptAnnotation(
            path, f"segmentation must be polygons or RLE, got {type(segm).__name__}", item
        )


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


def json_default(value: Any) -> Any:
    """``json.dump`` fallback for NumPy scalars and arrays, bytes and paths."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to json")


def write_json_atomic(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write ``data`` as json through a temp file renamed into place (NumPy values become numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, default=json_default)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
