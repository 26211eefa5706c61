"""A tiny fully convolutional semantic-segmentation model: the reference for the dense-truth contract.

Architecture: input normalisation (per image and channel to zero mean / unit variance, or fixed
``image_mean`` / ``image_std``), ``num_layers`` 3x3 convolutions + ReLU at full resolution with dilations
1, 2, 4, ... (the receptive field doubles per layer; He initialisation), and a 1x1 convolution to class
logits.

Contract (``model(images, targets)``):

* train mode: ``{"loss_semantic": CE}``, the pixel cross-entropy against each target's ``semantic``
  (H, W) class map; pixels equal to ``ignore_index`` are left out, and when a target carries the per-pixel
  map ``weight_key`` (e.g. ``weights``, overlap-aware loss weights) the loss is the weighted mean
  ``sum(w * ce) / sum(w)`` (weight 1 for targets without it).
* eval mode: per image ``{"semantic": (C, H, W) softmax probabilities, "boxes": (0, 4), "scores": (0,),
  "labels": (0,)}`` at the input size.

Images of one batch may differ in size: they are zero-padded to the largest (padded pixels are ignored
by the loss) and the outputs cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cytobench.errors import CytobenchError
from cytobench.models.image_norm import image_stats, standardize

__all__ = ["TinySegNet", "build_tiny_segnet"]


class TinySegNet(nn.Module):
    """Dilated fully convolutional network predicting (C, H, W) class probabilities.

    Args:
        in_channels: image channels (planes).
        num_classes: semantic classes C, background included.
        width: feature channels of every hidden layer.
        num_layers: hidden 3x3 layers (dilation ``2**i`` for layer i).
        image_mean / image_std: per-channel normalisation; None standardises each image on its own.
        ignore_index: target class left out of the loss.
        weight_key: target map of per-pixel loss weights, used when present; None never weights.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        num_layers: int = 4,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        ignore_index: int = 255,
        weight_key: str | None = "weights",
    ) -> None:
        super().__init__()
        if num_classes < 2 or in_channels < 1 or num_layers < 1 or width < 1:
            raise ValueError(
                f"TinySegNet needs num_classes >= 2, in_channels, num_layers and width >= 1; got "
                f"{num_classes}, {in_channels}, {num_layers}, {width}"
            )
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.weight_key = weight_key
        self.features = nn.ModuleList(
            nn.Conv2d(self.in_channels if i == 0 else width, width, 3, padding=2**i, dilation=2**i)
            for i in range(num_layers)
        )
        self.classifier = nn.Conv2d(width, self.num_classes, 1)
        for module in self.modules():  # He init keeps the signal alive through the ReLU stack
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        mean, std = image_stats(self.in_channels, image_mean, image_std)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) in [0, 1] -> normalised (C, H, W) float."""
        if image.dim() != 3 or image.shape[0] != self.in_channels:
            raise ValueError(
                f"TinySegNet expects ({self.in_channels}, H, W) images, got {tuple(image.shape)}"
            )
        return standardize(image, self.image_mean, self.image_std)

    def logits(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, C, Hmax, Wmax) class logits of the zero-padded batch.

        Features are zeroed outside each image after every layer, so an image's logits do not depend on
        the batch it is in (the padding acts like the convolutions' own zero padding).
        """
        x = _pad([self.normalize(img) for img in images], 0.0)
        inside = _pad([img.new_ones((1, *img.shape[-2:])) for img in images], 0.0)
        for conv in self.features:
            x = F.relu(conv(x)) * inside
        return self.classifier(x)

    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        logits = self.logits(images)
        if self.training:
            if targets is None:
                raise ValueError("TinySegNet needs targets in train mode")
            return {"loss_semantic": self.loss(logits, images, targets)}
        out = []
        for i, image in enumerate(images):
            height, width = image.shape[-2:]
            probs = logits[i, :, :height, :width].float().softmax(dim=0)
            out.append(
                {
                    "semantic": probs,
                    "boxes": probs.new_zeros((0, 4)),
                    "scores": probs.new_zeros((0,)),
                    "labels": torch.zeros((0,), dtype=torch.int64, device=probs.device),
                }
            )
        return out

    def loss(
        self, logits: torch.Tensor, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        """Weighted mean pixel cross-entropy over the batch (0 when no pixel counts)."""
        classes, weights = [], []
        for image, target in zip(images, targets):
            semantic = target.get("semantic")
            if semantic is None:
                raise CytobenchError(
                    "TinySegNet: a training target has no 'semantic' map (build the data set with with_semantic=True)"
                )
            if tuple(semantic.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"target 'semantic' {tuple(semantic.shape)} differs from image {tuple(image.shape)}"
                )
            classes.append(semantic.to(torch.int64))
            weight = target.get(self.weight_key) if self.weight_key is not None else None
            weights.append(
                torch.ones_like(semantic, dtype=torch.float32) if weight is None else weight.float()
            )
        semantic = _pad(classes, self.ignore_index)
        weight = _pad(weights, 0.0) * (semantic != self.ignore_index)
        valid = semantic[semantic != self.ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.num_classes):
            raise ValueError(
                f"target classes must lie in [0, {self.num_classes}) or be ignore_index {self.ignore_index}, "
                f"got [{int(valid.min())}, {int(valid.max())}]"
            )
        ce = F.cross_entropy(logits.float(), semantic, ignore_index=self.ignore_index, reduction="none")
        total = weight.sum()
        if total <= 0:
            return logits.sum() * 0.0
        return (ce * weight).sum() / total


def _pad(items: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Stack (..., H, W) tensors, padding each at the bottom / right to the largest H and W."""
    height = max(int(t.shape[-2]) for t in items)
    width = max(int(t.shape[-1]) for t in items)
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in items]
    )


def build_tiny_segnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    extra_classes: int = 0,
    width: int = 16,
    num_layers: int = 4,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    ignore_index: int = 255,
    weight_key: str | None = "weights",
) -> TinySegNet:
    """Build a :class:`TinySegNet`.

    Args:
        num_classes: the data set's classes including background (K + 1).
        in_channels: image channels (planes) C.
        extra_classes: semantic classes beyond the categories (1 for a border class), so that the model
            predicts ``num_classes + extra_classes`` classes (the data set's ``num_semantic_classes``).
        width / num_layers / image_mean / image_std / ignore_index / weight_key: see :class:`TinySegNet`.
    """
    return TinySegNet(
        in_channels=in_channels,
        num_classes=int(num_classes) + int(extra_classes),
        width=width,
        num_layers=num_layers,
        image_mean=image_mean,
        image_std=image_std,
        ignore_index=ignore_index,
        weight_key=weight_key,
    )
