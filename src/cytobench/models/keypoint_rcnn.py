"""torchvision Keypoint R-CNN as a particle localiser (QD paper Sec. 4.2-4.3).

One foreground class and one keypoint per object: the keypoint is the particle's trajectory
centroid, the detection score ranks the localisations. Tiny frames (24 x 25 px) are upsampled by
the model's own transform (``min_size``) so that the FPN has enough resolution; the keypoint
head's width and depth are configurable because torchvision's 8 x 512-channel head dominates CPU
time at this scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.models.detection import KeypointRCNN as _TorchvisionKeypointRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

from cytobench.io.checkpoint import load_model_weights
from cytobench.models.rcnn_parts import AcceptsGrayImages, build_anchor_generator, build_resnet_fpn


class KeypointRCNN(AcceptsGrayImages, _TorchvisionKeypointRCNN):
    """torchvision's Keypoint R-CNN that also accepts 1-channel images (repeated to 3 channels)."""


def build_keypoint_rcnn(
    num_classes: int = 2,
    *,
    num_keypoints: int = 1,
    backbone: str = "resnet50",
    trainable_backbone_layers: int = 5,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    keypoint_head_layers: Sequence[int] = (512,) * 8,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
    **kwargs: Any,
) -> KeypointRCNN:
    """Build a Keypoint R-CNN with a ``backbone``-FPN.

    Args:
        num_classes: classes including background (2 for "particle").
        num_keypoints: keypoints per object (1: the centroid).
        min_size / max_size: internal resize (e.g. 96 / 100 turns a 24 x 25 frame into 96 x 100).
        keypoint_head_layers: channels of each 3x3 conv of the keypoint head (torchvision: 8 x 512).
        weights_path: local detector checkpoint, e.g. torchvision's COCO ``keypointrcnn_resnet50_fpn``
            weights saved to disk; tensors whose shapes differ (the 17-keypoint predictor, the class
            heads) are skipped and keep their fresh initialisation.
        backbone_weights_path: local ResNet (ImageNet) state dict.
        **kwargs: passed to torchvision's ``KeypointRCNN`` (rpn_*, box_*, keypoint_* settings).

    Other arguments as in :func:`cytobench.models.faster_rcnn.build_faster_rcnn`.
    """
    pretrained = bool(backbone_weights_path or weights_path)
    fpn = build_resnet_fpn(backbone, trainable_backbone_layers, pretrained, backbone_weights_path)
    layers = tuple(int(c) for c in keypoint_head_layers)
    model = KeypointRCNN(
        fpn,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean) if image_mean else None,
        image_std=list(image_std) if image_std else None,
        rpn_anchor_generator=build_anchor_generator(anchor_sizes, aspect_ratios),
        keypoint_head=KeypointRCNNHeads(fpn.out_channels, layers),
        keypoint_predictor=KeypointRCNNPredictor(layers[-1], num_keypoints),
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        **kwargs,
    )
    if weights_path:
        load_model_weights(model, weights_path)
    return model
