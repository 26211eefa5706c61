"""torchvision Mask R-CNN (ResNet-FPN): the box-based instance-segmentation baseline (thesis Sec. 5.7).

Differences from torchvision's model, each for cytology images:

* **Any number of channels** (``in_channels``; 2 = the lower and upper brightfield plane): the first
  backbone convolution takes ``in_channels`` inputs. With local weights (``weights_path`` /
  ``backbone_weights_path``, loaded as in :mod:`cytobench.models.faster_rcnn`) the 3-channel kernel is
  loaded first and then averaged over its RGB inputs and repeated, scaled by ``3 / in_channels``, so a
  pretrained network sees the same activation for a grey image whatever the channel count. A 1-channel
  image given to a 3-channel model is repeated (as every cytobench R-CNN); any other mismatch is an error.
* **Input normalisation**: fixed per-channel ``image_mean`` / ``image_std`` when given (ImageNet's for
  ImageNet weights), else each image is standardised per channel on its own
  (:func:`cytobench.models.image_norm.standardize`, as SEU-Net), since microscope exposure varies.
* **Native scale** (``native_scale: true``): no internal resize, so training crops and whole evaluation
  images keep one pixel size (torchvision rescales every image to ``min_size``, which would zoom a 512 px
  crop and a 1024 px image differently); the data config sizes the images. ``false`` keeps torchvision's
  ``min_size`` / ``max_size`` resize.
* **Dense images**: ``box_detections_per_img`` (default 500, torchvision 100) and ``rpn_post_nms_top_n_test``
  raised with it; masks are pasted into the image in chunks and returned binarised as ``(M, H, W)`` uint8
  (probability ``> mask_threshold``, torchvision's 0.5), a quarter of the memory of torchvision's
  ``(M, 1, H, W)`` float probabilities, which at 500 detections on a 1024 px image would be 2 GB.

Contract: train mode ``{"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
"loss_rpn_box_reg"}`` (targets need ``boxes``, ``labels``, ``masks``); eval mode per image ``boxes``,
``scores``, ``labels`` and ``masks`` (:mod:`cytobench.types`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN as _TorchvisionMaskRCNN
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from cytobench.errors import BadInputError
from cytobench.io.checkpoint import load_model_weights
from cytobench.models.image_norm import image_stats, standardize
from cytobench.models.rcnn_parts import build_anchor_generator, build_resnet_fpn

__all__ = ["CytoRCNNTransform", "MaskRCNN", "adapt_first_conv", "build_mask_rcnn"]

PASTE_CHUNK = 64  # masks pasted per step: bounds the float buffer to 64 x H x W


class CytoRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's R-CNN transform with per-image standardisation, native scale and uint8 masks.

    Args:
        min_size / max_size / size_divisible: torchvision's (``min_size`` / ``max_size`` unused at native scale).
        image_mean / image_std: fixed per-channel statistics, or None for per-image standardisation.
        native_scale: skip the resize in training and evaluation.
        mask_threshold: probability above which a pasted mask pixel is foreground.
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: Sequence[float] | None,
        image_std: Sequence[float] | None,
        native_scale: bool = True,
        mask_threshold: float = 0.5,
        size_divisible: int = 32,
    ) -> None:
        super().__init__(min_size, max_size, list(image_mean or []), list(image_std or []), size_divisible)
        self.fixed_stats = image_mean is not None and image_std is not None
        self.native_scale = bool(native_scale)
        self.mask_threshold = float(mask_threshold)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.fixed_stats:
            return super().normalize(image)
        return standardize(image, None, None)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.native_scale:
            return image, target
        return super().resize(image, target)

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return result
        for pred, shape, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], shape, original)
            if "masks" in pred:
                pred["masks"] = self._paste(pred["masks"], pred["boxes"], original)
        return result

    def _paste(self, masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(M, 1, 28, 28) mask probabilities -> (M, H, W) uint8 at ``size``, ``PASTE_CHUNK`` masks at a time."""
        out = torch.zeros((len(masks), *size), dtype=torch.uint8, device=masks.device)
        for start in range(0, len(masks), PASTE_CHUNK):
            stop = start + PASTE_CHUNK
            pasted = paste_masks_in_image(masks[start:stop], boxes[start:stop], size)
            out[start:stop] = (pasted[:, 0] > self.mask_threshold).to(torch.uint8)
        return out


