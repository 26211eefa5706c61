"""torchvision SSD300-VGG16 and SSDlite320-MobileNetV3 (Liu et al. 2016; Howard et al. 2019) for cytobench.

Assembled from torchvision's public SSD parts (``SSD``, ``DefaultBoxGenerator``, the VGG / MobileNet
feature extractors and heads) rather than its ``ssd300_vgg16`` / ``ssdlite320_mobilenet_v3_large``
builders, so that the input size can change (those fix it at 300 / 320) and nothing is downloaded:
every part starts from random initialisation, unless local weights are given (``weights_path`` for a
whole detector, e.g. torchvision's COCO SSD ``.pth`` saved to disk, mismatched class heads skipped;
``backbone_weights_path`` for an ImageNet ``vgg16`` / ``mobilenet_v3_large`` state dict).

As everywhere in cytobench, ``num_classes`` counts the background (dataset categories + 1), which is
what torchvision's SSD expects; predicted labels are 1..num_classes-1. Training returns
``loss_classifier`` (softmax with 3:1 hard negative mining) and ``loss_box_reg`` (smooth L1 over
matched default boxes), torchvision's ``classification`` / ``bbox_regression`` renamed to the
``loss_*`` names the trainer logs for every detector.

SSDlite normalises with batch norm throughout (torchvision's eps 0.001, momentum 0.03) and its deepest
maps are 1x1 to 3x3, so batches of a few images give noisy statistics: a model that fits its training
images in train mode can predict far worse in eval mode (running statistics). Train it with batches of
8 or more, or use ``ssd300_vgg16``, which has no batch norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models import vgg as tv_vgg
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection._utils import retrieve_out_channels
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD as _TorchvisionSSD
from torchvision.models.detection.ssd import SSDFeatureExtractorVGG, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead
from torchvision.ops import boxes as box_ops

from cytobench.io.checkpoint import load_model_weights
from cytobench.models.rcnn_parts import AcceptsGrayImages

__all__ = ["SSD", "SSD_VARIANTS", "build_ssd"]

SSD_VARIANTS = ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16")

# Per variant, torchvision's recipe: input side, normalisation (VGG's ImageNet features expect 0-255
# inputs minus the mean; MobileNet [-1, 1]), NMS IoU and candidates kept per image before NMS.
_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "ssd300_vgg16": {
        "size": 300,
        "image_mean": [0.48235, 0.45882, 0.40784],
        "image_std": [1.0 / 255.0] * 3,
        "nms_thresh": 0.45,
        "topk_candidates": 400,
    },
    "ssdlite320_mobilenet_v3_large": {
        "size": 320,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "nms_thresh": 0.55,
        "topk_candidates": 300,
    },
}
VGG_MIN_SIDE = 268  # below it SSD300's last 3x3 (unpadded) extra layers have nothing left to convolve
_VGG_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]  # SSD300's default-box scales (fraction of side)
_VGG_STEPS_300 = [8, 16, 32, 64, 100, 300]  # SSD300's default-box tiling, valid for 300 x 300 only


class SSD(AcceptsGrayImages, _TorchvisionSSD):
    """torchvision's SSD that accepts 1-channel images, names its losses ``loss_*`` and gives each detection
    its default box's softmax scores (``class_scores``, (N, num_classes - 1), background left out; what
    the karyotype pair prior reads, :mod:`cytobench.models.karyotype_cell`)."""

    gives_class_scores = True

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        out = super().forward(images, targets)
        if self.training:
            return {"loss_classifier": out["classification"], "loss_box_reg": out["bbox_regression"]}
        return out

    def postprocess_detections(
        self,
        head_outputs: dict[str, torch.Tensor],
        image_anchors: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """torchvision's post-processing (per class: score threshold, top-k, then NMS per class), with the
        default box of each detection tracked for its ``class_scores``."""
        all_scores = F.softmax(head_outputs["cls_logits"], dim=-1)
        num_classes = all_scores.size(-1)
        detections = []
        for deltas, scores, anchors, shape in zip(
            head_outputs["bbox_regression"], all_scores, image_anchors, image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(deltas, anchors), shape)
            sources, labels, kept_scores = [], [], []
            for label in range(1, num_classes):
                candidates = torch.where(scores[:, label] > self.score_thresh)[0]
                top, order = scores[candidates, label].topk(
                    det_utils._topk_min(scores[candidates, label], self.topk_candidates, 0)
                )
                sources.append(candidates[order])
                kept_scores.append(top)
                labels.append(torch.full_like(top, label, dtype=torch.int64))
            source, image_scores, image_labels = torch.cat(sources), torch.cat(kept_scores), torch.cat(labels)
            keep = box_ops.batched_nms(boxes[source], image_scores, image_labels, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            detections.append(
                {
                    "boxes": boxes[source[keep]],
                    "scores": image_scores[keep],
                    "labels": image_labels[keep],
                    "class_scores": scores[source[keep], 1:],
                }
            )
        return detections


def _freeze_leading_stages(features: nn.Sequential, stage_starts: list[int], trainable: int | None) -> None:
    """Freeze all but the last ``trainable`` stages of ``features`` (None: train everything)."""
    if trainable is None:
        return
    if not 0 <= trainable <= len(stage_starts):
        raise ValueError(f"trainable_backbone_layers must lie in [0, {len(stage_starts)}], got {trainable}")
    freeze_before = len(features) if trainable == 0 else stage_starts[len(stage_starts) - trainable]
    for layer in features[:freeze_before]:
        layer.requires_grad_(False)


def _vgg16_extractor(
    backbone_weights_path: str | Path | None, trainable_layers: int | None
) -> SSDFeatureExtractorVGG:
    """SSD300's VGG16 (conv4_3, atrous fc6/fc7 and extra layers); the conv layers only, no classifier."""
    trunk = nn.Module()  # holds ``features`` so that torchvision's vgg16 state dict keys fit as they are
    trunk.features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
    for layer in trunk.features.modules():  # torchvision's VGG initialisation
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    if backbone_weights_path:
        load_model_weights(trunk, backbone_weights_path)
    pools = [i for i, layer in enumerate(trunk.features) if isinstance(layer, nn.MaxPool2d)]
    _freeze_leading_stages(trunk.features, [0, *pools[:-1]], trainable_layers)
    return SSDFeatureExtractorVGG(trunk.features, highres=False)


