"""Data sets over COCO json, augmentation pipelines and collation."""

from __future__ import annotations

from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.data.collate import detection_collate, seed_worker
from cytobench.data.transforms import apply_transforms, build_transforms, derive_seed

__all__ = [
    "CocoDetectionDataset",
    "apply_transforms",
    "build_transforms",
    "derive_seed",
    "detection_collate",
    "seed_worker",
]
