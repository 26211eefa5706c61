"""COCO json: validated loading and atomic saving (conversion lives in :mod:`cytobench.io.coco_convert`).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.io.files import write_json_atomic

__all__ = ["BOX_TOLERANCE", "check_coco", "load_coco", "load_coco_results", "save_coco", "save_coco_results"]

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
    return check_coco(_read_json(path), path, tolerance=tolerance)


def check_coco(data: Any, path: str | Path, *, tolerance: float = BOX_TOLERANCE) -> dict[str, Any]:
    """Validate a COCO dataset dict already in memory (the checks of :func:`load_coco`); returns it.

    Args:
        data: the parsed json.
        path: the file it came from (named in errors).
        tolerance: how far (pixels) a box may exceed the image border.

    Raises:
        CorruptAnnotation: ``data`` violates one of the checks.
    """
    if not isinstance(data, dict):
        raise CorruptAnnotation(path, "expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CorruptAnnotation(path, f"missing required key '{key}'")
        if not isinstance(data[key], list):
            raise CorruptAnnotation(path, f"'{key}' must be a list, got {type(data[key]).__name__}")
    categories = _index_items(path, data["categories"], "category", ("id", "name"))
    for cat in categories.values():
        if cat.get("keypoints") is not None and not isinstance(cat["keypoints"], list):
            raise CorruptAnnotation(path, "'keypoints' must be a list of names", f"category {cat['id']}")
    images = _index_items(path, data["images"], "image", ("id", "file_name", "width", "height"))
    for image in images.values():
        _check_image(path, image)
    _index_items(path, data["annotations"], "annotation", ("id", "image_id", "category_id", "bbox"))
    for ann in data["annotations"]:
        item = f"annotation {ann['id']}"
        image = images.get(ann["image_id"]) if _is_id(ann["image_id"]) else None
        if image is None:
            raise CorruptAnnotation(path, f"image_id {ann['image_id']!r} is not in images", item)
        category = categories.get(ann["category_id"]) if _is_id(ann["category_id"]) else None
        if category is None:
            raise CorruptAnnotation(path, f"category_id {ann['category_id']!r} is not in categories", item)
        x, y, w, h = _check_bbox(path, item, ann["bbox"])
        _check_optional_fields(path, item, ann)
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
        _check_segmentation(path, item, ann, (int(image["height"]), int(image["width"])))
    return data


def _check_optional_fields(path: str | Path, item: str, ann: dict[str, Any]) -> None:
    """``area`` a number >= 0, ``iscrowd`` 0 or 1, ``num_keypoints`` an integer >= 0, where present."""
    area, crowd, n_kps = ann.get("area", 0), ann.get("iscrowd", 0), ann.get("num_keypoints", 0)
    if not (_is_number(area) and math.isfinite(area) and area >= 0):
        raise CorruptAnnotation(path, f"area must be a number >= 0, got {area!r}", item)
    if not _is_id(crowd) or crowd not in (0, 1):
        raise CorruptAnnotation(path, f"iscrowd must be 0 or 1, got {crowd!r}", item)
    if not (_is_id(n_kps) and n_kps >= 0):
        raise CorruptAnnotation(path, f"num_keypoints must be an integer >= 0, got {n_kps!r}", item)


def _check_image(path: str | Path, image: dict[str, Any]) -> None:
    """An image entry's ``file_name`` is a non-empty string and its ``width`` / ``height`` positive numbers."""
    item = f"image {image['id']}"
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        raise CorruptAnnotation(
            path, f"file_name must be a non-empty string, got {image['file_name']!r}", item
        )
    for key in ("width", "height"):
        value = image[key]
        if not _is_number(value) or not math.isfinite(value) or value < 1:
            raise CorruptAnnotation(path, f"{key} must be a positive number of pixels, got {value!r}", item)


