"""Mask-level bipartite matching of SparseSEU-Net's N predictions to an image's M objects (thesis Sec. 4.5.3).

The pairwise quality of prediction i and object j is (Eq. 4.11, SparseInst's matcher)::

    S_ij = p_i^(1 - lambda) * Dice(m_i, g_j)^lambda,    lambda = 0.8

with ``p_i`` the predicted class probability, ``m_i`` the predicted mask probabilities and ``Dice`` of
Eq. 4.13: ``2 sum(m g) / (sum(m^2) + sum(g^2))``. Both factors are similarities, so the thesis' "cost" C is
this product and the optimal assignment (Eq. 4.10, 4.12) is the one that maximises the total ``S`` over
one-to-one pairs (equivalently, minimises ``-S``); :func:`hungarian_match` solves it with
``scipy.optimize.linear_sum_assignment``. With M <= N every object gets one prediction and N - M
predictions stay unmatched (learned as background); with M > N only N objects are matched (N must cover the
densest image: the thesis capped LIVECell crops at 90 cells for N = 100).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["DICE_EPS", "dice_scores", "hungarian_match", "matching_scores", "pairwise_dice"]

DICE_EPS = 1e-4
"""Added to Dice denominators (as SparseInst): an empty prediction against an empty mask scores 0, not NaN."""


def dice_scores(pred: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Eq. 4.13 for every (prediction, object) pair.

    Args:
        pred: (N, P) mask probabilities (P pixels).
        target: (M, P) binary (or soft) masks.
        eps: added to the denominator.

    Returns:
        (N, M) Dice coefficients.
    """
    pred, target = pred.float(), target.float()
    numerator = 2.0 * pred @ target.T
    denominator = (pred * pred).sum(-1)[:, None] + (target * target).sum(-1)[None, :]
    return numerator / (denominator + eps)


def pairwise_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Eq. 4.13 for matched pairs: (K, P) and (K, P) -> (K,) Dice coefficients (differentiable)."""
    numerator = 2.0 * (pred * target).sum(-1)
    return numerator / ((pred * pred).sum(-1) + (target * target).sum(-1) + eps)


def matching_scores(cls_prob: torch.Tensor, dice: torch.Tensor, weight: float = 0.8) -> torch.Tensor:
    """Eq. 4.11: ``cls_prob[:, None] ** (1 - weight) * dice ** weight`` -> (N, M).

    Args:
        cls_prob: (N,) class probabilities of the predictions.
        dice: (N, M) from :func:`dice_scores`.
        weight: lambda in [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the matching weight lambda must lie in [0, 1], got {weight}")
    return cls_prob.float()[:, None].clamp(min=0) ** (1.0 - weight) * dice.float().clamp(min=0) ** weight


def hungarian_match(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one assignment maximising the summed ``scores`` (N, M).

    Returns:
        ``(pred_idx, gt_idx)``: int64 tensors of length min(N, M), prediction ``pred_idx[k]`` matched to
        object ``gt_idx[k]`` (sorted by prediction index); empty when N or M is 0.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, M), got shape {tuple(scores.shape)}")
    if scores.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return empty, empty.clone()
    values = scores.detach().float().cpu().numpy()
    if not np.isfinite(values).all():
        raise ValueError("matching scores must be finite")
    rows, cols = linear_sum_assignment(values, maximize=True)
    return (
        torch.as_tensor(rows, dtype=torch.int64, device=scores.device),
        torch.as_tensor(cols, dtype=torch.int64, device=scores.device),
    )
