"""R-FCN (Dai et al., NIPS 2016, "Object Detection via Region-based Fully Convolutional Networks").

Built from torchvision parts: a ResNet trunk, torchvision's region proposal network, a
position-sensitive RoI head (:class:`PSRoIHead`) and ``GeneralizedRCNNTransform`` for resize and
normalisation. What follows the paper:

- the RPN runs on conv4 (ResNet ``layer3``, stride 16) with 3 aspect ratios, sharing it with the head;
- conv5 (``layer4``) keeps stride 16 with the "hole" (a trous) trick: its stride is removed and its
  later 3x3 convolutions dilated by 2; a randomly initialised 1x1 convolution (1024-d) + ReLU follows;
- a 1x1 convolution gives k*k*(C+1) position-sensitive score maps, another k*k*4 class-agnostic box
  maps; position-sensitive RoI pooling over a k x k grid (bin (i, j) of class c reads only map
  (c, i, j)); the k*k bins vote by averaging; softmax over the C+1 classes;
- the loss is cross-entropy + smooth L1 on positive RoIs (IoU >= 0.5 with a ground-truth box), lambda 1;
- at test time 300 proposals per image and per-class NMS of the class-agnostic boxes.

Simplified or changed:

- no online hard example mining (the paper keeps the 128 RoIs of highest loss out of 300): a random
  balanced sample of ``box_batch_size_per_image`` RoIs (``box_positive_fraction`` positive) as Faster
  R-CNN, the ground-truth boxes being proposals too;
- position-sensitive RoI *align* (bilinear samples per bin, torchvision's ``ps_roi_align``) by default;
  ``pooling="pool"`` gives the paper's position-sensitive RoI pooling (``ps_roi_pool``);
- ResNet-18/34/50/101 (the paper: ResNet-101); ``use_layer4=False`` lets the head read conv4 directly
  (lighter, no conv5); ``output_stride=8`` (not in the paper) dilates conv4 too, for objects about
  one stride-16 cell wide; per-class NMS IoU 0.5 by default (the paper: 0.3) as cytobench's Faster R-CNN;
- the loss normalisation follows torchvision's Faster R-CNN (smooth L1 with beta 1/9 summed over
  positives, divided by the number of sampled RoIs), so losses of the two detectors compare.

As everywhere in cytobench, ``num_classes`` counts the background (dataset categories + 1); predicted
labels are 1..num_classes-1. Weights load only from local files (``weights_path``: a whole R-FCN;
``backbone_weights_path``: an ImageNet ResNet state dict, or a Faster R-CNN's ``backbone.body``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import ps_roi_align, ps_roi_pool
from torchvision.ops.misc import FrozenBatchNorm2d

from cytobench.io.checkpoint import load_model_weights
from cytobench.models.rcnn_parts import expand_gray

__all__ = ["RFCN", "PSRoIHead", "ResNetTrunk", "build_rfcn", "rfcn_loss"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDES = (16, 8)  # of both conv4 and the dilated conv5


def _dilate_stage(stage: nn.Sequential, first: int, later: int) -> None:
    """Keep a ResNet stage at its input's stride: its strided convolutions lose the stride and its 3x3
    convolutions get dilation ``first`` (first block) and ``later`` (the others), as torchvision's
    ``replace_stride_with_dilation`` does, also for BasicBlock stages, which torchvision does not dilate."""
    for index, block in enumerate(stage):
        for layer in block.modules():
            if not isinstance(layer, nn.Conv2d):
                continue
            layer.stride = (1, 1)
            if layer.kernel_size == (3, 3):
                dilation = first if index == 0 else later
                layer.dilation = (dilation, dilation)
                layer.padding = (dilation, dilation)


class ResNetTrunk(nn.Module):
    """A ResNet without its classifier: ``forward(x) -> (conv4, conv5)``, both at ``output_stride``.

    Parameter names are those of torchvision's ResNet (``conv1``, ``layer1`` ...), so an ImageNet state
    dict loads as it is. Without ``layer4`` (``use_layer4=False``), conv5 is conv4. Stride 16 (the
    paper's) dilates conv5 only; stride 8 also dilates conv4 (``layer3``), for objects one or two
    stride-16 cells wide (chromosomes: 10-16 px), at about twice the trunk's cost.
    """

    def __init__(
        self,
        name: str,
        use_layer4: bool = True,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown R-FCN backbone {name!r}; use one of {RESNETS}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"R-FCN output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.stride = output_stride
        net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        if output_stride == 8:
            _dilate_stage(net.layer3, 1, 2)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.conv4_channels = self.conv5_channels = self.layer3[-1].conv1.in_channels
        self.layer4: nn.Module | None = None
        if use_layer4:
            _dilate_stage(net.layer4, *((2, 4) if output_stride == 8 else (1, 2)))
            self.layer4 = net.layer4
            self.conv5_channels = net.fc.in_features

    def freeze(self, trainable_layers: int) -> None:
        """Train only the last ``trainable_layers`` of (conv1 + bn1, layer1, ..., layer4); 0-5."""
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_backbone_layers must lie in [0, 5], got {trainable_layers}")
        stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if "conv1" in stages:
            stages.append("bn1")
        for name, parameter in self.named_parameters():
            if not any(name.startswith(stage + ".") for stage in stages):
                parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        conv4 = self.layer3(self.layer2(self.layer1(x)))
        conv5 = self.layer4(conv4) if self.layer4 is not None else conv4
        return conv4, conv5


def rfcn_loss(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Softmax cross-entropy over all sampled RoIs and smooth L1 of the class-agnostic box deltas of the
    positive ones (label > 0), normalised by the number of sampled RoIs (torchvision's convention).

    Args:
        class_logits: (R, C+1) voted class scores.
        box_deltas: (R, 4) voted box deltas.
        labels: (R,) int64, 0 = background.
        regression_targets: (R, 4) encoded ground-truth boxes of the RoIs.
    """
    positive = labels > 0
    box_loss = F.smooth_l1_loss(
        box_deltas[positive], regression_targets[positive], beta=1 / 9, reduction="sum"
    ) / max(1, labels.numel())
    return {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box_loss}


class PSRoIHead(nn.Module):
    """R-FCN's detection head on conv5: position-sensitive score / box maps, pooling, voting, loss, NMS.

    Args:
        in_channels: channels of the feature map it reads (conv5).
        num_classes: classes including background (C + 1).
        k: the k x k grid of position-sensitive bins (paper: 7).
        mid_channels: the 1x1 reduction before the score maps (paper: 1024); 0 for none.
        pooling: ``"align"`` (``ps_roi_align``) or ``"pool"`` (``ps_roi_pool``, the paper's).
        stride: of the feature map in input pixels (the trunk's ``output_stride``).
        sampling_ratio: bilinear samples per bin side for ``"align"`` (<= 0: adaptive).
        fg_iou_thresh / bg_iou_thresh: RoIs at least / below this IoU with a ground-truth box are
            positive / background (paper: 0.5 both).
        batch_size_per_image / positive_fraction: RoIs sampled per image for the loss, and their positive share.
        score_thresh / nms_thresh / detections_per_img: test-time post-processing (per-class NMS).
        bbox_reg_weights: the box coder's weights, torchvision's (10, 10, 5, 5) by default.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        k: int = 7,
        mid_channels: int = 1024,
        pooling: str = "align",
        stride: int = 16,
        sampling_ratio: int = 2,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        bbox_reg_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("align", "pool"):
            raise ValueError(f"pooling must be 'align' or 'pool', got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
        self.num_classes, self.k, self.pooling, self.sampling_ratio = num_classes, k, pooling, sampling_ratio
        self.spatial_scale = 1.0 / stride
        if mid_channels:
            self.reduce: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, mid_channels, 1), nn.ReLU(inplace=True)
            )
            in_channels = mid_channels
        else:
            self.reduce = nn.Identity()
        # channel (c * k + i) * k + j of a map is bin (i, j) of class c (resp. box coordinate c), the
        # layout that torchvision's position-sensitive pooling reads
        self.cls_maps = nn.Conv2d(in_channels, k * k * num_classes, 1)
        self.box_maps = nn.Conv2d(in_channels, k * k * 4, 1)
        for layer, std in ((self.cls_maps, 0.01), (self.box_maps, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        for layer in self.reduce.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        self.proposal_matcher = det_utils.Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False
        )
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = det_utils.BoxCoder(
            tuple(bbox_reg_weights) if bbox_reg_weights else (10.0, 10.0, 5.0, 5.0)
        )
        self.score_thresh, self.nms_thresh, self.detections_per_img = (
            score_thresh,
            nms_thresh,
            detections_per_img,
        )

    def score_maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, k*k*(C+1), H, W) class score maps and (N, k*k*4, H, W) box maps of a feature map."""
        x = self.reduce(features)
        return self.cls_maps(x), self.box_maps(x)

    def pool(self, maps: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        """Position-sensitive pooling: (R, maps.shape[1] / k^2, k, k), RoIs in input pixels."""
        if self.pooling == "pool":
            return ps_roi_pool(maps, rois, self.k, self.spatial_scale)
        return ps_roi_align(maps, rois, self.k, self.spatial_scale, self.sampling_ratio)

    def vote(
        self, cls_maps: torch.Tensor, box_maps: torch.Tensor, rois: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, C+1) class logits and (R, 4) box deltas: the k x k bins of each RoI averaged."""
        return self.pool(cls_maps, rois).mean(dim=(2, 3)), self.pool(box_maps, rois).mean(dim=(2, 3))

    def select_training_samples(
        self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Sampled RoIs per image (ground-truth boxes added), with their labels and regression targets
        (both concatenated over the images). An image without boxes gives background RoIs only."""
        all_rois, all_labels, all_matched = [], [], []
        for rois, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(rois.dtype)
            rois = torch.cat([rois, gt_boxes])
            if gt_boxes.numel() == 0:
                labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
                matched = torch.zeros_like(rois)
            else:
                index = self.proposal_matcher(box_ops.box_iou(gt_boxes, rois))
                labels = target["labels"][index.clamp(min=0)].to(torch.int64)
                labels[index == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[index == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1  # neither: not sampled
                matched = gt_boxes[index.clamp(min=0)]
            all_rois.append(rois)
            all_labels.append(labels)
            all_matched.append(matched)
        positives, negatives = self.fg_bg_sampler(all_labels)
        sampled_rois, sampled_labels, sampled_matched = [], [], []
        for rois, labels, matched, pos, neg in zip(all_rois, all_labels, all_matched, positives, negatives):
            keep = torch.where(pos | neg)[0]
            sampled_rois.append(rois[keep])
            sampled_labels.append(labels[keep])
            sampled_matched.append(matched[keep])
        regression_targets = self.box_coder.encode(sampled_matched, sampled_rois)
        return sampled_rois, torch.cat(sampled_labels), torch.cat(regression_targets)

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        rois: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: each RoI's one (class-agnostic) box is a candidate for every foreground class with
        that class's softmax score; low scores and tiny boxes dropped, per-class NMS, best ones kept. Each
        detection carries its RoI's softmax without the background (``class_scores``, (N, C), what the
        karyotype pair prior reads)."""
        boxes = self.box_coder.decode_single(box_deltas, torch.cat(rois))
        scores = F.softmax(class_logits, dim=-1)
        counts = [len(r) for r in rois]
        foreground = self.num_classes - 1
        detections = []
        for image_boxes, image_scores, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            image_boxes = box_ops.clip_boxes_to_image(image_boxes, shape)
            cand_boxes = image_boxes[:, None, :].expand(-1, foreground, 4).reshape(-1, 4)
            cand_scores = image_scores[:, 1:].reshape(-1)
            cand_labels = torch.arange(1, self.num_classes, device=boxes.device).repeat(len(image_boxes))
            cand_rois = torch.arange(len(image_boxes), device=boxes.device).repeat_interleave(foreground)
            keep = torch.where(cand_scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(cand_boxes[keep], min_size=1e-2)]
            keep = keep[
                box_ops.batched_nms(cand_boxes[keep], cand_scores[keep], cand_labels[keep], self.nms_thresh)
            ]
            keep = keep[: self.detections_per_img]
            detections.append(
                {
                    "boxes": cand_boxes[keep],
                    "scores": cand_scores[keep],
                    "labels": cand_labels[keep],
                    "class_scores": image_scores[cand_rois[keep], 1:],
                }
            )
        return detections

    def forward(
        self,
        features: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Detections (eval) or losses (training) of the proposals on ``features`` (at ``stride``)."""
        if self.training:
            if targets is None:
                raise ValueError("R-FCN needs targets in training mode")
            proposals, labels, regression_targets = self.select_training_samples(proposals, targets)
        cls_maps, box_maps = self.score_maps(features)
        class_logits, box_deltas = self.vote(cls_maps, box_maps, proposals)
        if self.training:
            return [], rfcn_loss(class_logits, box_deltas, labels, regression_targets)
        return self.postprocess_detections(class_logits, box_deltas, proposals, image_shapes), {}


class RFCN(GeneralizedRCNN):
    """R-FCN: resize / normalise, ResNet trunk, RPN on conv4, :class:`PSRoIHead` on conv5.

    ``model(images, targets)`` returns ``loss_objectness``, ``loss_rpn_box_reg`` (RPN),
    ``loss_classifier`` and ``loss_box_reg`` (head) in training and, in eval, per image ``boxes``
    (M, 4) xyxy in input pixels, ``scores`` (M,) and ``labels`` (M,) in 1..num_classes-1. 1-channel
    images are repeated to 3 channels. Detections carry ``class_scores`` (their RoI's softmax without the
    background; :meth:`PSRoIHead.postprocess_detections`).
    """

    gives_class_scores = True

    def __init__(
        self,
        backbone: ResNetTrunk,
        rpn: RegionProposalNetwork,
        roi_heads: PSRoIHead,
        transform: GeneralizedRCNNTransform,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)

    def forward(  # type: ignore[override]
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("R-FCN needs targets in training mode")
            for index, target in enumerate(targets):
                boxes = target["boxes"]
                if boxes.numel() and not bool((boxes[:, 2:] > boxes[:, :2]).all()):
                    raise ValueError(f"image {index} has a box of zero or negative width or height")
        images = expand_gray(images)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        conv4, conv5 = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, {"conv4": conv4}, targets)
        detections, head_losses = self.roi_heads(conv5, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def build_rfcn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    use_layer4: bool = True,
    output_stride: int = 16,
    trainable_backbone_layers: int = 5,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    k: int = 7,
    mid_channels: int = 1024,
    pooling: str = "align",
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 300,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 128,
    box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
) -> RFCN:
    """Build an R-FCN (random initialisation unless local weights are given).

    Args:
        num_classes: object classes including background (dataset categories + 1).
        backbone: resnet18 / resnet34 / resnet50 / resnet101.
        use_layer4: the head reads a dilated conv5 (``layer4``, the paper's); False: conv4 (lighter).
        output_stride: 16 (the paper's) or 8 (conv4 dilated too: finer maps for thin objects, ~2x cost).
        trainable_backbone_layers: 0-5 ResNet stages to train (5 when training from scratch).
        min_size / max_size: the model's internal resize of each image (torchvision semantics).
        image_mean / image_std: normalisation; ImageNet statistics by default.
        anchor_sizes / aspect_ratios: the RPN's anchors on its one map (every size with every ratio).
        k: position-sensitive grid side (paper: 7).
        mid_channels: the 1x1 reduction of conv5 before the score maps (paper: 1024; 0: none).
        pooling: ``"align"`` (``ps_roi_align``, default) or ``"pool"`` (``ps_roi_pool``, the paper's).
        rpn_*: torchvision's RPN settings; 300 proposals per image at test time as in the paper.
        box_*: the head's sampling (instead of OHEM) and post-processing, see :class:`PSRoIHead`.
        weights_path: local R-FCN checkpoint to start from (mismatched class maps are skipped).
        backbone_weights_path: local ResNet (ImageNet) state dict for the trunk.
    """
    pretrained = bool(backbone_weights_path or weights_path)
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    trunk = ResNetTrunk(backbone, use_layer4, norm_layer, output_stride)
    if backbone_weights_path:
        load_model_weights(trunk, backbone_weights_path)
    trunk.freeze(trainable_backbone_layers)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(trunk.conv4_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction,
        pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
        nms_thresh=rpn_nms_thresh,
    )
    head = PSRoIHead(
        trunk.conv5_channels,
        num_classes,
        k=k,
        mid_channels=mid_channels,
        pooling=pooling,
        stride=trunk.stride,
        fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh,
        batch_size_per_image=box_batch_size_per_image,
        positive_fraction=box_positive_fraction,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
    )
    transform = GeneralizedRCNNTransform(
        min_size,
        max_size,
        list(image_mean) if image_mean else list(IMAGENET_MEAN),
        list(image_std) if image_std else list(IMAGENET_STD),
    )
    model = RFCN(trunk, rpn, head, transform)
    if weights_path:
        load_model_weights(model, weights_path)
    return model
