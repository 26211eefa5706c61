"""The :class:`Locator` base shared by all classical particle locators, and their prediction dicts.

Every locator maps images to cytobench predictions (:class:`cytobench.types.Prediction` with NumPy
arrays): ``boxes`` (M, 4) float32 xyxy, ``scores`` (M,) float32, ``labels`` (M,) int64 (all 1) and
``keypoints`` (M, 1, 3) float32 ``(x, y, 1)``, in the COCO pixel convention (pixel (row i, col j)
covers ``[j, j+1) x [i, i+1)``). Scores are unnormalised; the localisation metrics use their ranking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np


def as_image(image: Any, index: int = 0) -> np.ndarray:
    """One image as a finite (H, W) float64 array; a leading channel axis of size 1 is dropped.

    Raises:
        ValueError: naming ``index`` if the image is not 2D or holds NaN / inf.
    """
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image {index}: expected a non-empty (H, W) array, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"image {index}: contains NaN or infinite values")
    return arr


def as_image_list(images: Any) -> list[np.ndarray]:
    """(N, H, W) / (N, 1, H, W) array or a sequence of (H, W) images -> list of (H, W) float64."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W) or a list of (H, W), got shape {images.shape}")
    return [as_image(img, i) for i, img in enumerate(images)]


def make_prediction(
    xy: np.ndarray, scores: np.ndarray, half_size: np.ndarray | float
) -> dict[str, np.ndarray]:
    """Build one image's prediction dict.

    Args:
        xy: (M, 2) positions (x, y) in COCO pixel coordinates.
        scores: (M,) detection scores.
        half_size: scalar or (M,) half side of the square box in pixels.

    Returns:
        ``{"boxes": (M, 4) float32 xyxy, "scores": (M,) float32, "labels": (M,) int64,
        "keypoints": (M, 1, 3) float32 (x, y, 1)}``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    m = len(xy)
    half = np.broadcast_to(np.asarray(half_size, dtype=np.float64), (m,))[:, None]
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    keypoints = np.concatenate([xy, np.ones((m, 1))], axis=1)[:, None, :]
    return {
        "boxes": boxes.astype(np.float32),
        "scores": np.asarray(scores, dtype=np.float32).reshape(m),
        "labels": np.ones(m, dtype=np.int64),
        "keypoints": keypoints.astype(np.float32),
    }


class Locator(ABC):
    """A classical particle locator: images in, cytobench predictions (NumPy arrays) out."""

    @abstractmethod
    def predict_one(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Locate particles in one (H, W) image; see :func:`make_prediction` for the dict."""

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Locate particles in every image of an (N, H, W) stack or a list of (H, W) images."""
        return [self.predict_one(img) for img in as_image_list(images)]
