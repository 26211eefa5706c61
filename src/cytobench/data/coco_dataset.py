"""Detection / instance-segmentation / keypoint / dense-truth data set over a COCO json.

Image entries may carry two optional fields besides the standard ones::

    {"id": 1, "file_name": "s1_bf_low.png", "width": 512, "height": 512,
     "planes": ["s1_bf_low.png", "s1_bf_high.png", "s1_phase.png"],
     "maps": {"weights": "s1_weights.tif", "semantic": "s1_classes.png"}}

* ``planes``: the files of one sample's planes (focal planes, modalities), relative to ``root``, stacked
  as channels in this order (each file read by :func:`~cytobench.io.images.read_image` and scaled on its
  own; a multi-channel file adds all its channels). ``file_name`` stays required and names the primary
  plane for tools that read one file. Without ``planes`` the image is ``file_name`` alone.
* ``maps``: per-pixel map files by name, relative to ``root``, read raw (see
  :mod:`cytobench.data.rasterize`). They are used when the data set asks for that map (``maps=[...]``,
  or ``with_semantic`` for ``semantic``).

Dense truth is off by default, so a data set built without these options yields exactly the tensors it
always did. The rules (semantic painting order and border class, amodal fallback, computed maps) are in
:mod:`cytobench.data.rasterize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cytobench.data.rasterize import (
    MapContext,
    amodal_mask,
    compute_map,
    read_map,
    semantic_map,
    stack_masks,
)
from cytobench.data.transforms import A, apply_transforms, derive_seed
from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask, xywh_to_xyxy
from cytobench.io.images import ImageData, read_image
from cytobench.types import PER_OBJECT_KEYS, PLAIN_KEYS

__all__ = ["CocoDetectionDataset"]

# A non-albumentations transform: (image (H, W, C) float32, numpy target, generator) -> (image, target).
TransformFn = Callable[[np.ndarray, dict[str, Any], np.random.Generator], tuple[np.ndarray, dict[str, Any]]]


class CocoDetectionDataset(Dataset):
    """COCO-json data set yielding ``(image, target)`` in the torchvision detection format.

    Labels are the COCO category ids mapped to contiguous ``1..K`` in the order of ``categories``
    (``cat_ids[label - 1]`` / ``label_to_cat_id`` map them back). Crowd annotations (``iscrowd=1``) are
    skipped: training targets hold only individual objects (evaluation reads crowds from the json via
    :func:`~cytobench.io.coco_convert.coco_to_targets`); they are left out of the dense truth too.

    Augmentation is a pure function of ``(seed, epoch, index)``: the pipeline is re-seeded with
    :func:`~cytobench.data.transforms.derive_seed` before every item, so resuming at an epoch (after
    :meth:`set_epoch`) reproduces the same samples whatever the worker layout.

    Args:
        root: folder the images' ``file_name`` / ``planes`` / ``maps`` entries are relative to.
        ann_file: COCO ground-truth json (validated by :func:`~cytobench.io.coco.load_coco`).
        transforms: an ``A.Compose`` from :func:`~cytobench.data.transforms.build_transforms`, or a callable
            ``(image, target, numpy Generator) -> (image, target)`` on numpy data; None for no augmentation.
        with_masks: add ``masks`` (N, H, W) uint8 rasterised from polygons / RLE.
        with_keypoints: add ``keypoints`` (N, K, 3) float32 (x, y, visibility), K = most keypoints of any
            category; objects without keypoints get zeros.
        seed: base seed of the augmentation.
        bit_depth: force the significant bits of integer images (see :mod:`cytobench.io.images`).
        with_semantic: add ``semantic`` (H, W) int64: the image's ``maps["semantic"]`` file when it has one,
            else painted from the visible masks (classes: :attr:`semantic_class_names`).
        semantic_order: category names in painting order, the last on top (unlisted ones first, in label
            order); None = label order.
        semantic_border: width in pixels of a border class (label K + 1) painted on top; 0 = no border class.
        semantic_border_categories: category names whose objects get a border; None = all.
        with_amodal_masks: add ``amodal_masks`` (N, H, W) uint8 from the annotations' ``amodal_field``,
            falling back to the visible mask.
        amodal_field: annotation key of the amodal segmentation (polygons or RLE).
        maps: named per-pixel maps to add, each (H, W): from the image's ``maps`` file when it names one,
            else computed (:data:`~cytobench.data.rasterize.COMPUTED_MAPS`: ``overlap``,
            ``overlap_attention``, ``overlap_attention_v0`` ... ``_v4``).
        cache_computed_maps: keep each computed map in memory, keyed by (item index, map name), so it is
            computed once per item and reused in later epochs (it does not depend on the epoch: maps are
            computed before augmentation). The cache lives in the process that reads the item: with
            DataLoader workers it lasts as long as the workers do (``persistent_workers``). Costs
            ``H * W * 4`` bytes per float map and item; False recomputes every time.
        planes: indices into each image's ``planes`` list to stack, in this order (an image without
            ``planes`` has the one plane ``file_name``); None = all planes.
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
        with_semantic: bool = False,
        semantic_order: Sequence[str] | None = None,
        semantic_border: int = 0,
        semantic_border_categories: Sequence[str] | None = None,
        with_amodal_masks: bool = False,
        amodal_field: str = "amodal_segmentation",
        maps: Sequence[str] = (),
        planes: Sequence[int] | None = None,
        cache_computed_maps: bool = True,
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
        self.with_semantic = bool(with_semantic)
        self.semantic_order = self._labels_of(semantic_order, "semantic_order")
        self.semantic_border = int(semantic_border)
        if self.semantic_border < 0:
            raise BadInputError(self.ann_file, f"semantic_border must be >= 0, got {self.semantic_border}")
        self.semantic_border_classes = self._labels_of(
            semantic_border_categories, "semantic_border_categories"
        )
        self.with_amodal_masks = bool(with_amodal_masks)
        self.amodal_field = str(amodal_field)
        self.maps = [str(name) for name in maps]
        reserved = {"semantic", *PER_OBJECT_KEYS, *PLAIN_KEYS}
        for name in self.maps:
            if name in reserved:
                raise BadInputError(
                    self.ann_file, f"map name '{name}' is reserved (use with_semantic for 'semantic')"
                )
        self.planes = None if planes is None else [int(i) for i in planes]
        self.cache_computed_maps = bool(cache_computed_maps)
        self._map_cache: dict[tuple[int, str], np.ndarray] = {}  # (index, name) -> read-only computed map

    def _labels_of(self, names: Sequence[str] | None, option: str) -> list[int] | None:
        """Labels of category ``names`` (None stays None); an unknown name is an error naming ``option``."""
        if names is None:
            return None
        by_name = {c["name"]: i + 1 for i, c in enumerate(self.coco["categories"])}
        unknown = [str(n) for n in names if str(n) not in by_name]
        if unknown:
            raise BadInputError(
                self.ann_file,
                f"{option} names unknown category '{unknown[0]}' (categories: {sorted(by_name)})",
            )
        return [by_name[str(n)] for n in names]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (K + 1)."""
        return len(self.cat_ids) + 1

    @property
    def num_semantic_classes(self) -> int:
        """Classes of the ``semantic`` map: background, the K categories, and the border class if any."""
        return self.num_classes + (1 if self.semantic_border > 0 else 0)

    @property
    def semantic_class_names(self) -> list[str]:
        """Names of the ``semantic`` classes in class order (``background``, categories, ``border``)."""
        return ["background", *self.category_names, *(["border"] if self.semantic_border > 0 else [])]

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

    def _check_size(self, info: dict[str, Any], array: np.ndarray, file_name: str) -> None:
        height, width = array.shape[:2]
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise CorruptAnnotation(
                self.ann_file,
                f"size {info['width']}x{info['height']} in the json differs from {width}x{height} of {file_name}",
                f"image {info['id']}",
            )

    def _read(self, info: dict[str, Any]) -> tuple[np.ndarray, ImageData, list[str] | None]:
        """The image ``(H, W, C)`` (planes stacked), the first plane's data, the plane files (or None)."""
        if "planes" not in info and self.planes is None:
            data = read_image(self.root / info["file_name"], bit_depth=self.bit_depth)
            self._check_size(info, data.array, info["file_name"])
            return data.array, data, None
        files = info.get("planes", [info["file_name"]])
        item = f"image {info['id']}"
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise CorruptAnnotation(self.ann_file, "'planes' must be a non-empty list of file names", item)
        indices = self.planes if self.planes is not None else list(range(len(files)))
        if any(not -len(files) <= i < len(files) for i in indices):
            raise CorruptAnnotation(
                self.ann_file, f"has {len(files)} plane(s) but the data set selects planes {indices}", item
            )
        chosen = [files[i] for i in indices]
        datas = [read_image(self.root / name, bit_depth=self.bit_depth) for name in chosen]
        for name, data in zip(chosen, datas):
            self._check_size(info, data.array, name)
        image = np.concatenate([d.array for d in datas], axis=2) if len(datas) > 1 else datas[0].array
        return np.ascontiguousarray(image), datas[0], chosen

    def _map_file(self, info: dict[str, Any], name: str, labels: bool = False) -> np.ndarray | None:
        """The image's ``maps[name]`` file read raw, or None when it names none."""
        files = info.get("maps") or {}
        if not isinstance(files, dict):
            raise CorruptAnnotation(
                self.ann_file, "'maps' must be an object {name: file}", f"image {info['id']}"
            )
        if name not in files:
            return None
        array = read_map(self.root / str(files[name]), labels=labels)
        self._check_size(info, array, str(files[name]))
        return array

    def load_raw(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Image and target of item ``index`` before augmentation, as numpy.

        Returns:
            ``(image (H, W, C) float32 in [0, 1], target with numpy arrays)``.
        """
        info = self.images[index]
        image, image_data, plane_files = self._read(info)
        height, width = image.shape[:2]
        anns = self._anns[info["id"]]
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        target: dict[str, Any] = {
            "boxes": xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float32)),
            "labels": labels,
            "iscrowd": np.zeros(len(anns), dtype=np.int64),
            "area": np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float32),
        }
        semantic_file = self._map_file(info, "semantic", labels=True) if self.with_semantic else None
        map_files = {name: self._map_file(info, name) for name in self.maps}
        for name, array in map_files.items():
            if array is None:
                map_files[name] = self._map_cache.get((index, name))
        need_amodal = self.with_amodal_masks or any(a is None for a in map_files.values())
        need_visible = self.with_masks or need_amodal or (self.with_semantic and semantic_file is None)
        visible = (
            stack_masks([annotation_to_mask(a, height, width) for a in anns], height, width)
            if need_visible
            else None
        )
        if self.with_masks:
            target["masks"] = visible
        amodal = None
        if need_amodal:
            assert visible is not None
            amodal = stack_masks(
                [
                    amodal_mask(a, v, height, width, field=self.amodal_field, path=self.ann_file)
                    for a, v in zip(anns, visible)
                ],
                height,
                width,
            )
        if self.with_amodal_masks:
            target["amodal_masks"] = amodal
        if self.with_keypoints:
            kps = np.zeros((len(anns), self.num_keypoints, 3), dtype=np.float32)
            for i, ann in enumerate(anns):
                values = np.asarray(ann.get("keypoints") or [], dtype=np.float32).reshape(-1, 3)
                kps[i, : len(values)] = values[: self.num_keypoints]
            target["keypoints"] = kps
        if self.with_semantic:
            target["semantic"] = (
                semantic_file.astype(np.int64)
                if semantic_file is not None
                else self._semantic(visible, labels, height, width)
            )
        for name, array in map_files.items():
            if array is None:
                array = self._compute_map(index, name, amodal, labels, info)
            target[name] = array
        pixel_size = info.get("pixel_size_um", image_data.pixel_size_um)
        if isinstance(pixel_size, int | float):
            pixel_size = (float(pixel_size), float(pixel_size))
        target["meta"] = {
            "file_name": info["file_name"],
            "orig_size": (height, width),
            "pixel_size_um": tuple(pixel_size) if pixel_size is not None else None,
        }
        if plane_files is not None:
            target["meta"]["planes"] = plane_files
        return image, target

    def _compute_map(
        self, index: int, name: str, amodal: np.ndarray | None, labels: np.ndarray, info: dict[str, Any]
    ) -> np.ndarray:
        """Computed map ``name`` of item ``index``, stored read-only in the cache when caching is on."""
        context = MapContext(tuple(self.category_names), partial(self._map_file, info))
        height, width = int(info["height"]), int(info["width"])
        array = compute_map(
            name,
            amodal,
            labels,
            height,
            width,
            path=self.ann_file,
            item=f"image {info['id']}",
            context=context,
        )
        if self.cache_computed_maps:
            array.flags.writeable = False  # shared across epochs: an in-place edit must fail, not leak
            self._map_cache[(index, name)] = array
        return array

    def _semantic(
        self, visible: np.ndarray | None, labels: np.ndarray, height: int, width: int
    ) -> np.ndarray:
        return semantic_map(
            visible if visible is not None else stack_masks([], height, width),
            labels,
            height,
            width,
            order=self.semantic_order,
            border_label=self.num_classes if self.semantic_border > 0 else None,
            border_width=max(self.semantic_border, 1),
            border_classes=self.semantic_border_classes,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item ``index``.

        Returns:
            ``image`` float32 tensor (C, H, W) in [0, 1] and ``target``: ``boxes`` (N, 4) float32 xyxy,
            ``labels`` (N,) int64 in 1..K, ``iscrowd`` (N,) int64, ``area`` (N,) float32, optional ``masks``
            and ``amodal_masks`` (N, H, W) uint8, ``keypoints`` (N, K, 3) float32, ``semantic`` (H, W) int64
            and the named maps (H, W) (float maps float32, uint8 / bool maps uint8, other integers int64),
            ``image_id`` int, ``meta`` dict.
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
        if "amodal_masks" in target:
            out["amodal_masks"] = torch.as_tensor(
                np.ascontiguousarray(target["amodal_masks"], dtype=np.uint8)
            )
        if "semantic" in target:
            out["semantic"] = torch.as_tensor(np.ascontiguousarray(target["semantic"], dtype=np.int64))
        for name in self.maps:
            out[name] = _map_tensor(target[name])
        tensor = torch.from_numpy(
            np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))
        )
        return tensor, out


def _map_tensor(array: np.ndarray) -> torch.Tensor:
    """A per-pixel map as a tensor: float -> float32, bool / uint8 -> uint8, other integers -> int64."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        dtype: Any = np.float32
    elif array.dtype in (np.bool_, np.uint8):
        dtype = np.uint8
    else:
        dtype = np.int64
    array = np.ascontiguousarray(array, dtype=dtype)
    if not array.flags.writeable:  # a cached map: the tensor gets its own copy, never the cache's memory
        array = array.copy()
    return torch.as_tensor(array)
