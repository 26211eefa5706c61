"""Validated copies of COCO json for the COCO libraries (which write into the dicts they get).

:func:`prepare_gt` / :func:`prepare_results` are what :func:`cytobench.evaluation.coco.evaluate_coco`
hands to faster-coco-eval / pycocotools; conversion to and from cytobench's targets and predictions is
:mod:`cytobench.io.coco_convert`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.errors import BadInputError


def _is_mapping(value: Any) -> bool:
    """``isinstance(value, Mapping)``, with plain dicts (json's) answered without the slow ABC check."""
    return type(value) is dict or isinstance(value, Mapping)


def _segmentation_area(seg: Any, height: int, width: int) -> float:
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif _is_mapping(seg) and isinstance(seg.get("counts"), list):  # uncompressed RLE
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
    if not isinstance(gt, Mapping) or not isinstance(gt.get("images"), Sequence):
        raise BadInputError("ground truth", "not a COCO dataset dict (no 'images' list)")
    for i, img in enumerate(gt["images"]):
        if not _is_mapping(img) or "id" not in img:
            raise BadInputError("ground truth", "is not a dict with an 'id'", f"image #{i}")
    sizes = {img["id"]: (img.get("height", 0), img.get("width", 0)) for img in gt["images"]}
    need = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    anns = []
    for i, src in enumerate(gt.get("annotations", [])):
        if not _is_mapping(src):
            raise BadInputError("ground truth", "is not a dict", f"annotation #{i}")
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
        if not _is_mapping(src):
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
