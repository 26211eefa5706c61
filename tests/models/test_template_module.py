"""DeepACEv2 Template Module (Eq. 1-5): masks by hand, shapes, empty batches, pull / push losses."""

from __future__ import annotations

import math

import pytest
import torch

from cytobench.models.deepace import TEMPLATE_NAMES, TemplateModule, build_template_masks, template_losses

D, TD, H, V, C = range(5)
E = math.exp

# (ID_row, ID_col) -> (T_D, T_TD, T_H, T_V, T_C) from Eq. 1 with x = ID_row - 3, y = ID_col - 3
HAND = {
    (3, 3): (1.0, 1.0, 1.0, 1.0, E(-5 / 3)),  # x = y = 0
    (0, 6): (E(-12), 1.0, E(-3), E(-3), E(-13 / 3)),  # x = -3, y = 3: (x-y)^2 = 36, x^2+y^2-5 = 13
    (1, 3): (E(-4 / 3), E(-4 / 3), 1.0, E(-4 / 3), E(-1 / 3)),  # x = -2, y = 0
    (3, 5): (E(-4 / 3), E(-4 / 3), E(-4 / 3), 1.0, E(-1 / 3)),  # x = 0, y = 2: T_H depends on the column
    (4, 5): (E(-1 / 3), E(-3), E(-4 / 3), E(-1 / 3), 1.0),  # x = 1, y = 2: on the ring x^2 + y^2 = 5
    (6, 2): (E(-16 / 3), E(-4 / 3), E(-1 / 3), E(-3), E(-5 / 3)),  # x = 3, y = -1
}

GTS = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], dtype=torch.float64)


@pytest.mark.parametrize("pos", sorted(HAND))
def test_template_masks_match_eq1_by_hand(pos: tuple[int, int]) -> None:
    masks = build_template_masks(7, dtype=torch.float64)
    assert masks.shape == (5, 7, 7) and len(TEMPLATE_NAMES) == 5
    assert masks[:, pos[0], pos[1]].tolist() == pytest.approx(HAND[pos])


def test_template_mask_symmetries() -> None:
    m = build_template_masks()
    torch.testing.assert_close(m[D], m[D].T)  # constant along the main diagonal
    torch.testing.assert_close(m[TD], m[D].flip(1))  # T_TD(x, y) = T_D(x, -y)
    assert bool((m[H] == m[H][0:1]).all()) and bool((m[V] == m[V][:, 0:1]).all())
    torch.testing.assert_close(m[H], m[V].T)
    assert float(m.max()) == 1.0 and float(m.min()) > 0


def test_forward_shapes_and_empty_batch() -> None:
    module = TemplateModule(generator=torch.Generator().manual_seed(0))
    assert module(torch.randn(4, 256, 7, 7)).shape == (4, 1)
    empty = torch.zeros(0, 256, 7, 7, requires_grad=True)
    out = module(empty)
    assert out.shape == (0, 1)
    pull, push = template_losses(out, torch.zeros(0, dtype=torch.int64), GTS)
    assert pull.item() == 0.0 and push.item() == 0.0
    (pull + push).backward()  # a graph exists even with nothing to pull or push
    assert TemplateModule(in_channels=8, embedding_dim=3)(torch.randn(2, 8, 7, 7)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"RoI features \(R, 256, 7, 7\)"):
        module(torch.randn(2, 256, 14, 14))


def test_forward_by_hand_concatenates_masks_in_order() -> None:
    module = TemplateModule(in_channels=2)
    with torch.no_grad():
        module.fuse.weight.zero_()
        module.fuse.weight[0, 1] = 1.0  # the fused map is ReLU(channel 1)
        module.fuse.bias.zero_()
        module.fc.weight.zero_()
        module.fc.weight[0, C * 49 + 0 * 7 + 6] = 1.0  # T_C at (row 0, col 6)
        module.fc.weight[0, H * 49 + 3 * 7 + 5] = 2.0  # T_H at (row 3, col 5)
        module.fc.bias.fill_(0.5)
    x = torch.zeros(1, 2, 7, 7)
    x[0, 1, 0, 6] = 3.0
    x[0, 1, 3, 5] = -4.0  # removed by the ReLU
    x[0, 0] = 100.0  # channel 0 is not used
    assert module(x).item() == pytest.approx(0.5 + 3.0 * E(-13 / 3))
    x[0, 1, 3, 5] = 4.0
    assert module(x).item() == pytest.approx(0.5 + 3.0 * E(-13 / 3) + 2.0 * 4.0 * E(-4 / 3))


