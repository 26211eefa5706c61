"""SEU-Net's encoder and decoder: a U-Net of :class:`~cytobench.models.seunet.blocks.SEConvBlock` levels.

Level ``l`` (0 = full resolution) has ``width * 2**l`` channels; the encoder halves the resolution ``depth``
times (2x2 max pooling), a decoder doubles it back (2x2 transposed convolution) and concatenates the
encoder's feature map of the same level (the skip connection) before its block. Inputs must have sides
divisible by ``2**depth`` (:class:`~cytobench.models.seunet.model.SEUNet` pads them); ``valids`` are the
per-level masks of :func:`level_masks`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cytobench.models.seunet.blocks import SEConvBlock

__all__ = ["SEUNetDecoder", "SEUNetEncoder", "level_masks"]


def level_masks(valid: torch.Tensor, depth: int) -> list[torch.Tensor | None]:
    """The (B, 1, H, W) valid mask at every level 0..depth: a pooled pixel is valid if any of its pixels is.

    All None when every pixel is valid (no padding: the blocks skip the masking).
    """
    if bool(valid.all()):
        return [None] * (depth + 1)
    masks = [valid]
    for _ in range(depth):
        masks.append(F.max_pool2d(masks[-1], 2))
    return masks


class SEUNetEncoder(nn.Module):
    """Contracting path: ``depth + 1`` SE blocks, max pooling between them.

    Args:
        in_channels: image channels.
        width: channels of level 0.
        depth: number of downsamplings.
        se_reduction: SE bottleneck ratio.
    """

    def __init__(self, in_channels: int, width: int, depth: int, se_reduction: int) -> None:
        super().__init__()
        self.channels = [width * 2**level for level in range(depth + 1)]
        inputs = [in_channels, *self.channels[:-1]]
        self.blocks = nn.ModuleList(
            SEConvBlock(cin, cout, se_reduction) for cin, cout in zip(inputs, self.channels)
        )

    def forward(self, x: torch.Tensor, valids: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """(B, C, H, W) -> the feature maps of levels 0..depth (level l: (B, width * 2**l, H / 2**l, W / 2**l))."""
        features = []
        for level, block in enumerate(self.blocks):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x, valids[level])
            features.append(x)
        return features


class SEUNetDecoder(nn.Module):
    """Expanding path ending in a 1x1 convolution to ``out_channels`` logits (one per head it serves).

    Args:
        channels: the encoder's channels per level (:attr:`SEUNetEncoder.channels`).
        out_channels: logit maps produced.
        se_reduction: SE bottleneck ratio.
    """

    def __init__(self, channels: list[int], out_channels: int, se_reduction: int) -> None:
        super().__init__()
        levels = range(len(channels) - 2, -1, -1)  # from the level under the bottom up to level 0
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in levels
        )
        self.blocks = nn.ModuleList(SEConvBlock(2 * channels[i], channels[i], se_reduction) for i in levels)
        self.classifier = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, features: list[torch.Tensor], valids: list[torch.Tensor | None]) -> torch.Tensor:
        """Encoder features of levels 0..depth -> (B, out_channels, H, W) logits."""
        x = features[-1]
        for step, (up, block) in enumerate(zip(self.ups, self.blocks)):
            level = len(features) - 2 - step
            x = up(x)
            if valids[level] is not None:  # the transposed convolution's bias would leak into the padding
                x = x * valids[level]
            x = block(torch.cat([features[level], x], dim=1), valids[level])
        return self.classifier(x)
