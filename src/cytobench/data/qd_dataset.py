"""On-the-fly data set of simulated two-photon QD images (no disk), same items as the on-disk route.

Item ``i`` is image ``i`` of the seeded sequence of :mod:`cytobench.simulate.qd_dataset` (its block of
``BLOCK_SIZE`` images is simulated and cached), so ``QDSimulatedDataset(n, seed=s)[i]`` equals item ``i``
of ``CocoDetectionDataset(out/"images", out/"annotations.json", with_keypoints=True, bit_depth=8)`` over
``simulate_qd_dataset(out, n, seed=s)`` with the same diffusion arguments and parameters.

Image scaling: ``counts / count_scale`` clipped to [0, 1]; the default ``count_scale = 255.0`` equals
``2**bit_depth - 1`` of the on-disk default (8-bit range in a 16-bit PNG), so both routes give the same
float image (counts above ``count_scale`` saturate in both).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from cytobench.simulate.qd import QDBatch, ScanParams, check_diffusion
from cytobench.simulate.qd_dataset import BLOCK_SIZE, CATEGORY, as_scan_params, file_name, simulate_qd_range

__all__ = ["DEFAULT_COUNT_SCALE", "QDSimulatedDataset", "counts_to_tensor", "scale_counts"]

DEFAULT_COUNT_SCALE = 255.0  # = 2**8 - 1, the on-disk default bit depth


def scale_counts(counts: np.ndarray, count_scale: float | None = None) -> np.ndarray:
    """Photon counts -> float32 image in [0, 1]: ``clip(counts / count_scale, 0, 1)``.

    Args:
        counts: integer counts of any shape.
        count_scale: counts mapped to 1.0; None for :data:`DEFAULT_COUNT_SCALE`.

    Returns:
        float32 array of the same shape.
    """
    scale = np.float32(DEFAULT_COUNT_SCALE if count_scale is None else count_scale)
    return np.clip(np.asarray(counts).astype(np.float32) / scale, 0.0, 1.0)


def counts_to_tensor(counts: np.ndarray, count_scale: float | None = None) -> torch.Tensor:
    """Counts (n, H, W) -> float32 tensor (n, 1, H, W) scaled exactly as the data set's items."""
    return torch.from_numpy(np.ascontiguousarray(scale_counts(counts, count_scale)[:, None]))


class QDSimulatedDataset(Dataset):
    """Simulated QD images generated deterministically from ``(seed, index)`` on the fly.

    Args:
        n: number of items.
        diffusion: D in um^2/s, one value or (n,) per image; overrides ``diffusion_range`` when given.
        diffusion_range: ``(lo, hi)`` um^2/s drawn uniformly per image (the paper's training range).
        params: :class:`~cytobench.simulate.qd.ScanParams` or a mapping of its fields; None for defaults.
        seed: non-negative integer seed.
        normalise: True returns ``counts / count_scale`` clipped to [0, 1]; False the raw counts (float32).
        count_scale: counts mapped to 1.0 (255 = the on-disk default ``bit_depth=8``).
        cache_blocks: simulated blocks kept in memory (sequential reads simulate each block once).
    """

    def __init__(
        self,
        n: int,
        diffusion: float | ArrayLike | None = None,
        diffusion_range: tuple[float, float] | None = (0.75, 1.75),
        params: ScanParams | Mapping[str, Any] | None = None,
        seed: int = 0,
        normalise: bool = True,
        count_scale: float = DEFAULT_COUNT_SCALE,
        cache_blocks: int = 4,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not np.isfinite(count_scale) or count_scale <= 0:
            raise ValueError(f"count_scale must be finite and > 0, got {count_scale!r}")
        self.n, self.seed = int(n), int(seed)
        self.params = as_scan_params(params)
        rng_range = None if diffusion is not None else diffusion_range
        self.diffusion = check_diffusion(diffusion, rng_range, self.n)
        self.diffusion_range = None if rng_range is None else (float(rng_range[0]), float(rng_range[1]))
        self.normalise, self.count_scale = bool(normalise), float(count_scale)
        self.cache_blocks = max(1, int(cache_blocks))
        self._cache: OrderedDict[int, QDBatch] = OrderedDict()
        self.epoch = 0
        self.categories: list[dict[str, Any]] = [dict(CATEGORY)]
        self.cat_ids: list[int] = [1]
        self.label_to_cat_id: dict[int, int] = {1: 1}
        self.cat_id_to_label: dict[int, int] = {1: 1}
        self.num_keypoints = 1

    @property
    def num_classes(self) -> int:
        """Number of classes including background (2)."""
        return 2

    @property
    def category_names(self) -> list[str]:
        """Category names in label order."""
        return [CATEGORY["name"]]

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in item order (``index + 1``)."""
        return list(range(1, self.n + 1))

    def set_epoch(self, epoch: int) -> None:
        """No-op (items do not depend on the epoch); kept for the trainer's data-set protocol."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def _block(self, block: int) -> QDBatch:
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        start = block * BLOCK_SIZE
        batch = simulate_qd_range(
            self.seed, start, start + BLOCK_SIZE, self.diffusion, self.diffusion_range, self.params
        )
        self._cache[block] = batch
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return batch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Item ``index``.

        Returns:
            ``image`` float32 (1, H, W) and ``target``: ``boxes`` (1, 4) float32 xyxy, ``labels`` (1,) int64
            (= 1), ``keypoints`` (1, 1, 3) float32 ``(x, y, 2)`` at the trajectory centroid, ``iscrowd``
            (1,) int64, ``area`` (1,) float32, ``image_id`` = index + 1, ``meta`` (file name, orig_size
            (H, W), pixel size, diffusion, centroid).
        """
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        index = index % self.n
        batch = self._block(index // BLOCK_SIZE)
        k = index % BLOCK_SIZE
        counts = batch.counts[k]
        image = scale_counts(counts, self.count_scale) if self.normalise else counts.astype(np.float32)
        x0, y0, x1, y1 = (float(v) for v in batch.boxes_px[k])
        cx, cy = (float(v) for v in batch.centroids_px[k])
        p = self.params
        target: dict[str, Any] = {
            "boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
            "labels": torch.ones(1, dtype=torch.int64),
            "keypoints": torch.tensor([[[cx, cy, 2.0]]], dtype=torch.float32),
            "iscrowd": torch.zeros(1, dtype=torch.int64),
            "area": torch.tensor([(x1 - x0) * (y1 - y0)], dtype=torch.float32),
            "image_id": index + 1,
            "meta": {
                "file_name": file_name(index),
                "orig_size": (p.rows, p.cols),
                "pixel_size_um": (p.pixel_size_um, p.pixel_size_um),
                "diffusion": float(batch.diffusion[k]),
                "centroid_px": (cx, cy),
            },
        }
        return torch.from_numpy(np.ascontiguousarray(image[None])), target
