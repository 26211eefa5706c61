"""Sample / target / prediction contracts shared by datasets, models and evaluators.

Keys follow torchvision's detection API so that torchvision models plug in unchanged.
Boxes are ``xyxy`` in absolute pixel coordinates; labels are 1-based (0 is background).
"""

from __future__ import annotations

from typing import Any, TypedDict

from typing_extensions import NotRequired

Tensor = Any  # torch.Tensor or numpy.ndarray: evaluators accept either


class Target(TypedDict):
    """Ground truth of one image.

    Attributes:
        boxes: (N, 4) float, xyxy absolute pixels.
        labels: (N,) int64, 1-based category ids.
        masks: optional (N, H, W) uint8 instance masks.
        keypoints: optional (N, K, 3) float, (x, y, visibility).
        image_id: int, the COCO image id.
        iscrowd: optional (N,) int64.
        area: optional (N,) float, COCO area (mask area when known).
        meta: file name, original size (H, W), pixel size, simulator truth.
    """

    boxes: Tensor
    labels: Tensor
    image_id: int
    masks: NotRequired[Tensor]
    keypoints: NotRequired[Tensor]
    iscrowd: NotRequired[Tensor]
    area: NotRequired[Tensor]
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
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: NotRequired[Tensor]
    keypoints: NotRequired[Tensor]
    embeddings: NotRequired[Tensor]
