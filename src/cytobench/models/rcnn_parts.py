"""Pieces shared by the torchvision R-CNN family of cytobench (backbone, anchors, gray input)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from cytobench.io.checkpoint import load_model_weights

DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)


def expand_gray(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """(C, H, W) images with 1-channel ones repeated to 3 channels (a view, no copy)."""
    return [img.expand(3, -1, -1) if img.shape[0] == 1 else img for img in images]


class AcceptsGrayImages:
    """Mixin for a torchvision ``GeneralizedRCNN``: 1-channel images are repeated to 3 channels."""

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        return super().forward(expand_gray(images), targets)  # type: ignore[misc]


def build_resnet_fpn(
    backbone: str, trainable_layers: int, pretrained: bool, weights_path: str | Path | None = None
) -> BackboneWithFPN:
    """A ResNet-FPN backbone (5 levels, 256 channels), optionally loaded from a local ResNet state dict.

    As torchvision does, batch-norm statistics are frozen only when they come from pretrained
    weights; a backbone trained from scratch gets real batch norm.
    """
    fpn = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        trainable_layers=trainable_layers,
        norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d,
    )
    if weights_path:
        load_model_weights(fpn.body, weights_path)
    return fpn


def build_anchor_generator(sizes: Sequence[int] | None, aspect_ratios: Sequence[float]) -> AnchorGenerator:
    """One anchor size per FPN level, the same aspect ratios (height / width) on every level."""
    sizes = tuple(sizes) if sizes else DEFAULT_ANCHOR_SIZES
    return AnchorGenerator(
        sizes=tuple((s,) for s in sizes), aspect_ratios=(tuple(aspect_ratios),) * len(sizes)
    )
