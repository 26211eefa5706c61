"""Readers and writers: images (PNG/JPG/BMP/TIFF/CZI), COCO json, YOLO export."""

from __future__ import annotations

from cytobench.io.coco import load_coco, load_coco_results, save_coco, save_coco_results
from cytobench.io.coco_convert import (
    annotation_to_mask,
    coco_to_targets,
    encode_mask,
    results_to_predictions,
    xywh_to_xyxy,
)
from cytobench.io.images import ImageData, read_image, read_image_tensor, scale_to_unit, write_image

__all__ = [
    "ImageData",
    "annotation_to_mask",
    "coco_to_targets",
    "encode_mask",
    "load_coco",
    "load_coco_results",
    "read_image",
    "read_image_tensor",
    "results_to_predictions",
    "save_coco",
    "save_coco_results",
    "scale_to_unit",
    "write_image",
    "xywh_to_xyxy",
]
