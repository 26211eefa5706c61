"""DeepACEv2 (Xiao et al., chromosome enumeration): the detector and its builder.

A single-level (P3, stride 8) ResNet-FPN Faster R-CNN whose parts are switchable from
:func:`build_deepace`: Hard Negative Anchors Sampling in the RPN (``hnas``), the Template branch
(``template``), the Truncated Normalized Repulsion Loss (``tnrl``) and the post-processing
(``postprocess``: NMS, Soft-NMS or Embedding-Guided NMS). With every switch off it is the paper's
baseline, a plain single-level Faster R-CNN. The training loss (Eq. 12) is the sum of the returned
``loss_*`` entries: ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``
and, when enabled, ``loss_pull`` (alpha-weighted), ``loss_push`` (beta) and ``loss_tnrl`` (gamma).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from cytobench.io.checkpoint import load_model_weights
from cytobench.models.deepace.backbone import (
    DEEPACE_ANCHOR_SIZES,
    DEEPACE_ASPECT_RATIOS,
    build_single_level_anchor_generator,
    build_single_level_fpn,
)
from cytobench.models.deepace.roi_heads import POSTPROCESS_MODES, DeepACERoIHeads
from cytobench.models.deepace.sampler import HNAS_CRITERIA, DeepACERegionProposalNetwork, HardNegativeSampler
from cytobench.models.deepace.template_module import TemplateModule
from cytobench.models.rcnn_parts import AcceptsGrayImages, expand_gray

__all__ = ["DeepACE", "build_deepace"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Extra torchvision settings accepted through ``**kwargs`` of :func:`build_deepace`, with defaults.
_EXTRA_DEFAULTS: dict[str, Any] = {
    "rpn_nms_thresh": 0.7,
    "rpn_fg_iou_thresh": 0.7,
    "rpn_bg_iou_thresh": 0.3,
    "rpn_batch_size_per_image": 512,
    "rpn_positive_fraction": 0.25,
    "rpn_score_thresh": 0.0,
    "rpn_hard_fraction": 0.5,
    "box_nms_thresh": 0.5,
    "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5,
    "box_batch_size_per_image": 512,
    "box_positive_fraction": 0.25,
    "bbox_reg_weights": None,
    "nms_sigma": 0.5,
    "eg_delta": 0.3,
    "template_feature_grad": 1.0,
    "pull_theta": 0.5,
    "pull_lambda": 2.0,
    "push_delta": 1.0,
    "tnrl_sigma": 0.5,
}


class DeepACE(AcceptsGrayImages, FasterRCNN):
    """DeepACEv2 detector: a torchvision Faster R-CNN composed from explicit parts.

    Args:
        backbone: feature extractor with ``out_channels`` (e.g. :class:`SingleLevelFPN`).
        rpn: region proposal network (:class:`DeepACERegionProposalNetwork` for HNAS).
        roi_heads: :class:`DeepACERoIHeads`.
        transform: input normalisation and resize.

    ``model(images, targets)`` returns a dict of ``loss_*`` in training and, in eval, per image
    ``boxes`` (M, 4) xyxy in input pixels, ``scores`` (M,), ``labels`` (M,) and ``embeddings`` (M,)
    when the Template branch is on. 1-channel images are repeated to 3 channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: DeepACERoIHeads,
        transform: GeneralizedRCNNTransform,
    ) -> None:
        # FasterRCNN.__init__ only assembles default parts; the parts here are given explicitly.
        GeneralizedRCNN.__init__(self, backbone, rpn, roi_heads, transform)

    @torch.no_grad()
    def predict_modes(
        self, images: Sequence[torch.Tensor], modes: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Eval-mode predictions under several post-processings, sharing everything before it.

        Resize / normalise, backbone and RPN run once; the RoI box branch and its post-processing run
        once per mode (``roi_heads.postprocess`` is switched and restored). The result for a mode equals
        ``model(images)`` with that mode set.

        Args:
            images: per image (C, H, W) float in [0, 1], C in {1, 3}, on the model's device.
            modes: post-processings, each in :data:`POSTPROCESS_MODES`; ``"eg"`` needs the Template branch.

        Returns:
            ``{mode: per image {"boxes", "scores", "labels"[, "embeddings"]}}`` (tensors on the model's device).

        Raises:
            ValueError: an unknown mode, or ``"eg"`` without the Template branch.
        """
        for mode in modes:
            if mode not in POSTPROCESS_MODES:
                raise ValueError(f"unknown post-processing {mode!r}; use one of {POSTPROCESS_MODES}")
        if "eg" in modes and self.roi_heads.template is None:
            raise ValueError("post-processing 'eg' needs the Template branch, which this model lacks")
        images = expand_gray(images)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = self.rpn(image_list, features)
        own = self.roi_heads.postprocess
        out: dict[str, list[dict[str, Any]]] = {}
        try:
            for mode in modes:
                self.roi_heads.postprocess = mode
                detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
                out[mode] = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        finally:
            self.roi_heads.postprocess = own
        return out


def build_deepace(
    num_classes: int = 2,
    *,
    backbone: str = "resnet101",
    fpn_level: str = "P3",
    trainable_backbone_layers: int = 5,
    min_size: int = 1200,
    max_size: int = 1600,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    anchor_sizes: Sequence[int] = DEEPACE_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = DEEPACE_ASPECT_RATIOS,
    hnas: bool = True,
    hnas_criterion: str = "v2",
    template: bool = True,
    tnrl: bool = True,
    postprocess: str = "eg",
    rpn_pre_nms_top_n_train: int = 6000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 6000,
    rpn_post_nms_top_n_test: int = 300,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    alpha: float = 0.1,
    beta: float = 0.1,
    gamma: float = 0.5,
    weights_path: str | Path | None = None,
    backbone_weights_path: str | Path | None = None,
    **kwargs: Any,
) -> DeepACE:
    """Build DeepACEv2 (defaults: the paper's full model) or any of its ablations.

    Args:
        num_classes: classes including background (2: chromosome + background).
        backbone: ResNet depth name (``resnet101`` in the paper).
        fpn_level: the single FPN output level (``P3``, stride 8).
        trainable_backbone_layers: 0-5 ResNet stages to train.
        min_size / max_size: the model's internal resize (torchvision semantics).
        image_mean / image_std: normalisation; ImageNet statistics by default.
        anchor_sizes / aspect_ratios: anchors (height / width ratios) on the single level.
        hnas: Hard Negative Anchors Sampling in the RPN (off: torchvision's balanced sampler).
        hnas_criterion: ``"v2"`` (hard [0.1, 0.5), easy < 0.1) or ``"v1"`` (hard [0.3, 0.7), easy < 0.3).
        template: the Template branch (pull / push losses, ``embeddings`` in predictions).
        tnrl: the Truncated Normalized Repulsion Loss.
        postprocess: ``"nms"``, ``"soft"`` (Soft-NMS) or ``"eg"`` (Embedding-Guided NMS, needs ``template``).
        rpn_*_top_n_*: proposals kept before / after the RPN's NMS.
        box_detections_per_img / box_score_thresh: detections kept per image, minimum (decayed) score.
        alpha / beta / gamma: weights of pull, push and TNRL (Eq. 12).
        weights_path: local whole-model checkpoint to start from.
        backbone_weights_path: local ResNet (ImageNet) state dict for the backbone body.
        **kwargs: further settings, each with its default: ``rpn_nms_thresh`` (0.7),
            ``rpn_fg_iou_thresh`` (0.7), ``rpn_bg_iou_thresh`` (0.3), ``rpn_batch_size_per_image`` (512),
            ``rpn_positive_fraction`` (0.25), ``rpn_score_thresh`` (0.0), ``rpn_hard_fraction`` (0.5),
            ``box_nms_thresh`` (0.5), ``box_fg_iou_thresh`` / ``box_bg_iou_thresh`` (0.5),
            ``box_batch_size_per_image`` (512), ``box_positive_fraction`` (0.25), ``bbox_reg_weights``,
            ``nms_sigma`` (0.5), ``eg_delta`` (0.3), ``template_feature_grad`` (1.0: the pull / push
            gradient reaches the backbone in full; see :class:`DeepACERoIHeads`), the pull loss's focal
            factor ``pull_theta`` (0.5) and ``pull_lambda`` (2), the push margin ``push_delta`` (1) and
            TNRL's Smooth_ln ``tnrl_sigma`` (0.5).

    Returns:
        The :class:`DeepACE` model.
    """
    unknown = sorted(set(kwargs) - set(_EXTRA_DEFAULTS))
    if unknown:
        raise TypeError(
            f"build_deepace got unknown arguments {unknown}; known extras: {sorted(_EXTRA_DEFAULTS)}"
        )
    if hnas_criterion not in HNAS_CRITERIA:
        raise ValueError(f"hnas_criterion must be one of {sorted(HNAS_CRITERIA)}, got {hnas_criterion!r}")
    if postprocess == "eg" and not template:
        raise ValueError("postprocess='eg' (Embedding-Guided NMS) needs template=True for the embeddings")
    opt = {**_EXTRA_DEFAULTS, **kwargs}

    pretrained = bool(backbone_weights_path or weights_path)
    body = build_single_level_fpn(
        backbone, fpn_level, trainable_backbone_layers, pretrained, backbone_weights_path
    )
    anchors = build_single_level_anchor_generator(anchor_sizes, aspect_ratios)

    rpn_args = (
        anchors,
        RPNHead(body.out_channels, anchors.num_anchors_per_location()[0]),
        opt["rpn_fg_iou_thresh"],
        opt["rpn_bg_iou_thresh"],
        opt["rpn_batch_size_per_image"],
        opt["rpn_positive_fraction"],
        {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
        {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
        opt["rpn_nms_thresh"],
    )
    if hnas:
        hard_iou, easy_below = HNAS_CRITERIA[hnas_criterion]
        sampler = HardNegativeSampler(
            opt["rpn_batch_size_per_image"],
            opt["rpn_positive_fraction"],
            opt["rpn_hard_fraction"],
            hard_iou,
            easy_below,
        )
        rpn: RegionProposalNetwork = DeepACERegionProposalNetwork(
            *rpn_args, score_thresh=opt["rpn_score_thresh"], hnas_sampler=sampler
        )
    else:
        rpn = RegionProposalNetwork(*rpn_args, score_thresh=opt["rpn_score_thresh"])

    roi_size = 7
    roi_heads = DeepACERoIHeads(
        MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=2),
        TwoMLPHead(body.out_channels * roi_size**2, 1024),
        FastRCNNPredictor(1024, num_classes),
        opt["box_fg_iou_thresh"],
        opt["box_bg_iou_thresh"],
        opt["box_batch_size_per_image"],
        opt["box_positive_fraction"],
        opt["bbox_reg_weights"],
        box_score_thresh,
        opt["box_nms_thresh"],
        box_detections_per_img,
        template=TemplateModule(body.out_channels, roi_size, embedding_dim=1) if template else None,
        tnrl=tnrl,
        postprocess=postprocess,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        nms_sigma=opt["nms_sigma"],
        eg_delta=opt["eg_delta"],
        template_feature_grad=opt["template_feature_grad"],
        template_kwargs={"theta": opt["pull_theta"], "lam": opt["pull_lambda"], "delta": opt["push_delta"]},
        tnrl_sigma=opt["tnrl_sigma"],
    )
    transform = GeneralizedRCNNTransform(
        min_size, max_size, list(image_mean or IMAGENET_MEAN), list(image_std or IMAGENET_STD)
    )
    model = DeepACE(body, rpn, roi_heads, transform)
    if weights_path:
        load_model_weights(model, weights_path)
    return model
