"""Sample / target / prediction contracts shared by datasets, models and evaluators.

Keys follow torchvision's detection API so that torchvision models plug in unchanged.
Boxes are ``xyxy`` in absolute pixel coordinates; labels are 1-based (0 is background).

A target holds three kinds of arrays:

* **per-object** fields (:data:`PER_OBJECT_KEYS`), first axis N = objects: ``boxes``, ``labels``,
  ``iscrowd``, ``area``, ``keypoints`` and the instance-mask stacks (:data:`INSTANCE_MASK_KEYS`)
  ``masks`` (visible part) and ``amodal_masks`` (whole object, hidden parts included); any other
  ``(N, H, W)`` field named ``*_masks`` (e.g. ``nucleus_masks``) is an instance-mask stack too. A
  transform that drops an object drops it from every per-object field.
* **per-pixel maps**: ``semantic`` and any other named ``(H, W)`` array (``weights``, ``overlap``, ...),
  with the image's height and width. Transforms move them with the image; they never drop anything.
* ``image_id`` and ``meta`` (plain data, never transformed).
"""

from __future__ import annotations

from typing import Any, TypedDict

from typing_extensions import NotRequired

Tensor = Any  # torch.Tensor or numpy.ndarray: evaluators accept either

INSTANCE_MASK_KEYS: tuple[str, ...] = ("masks", "amodal_masks")
"""Per-object ``(N, H, W)`` uint8 mask stacks of the contract (other ``*_masks`` fields are stacks too)."""

PER_OBJECT_KEYS: tuple[str, ...] = ("boxes", "labels", "iscrowd", "area", "keypoints", *INSTANCE_MASK_KEYS)
"""Target fields whose first axis is the object index."""

PLAIN_KEYS: tuple[str, ...] = ("image_id", "meta")
"""Target fields that are not arrays."""


class Target(TypedDict):
    """Ground truth of one image (``C x H x W`` image; N objects).

    Attributes:
        boxes: (N, 4) float, xyxy absolute pixels (of the visible part).
        labels: (N,) int64, 1-based category ids.
        image_id: int, the COCO image id.
        masks: optional (N, H, W) uint8 visible instance masks.
        amodal_masks: optional (N, H, W) uint8 whole-object masks including hidden (occluded) parts;
            equal to ``masks`` for objects annotated without an amodal outline.
        keypoints: optional (N, K, 3) float, (x, y, visibility).
        iscrowd: optional (N,) int64.
        area: optional (N,) float, COCO area (visible mask area when known).
        semantic: optional (H, W) int64 class map: 0 background, k for category label k, further classes
            (e.g. a cell border) after the categories; a dataset states its classes.
        weights: optional (H, W) float32 per-pixel loss weights (e.g. overlap-aware weight maps).
        overlap: optional (H, W) uint8, 1 where two or more amodal masks (of one category) cover the pixel.
        meta: file name(s), original size (H, W), pixel size, simulator truth.

    Other named per-pixel maps are ``(H, W)`` arrays under their own key (see the module docstring).
    """

    boxes: Tensor
    labels: Tensor
    image_id: int
    masks: NotRequired[Tensor]
    amodal_masks: NotRequired[Tensor]
    keypoints: NotRequired[Tensor]
    iscrowd: NotRequired[Tensor]
    area: NotRequired[Tensor]
    semantic: NotRequired[Tensor]
    weights: NotRequired[Tensor]
    overlap: NotRequired[Tensor]
    meta: NotRequired[dict[str, Any]]


class Prediction(TypedDict):
    """Model output for one image.

    Attributes:
        boxes: (M, 4) float, xyxy absolute pixels.
        scores: (M,) float in [0, 1].
        labels: (M,) int64, 1-based category ids.
        masks: optional (M, 1, H, W) float probabilities or (M, H, W) uint8.
        keypoints: optional (M, K, 3) float.
        embeddings: optional (M,) or (M, D) float.
        semantic: optional (C, H, W) float class probabilities (summing to 1 over C, the classes of the
            target's ``semantic`` map) at the input image's size.

    A purely semantic model returns empty ``boxes`` (0, 4), ``scores`` (0,) and ``labels`` (0,).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: NotRequired[Tensor]
    keypoints: NotRequired[Tensor]
    embeddings: NotRequired[Tensor]
    semantic: NotRequired[Tensor]
