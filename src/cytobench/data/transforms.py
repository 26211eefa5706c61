"""Albumentations pipelines that keep boxes, masks and keypoints of one object consistent.

Conventions:

* Boxes are ``pascal_voc`` = ``xyxy`` absolute pixels, continuous coordinates (pixel ``i`` spans
  ``[i, i + 1]``). Keypoints use the same continuous frame. Albumentations' flips and 90-degree rotations
  map keypoints in a pixel-index frame (``x -> W - 1 - x``) while it maps boxes and resizes keypoints in the
  continuous frame; the flip / rotate classes here shift keypoints by half a pixel around those transforms
  so that a keypoint at a mask pixel's centre stays at that pixel's centre (``x -> W - x`` for a flip).
* When a transform drops a box (``min_visibility`` / ``min_area``, e.g. after a crop), its mask and
  keypoints are dropped with it: :func:`apply_transforms` passes the object index as a box label field and
  selects masks and keypoints by the surviving indices.
* Keypoints are never removed; a keypoint that leaves the image gets visibility 0. Flips do not swap
  left / right keypoint names (cytology keypoints have no mirror pairs).
* Instance masks: every per-object mask stack of the target (``masks``, ``amodal_masks`` and any other
  ``(N, H, W)`` field named ``*_masks``; see :mod:`cytobench.types`) goes through the same geometric
  steps as the image, nearest-neighbour, and loses the objects whose boxes are dropped.
* Per-pixel maps: ``semantic`` and every other named ``(H, W)`` array of the target (``weights``,
  ``overlap``, ...) go through the same geometric steps, **nearest-neighbour whatever their dtype**:
  flips, 90-degree rotations and crops move pixels exactly; a resize gives each output pixel the value
  of its nearest source pixel (as for masks), so class maps stay valid classes and float maps (loss
  weights) keep values of the source map instead of blends across object borders.
  Photometric steps (brightness / contrast) change the image only. Padding (``crop`` larger than the
  image) fills masks and maps with 0 (background, weight 0). Maps keep their dtype.
* Randomness: :func:`apply_transforms` seeds the whole pipeline from an explicit integer before each call
  (``Compose.set_random_seed``), so the output is a pure function of the input and that seed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cytobench.types import INSTANCE_MASK_KEYS, PER_OBJECT_KEYS, PLAIN_KEYS

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

__all__ = ["apply_transforms", "build_transforms", "derive_seed", "instance_mask_keys", "pixel_map_keys"]

_EXACT_FLOAT32 = 2**24  # integers up to this size survive a round trip through float32


class _ContinuousKeypoints:
    """Mixin: run the parent's keypoint mapping in the pixel-index frame it assumes."""

    def apply_to_keypoints(self, keypoints: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        shifted = keypoints.astype(np.float64, copy=True)
        shifted[:, :2] -= 0.5
        out = np.asarray(super().apply_to_keypoints(shifted, *args, **params), dtype=np.float64)  # type: ignore[misc]
        out[:, :2] += 0.5
        return out


class HorizontalFlip(_ContinuousKeypoints, A.HorizontalFlip):
    """``A.HorizontalFlip`` with keypoints in continuous coordinates (``x -> W - x``)."""


class VerticalFlip(_ContinuousKeypoints, A.VerticalFlip):
    """``A.VerticalFlip`` with keypoints in continuous coordinates (``y -> H - y``)."""


class RandomRotate90(_ContinuousKeypoints, A.RandomRotate90):
    """``A.RandomRotate90`` with keypoints in continuous coordinates."""


def build_transforms(
    train: bool,
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotate90: float = 0.0,
    brightness_contrast: float = 0.0,
    brightness_contrast_limit: float = 0.2,
    resize: int | None = None,
    crop: int | None = None,
    min_visibility: float = 0.3,
    min_area: float = 1.0,
) -> A.Compose:
    """Build a detection pipeline for :func:`apply_transforms`.

    Args:
        train: enable the random augmentations; an eval pipeline only resizes.
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotate90: probability of a rotation by a random multiple of 90 degrees.
        brightness_contrast: probability of a random brightness / contrast change.
        brightness_contrast_limit: its maximum relative change.
        resize: rescale so that the longer side has this many pixels (aspect kept), or None.
        crop: random square crop of this size (padded first if the image is smaller), train only.
        min_visibility: a box keeping less than this fraction of its area after a crop is dropped,
            together with its mask and keypoints.
        min_area: boxes smaller than this (pixels) after the transform are dropped likewise.

    Returns:
        An ``A.Compose`` with ``bbox_params`` (pascal_voc, label field ``ann_idx``) and ``keypoint_params``
        (xy, ``remove_invisible=False``, label field ``kp_idx``).
    """
    steps: list[Any] = []
    if resize is not None:
        steps.append(A.LongestMaxSize(max_size=resize))
    if train:
        if crop is not None:
            steps += [
                A.PadIfNeeded(min_height=crop, min_width=crop, border_mode=0, fill=0, fill_mask=0),
                A.RandomCrop(height=crop, width=crop),
            ]
        if hflip > 0:
            steps.append(HorizontalFlip(p=hflip))
        if vflip > 0:
            steps.append(VerticalFlip(p=vflip))
        if rotate90 > 0:
            steps.append(RandomRotate90(p=rotate90))
        if brightness_contrast > 0:
            steps.append(
                A.RandomBrightnessContrast(
                    brightness_limit=brightness_contrast_limit,
                    contrast_limit=brightness_contrast_limit,
                    p=brightness_contrast,
                )
            )
    return A.Compose(
        steps or [A.NoOp()],  # an empty list makes albumentations warn about unused box/keypoint params
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["ann_idx"],
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
        ),
        keypoint_params=A.KeypointParams(format="xy", label_fields=["kp_idx"], remove_invisible=False),
        seed=0,
    )


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of the integers ``parts`` (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def instance_mask_keys(target: dict[str, Any]) -> list[str]:
    """Names of the per-object mask stacks of a target: ``masks``, ``amodal_masks``, then other ``*_masks``."""
    others = [k for k in target if k.endswith("_masks") and k not in INSTANCE_MASK_KEYS]
    return [
        key
        for key in (*INSTANCE_MASK_KEYS, *others)
        if target.get(key) is not None and np.ndim(target[key]) == 3
    ]


def pixel_map_keys(target: dict[str, Any], height: int, width: int) -> list[str]:
    """Names of the per-pixel maps of a numpy target, in key order.

    A per-pixel map is any field outside :data:`~cytobench.types.PER_OBJECT_KEYS` and
    :data:`~cytobench.types.PLAIN_KEYS` holding a 2-D ``(height, width)`` numpy array (``semantic``,
    ``weights``, ``overlap``, ...).
    """
    skip = set(PER_OBJECT_KEYS) | set(PLAIN_KEYS)
    return [
        key
        for key, value in target.items()
        if key not in skip and isinstance(value, np.ndarray) and value.shape == (height, width)
    ]


def _stack_maps(target: dict[str, Any], keys: list[str]) -> np.ndarray:
    """(H, W, M) float32 stack of the maps ``keys`` (integer maps must be exact in float32)."""
    layers = []
    for key in keys:
        values = target[key]
        if not np.issubdtype(values.dtype, np.floating) and values.size:
            if int(np.abs(values).max()) >= _EXACT_FLOAT32:
                raise ValueError(
                    f"per-pixel map '{key}' has values beyond +-2**24; they cannot be transformed"
                )
        layers.append(values.astype(np.float32))
    return np.ascontiguousarray(np.stack(layers, axis=-1))


def apply_transforms(
    compose: A.Compose, image: np.ndarray, target: dict[str, Any], seed: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply a pipeline from :func:`build_transforms` to an image and its target.

    Args:
        compose: the pipeline.
        image: float32 ``(H, W, C)`` in [0, 1].
        target: numpy ``boxes`` (N, 4) xyxy, ``labels`` (N,), optional ``masks`` / ``amodal_masks`` / other
            ``*_masks`` (N, H, W) uint8, ``keypoints`` (N, K, 3), ``iscrowd`` (N,), ``area`` (N,), and any per-pixel maps
            ``(H, W)`` (``semantic``, ``weights``, ...: see :func:`pixel_map_keys`); other keys are copied.
        seed: seeds the pipeline before the call (None keeps its current random state).

    Returns:
        ``(image (H', W', C) float32 in [0, 1], target)`` with the dropped objects removed from every
        per-object array and every map resampled to ``(H', W')`` (nearest-neighbour, dtype kept); ``area``
        becomes the visible mask area (or box area without masks).
    """
    if seed is not None:
        compose.set_random_seed(seed)
    height, width = image.shape[:2]
    boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    boxes = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    keypoints = target.get("keypoints")
    num_kp = 0 if keypoints is None else np.asarray(keypoints).shape[1]
    flat_kp = (
        np.zeros((0, 2), np.float32) if keypoints is None else np.asarray(keypoints)[:, :, :2].reshape(-1, 2)
    )
    inputs: dict[str, Any] = {
        "image": np.ascontiguousarray(image, dtype=np.float32),
        "bboxes": boxes,
        "ann_idx": np.arange(n),
        "keypoints": flat_kp.astype(np.float32),
        "kp_idx": np.arange(len(flat_kp)),
    }
    mask_keys = instance_mask_keys(target)
    if mask_keys and n > 0:  # one stack, so every mask set sees the same geometry
        stacks = [np.asarray(target[key], dtype=np.uint8) for key in mask_keys]
        inputs["masks"] = np.ascontiguousarray(stacks[0] if len(stacks) == 1 else np.concatenate(stacks))
    map_keys = pixel_map_keys(target, height, width)
    if map_keys:
        inputs["mask"] = _stack_maps(target, map_keys)
    out = compose(**inputs)
    new_image = np.clip(np.asarray(out["image"], dtype=np.float32), 0.0, 1.0)
    if new_image.ndim == 2:
        new_image = new_image[:, :, None]
    new_h, new_w = new_image.shape[:2]
    kept = np.asarray(out["ann_idx"], dtype=np.int64).reshape(-1)
    result = dict(target)
    result["boxes"] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    for key in ("labels", "iscrowd"):
        if key in target:
            result[key] = np.asarray(target[key])[kept]
    if mask_keys:
        moved = np.asarray(out["masks"], dtype=np.uint8) if n > 0 else None
        for i, key in enumerate(mask_keys):
            result[key] = (
                moved[i * n : (i + 1) * n][kept]
                if moved is not None
                else np.zeros((0, new_h, new_w), dtype=np.uint8)
            )
    if map_keys:
        layers = np.asarray(out["mask"]).reshape(new_h, new_w, len(map_keys))
        for i, key in enumerate(map_keys):
            result[key] = np.ascontiguousarray(layers[:, :, i]).astype(target[key].dtype)
    if keypoints is not None:
        moved_kp = np.zeros_like(flat_kp, dtype=np.float32)
        moved_kp[np.asarray(out["kp_idx"], dtype=np.int64)] = np.asarray(out["keypoints"])[:, :2]
        new_kp = np.asarray(keypoints, dtype=np.float32).copy()
        new_kp[:, :, :2] = moved_kp.reshape(n, num_kp, 2)
        new_kp = new_kp[kept]
        outside = (
            (new_kp[..., 0] < 0) | (new_kp[..., 0] > new_w) | (new_kp[..., 1] < 0) | (new_kp[..., 1] > new_h)
        )
        new_kp[..., 2] = np.where(outside, 0.0, new_kp[..., 2])
        result["keypoints"] = new_kp
    if "area" in target:
        if "masks" in result:
            result["area"] = result["masks"].sum(axis=(1, 2), dtype=np.int64).astype(np.float32)
        else:
            b = result["boxes"]
            result["area"] = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32)
    return new_image, result
