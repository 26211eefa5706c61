"""Binary focal losses for overlap segmentation guided by an attention map (SEU-Net thesis Eq. 4.5, Eq. 5.1).

With ``p = sigmoid(logits)`` and a target ``y`` in [0, 1], the binary focal loss (Lin et al. 2017) of a
pixel is::

    FL(y, p) = -alpha (1 - p)^gamma y log(p) - (1 - alpha) p^gamma (1 - y) log(1 - p)

(linear in ``y``, so soft targets are allowed). With an attention map ``P`` in [0, 1]
(:mod:`cytobench.data.overlap_maps`):

* ``mode="eq4_5"`` (Sec. 4.3, Eq. 4.5): ``FL(y', p)`` with the soft target ``y' = y (1 - P)``.
* ``mode="eq5_1"`` (Sec. 5.4, Eq. 5.1): ``P * FL(y, p)``, the focal loss on ``y`` reweighted by ``P``.

Both are averaged over the valid pixels. Everything is computed from logits in log space
(``log p = logsigmoid(z)``, ``log(1 - p) = logsigmoid(-z)``, ``p^gamma = exp(gamma logsigmoid(z))``), so
loss and gradients stay finite for any finite logit (e.g. +-100, where ``sigmoid`` rounds to 0 / 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FOCAL_MODES", "binary_focal_loss", "overlap_focal_loss"]

FOCAL_MODES = ("eq4_5", "eq5_1")


def _check_parameters(alpha: float, gamma: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not gamma >= 0.0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def _check_shape(name: str, tensor: Tensor | None, shape: torch.Size) -> None:
    if tensor is not None and tensor.shape != shape:
        raise ValueError(f"{name} must have the shape of logits {tuple(shape)}, got {tuple(tensor.shape)}")


def binary_focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-element binary focal loss ``FL(y, sigmoid(logits))`` (formula in the module docstring).

    Args:
        logits: raw scores, any shape; computed in at least float32.
        target: ``y`` in [0, 1] (soft values allowed), the shape of ``logits``.
        alpha: weight of the positive term (``1 - alpha`` for the negative one), in [0, 1].
        gamma: focusing exponent >= 0 (0: alpha-weighted binary cross-entropy).

    Returns:
        The unreduced loss, the shape of ``logits``.
    """
    _check_parameters(alpha, gamma)
    _check_shape("target", target, logits.shape)
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    y = target.to(z.dtype)
    log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)
    if gamma == 0.0:
        positive, negative = log_p, log_not_p
    else:  # (1 - p)^gamma and p^gamma in log space: finite gradients where p rounds to 0 or 1
        positive = torch.exp(gamma * log_not_p) * log_p
        negative = torch.exp(gamma * log_p) * log_not_p
    return -alpha * y * positive - (1.0 - alpha) * (1.0 - y) * negative


def overlap_focal_loss(
    logits: Tensor,
    target: Tensor,
    attention: Tensor | None = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    mode: str = "eq4_5",
    valid: Tensor | None = None,
) -> Tensor:
    """The overlap loss of SEU-Net: a binary focal loss steered by the attention map ``P``.

    Args:
        logits: ``(B, H, W)`` overlap logits (any shape works if all inputs share it).
        target: ``(B, H, W)`` overlap truth ``y`` in [0, 1].
        attention: ``(B, H, W)`` attention map ``P`` in [0, 1], or None for the plain focal loss on ``y``
            (``P = 0`` in ``eq4_5``, ``P = 1`` in ``eq5_1``: the same loss).
        alpha / gamma: focal parameters (see :func:`binary_focal_loss`).
        mode: ``"eq4_5"``: focal loss on the soft target ``y (1 - P)`` (Eq. 4.5); ``"eq5_1"``: ``P`` times
            the focal loss on ``y`` (Eq. 5.1).
        valid: optional bool ``(B, H, W)``; only True pixels count.

    Returns:
        Scalar: the mean over the valid pixels (0, still differentiable, when none is valid).
    """
    if mode not in FOCAL_MODES:
        raise ValueError(f"unknown focal loss mode '{mode}' (known: {', '.join(FOCAL_MODES)})")
    _check_shape("target", target, logits.shape)
    _check_shape("attention", attention, logits.shape)
    _check_shape("valid", valid, logits.shape)
    if valid is not None and valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool mask, got dtype {valid.dtype}")
    if mode == "eq4_5":
        soft = target if attention is None else target * (1.0 - attention)
        loss = binary_focal_loss(logits, soft, alpha=alpha, gamma=gamma)
    else:
        loss = binary_focal_loss(logits, target, alpha=alpha, gamma=gamma)
        if attention is not None:
            loss = loss * attention.to(loss.dtype)
    if valid is None:
        return loss.mean()
    # where(), not a product: a pixel left out contributes exactly 0 to the value and the gradient
    total = torch.where(valid, loss, torch.zeros_like(loss)).sum()
    return total / valid.sum().clamp_min(1).to(loss.dtype)
