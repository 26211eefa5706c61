"""Building blocks of SEU-Net: the squeeze-and-excitation gate and the SE convolution block.

Every block takes a ``valid`` mask (B, 1, H, W) of the pixels that belong to an image (1) rather than to the
padding a batch of unequal or odd sizes needs (0). The squeeze averages over valid pixels only and the
block's output is zeroed outside them, so padding acts exactly like a convolution's own zero padding and an
image's output does not depend on how much its batch was padded (in eval mode, where batch norm uses its
running statistics). ``valid=None`` means every pixel is valid and skips the masking (it would only cost
memory for the backward pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = ["SEConvBlock", "SqueezeExcitation", "masked_mean"]


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per-channel mean of (B, C, H, W) ``x`` over the pixels where ``valid`` (B, 1, H, W) is 1 -> (B, C, 1, 1).

    An image without any valid pixel gets a zero mean (no division by zero).
    """
    if valid is None:
        return x.mean(dim=(2, 3), keepdim=True)
    total = (x * valid).sum(dim=(2, 3), keepdim=True)
    return total / valid.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)


class SqueezeExcitation(nn.Module):
    """Channel recalibration of Hu et al. (SENet), thesis Sec. 4.2.1.

    Squeeze: global average pooling of each channel. Excitation: ``sigmoid(W2 relu(W1 s))`` with a bottleneck
    of ``max(1, channels // reduction)`` units, giving one gate in (0, 1) per channel that rescales the input.

    Args:
        channels: C of the (B, C, H, W) input.
        reduction: bottleneck ratio r (16 in the SENet paper).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"SqueezeExcitation needs channels, reduction >= 1; got {channels}, {reduction}")
        hidden = max(1, channels // reduction)
        self.squeeze_fc = nn.Conv2d(channels, hidden, 1)  # 1x1 convolutions on (B, C, 1, 1) = linear layers
        self.excite_fc = nn.Conv2d(hidden, channels, 1)

    def gate(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, 1, 1) channel gates in (0, 1) for (B, C, H, W) ``x`` (squeezed over ``valid`` pixels)."""
        return torch.sigmoid(self.excite_fc(F.relu(self.squeeze_fc(masked_mean(x, valid)))))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.gate(x, valid)


class SEConvBlock(nn.Module):
    """Two (3x3 convolution, batch norm, ReLU) layers followed by a squeeze-and-excitation gate.

    The U-Net double convolution of every encoder and decoder level; the SE gate on its output is where
    SEU-Net differs from U-Net (thesis Sec. 4.2.1: SE blocks in both the encoding and decoding paths).

    Args:
        in_channels / out_channels: channels of the input and of the output.
        se_reduction: bottleneck ratio of the SE gate.
    """

    def __init__(self, in_channels: int, out_channels: int, se_reduction: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)])
        self.se = SqueezeExcitation(out_channels, se_reduction)
        for conv in self.convs:  # He init suits the ReLU stack
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H, W), zero outside ``valid`` (B, 1, H, W) when given."""
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)), inplace=True)  # in place: batch norm's backward needs its input only
            if valid is not None:  # keep the padding at zero for the next convolution
                x = x * valid
        return self.se(x, valid)