class MaskRCNN(_TorchvisionMaskRCNN):
    """torchvision's Mask R-CNN taking ``in_channels``-channel images (module docstring)."""

    def __init__(self, *args: Any, in_channels: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_channels = int(in_channels)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):  # type: ignore[override]
        fixed = []
        for image in images:
            channels = int(image.shape[0])
            if channels == 1 and self.in_channels == 3:
                image = image.expand(3, -1, -1)
            elif channels != self.in_channels:
                raise BadInputError(
                    "images",
                    f"have {channels} channel(s) but the model takes {self.in_channels} (model.in_channels)",
                )
            fixed.append(image)
        return super().forward(fixed, targets)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs: its kernel averaged over the inputs, repeated and
    scaled by ``conv.in_channels / in_channels`` (the same response to a constant image)."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True) * (conv.in_channels / in_channels)
        new.weight.copy_(mean.expand(-1, in_channels, -1, -1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new


def build_mask_rcnn(
    num_classes: int,
    *,
    in_channels: int = 3,
    backbone: str = "resnet50",
    trainable_backbone_layers: int = 5,
    native_scale: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_detections_per_img: int = 500,
    box_score_thresh: float = 0.05,
    mask_threshold: float = 0.5,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Build a Mask R-CNN with a ``backbone``-FPN (resnet18/34/50/101); random init unless local weights.

    Args:
        num_classes: object classes including background (dataset categories + 1).
        in_channels: image channels (planes); the first convolution is adapted (module docstring).
        trainable_backbone_layers: 0-5 ResNet stages to train (5 when training from scratch).
        native_scale: no internal resize (module docstring); ``min_size`` / ``max_size`` apply otherwise.
        image_mean / image_std: fixed per-channel normalisation (``in_channels`` values each), or None for
            per-image standardisation.
        anchor_sizes: one size per FPN level (5 levels); torchvision's (32..512) by default.
        aspect_ratios: anchor aspect ratios (height / width), shared by all levels.
        box_detections_per_img: most detections per image (dense images: raise it; LIVECell counts up to 2000).
        box_score_thresh: lowest score kept.
        mask_threshold: mask probability threshold of the returned uint8 masks.
        weights_path: local detector checkpoint (e.g. torchvision's COCO ``maskrcnn_resnet50_fpn`` weights
            saved to disk); mismatched heads are skipped.
        backbone_weights_path: local ResNet (ImageNet) state dict for the backbone body.
        **kwargs: passed to torchvision's ``MaskRCNN`` (rpn_*, box_*, mask_* settings).

    Raises:
        BadInputError: ``in_channels`` < 1, or image statistics of another length than ``in_channels``.
    """
    in_channels = int(in_channels)
    if in_channels < 1:
        raise BadInputError("model.in_channels", f"must be >= 1, got {in_channels}")
    image_stats(in_channels, image_mean, image_std)  # refuses bad lengths or one without the other
    pretrained = bool(backbone_weights_path or weights_path)
    fpn = build_resnet_fpn(backbone, trainable_backbone_layers, pretrained, backbone_weights_path)
    detections = int(box_detections_per_img)
    kwargs.setdefault("rpn_post_nms_top_n_test", max(1000, 2 * detections))
    kwargs.setdefault("rpn_pre_nms_top_n_test", max(1000, 2 * detections))
    model = MaskRCNN(
        fpn,
        num_classes=num_classes,
        in_channels=in_channels,
        rpn_anchor_generator=build_anchor_generator(anchor_sizes, aspect_ratios),
        box_detections_per_img=detections,
        box_score_thresh=box_score_thresh,
        **kwargs,
    )
    model.transform = CytoRCNNTransform(
        min_size,
        max_size,
        None if image_mean is None else [float(v) for v in image_mean],
        None if image_std is None else [float(v) for v in image_std],
        native_scale=native_scale,
        mask_threshold=mask_threshold,
    )
    if weights_path:
        load_model_weights(model, weights_path)
    body = model.backbone.body
    body.conv1 = adapt_first_conv(body.conv1, in_channels)
    return model
