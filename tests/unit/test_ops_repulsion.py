"""Smooth_ln, RepGT and the Truncated Normalized Repulsion Loss (DeepACEv2 Eq. 6-8) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cytobench.ops import (
    assign_repulsion_targets,
    find_repulsion_gts,
    repulsion_gt_loss,
    smooth_ln,
    truncated_normalized_iog,
    truncated_normalized_repulsion_loss,
)

G = [0.0, 0.0, 10.0, 10.0]  # attracted ground truth
R = [5.0, 0.0, 15.0, 10.0]  # repulsion ground truth: |R| = 100, |G ∩ R| = 50
GTS = torch.tensor([G, R], dtype=torch.float64)
TO_G, TO_R = torch.tensor([0]), torch.tensor([1])


def t(*rows: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4).requires_grad_(grad)


def tnrl(pred: torch.Tensor, sigma: float = 0.5) -> float:
    return truncated_normalized_repulsion_loss(pred, GTS, TO_G, TO_R, sigma=sigma).item()


def test_smooth_ln_matches_its_definition_on_both_branches() -> None:
    x = torch.tensor([0.0, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    expected = [0.0, -math.log(0.7), -math.log(0.5), 0.3 / 0.5 - math.log(0.5), 0.5 / 0.5 - math.log(0.5)]
    assert smooth_ln(x, sigma=0.5).tolist() == pytest.approx(expected)
    assert smooth_ln(x, sigma=0.0).tolist() == pytest.approx(x.tolist())  # sigma = 0: identity
    below, above = smooth_ln(torch.tensor([0.5 - 1e-9, 0.5 + 1e-9], dtype=torch.float64), 0.5).tolist()
    assert below == pytest.approx(above, abs=1e-8)  # continuous at sigma


def test_smooth_ln_gradients_are_finite_up_to_one() -> None:
    x = torch.tensor([0.2, 0.9, 1.0], dtype=torch.float64, requires_grad=True)
    smooth_ln(x, 0.5).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx([1 / 0.8, 2.0, 2.0])  # 1/(1-x) below sigma, 1/(1-sigma) above
    with pytest.raises(ValueError, match="sigma"):
        smooth_ln(x, sigma=1.0)


def test_tnrl_zero_without_overlap_with_repulsion_gt() -> None:
    assert tnrl(t([-20, 0, -10, 10])) == 0.0
    assert repulsion_gt_loss(t([-20, 0, -10, 10]), GTS, TO_R).item() == 0.0


def test_tnrl_ignores_the_overlap_of_attracted_and_repulsion_gt() -> None:
    # A prediction equal to its target overlaps R by |G ∩ R| = 50: RepGT still charges
    # Smooth_ln(0.5), TNRL subtracts that overlap and charges nothing.
    assert tnrl(t(G)) == 0.0
    assert repulsion_gt_loss(t(G), GTS, TO_R).item() == pytest.approx(-math.log(0.5))
    # shifted by 2 px towards R: |B ∩ R| = 70, IoG' = (70 - 50) / (100 - 50) = 0.4
    assert truncated_normalized_iog(t([2, 0, 12, 10]), t(G), t(R)).item() == pytest.approx(0.4)
    assert tnrl(t([2, 0, 12, 10])) == pytest.approx(-math.log(0.6))
    assert tnrl(t([2, 0, 12, 10]), sigma=0.0) == pytest.approx(0.4)
    # coincident with R: IoG' = 1, the upper bound; Smooth_ln(1) = 1 - ln 0.5 with sigma = 0.5
    assert tnrl(t(R)) == pytest.approx(1.0 - math.log(0.5))
    assert tnrl(t(R), sigma=0.0) == pytest.approx(1.0)
    # shifted away from R: IoG' < 0 is truncated to 0
    assert truncated_normalized_iog(t([-3, 0, 7, 10]), t(G), t(R)).item() == pytest.approx(-0.6)
    assert tnrl(t([-3, 0, 7, 10])) == 0.0


def test_tnrl_is_zero_when_attracted_gt_contains_repulsion_gt() -> None:
    gts = torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 10.0, 10.0]], dtype=torch.float64)
    pred = t([0, 0, 20, 20], [4, 4, 11, 11])
    loss = truncated_normalized_repulsion_loss(pred, gts, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert loss.item() == 0.0
    rep = repulsion_gt_loss(pred, gts, torch.tensor([1, 1]))  # IoG = 1: "confused by a large value"
    assert rep.item() == pytest.approx(1.0 - math.log(0.5))


def test_tnrl_hand_computed_mean_over_all_positives() -> None:
    pred = t([2, 0, 12, 10], G, [100, 100, 110, 110])  # 0.4 -> -ln 0.6; 0; no repulsion gt
    gts = torch.cat([GTS, t([100, 100, 110, 110])])
    loss = truncated_normalized_repulsion_loss(pred, gts, torch.tensor([0, 0, 2]), torch.tensor([1, 1, -1]))
    assert loss.item() == pytest.approx(-math.log(0.6) / 3)  # |P+| = 3


def test_tnrl_gradient_by_hand() -> None:
    pred = t([2, 1, 12, 9], grad=True)  # |B ∩ R| = (12 - 5) * (9 - 1) = 56, IoG' = (56 - 50) / 50 = 0.12
    truncated_normalized_repulsion_loss(pred, GTS, TO_G, TO_R).backward()
    # dIoG'/d(x1, y1, x2, y2) = (0, -7, 8, 7) / 50 (x1 = 2 lies outside R); dSmooth_ln/dx = 1 / (1 - 0.12)
    assert pred.grad is not None
    assert pred.grad[0].tolist() == pytest.approx([0.0, -7 / 50 / 0.88, 8 / 50 / 0.88, 7 / 50 / 0.88])
    for box in (G, R, [-20, 0, -10, 10]):
        p = t(box, grad=True)
        truncated_normalized_repulsion_loss(p, GTS, TO_G, TO_R).backward()
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())


def test_losses_with_no_positives_are_zero_with_a_graph() -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = truncated_normalized_repulsion_loss(pred, GTS.float(), empty, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    assert repulsion_gt_loss(pred, GTS.float(), empty).item() == 0.0


def test_loss_input_errors() -> None:
    with pytest.raises(ValueError, match="rep_index must have shape"):
        truncated_normalized_repulsion_loss(t(G), GTS, TO_G, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="refers to ground truth 5"):
        truncated_normalized_repulsion_loss(t(G), GTS, TO_G, torch.tensor([5]))


def test_assign_repulsion_targets_by_iou_with_proposals() -> None:
    gts = t(G, R, [100, 100, 110, 110])
    proposals = t([1, 0, 11, 10], [6, 0, 16, 10], [101, 101, 111, 111])
    gt_index, rep_index = assign_repulsion_targets(proposals, gts)
    assert gt_index.tolist() == [0, 1, 2]
    assert rep_index.tolist() == [1, 0, -1]  # the third overlaps no other ground truth
    gt_index, rep_index = assign_repulsion_targets(proposals, gts, gt_index=torch.tensor([1, 0, 2]))
    assert rep_index.tolist() == [0, 1, -1]  # given attracted gts are excluded instead
    gt_index, rep_index = assign_repulsion_targets(proposals[:1], gts[:1])
    assert gt_index.tolist() == [0] and rep_index.tolist() == [-1]


def test_find_repulsion_gts_skips_isolated_boxes() -> None:
    gts = t(G, R, [12, 0, 20, 10], [100, 100, 110, 110])
    # IoU(G, R) = 1/3, IoU(R, [12..20]) = 30/150 = 0.2, IoU(G, [12..20]) = 0
    assert find_repulsion_gts(gts).tolist() == [1, 0, 1, -1]
    assert find_repulsion_gts(t(G)).tolist() == [-1]
    assert find_repulsion_gts(t()).tolist() == []
