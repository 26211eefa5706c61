"""Hard Negative Anchors Sampling (DeepACEv2 Sec. 2.2) and the RPN that uses it.

Anchors are labelled by the usual RPN matcher (positive at IoU >= 0.7 plus each ground truth's best
anchors). The mini-batch of ``R = 512`` anchors is then stratified by each anchor's maximum IoU with
any ground truth: 25 % positives, and the negatives split half / half between *hard* negatives
(v2: IoU in [0.1, 0.5); v1: [0.3, 0.7)) and *easy* negatives (v2: IoU < 0.1; v1: < 0.3). Sampled
negatives of either stratum are labelled background, even where the matcher had ignored them (v2's
[0.3, 0.5) and v1's whole hard range). A short stratum is filled from the other negative stratum,
and missing positives are replaced by negatives, so the batch keeps ``R`` anchors whenever there
are enough. The RPN losses themselves are torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

__all__ = ["HNAS_CRITERIA", "DeepACERegionProposalNetwork", "HardNegativeSampler"]

# (hard_iou, easy_iou_below) of each division criterion.
HNAS_CRITERIA: dict[str, tuple[tuple[float, float], float]] = {
    "v1": ((0.3, 0.7), 0.3),
    "v2": ((0.1, 0.5), 0.1),
}


def _pick(mask: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """Indices of ``n`` uniformly chosen True entries of ``mask`` (all of them if fewer)."""
    idx = torch.where(mask)[0]
    perm = torch.randperm(idx.numel(), device=idx.device, generator=generator)[:n]
    return idx[perm]


class HardNegativeSampler:
    """Stratified positive / hard-negative / easy-negative anchor sampler.

    Args:
        batch_size_per_image: anchors per image ``R`` (512).
        positive_fraction: target fraction of positives (0.25).
        hard_fraction: target fraction of the negatives drawn from the hard stratum (0.5).
        hard_iou: ``[low, high)`` max-IoU interval of hard negatives ((0.1, 0.5) in v2).
        easy_iou_below: easy negatives have max IoU below this (0.1 in v2).
        generator: optional ``torch.Generator``; ``None`` uses the global one (as torchvision does).
    """

    def __init__(
        self,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        hard_fraction: float = 0.5,
        hard_iou: tuple[float, float] = (0.1, 0.5),
        easy_iou_below: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (0.0 <= positive_fraction <= 1.0 and 0.0 <= hard_fraction <= 1.0):
            raise ValueError("positive_fraction and hard_fraction must be in [0, 1]")
        if not hard_iou[0] < hard_iou[1]:
            raise ValueError(f"hard_iou must be an interval [low, high), got {hard_iou}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.hard_fraction = hard_fraction
        self.hard_iou = tuple(hard_iou)
        self.easy_iou_below = easy_iou_below
        self.generator = generator

    def strata(self, labels: Tensor, max_iou: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Positive, hard-negative and easy-negative masks of one image.

        Args:
            labels: (A,) matcher labels (1 positive, 0 background, -1 ignored).
            max_iou: (A,) each anchor's maximum IoU with any ground truth (0 without ground truth).

        Returns:
            Three disjoint (A,) bool masks.
        """
        pos = labels >= 1
        hard = ~pos & (max_iou >= self.hard_iou[0]) & (max_iou < self.hard_iou[1])
        easy = ~pos & ~hard & (max_iou < self.easy_iou_below)
        return pos, hard, easy

    def sample_counts(self, n_pos: int, n_hard: int, n_easy: int) -> tuple[int, int, int]:
        """How many anchors to draw from each stratum, given how many each has."""
        num_pos = min(n_pos, int(self.batch_size_per_image * self.positive_fraction))
        num_neg = self.batch_size_per_image - num_pos
        num_hard = min(n_hard, int(num_neg * self.hard_fraction))
        num_easy = min(n_easy, num_neg - num_hard)
        num_hard = min(n_hard, num_neg - num_easy)  # fill a short easy stratum with hard ones
        return num_pos, num_hard, num_easy

    def __call__(self, labels: list[Tensor], max_ious: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Sample every image of a batch.

        Args:
            labels: per image (A_i,) matcher labels.
            max_ious: per image (A_i,) maximum IoU with any ground truth.

        Returns:
            ``(pos_masks, neg_masks)``: per image (A_i,) uint8 masks of the sampled anchors, in the
            format of torchvision's ``BalancedPositiveNegativeSampler``.
        """
        pos_masks, neg_masks = [], []
        for lab, iou in zip(labels, max_ious):
            pos, hard, easy = self.strata(lab, iou)
            n_pos, n_hard, n_easy = self.sample_counts(int(pos.sum()), int(hard.sum()), int(easy.sum()))
            pos_mask = torch.zeros_like(lab, dtype=torch.uint8)
            neg_mask = torch.zeros_like(lab, dtype=torch.uint8)
            pos_mask[_pick(pos, n_pos, self.generator)] = 1
            neg_mask[_pick(hard, n_hard, self.generator)] = 1
            neg_mask[_pick(easy, n_easy, self.generator)] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


class DeepACERegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with Hard Negative Anchors Sampling in training.

    Takes the arguments of ``RegionProposalNetwork`` plus ``hnas_sampler``; ``batch_size_per_image``
    and ``positive_fraction`` are those of the sampler. Only target assignment (which also keeps
    each anchor's max IoU) and the sampling inside :meth:`compute_loss` change.
    """

    def __init__(self, *args, hnas_sampler: HardNegativeSampler, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hnas_sampler = hnas_sampler
        self._max_ious: list[Tensor] | None = None

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's assignment; also stores each anchor's (A_i,) max IoU for the sampler."""
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        max_ious = []
        for anchors_per_image, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:
                max_ious.append(anchors_per_image.new_zeros(anchors_per_image.shape[0]))
            else:
                max_ious.append(box_ops.box_iou(gt_boxes, anchors_per_image).max(dim=0).values)
        self._max_ious = max_ious
        return labels, matched_gt_boxes

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """RPN objectness (BCE) and box (smooth L1) losses over the HNAS-sampled anchors.

        Args:
            objectness: (sum A_i, 1) logits.
            pred_bbox_deltas: (sum A_i, 4) predicted deltas.
            labels: per image (A_i,) matcher labels.
            regression_targets: per image (A_i, 4) encoded targets.

        Returns:
            ``(objectness_loss, box_loss)`` scalars, normalised by the number of sampled anchors.
        """
        if self._max_ious is None or len(self._max_ious) != len(labels):
            raise RuntimeError("compute_loss needs assign_targets_to_anchors to run first on the same batch")
        pos_masks, neg_masks = self.hnas_sampler(labels, self._max_ious)
        self._max_ious = None
        sampled_pos_inds = torch.where(torch.cat(pos_masks, dim=0))[0]
        sampled_neg_inds = torch.where(torch.cat(neg_masks, dim=0))[0]
        sampled_inds = torch.cat([sampled_pos_inds, sampled_neg_inds], dim=0)

        objectness = objectness.flatten()
        targets = (torch.cat(labels, dim=0) >= 1).to(objectness.dtype)  # sampled negatives are background
        regression_targets = torch.cat(regression_targets, dim=0)

        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[sampled_pos_inds],
            regression_targets[sampled_pos_inds],
            beta=1 / 9,
            reduction="sum",
        ) / max(sampled_inds.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled_inds], targets[sampled_inds])
        return objectness_loss, box_loss
