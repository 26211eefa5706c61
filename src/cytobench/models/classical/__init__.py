"""Classical (non-learned) particle locators: TrackPy, intensity centroid, Gaussian MLE fit.

All share :class:`Locator`: ``locator(images)`` takes an (N, H, W) stack or a list of (H, W)
images and returns one prediction dict of NumPy arrays per image (``boxes`` (M, 4) float32
xyxy, ``scores`` (M,), ``labels`` (M,) int64, ``keypoints`` (M, 1, 3) float32), positions in
COCO pixel coordinates (pixel centres at ``j + 0.5``), ready for
:class:`cytobench.evaluation.localization.LocalizationEvaluator`.

The FISH signal detector (paper 000, Sec. 3.3, and a LoG option) works per nucleus rather than per
frame and lives in :mod:`cytobench.models.classical.fish_spots`.
"""

from __future__ import annotations

from cytobench.models.classical.base import Locator, make_prediction
from cytobench.models.classical.spot_fit import GaussianFitLocator, IntensityCentroidLocator
from cytobench.models.classical.trackpy_locator import TrackpyLocator

__all__ = [
    "GaussianFitLocator",
    "IntensityCentroidLocator",
    "Locator",
    "TrackpyLocator",
    "make_prediction",
]
