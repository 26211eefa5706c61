"""SparseSEU-Net's training loss (thesis Eq. 4.14-4.18, 5.2-5.3; SparseInst's criterion).

Per image, the N predictions are matched to the M objects (:mod:`~cytobench.models.sparse_seunet.matching`,
on the mask probabilities and class probabilities, without gradient). Then, over the batch, with K the
number of matched pairs (at least 1 in the divisions):

* ``loss_cls``: the sigmoid focal loss (Eq. 4.17, alpha 0.25, gamma 2;
  :func:`cytobench.ops.focal.binary_focal_loss`) of **every** prediction's class logit, target 1 for a
  matched prediction and 0 for the rest, summed and divided by K;
* ``loss_dice``: ``1 - Dice`` (Eq. 4.14, squared denominators as Eq. 4.13) of each matched pair, summed and
  divided by K;
* ``loss_mask``: the binary cross-entropy (Eq. 4.15) of the matched masks' logits, averaged over their pixels;
* ``loss_objectness`` (when the objectness head is on): IoU-aware objectness (Sec. 5.7.3). Its target is the
  IoU of each matched prediction's binarised mask (probability > ``mask_threshold``) with its object, without
  gradient; ``objectness_loss="mse"`` is Eq. 5.2 (squared error of ``sigmoid(objectness)``),
  ``"bce"`` the binary cross-entropy of the objectness logit against that IoU (SparseInst's choice); both
  averaged over the matched pairs.

Each term is multiplied by its lambda (Eq. 4.16, 4.18, 5.3; defaults are SparseInst's: class 2, dice 2,
mask BCE 5, objectness 1 -- the thesis names the lambdas but not their values). An image without objects
adds only focal-loss terms with target 0; a batch without any object returns mask, dice and objectness
losses of value 0 that are still attached to the graph (``x.sum() * 0``), so ``backward`` works. Losses are
computed on each image's own extent (the batch padding is cropped away before matching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from cytobench.errors import BadInputError
from cytobench.models.sparse_seunet.matching import (
    dice_scores,
    hungarian_match,
    matching_scores,
    pairwise_dice,
)
from cytobench.ops.focal import binary_focal_loss

__all__ = ["OBJECTNESS_LOSSES", "InstanceLossConfig", "instance_losses", "mask_iou"]

OBJECTNESS_LOSSES = ("bce", "mse")


@dataclass(frozen=True)
class InstanceLossConfig:
    """Weights and parameters of :func:`instance_losses` (module docstring).

    Attributes:
        matching_weight: lambda of Eq. 4.11.
        cls_weight / dice_weight / mask_weight / objectness_weight: the lambdas of Eq. 4.16, 4.18, 5.3.
        focal_alpha / focal_gamma: Eq. 4.17.
        objectness: train the objectness head.
        objectness_loss: ``bce`` or ``mse`` (Eq. 5.2).
        mask_threshold: probability above which a mask pixel is foreground (objectness IoU target).
    """

    matching_weight: float = 0.8
    cls_weight: float = 2.0
    dice_weight: float = 2.0
    mask_weight: float = 5.0
    objectness_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    objectness: bool = False
    objectness_loss: str = "bce"
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.matching_weight <= 1.0:
            raise BadInputError("model.matching_weight", f"must lie in [0, 1], got {self.matching_weight}")
        if self.objectness_loss not in OBJECTNESS_LOSSES:
            raise BadInputError(
                "model.objectness_loss",
                f"must be one of {list(OBJECTNESS_LOSSES)}, got {self.objectness_loss!r}",
            )
        weights = (self.cls_weight, self.dice_weight, self.mask_weight, self.objectness_weight)
        if min(weights) < 0:
            raise BadInputError("model.loss_weights", f"must be >= 0, got {weights}")


def mask_iou(binary: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, P) binary predictions and (K, P) binary targets -> (K,) IoU (0 where both are empty)."""
    binary, target = binary.float(), target.float()
    inter = (binary * target).sum(-1)
    union = binary.sum(-1) + target.sum(-1) - inter
    return inter / union.clamp(min=1e-6)


def instance_losses(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    objectness_logits: torch.Tensor | None,
    gt_masks: Sequence[torch.Tensor],
    sizes: Sequence[tuple[int, int]],
    config: InstanceLossConfig = InstanceLossConfig(),
) -> dict[str, torch.Tensor]:
    """Match and score one batch (module docstring).

    Args:
        cls_logits: (B, N) class logits.
        mask_logits: (B, N, H, W) mask logits on the padded batch.
        objectness_logits: (B, N) or None (required when ``config.objectness``).
        gt_masks: per image (M_b, h_b, w_b) binary masks, (h_b, w_b) = ``sizes[b]``.
        sizes: each image's extent inside the padded batch.
        config: weights and switches.

    Returns:
        ``loss_cls``, ``loss_dice``, ``loss_mask`` and, with objectness on, ``loss_objectness``.
    """
    if config.objectness and objectness_logits is None:
        raise ValueError("objectness is on but no objectness logits were given")
    cls_target = torch.zeros_like(cls_logits, dtype=torch.float32)
    dice_sum = bce_sum = mask_logits.new_zeros((), dtype=torch.float32)
    pixels = pairs = 0
    obj_pred, obj_target = [], []
    for b, (masks, (h, w)) in enumerate(zip(gt_masks, sizes)):
        if len(masks) == 0:
            continue
        pred = mask_logits[b, :, :h, :w].flatten(1)  # (N, h*w) logits on the image's own extent
        gt = masks.to(device=pred.device, dtype=torch.float32).flatten(1)
        with torch.no_grad():
            prob = pred.detach().float().sigmoid()
            scores = matching_scores(
                cls_logits[b].detach().float().sigmoid(), dice_scores(prob, gt), config.matching_weight
            )
            src, tgt = hungarian_match(scores)
        cls_target[b, src] = 1.0
        matched, target = pred[src].float(), gt[tgt]
        dice_sum = dice_sum + (1.0 - pairwise_dice(matched.sigmoid(), target)).sum()
        bce_sum = bce_sum + F.binary_cross_entropy_with_logits(matched, target, reduction="sum")
        pixels += matched.numel()
        pairs += len(src)
        if config.objectness:
            assert objectness_logits is not None
            with torch.no_grad():
                obj_target.append(mask_iou(prob[src] > config.mask_threshold, target))
            obj_pred.append(objectness_logits[b, src].float())
    count = max(pairs, 1)
    focal = binary_focal_loss(
        cls_logits.float(), cls_target, alpha=config.focal_alpha, gamma=config.focal_gamma
    )
    losses = {"loss_cls": config.cls_weight * focal.sum() / count}
    if pairs == 0:  # no object anywhere: zero-valued mask terms that still reach the graph
        zero = mask_logits.float().sum() * 0.0
        losses["loss_dice"], losses["loss_mask"] = zero, zero.clone()
        if config.objectness:
            assert objectness_logits is not None
            losses["loss_objectness"] = objectness_logits.float().sum() * 0.0
        return losses
    losses["loss_dice"] = config.dice_weight * dice_sum / count
    losses["loss_mask"] = config.mask_weight * bce_sum / pixels
    if config.objectness:
        pred_obj, iou = torch.cat(obj_pred), torch.cat(obj_target)
        if config.objectness_loss == "mse":
            term = F.mse_loss(pred_obj.sigmoid(), iou)
        else:
            term = F.binary_cross_entropy_with_logits(pred_obj, iou)
        losses["loss_objectness"] = config.objectness_weight * term
    return losses
