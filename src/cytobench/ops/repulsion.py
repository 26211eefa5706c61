"""Repulsion losses: RepGT (Wang et al. 2018) and DeepACEv2's Truncated Normalized Repulsion Loss.

For each positive proposal ``P`` with regressed box ``B^P``, attracted ground truth ``G^P`` and
repulsion ground truth ``R^P`` (see :func:`cytobench.ops.boxes.assign_repulsion_targets`):

- RepGT (DeepACEv2 Eq. 6): ``L_Rep = sum_P Smooth_ln(IoG(B^P, R^P)) / |P+|``.
- TNRL (Eq. 7-8): ``IoG'(B, R, G) = (|B ∩ R| - |G ∩ R|) / (|R| - |G ∩ R|)`` and
  ``L_TNRep = sum_P Smooth_ln(max(IoG', 0)) / |P+|``.

Only ``|B ∩ R|`` depends on the prediction, so both losses can only decrease by shrinking the overlap
with the repulsion ground truth; TNRL subtracts the overlap the attracted ground truth already has
with ``R`` (a prediction equal to ``G^P`` costs 0) and normalises by the part of ``R`` outside ``G``
(a prediction equal to ``R^P`` gives ``IoG' = 1``). Boxes are ``(x1, y1, x2, y2)`` absolute pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_area

from cytobench.ops.boxes import paired_box_intersection

__all__ = [
    "repulsion_gt_loss",
    "smooth_ln",
    "truncated_normalized_iog",
    "truncated_normalized_repulsion_loss",
]


def smooth_ln(x: Tensor, sigma: float = 0.5) -> Tensor:
    """Smooth_ln of the Repulsion Loss paper, element-wise.

    ``-ln(1 - x)`` for ``x <= sigma`` and ``(x - sigma) / (1 - sigma) - ln(1 - sigma)`` for ``x > sigma``:
    continuous with a continuous first derivative at ``sigma``; ``sigma = 0`` gives ``x`` itself.

    Args:
        x: values in [0, 1], any shape.
        sigma: smoothing point in [0, 1); above it the penalty grows linearly (finite at ``x = 1``).

    Returns:
        Tensor of the shape of ``x``; gradients are finite everywhere in [0, 1].
    """
    if not 0.0 <= sigma < 1.0:
        raise ValueError(f"smooth_ln needs sigma in [0, 1), got {sigma}")
    log_part = -torch.log1p(-x.clamp(max=sigma))  # clamped so the unused branch never reaches log(0)
    linear_part = (x - sigma) / (1.0 - sigma) - math.log1p(-sigma)
    return torch.where(x <= sigma, log_part, linear_part)


def _check_paired(pred_boxes: Tensor, gt_boxes: Tensor, gt_index: Tensor | None, rep_index: Tensor) -> None:
    n = pred_boxes.shape[0]
    if pred_boxes.ndim != 2 or pred_boxes.shape[1] != 4:
        raise ValueError(f"pred_boxes must have shape (P, 4) in xyxy format, got {tuple(pred_boxes.shape)}")
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape (G, 4) in xyxy format, got {tuple(gt_boxes.shape)}")
    named = (
        [("rep_index", rep_index)] if gt_index is None else [("gt_index", gt_index), ("rep_index", rep_index)]
    )
    for name, idx in named:
        if idx.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match pred_boxes, got {tuple(idx.shape)}")
        if n and int(idx.max()) >= gt_boxes.shape[0]:
            raise ValueError(f"{name} refers to ground truth {int(idx.max())} of {gt_boxes.shape[0]}")
    if gt_index is not None and n and int(gt_index.min()) < 0:
        raise ValueError("gt_index must be >= 0 for every positive proposal")


def truncated_normalized_iog(pred_boxes: Tensor, attracted_boxes: Tensor, repulsion_boxes: Tensor) -> Tensor:
    """Truncated normalised IoG of Eq. 8, row-wise (before the ``max(., 0)`` of Eq. 7).

    ``IoG'(B, R, G) = (|B ∩ R| - |G ∩ R|) / (|R| - |G ∩ R|)``. Where ``G`` contains ``R`` the denominator
    is 0 (and the numerator <= 0): the value is defined as 0, the paper's "new loss is equal to zero".

    Args:
        pred_boxes: (P, 4) xyxy predicted boxes ``B`` (differentiable).
        attracted_boxes: (P, 4) xyxy attracted ground truths ``G``.
        repulsion_boxes: (P, 4) xyxy repulsion ground truths ``R``.

    Returns:
        (P,) values in [-1, 1]; 1 when ``B`` covers ``R``.
    """
    inter_gr = paired_box_intersection(attracted_boxes, repulsion_boxes)
    denom = box_area(repulsion_boxes) - inter_gr
    valid = denom > 0
    value = (paired_box_intersection(pred_boxes, repulsion_boxes) - inter_gr) / torch.where(valid, denom, 1.0)
    return torch.where(valid, value, 0.0)


def truncated_normalized_repulsion_loss(
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_index: Tensor,
    rep_index: Tensor,
    sigma: float = 0.5,
) -> Tensor:
    """Truncated Normalized Repulsion Loss (DeepACEv2 Eq. 7-8) over the positive proposals of one batch.

    Proposals without a repulsion ground truth (``rep_index == -1``) contribute 0 but still count in
    the normaliser ``|P+|``, as every positive proposal does in Eq. 6-7. For a batch of images,
    concatenate the images' positives and ground truths and offset the indices.

    Args:
        pred_boxes: (P, 4) xyxy regressed boxes of the positive proposals, absolute pixels.
        gt_boxes: (G, 4) xyxy ground-truth boxes, absolute pixels.
        gt_index: (P,) int64 attracted ground truth ``G^P`` of each proposal.
        rep_index: (P,) int64 repulsion ground truth ``R^P`` of each proposal, -1 for none.
        sigma: Smooth_ln parameter in [0, 1) (not given in DeepACEv2; 0.5 by default here).

    Returns:
        Scalar loss (0 with a gradient path when ``P == 0``).
    """
    _check_paired(pred_boxes, gt_boxes, gt_index, rep_index)
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    has_rep = rep_index >= 0
    rep_boxes = gt_boxes[rep_index.clamp(min=0)]
    iog = truncated_normalized_iog(pred_boxes, gt_boxes[gt_index], rep_boxes)
    per_box = smooth_ln(iog.clamp(min=0.0, max=1.0), sigma)
    return torch.where(has_rep, per_box, 0.0).sum() / pred_boxes.shape[0]


def repulsion_gt_loss(
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    rep_index: Tensor,
    sigma: float = 0.5,
) -> Tensor:
    """Original RepGT loss (Wang et al. 2018; DeepACEv2 Eq. 6), for comparison with TNRL.

    Args:
        pred_boxes: (P, 4) xyxy regressed boxes of the positive proposals, absolute pixels.
        gt_boxes: (G, 4) xyxy ground-truth boxes, absolute pixels.
        rep_index: (P,) int64 repulsion ground truth of each proposal, -1 for none (contributes 0).
        sigma: Smooth_ln parameter in [0, 1).

    Returns:
        Scalar ``sum_P Smooth_ln(IoG(B^P, R^P)) / |P+|``.
    """
    _check_paired(pred_boxes, gt_boxes, None, rep_index)
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    rep_boxes = gt_boxes[rep_index.clamp(min=0)]
    area = box_area(rep_boxes)
    inter = paired_box_intersection(pred_boxes, rep_boxes)
    iog = torch.where(area > 0, inter / torch.where(area > 0, area, 1.0), 0.0)
    per_box = smooth_ln(iog.clamp(max=1.0), sigma)
    return torch.where(rep_index >= 0, per_box, 0.0).sum() / pred_boxes.shape[0]
