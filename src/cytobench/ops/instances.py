"""Instances from masks and label images: the step every box-free baseline shares before COCO scoring.

Semantic-map models (SEU-Net + watershed) and Cellpose produce a *label image* (0 background, ``k > 0`` the
pixels of instance ``k``); cytobench's evaluators take the prediction contract of
:mod:`cytobench.types` (``boxes`` xyxy in continuous pixel coordinates, ``scores``, ``labels``, ``masks``
``(M, H, W)`` uint8). :func:`labels_to_instances` is that conversion, :func:`mask_boxes` the box of a mask in
the contract's frame (pixel ``i`` spans ``[i, i + 1]``, so a one-pixel mask at ``(x, y)`` has the box
``(x, y, x + 1, y + 1)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["labels_to_instances", "mask_boxes"]


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` float32 xyxy boxes of ``(N, H, W)`` masks (continuous frame); an empty mask gets zeros."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def labels_to_instances(
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    *,
    min_area: int = 1,
    category: int = 1,
    device: Any = None,
) -> dict[str, torch.Tensor]:
    """One prediction (``boxes``, ``scores``, ``labels``, ``masks``) from an ``(H, W)`` label image.

    Instances are the label values ``> 0`` in increasing order; those with fewer than ``min_area`` pixels
    are dropped. Each instance's score is, in this order of precedence: ``scores[k - 1]`` for label ``k``
    when ``scores`` is given; the mean of ``probability`` (an ``(H, W)`` map, e.g. a cell probability)
    over its pixels when that is given; else 1.0.

    Args:
        labels: ``(H, W)`` integer label image.
        scores: optional per-label scores indexed by ``label - 1`` (length >= the largest label).
        probability: optional ``(H, W)`` float map whose mean over an instance is its score.
        min_area: smallest instance kept, in pixels.
        category: the 1-based class label every instance gets.
        device: torch device of the returned tensors (None: CPU).

    Returns:
        ``boxes`` (M, 4) float32, ``scores`` (M,) float32, ``labels`` (M,) int64, ``masks`` (M, H, W) uint8.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label image, got shape {labels.shape}")
    height, width = labels.shape
    flat = labels.reshape(-1).astype(np.int64, copy=False)
    counts = np.bincount(np.clip(flat, 0, None), minlength=1)
    ids = [k for k in np.flatnonzero(counts) if k > 0 and counts[k] >= max(int(min_area), 1)]
    masks = np.zeros((len(ids), height, width), dtype=np.uint8)
    for row, k in enumerate(ids):
        masks[row] = labels == k
    if scores is not None:
        values = np.asarray(scores, dtype=np.float32).reshape(-1)
        score = np.array([values[k - 1] for k in ids], dtype=np.float32)
    elif probability is not None:
        prob = np.asarray(probability, dtype=np.float64).reshape(-1)
        sums = np.bincount(np.clip(flat, 0, None), weights=prob, minlength=len(counts))
        score = np.array([sums[k] / counts[k] for k in ids], dtype=np.float32)
    else:
        score = np.ones(len(ids), dtype=np.float32)
    out = {
        "boxes": torch.from_numpy(mask_boxes(masks)),
        "scores": torch.from_numpy(np.clip(score, 0.0, 1.0).astype(np.float32)),
        "labels": torch.full((len(ids),), int(category), dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }
    return {k: v.to(device) for k, v in out.items()} if device is not None else out
