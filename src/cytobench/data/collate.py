"""Batch collation and DataLoader worker seeding for detection data sets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["detection_collate", "seed_worker"]


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists (images may differ in size; torchvision detectors take lists).

    Args:
        batch: ``(image (C, H, W) float tensor, target dict)`` pairs.

    Returns:
        ``(images, targets)``, each a list of length ``len(batch)``.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: derive numpy / random seeds from torch's worker seed.

    Augmentation in :class:`~cytobench.data.coco_dataset.CocoDetectionDataset` is seeded per item and does
    not depend on this; it only makes any other library randomness in workers reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - legacy global state used by some third-party code
    random.seed(seed)
