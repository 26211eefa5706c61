"""torchvision Faster R-CNN with an FPN ResNet backbone: the baseline detector of cytobench.

Weights load only from local files (no hub downloads): ``weights_path`` for a whole detector
(e.g. torchvision's COCO ``fasterrcnn_resnet50_fpn`` .pth saved to disk; mismatched heads are
skipped) and ``backbone_weights_path`` for an ImageNet ResNet state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.models.detection import FasterRCNN as _TorchvisionFasterRCNN

from cytobench.io.checkpoint import load_model_weights
from cytobench.models.rcnn_parts import AcceptsGrayImages, build_anchor_generator, build_resnet_fpn


class FasterRCNN(AcceptsGrayImages, _TorchvisionFasterRCNN):
    """torchvision's Faster R-CNN that also accepts 1-channel images (repeated to 3 channels)."""


def build_faster_rcnn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    trainable_backbone_layers: int = 5,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Build a Faster R-CNN with a ``backbone``-FPN (resnet18/34/50/101).

    Args:
        num_classes: object classes including background (dataset categories + 1).
        trainable_backbone_layers: 0-5 ResNet stages to train (5 when training from scratch).
        min_size / max_size: the model's internal resize of each image (torchvision semantics).
        image_mean / image_std: normalisation; ImageNet statistics by default.
        anchor_sizes: one size per FPN level (5 levels); torchvision's (32..512) by default.
        aspect_ratios: anchor aspect ratios (height / width), shared by all levels.
        weights_path: local detector checkpoint to start from.
        backbone_weights_path: local ResNet (ImageNet) state dict for the backbone body.
        **kwargs: passed to torchvision's ``FasterRCNN`` (rpn_*, box_* settings).
    """
    pretrained = bool(backbone_weights_path or weights_path)
    fpn = build_resnet_fpn(backbone, trainable_backbone_layers, pretrained, backbone_weights_path)
    model = FasterRCNN(
        fpn,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean) if image_mean else None,
        image_std=list(image_std) if image_std else None,
        rpn_anchor_generator=build_anchor_generator(anchor_sizes, aspect_ratios),
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        **kwargs,
    )
    if weights_path:
        load_model_weights(model, weights_path)
    return model
