"""From SparseSEU-Net's N outputs of one image to ranked instances (thesis Sec. 4.5.3, 5.7.3); no NMS.

Each prediction's score is its class probability times its *maskness* (SOLOv2's, the thesis' [63]): the mean
mask probability over the pixels the mask claims (probability > ``mask_threshold``), times the objectness
probability when the objectness head is on. A prediction whose mask claims no pixel has maskness 0. The
one-to-one matching of training already teaches the model to leave duplicates to the background class, so
the predictions are only thresholded and ranked: ``score >= score_threshold``, the best ``max_detections``.
Boxes are the binarised masks' extents, ``xyxy`` with exclusive ends (``x2 = last column + 1``, as COCO's
``bbox`` of a mask); an empty mask gets (0, 0, 0, 0).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["instances_from_outputs", "mask_boxes", "maskness"]


def maskness(prob: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """(N, H, W) probabilities and their binarisation -> (N,) mean probability over each mask's pixels."""
    flat_p, flat_b = prob.flatten(1).float(), binary.flatten(1).float()
    return (flat_p * flat_b).sum(-1) / flat_b.sum(-1).clamp(min=1.0)


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """(M, H, W) bool masks -> (M, 4) float32 xyxy boxes, exclusive ends; empty masks (0, 0, 0, 0)."""
    num, height, width = binary.shape
    if num == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=binary.device)
    cols, rows = binary.any(dim=1), binary.any(dim=2)  # (M, W), (M, H)
    xs = torch.arange(width, device=binary.device)
    ys = torch.arange(height, device=binary.device)
    x0 = torch.where(cols, xs, width).amin(-1)
    x1 = torch.where(cols, xs + 1, 0).amax(-1)
    y0 = torch.where(rows, ys, height).amin(-1)
    y1 = torch.where(rows, ys + 1, 0).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(cols.any(-1, keepdim=True), boxes, torch.zeros_like(boxes))


def instances_from_outputs(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    objectness_logits: torch.Tensor | None,
    *,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """One image's (N,) class logits and (N, H, W) mask logits (cropped to the image) -> its prediction.

    Args:
        cls_logits / mask_logits: the image's outputs.
        objectness_logits: (N,) or None (objectness off).
        score_threshold: lowest score kept.
        max_detections: most instances kept (the best scores).
        mask_threshold: mask binarisation threshold.

    Returns:
        ``boxes`` (M, 4) float32, ``scores`` (M,) float32 (descending), ``labels`` (M,) int64 (all 1),
        ``masks`` (M, H, W) uint8.
    """
    prob = mask_logits.float().sigmoid()
    binary = prob > mask_threshold
    scores = cls_logits.float().sigmoid() * maskness(prob, binary)
    if objectness_logits is not None:
        scores = scores * objectness_logits.float().sigmoid()
    keep = torch.nonzero(scores >= score_threshold).flatten()
    order = scores[keep].argsort(descending=True, stable=True)[: max(int(max_detections), 0)]
    keep = keep[order]
    masks = binary[keep]
    return {
        "boxes": mask_boxes(masks),
        "scores": scores[keep],
        "labels": torch.ones(len(keep), dtype=torch.int64, device=scores.device),
        "masks": masks.to(torch.uint8),
    }
