"""SEU-Net's training loss: Eq. 4.1 per head, combined with the weights of Eq. 4.2.

``L_total = sum_h lambda_h * L_h`` where ``L_h`` is the binary cross-entropy (Eq. 4.1) of head h's logits,
averaged over the batch's valid pixels (neither padding nor ``ignore_index``). The overlap head may use the
overlap focal loss of :mod:`cytobench.ops.focal` instead (thesis Sec. 4.3, Eq. 4.5 / 5.1), with the
per-pixel attention map as its probability map P. Each weighted term is returned under ``loss_<head>``:
the trainer sums the dict, which is Eq. 4.2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from cytobench.errors import BadInputError

__all__ = ["OverlapLossConfig", "head_losses", "masked_bce"]

OVERLAP_LOSSES = ("bce", "focal")
FOCAL_MODES = ("eq4_5", "eq5_1")  # the modes of cytobench.ops.focal.overlap_focal_loss


@dataclass(frozen=True)
class OverlapLossConfig:
    """How the overlap head is trained.

    Attributes:
        kind: ``bce`` (plain Eq. 4.1, the "SEU-Net" row of Table 5.3) or ``focal``
            (:func:`cytobench.ops.focal.overlap_focal_loss`).
        alpha / gamma: focal loss parameters.
        mode: the focal loss' formula, ``eq4_5`` or ``eq5_1``.
    """

    kind: str = "focal"
    alpha: float = 0.25
    gamma: float = 2.0
    mode: str = "eq4_5"

    def __post_init__(self) -> None:
        if self.kind not in OVERLAP_LOSSES:
            raise BadInputError(
                "model.overlap_loss", f"must be one of {list(OVERLAP_LOSSES)}, got {self.kind!r}"
            )
        if self.mode not in FOCAL_MODES:
            raise BadInputError("model.focal_mode", f"must be one of {list(FOCAL_MODES)}, got {self.mode!r}")


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 4.1 from logits: mean binary cross-entropy over the pixels where ``valid`` is true.

    Args:
        logits / target: (B, H, W) floats (target in [0, 1]).
        valid: (B, H, W) bool.

    Returns:
        A scalar; 0 (still attached to ``logits``) when no pixel is valid.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    count = valid.sum()
    if count == 0:
        return logits.sum() * 0.0
    return (per_pixel * valid).sum() / count


def head_losses(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    valid: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    overlap: OverlapLossConfig = OverlapLossConfig(),
    attention: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted loss term of every head.

    Args:
        logits: head -> (B, H, W) logits.
        targets: head -> (B, H, W) binary targets (0 / 1; values at invalid pixels do not matter).
        valid: head -> (B, H, W) bool, the pixels that count.
        weights: head -> lambda_h (a head missing here weighs 1).
        overlap: the overlap head's loss.
        attention: (B, H, W) float probability map P for the overlap focal loss, or None (plain focal loss).

    Returns:
        ``{"loss_<head>": lambda_h * L_h}`` in the order of ``logits``.
    """
    losses = {}
    for head, head_logits in logits.items():
        target, mask = targets[head].float(), valid[head]
        if head == "overlap" and overlap.kind == "focal":
            from cytobench.ops.focal import overlap_focal_loss  # imported late: an optional companion module

            term = overlap_focal_loss(
                head_logits.float(),
                target,
                None if attention is None else attention.float(),
                alpha=overlap.alpha,
                gamma=overlap.gamma,
                mode=overlap.mode,
                valid=mask,
            )
        else:
            term = masked_bce(head_logits, target, mask)
        losses[f"loss_{head}"] = float(weights.get(head, 1.0)) * term
    return losses