def _mobilenet_extractor(
    backbone_weights_path: str | Path | None, trainable_layers: int | None, reduced_tail: bool
) -> SSDLiteFeatureExtractorMobileNet:
    """SSDlite's MobileNetV3-Large: maps at the C4 expansion layer (stride 16), the last layer, 4 extras."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    net = mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail)
    if backbone_weights_path:
        load_model_weights(net, backbone_weights_path)
    else:  # torchvision's SSDlite recipe re-initialises a backbone trained from scratch
        for layer in net.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.03)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    features = net.features
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    stage_starts = [0, *strided, len(features) - 1]
    _freeze_leading_stages(features, stage_starts, trainable_layers)
    return SSDLiteFeatureExtractorMobileNet(features, stage_starts[-2], norm_layer)


def build_ssd(
    num_classes: int,
    *,
    variant: str = "ssdlite320_mobilenet_v3_large",
    size: int | Sequence[int] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    detections_per_img: int = 100,
    score_thresh: float = 0.01,
    nms_thresh: float | None = None,
    topk_candidates: int | None = None,
    anchor_scales: Sequence[float] | None = None,
    trainable_backbone_layers: int | None = None,
    reduced_tail: bool | None = None,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
    **kwargs: Any,
) -> SSD:
    """Build an SSD detector (random initialisation unless local weights are given).

    Args:
        num_classes: object classes including background (dataset categories + 1).
        variant: ``"ssdlite320_mobilenet_v3_large"`` (SSDlite head, 6 maps from stride 16) or
            ``"ssd300_vgg16"`` (SSD300: conv4_3 + atrous fc7 + 4 extra layers).
        size: the fixed input size every image is resized to (aspect ratio not kept; boxes are mapped
            back to the input): one side or ``(W, H)``; 320 / 300 by default. ``ssd300_vgg16`` needs at
            least 268 pixels per side.
        image_mean / image_std: normalisation; the variant's (torchvision's) by default.
        detections_per_img: detections kept per image after NMS.
        score_thresh: detections scored below it are dropped.
        nms_thresh: per-class NMS IoU; the variant's default (0.55 SSDlite, 0.45 SSD300) when None.
        topk_candidates: candidates kept per class before NMS; the variant's default (300 / 400) when None.
        anchor_scales: default-box scales as fractions of the image side, one per map plus one (7);
            torchvision's by default (SSDlite: 0.2..0.95 evenly, SSD300: 0.07, 0.15, 0.33 ... 1.05).
        trainable_backbone_layers: backbone stages to train counted from the top (VGG 0-5, MobileNet 0-6);
            None trains all.
        reduced_tail: MobileNetV3 with its last stage halved (torchvision's choice from scratch); by default
            on without local weights and off with them (ImageNet / COCO weights have the full tail).
        weights_path: local detector checkpoint to start from.
        backbone_weights_path: local ImageNet ``vgg16`` / ``mobilenet_v3_large`` state dict.
        **kwargs: passed to torchvision's ``SSD`` (``iou_thresh``, ``positive_fraction``).

    Raises:
        ValueError: an unknown variant, a size too small for it, or not 7 anchor scales.
    """
    if variant not in _VARIANT_DEFAULTS:
        raise ValueError(f"unknown SSD variant {variant!r}; use one of {SSD_VARIANTS}")
    if anchor_scales is not None and len(anchor_scales) != 7:
        raise ValueError(
            f"anchor_scales needs 7 values (one per feature map, plus one), got {len(anchor_scales)}"
        )
    defaults = _VARIANT_DEFAULTS[variant]
    side = defaults["size"] if size is None else size
    width, height = (int(side), int(side)) if isinstance(side, int) else (int(side[0]), int(side[1]))
    if variant == "ssd300_vgg16":
        if min(width, height) < VGG_MIN_SIDE:
            raise ValueError(
                f"ssd300_vgg16 needs an input size of at least {VGG_MIN_SIDE}, got {width}x{height}"
            )
        backbone: nn.Module = _vgg16_extractor(backbone_weights_path, trainable_backbone_layers)
        anchors = DefaultBoxGenerator(
            [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            scales=list(anchor_scales) if anchor_scales else _VGG_SCALES,
            # SSD300's tiling steps hold for 300 x 300; other sizes tile each map evenly (steps from its size)
            steps=_VGG_STEPS_300 if (width, height) == (300, 300) else None,
        )
    else:
        pretrained = bool(weights_path or backbone_weights_path)
        tail = (not pretrained) if reduced_tail is None else reduced_tail
        backbone = _mobilenet_extractor(backbone_weights_path, trainable_backbone_layers, tail)
        scales = {"scales": list(anchor_scales)} if anchor_scales else {"min_ratio": 0.2, "max_ratio": 0.95}
        anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], **scales)
    out_channels = retrieve_out_channels(backbone, (width, height))
    num_anchors = anchors.num_anchors_per_location()
    if variant == "ssd300_vgg16":
        head: nn.Module = SSDHead(out_channels, num_anchors, num_classes)
    else:
        head = SSDLiteHead(
            out_channels, num_anchors, num_classes, partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        )
    model = SSD(
        backbone,
        anchors,
        (width, height),
        num_classes,
        image_mean=list(image_mean) if image_mean else defaults["image_mean"],
        image_std=list(image_std) if image_std else defaults["image_std"],
        head=head,
        score_thresh=score_thresh,
        nms_thresh=defaults["nms_thresh"] if nms_thresh is None else nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=defaults["topk_candidates"] if topk_candidates is None else topk_candidates,
        **kwargs,
    )
    if weights_path:
        load_model_weights(model, weights_path)
    return model
