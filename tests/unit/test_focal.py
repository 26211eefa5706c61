"""Overlap focal losses (SEU-Net Eq. 4.5 / Eq. 5.1): hand-computed values, reductions, stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cytobench.ops.focal import binary_focal_loss, overlap_focal_loss

# two pixels: p = sigmoid(0) = 0.5 with y = 1, p = sigmoid(ln 3) = 0.75 with y = 0
LOGITS = torch.tensor([[[0.0, math.log(3.0)]]])
TARGET = torch.tensor([[[1.0, 0.0]]])
ALPHA, GAMMA = 0.25, 2.0
PIXEL_1 = -ALPHA * (1 - 0.5) ** GAMMA * math.log(0.5)  # the positive term only
PIXEL_2 = -(1 - ALPHA) * 0.75**GAMMA * math.log(1 - 0.75)  # the negative term only


def test_two_pixels_by_hand() -> None:
    per_pixel = binary_focal_loss(LOGITS, TARGET, alpha=ALPHA, gamma=GAMMA)
    assert per_pixel.shape == (1, 1, 2)
    assert per_pixel[0, 0, 0].item() == pytest.approx(PIXEL_1, rel=1e-6)
    assert per_pixel[0, 0, 1].item() == pytest.approx(PIXEL_2, rel=1e-6)
    loss = overlap_focal_loss(LOGITS, TARGET, alpha=ALPHA, gamma=GAMMA)
    assert loss.ndim == 0 and loss.item() == pytest.approx((PIXEL_1 + PIXEL_2) / 2, rel=1e-6)


def test_gamma_zero_and_alpha_half_is_half_the_bce() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator) * 4
    target = torch.rand(2, 5, 7, generator=generator)  # soft targets too
    loss = overlap_focal_loss(logits, target, alpha=0.5, gamma=0.0)
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_eq4_5_soft_target_by_hand() -> None:
    # y = 1, P = 0.5 -> y' = 0.5; p = 0.5: 0.5 * (alpha + (1 - alpha)) * 0.5**2 * ln 2 = 0.125 ln 2
    loss = overlap_focal_loss(
        torch.zeros(1, 1, 1), torch.ones(1, 1, 1), torch.full((1, 1, 1), 0.5), alpha=ALPHA, gamma=GAMMA
    )
    assert loss.item() == pytest.approx(0.125 * math.log(2.0), rel=1e-6)


def test_eq4_5_with_zero_attention_is_the_plain_focal_loss() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 6, generator=generator) * 3
    target = (torch.rand(2, 6, 6, generator=generator) > 0.7).float()
    plain = binary_focal_loss(logits, target).mean()
    assert torch.equal(overlap_focal_loss(logits, target, torch.zeros_like(logits)), plain)
    assert torch.equal(overlap_focal_loss(logits, target), plain)
    # a nonzero map softens the positives only: the loss changes where y = 1
    half = overlap_focal_loss(logits, target, torch.full_like(logits, 0.5))
    assert half.item() != pytest.approx(plain.item())


def test_eq5_1_with_unit_attention_is_the_plain_mean_and_weights_by_hand() -> None:
    plain = overlap_focal_loss(LOGITS, TARGET, alpha=ALPHA, gamma=GAMMA)
    ones = overlap_focal_loss(LOGITS, TARGET, torch.ones(1, 1, 2), alpha=ALPHA, gamma=GAMMA, mode="eq5_1")
    assert ones.item() == pytest.approx(plain.item(), rel=1e-7)
    assert overlap_focal_loss(LOGITS, TARGET, mode="eq5_1").item() == pytest.approx(plain.item(), rel=1e-7)
    weighted = overlap_focal_loss(
        LOGITS, TARGET, torch.tensor([[[0.5, 0.2]]]), alpha=ALPHA, gamma=GAMMA, mode="eq5_1"
    )
    assert weighted.item() == pytest.approx((0.5 * PIXEL_1 + 0.2 * PIXEL_2) / 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["eq4_5", "eq5_1"])
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
def test_loss_and_gradient_finite_at_extreme_logits(mode: str, gamma: float) -> None:
    logits = torch.tensor([[[100.0, -100.0, 100.0, -100.0, 1e4, -1e4]]], requires_grad=True)
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 0.0, 1.0]]])
    attention = torch.tensor([[[0.1, 0.9, 0.5, 0.0, 1.0, 0.3]]])
    loss = overlap_focal_loss(logits, target, attention, gamma=gamma, mode=mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_gradient_value_of_a_confidently_wrong_positive() -> None:
    # y = 1, z = -100: p ~ 0, loss ~ -alpha * log(p) = alpha * 100, d loss / d z -> -alpha
    logits = torch.tensor([[[-100.0]]], requires_grad=True)
    loss = overlap_focal_loss(logits, torch.ones(1, 1, 1), alpha=ALPHA, gamma=GAMMA)
    loss.backward()
    assert loss.item() == pytest.approx(ALPHA * 100.0, rel=1e-6)
    assert logits.grad.item() == pytest.approx(-ALPHA, rel=1e-6)


def test_valid_mask_averages_over_valid_pixels_only() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 4, generator=generator, requires_grad=True)
    target = (torch.rand(1, 4, 4, generator=generator) > 0.5).float()
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :2] = True
    masked = overlap_focal_loss(logits, target, valid=valid)
    subset = binary_focal_loss(logits[valid], target[valid]).mean()
    assert masked.item() == pytest.approx(subset.item(), rel=1e-6)
    masked.backward()
    assert (logits.grad[~valid] == 0).all() and (logits.grad[valid] != 0).any()
    logits.grad = None
    none = overlap_focal_loss(logits, target, valid=torch.zeros_like(valid))
    none.backward()
    assert none.item() == 0.0 and (logits.grad == 0).all()


def test_bad_inputs_are_clear_errors() -> None:
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match=r"target must have the shape of logits \(1, 2, 2\)"):
        overlap_focal_loss(x, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="attention must have the shape"):
        overlap_focal_loss(x, x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown focal loss mode 'eq4'"):
        overlap_focal_loss(x, x, mode="eq4")
    with pytest.raises(ValueError, match="alpha must be in"):
        overlap_focal_loss(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        overlap_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="valid must be a bool mask"):
        overlap_focal_loss(x, x, valid=torch.ones(1, 2, 2))
