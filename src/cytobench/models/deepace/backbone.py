"""DeepACEv2 backbone (Sec. 2.1): a ResNet-FPN that outputs a single pyramid level, and its anchors.

Chromosomes are mostly 32-128 px long, so the paper keeps only the FPN level most of them are assigned
to, ``P3`` (stride 8), built top-down from ``C5, C4, C3``. The wrapper reuses
:func:`cytobench.models.rcnn_parts.build_resnet_fpn` and trims the FPN to the levels the chosen output
needs: finer levels (e.g. ``P2`` at stride 4, which would cost the most compute) and the extra max-pool
level are removed, so the kept map is exactly the paper's ``P3`` (the top-down pathway does not depend
on the finer levels). Note that trimming re-indexes the FPN's ``inner_blocks`` / ``layer_blocks``, so a
whole 5-level torchvision detector checkpoint does not load into these FPN layers (the body does).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from cytobench.models.rcnn_parts import build_resnet_fpn

__all__ = [
    "DEEPACE_ANCHOR_SIZES",
    "DEEPACE_ASPECT_RATIOS",
    "SingleLevelFPN",
    "build_single_level_anchor_generator",
    "build_single_level_fpn",
]

DEEPACE_ANCHOR_SIZES = (32, 64, 96, 128)
DEEPACE_ASPECT_RATIOS = (1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0, 5.0)
_LEVELS = {"P2": 2, "P3": 3, "P4": 4, "P5": 5}


class SingleLevelFPN(nn.Module):
    """A trimmed ResNet-FPN whose forward returns one feature map ``{"0": P_k}``.

    Args:
        fpn: a 5-level ``BackboneWithFPN`` from :func:`build_resnet_fpn` (body returns ``layer1..layer4``);
            it is modified in place.
        level: output level ``"P2"``..``"P5"``; ``P_k`` has stride ``2**k`` (``P3``: stride 8).

    Attributes:
        out_channels: channels of the output map (256).
        stride: stride of the output map relative to the input image.
    """

    def __init__(self, fpn: BackboneWithFPN, level: str = "P3") -> None:
        super().__init__()
        if level not in _LEVELS:
            raise ValueError(f"fpn level must be one of {sorted(_LEVELS)}, got {level!r}")
        k = _LEVELS[level]
        first = k - 2  # index of C_k among (C2, C3, C4, C5) = (layer1, .., layer4)
        fpn.body.return_layers = {f"layer{i}": str(i - 1) for i in range(k - 1, 5)}
        fpn.fpn.inner_blocks = nn.ModuleList(list(fpn.fpn.inner_blocks)[first:])
        fpn.fpn.layer_blocks = nn.ModuleList(list(fpn.fpn.layer_blocks)[first:])
        fpn.fpn.extra_blocks = None
        self.body = fpn.body
        self.fpn = fpn.fpn
        self.out_channels: int = fpn.out_channels
        self.level = level
        self.stride = 2**k

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Compute the single output level.

        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            ``{"0": (B, 256, ceil(H / stride), ceil(W / stride))}``.
        """
        levels = self.fpn(self.body(x))
        return OrderedDict([("0", next(iter(levels.values())))])


def build_single_level_fpn(
    backbone: str = "resnet101",
    level: str = "P3",
    trainable_layers: int = 5,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> SingleLevelFPN:
    """Build DeepACEv2's single-level ResNet-FPN backbone.

    Args:
        backbone: ``resnet18/34/50/101/152``.
        level: FPN output level; ``"P3"`` (stride 8) in the paper.
        trainable_layers: 0-5 ResNet stages to train.
        pretrained: freeze batch-norm statistics (as for ImageNet weights).
        weights_path: optional local ResNet (ImageNet) state dict for the body.

    Returns:
        A :class:`SingleLevelFPN` with ``out_channels == 256``.
    """
    fpn = build_resnet_fpn(backbone, trainable_layers, pretrained or bool(weights_path), weights_path)
    return SingleLevelFPN(fpn, level)


def build_single_level_anchor_generator(
    sizes: Sequence[int] = DEEPACE_ANCHOR_SIZES, aspect_ratios: Sequence[float] = DEEPACE_ASPECT_RATIOS
) -> AnchorGenerator:
    """All anchor sizes and aspect ratios (height / width) on the one feature level.

    The paper's defaults (areas 32^2..128^2, ratios 1:5..5:1) give 4 x 9 = 36 anchors per location.
    """
    return AnchorGenerator(sizes=(tuple(int(s) for s in sizes),), aspect_ratios=(tuple(aspect_ratios),))