def load_coco_results(path: str | Path, gt: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Load and validate a COCO results list (also accepts ``{"annotations": [...]}``).

    A missing score or one that is not a finite number in [0, 1] (a logit, NaN), a malformed box or a box
    with non-positive width / height is an error, and so are image / category ids unknown to ``gt`` when
    it is given.

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
    images = {img["id"]: img for img in gt["images"]} if gt is not None else None
    categories = {cat["id"]: cat for cat in gt["categories"]} if gt is not None else None
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
        if not 0.0 <= float(res["score"]) <= 1.0:  # NaN fails too
            raise CorruptAnnotation(path, f"score must be in [0, 1], got {res['score']!r}", item)
        for key in ("image_id", "category_id"):
            if not _is_id(res[key]):
                raise CorruptAnnotation(path, f"{key} must be an integer, got {res[key]!r}", item)
        image = images.get(res["image_id"]) if images is not None else None
        if images is not None and image is None:
            raise CorruptAnnotation(
                path, f"image_id {res['image_id']} is not in the ground truth images", item
            )
        category = categories.get(res["category_id"]) if categories is not None else None
        if categories is not None and category is None:
            raise CorruptAnnotation(
                path, f"category_id {res['category_id']} is not in the ground truth categories", item
            )
        if "bbox" in res:
            x, y, w, h = _check_bbox(path, item, res["bbox"])
            if image is not None and (
                x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0
            ):
                raise CorruptAnnotation(
                    path,
                    f"bbox {_fmt_box(res['bbox'])} lies entirely outside image {image['id']} "
                    f"({image['width']}x{image['height']})",
                    item,
                )
        if "keypoints" in res:
            _check_keypoints(path, item, res, category or {})
        if "segmentation" in res:
            size = (int(image["height"]), int(image["width"])) if image is not None else None
            _check_segmentation(path, item, res, size)
    return results


def save_coco(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a COCO dataset dict atomically (temp file in the same folder, then ``os.replace``)."""
    return write_json_atomic(path, data)


def save_coco_results(path: str | Path, results: Sequence[dict[str, Any]]) -> Path:
    """Write a COCO results list atomically (numpy scalars / arrays and bytes RLE counts are converted)."""
    return write_json_atomic(path, list(results))


def _read_json(path: str | Path) -> Any:
    if Path(path).is_dir():
        raise BadInputError(path, "is a folder, not a json file")
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
    except OSError as err:
        raise BadInputError(path, f"cannot be read ({err.strerror or type(err).__name__})") from None


def _index_items(path: str | Path, items: list[Any], kind: str, required: tuple[str, ...]) -> dict[Any, Any]:
    """Check required keys and unique ids; return ``{id: item}``."""
    index: dict[Any, Any] = {}
    for i, entry in enumerate(items):
        if not isinstance(entry, dict):
            raise CorruptAnnotation(path, f"expected an object, got {type(entry).__name__}", f"{kind} #{i}")
        item = f"{kind} {entry['id']}" if "id" in entry and _is_id(entry["id"]) else f"{kind} #{i}"
        for key in required:
            if key not in entry:
                raise CorruptAnnotation(path, f"missing required key '{key}'", item)
        if not _is_id(entry["id"]):
            raise CorruptAnnotation(path, f"id must be an integer, got {entry['id']!r}", item)
        if entry["id"] in index:
            raise CorruptAnnotation(path, f"duplicate {kind} id {entry['id']}", item)
        index[entry["id"]] = entry
    return index


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_NUMBER_TYPES = frozenset({int, float})


def _finite_numbers(values: list[Any]) -> bool:
    """Every value is an int or float (not a bool: json gives no other number types) and finite.

    Two C-level passes (``map``) rather than a Python test per value: polygons of dense images hold
    millions of coordinates.
    """
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return False
    try:
        return all(map(math.isfinite, values))
    except OverflowError:  # an int too large for a float
        return False


def _is_id(value: Any) -> bool:
    """COCO ids are integers (the COCO libraries accept nothing else)."""
    return isinstance(value, int) and not isinstance(value, bool)


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
    if not isinstance(kps, list) or len(kps) % 3 or not _finite_numbers(kps):
        raise CorruptAnnotation(path, "keypoints must be a flat list of (x, y, v) finite numbers", item)
    expected = len(category.get("keypoints") or [])
    if expected and len(kps) != 3 * expected:
        raise CorruptAnnotation(
            path,
            f"keypoints has {len(kps)} values, expected {3 * expected} for category {category['id']}",
            item,
        )


def _check_segmentation(
    path: str | Path, item: str, ann: dict[str, Any], size: tuple[int, int] | None
) -> None:
    """Polygons of >= 3 finite (x, y) points, or an RLE whose ``size`` is the image's ``[H, W]``."""
    segm = ann.get("segmentation")
    if segm is None or (isinstance(segm, list) and not segm):
        return
    if isinstance(segm, list):
        for polygon in segm:
            if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
                raise CorruptAnnotation(
                    path, "segmentation polygon needs an even number (>= 6) of coordinates", item
                )
            if not _finite_numbers(polygon):
                raise CorruptAnnotation(path, "segmentation polygon must hold finite numbers only", item)
    elif isinstance(segm, dict):
        if "size" not in segm or "counts" not in segm:
            raise CorruptAnnotation(path, "segmentation RLE needs 'size' and 'counts'", item)
        rle_size = segm["size"]
        if not isinstance(rle_size, list) or len(rle_size) != 2 or not all(_is_id(v) for v in rle_size):
            raise CorruptAnnotation(
                path, f"segmentation RLE size must be [height, width], got {rle_size!r}", item
            )
        if size is not None and tuple(rle_size) != size:
            raise CorruptAnnotation(
                path,
                f"segmentation RLE size {rle_size} differs from the image size [{size[0]}, {size[1]}]",
                item,
            )
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(_is_id(v) and v >= 0 for v in counts):
                raise CorruptAnnotation(path, "segmentation RLE counts must be integers >= 0", item)
            if sum(counts) != rle_size[0] * rle_size[1]:
                raise CorruptAnnotation(
                    path,
                    f"segmentation RLE counts cover {sum(counts)} pixels, not the {rle_size[0]} x {rle_size[1]} "
                    "of its size",
                    item,
                )
        elif not isinstance(counts, str):
            raise CorruptAnnotation(
                path, f"segmentation RLE counts must be a list or a string, got {type(counts).__name__}", item
            )
    else:
        raise CorruptAnnotation(
            path, f"segmentation must be polygons or RLE, got {type(segm).__name__}", item
        )