def test_masks_are_non_persistent_buffers_that_follow_the_module() -> None:
    module = TemplateModule().double()
    assert module.masks.dtype == torch.float64
    assert "masks" not in module.state_dict()
    assert set(module.state_dict()) == {"fuse.weight", "fuse.bias", "fc.weight", "fc.bias"}


def test_pull_and_push_by_hand() -> None:
    # gt0: embeddings 0 and 1 (mean 0.5, e_hat 0.5 each); gt1: 0.8; gt2 (isolated): 7
    emb = torch.tensor([[0.0], [1.0], [0.8], [7.0], [9.0]])
    idx = torch.tensor([0, 0, 1, 2, -1])  # the last proposal is background: ignored
    pull, push = template_losses(emb, idx, GTS)
    assert pull.item() == pytest.approx(2 * (0.5 + 0.5) ** 2 * 0.5**2 / 4)  # N = 4 positives
    # rep(gt0) = gt1, rep(gt1) = gt0, gt2 isolated: 2 terms of max(1 - |0.5 - 0.8|, 0) = 0.7
    assert push.item() == pytest.approx(0.7)
    pull, push = template_losses(emb.squeeze(1), idx, GTS, theta=0.0, lam=0.0, delta=2.0)
    assert pull.item() == pytest.approx(2 * 0.25 / 4)  # without the focal factor: Eq. 2
    assert push.item() == pytest.approx(1.7)


def test_pull_zero_for_equal_embeddings_push_zero_beyond_delta() -> None:
    emb = torch.tensor([[0.2], [0.2], [1.5], [1.5]], requires_grad=True)
    pull, push = template_losses(emb, torch.tensor([0, 0, 1, 1]), GTS)
    assert pull.item() == 0.0 and push.item() == 0.0  # |0.2 - 1.5| = 1.3 > delta = 1
    (pull + push).backward()
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all())
    vec = torch.tensor([[0.0, 0.2], [0.0, 0.2], [0.6, 1.0], [0.6, 1.0]], requires_grad=True)
    pull, push = template_losses(vec, torch.tensor([0, 0, 1, 1]), GTS)
    assert pull.item() == 0.0 and push.item() == 0.0  # Euclidean distance 1.0 = delta
    (pull + push).backward()
    assert vec.grad is not None and bool(torch.isfinite(vec.grad).all())


def test_push_skips_gts_without_proposals_and_isolated_gts() -> None:
    emb = torch.tensor([0.0, 0.1, 0.2])
    pull, push = template_losses(emb, torch.tensor([0, 0, 2]), GTS)  # gt1 has no proposals
    assert push.item() == 0.0
    assert pull.item() == pytest.approx(2 * (0.5 + 0.05) ** 2 * 0.05**2 / 3)
    with pytest.raises(ValueError, match="refers to ground truth 3"):
        template_losses(emb, torch.tensor([0, 0, 3]), GTS)


def test_fixed_seed_losses_are_reproducible_and_differentiable() -> None:
    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        module = TemplateModule(generator=torch.Generator().manual_seed(0))
        feats = torch.rand(6, 256, 7, 7, generator=torch.Generator().manual_seed(1))
        emb = module(feats)
        pull, push = template_losses(emb, torch.tensor([0, 0, 1, 1, 2, -1]), GTS)
        (0.1 * pull + 0.1 * push).backward()
        assert module.fc.weight.grad is not None
        return pull.detach(), push.detach(), module.fc.weight.grad.clone()

    first, second = run(), run()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first[0].item() > 0 and bool(torch.isfinite(first[2]).all())
