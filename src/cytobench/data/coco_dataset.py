"""Detection / instance-segmentation / keypoint data set over a COCO json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cytobench.data.transforms import A, apply_transforms, derive_seed
from cytobench.errors import CorruptAnnotation
from cytobench.io.coco import annotation_to_mask, load_coco, xywh_to_xyxy
from cytobench.io.images import read_image

__all__ = ["CocoDetectionDataset"]

# A non-albumentations transform: (image (H, W, C) float32, numpy target, generator) -> (image, target).
TransformFn = Callable[[np.ndarray, dict[str, Any], np.random.Generator], tuple[np.ndarray, dict[str, Any]]]


class CocoDetectionDataset(Dataset):
    """COCO-json data set yielding ``(image, target)`` in the torchvision detection format.

    Labels are the COCO category ids mapped to contiguous ``1..K`` in the order of ``categories``
    (``cat_ids[label - 1]`` / ``label_to_cat_id`` map them back). Crowd annotations (``iscrowd=1``) are
    skipped: training targets hold only individual objects (evaluation reads crowds from the json via
    :func:`~cytobench.io.coco.coco_to_targets`).

    Augmentation is a pure function of ``(seed, epoch, index)``: the pipeline is re-seeded with
    :func:`~cytobench.data.transforms.derive_seed` before every item, so resuming at an epoch (after
    :meth:`set_epoch`) reproduces the same samples whatever the worker layout.

    Args:
        root: folder the images' ``file_name`` entries are relative to.
        ann_file: COCO ground-truth json (validated by :func:`~cytobench.io.coco.load_coco`).
        transforms: an ``A.Compose`` from :func:`~cytobench.data.transforms.build_transforms`, or a callable
            ``(image, target, numpy Generator) -> (image, target)`` on numpy data; None for no augmentation.
        with_masks: add ``masks`` (N, H, W) uint8 rasterised from polygons / RLE.
        with_keypoints: add ``keypoints`` (N, K, 3) float32 (x, y, visibility), K = most keypoints of any
            category; objects without keypoints get zeros.
        seed: base seed of the augmentation.
        bit_depth: force the significant bits of integer images (see :mod:`cytobench.io.images`).
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        transforms: A.BaseCompose | TransformFn | None = None,
        with_masks: bool = False,
        with_keypoints: bool = False,
        seed: int = 0,
        bit_depth: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.ann_file = Path(ann_file)
        self.coco = load_coco(self.ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.seed = int(seed)
        self.bit_depth = bit_depth
        self.epoch = 0
        categories = self.coco["categories"]
        self.cat_ids: list[int] = [c["id"] for c in categories]
        self.cat_id_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: cid for i, cid in enumerate(self.cat_ids)}
        self.num_keypoints = max((len(c.get("keypoints") or []) for c in categories), default=0)
        self.images: list[dict[str, Any]] = list(self.coco["images"])
        self._anns: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        for ann in self.coco["annotations"]:
            if not ann.get("iscrowd", 0):
                self._anns[ann["image_id"]].append(ann)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (K + 1)."""
        return len(self.cat_ids) + 1

    @property
    def categories(self) -> list[dict]:
        """The COCO category dicts in label order (``categories[label - 1]``)."""
        return list(self.coco["categories"])

    @property
    def category_names(self) -> list[str]:
        """Category names in label order: ``category_names[label - 1]``."""
        return [c["name"] for c in self.coco["categories"]]

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in item order."""
        return [img["id"] for img in self.images]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def load_raw(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Image and target of item ``index`` before augmentation, as numpy.

        Returns:
            ``(image (H, W, C) float32 in [0, 1], target with numpy arrays)``.
        """
        info = self.images[index]
        image_data = read_image(self.root / info["file_name"], bit_depth=self.bit_depth)
        image = image_data.array
        height, width = image.shape[:2]
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise CorruptAnnotation(
                self.ann_file,
                f"size {info['width']}x{info['height']} in the json differs from "
                f"{width}x{height} of {info['file_name']}",
                f"image {info['id']}",
            )
        anns = self._anns[info["id"]]
        target: dict[str, Any] = {
            "boxes": xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float32)),
            "labels": np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64),
            "iscrowd": np.zeros(len(anns), dtype=np.int64),
            "area": np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float32),
        }
        if self.with_masks:
            masks = [annotation_to_mask(a, height, width) for a in anns]
            target["masks"] = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
        if self.with_keypoints:
            kps = np.zeros((len(anns), self.num_keypoints, 3), dtype=np.float32)
            for i, ann in enumerate(anns):
                values = np.asarray(ann.get("keypoints") or [], dtype=np.float32).reshape(-1, 3)
                kps[i, : len(values)] = values[: self.num_keypoints]
            target["keypoints"] = kps
        pixel_size = info.get("pixel_size_um", image_data.pixel_size_um)
        if isinstance(pixel_size, int | float):
            pixel_size = (float(pixel_size), float(pixel_size))
        target["meta"] = {
            "file_name": info["file_name"],
            "orig_size": (height, width),
            "pixel_size_um": tuple(pixel_size) if pixel_size is not None else None,
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item ``index``.

        Returns:
            ``image`` float32 tensor (C, H, W) in [0, 1] and ``target``: ``boxes`` (N, 4) float32 xyxy,
            ``labels`` (N,) int64 in 1..K, ``iscrowd`` (N,) int64, ``area`` (N,) float32, optional ``masks``
            (N, H, W) uint8 and ``keypoints`` (N, K, 3) float32, ``image_id`` int, ``meta`` dict.
        """
        image, target = self.load_raw(index)
        if self.transforms is not None:
            seed = derive_seed(self.seed, self.epoch, index)
            if isinstance(self.transforms, A.BaseCompose):
                image, target = apply_transforms(self.transforms, image, target, seed)
            else:
                image, target = self.transforms(image, target, np.random.default_rng(seed))
        out: dict[str, Any] = {
            "boxes": torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(target["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(target["iscrowd"], dtype=np.int64)),
            "area": torch.as_tensor(np.asarray(target["area"], dtype=np.float32)),
            "image_id": int(self.images[index]["id"]),
            "meta": target["meta"],
        }
        if "masks" in target:
            out["masks"] = torch.as_tensor(np.ascontiguousarray(target["masks"], dtype=np.uint8))
        if "keypoints" in target:
            out["keypoints"] = torch.as_tensor(np.asarray(target["keypoints"], dtype=np.float32))
        tensor = torch.from_numpy(
            np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))
        )
        return tensor, out
