"""Soft-NMS and Embedding-Guided NMS (DeepACEv2 Algorithm 1) on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from cytobench.ops import box_iog, embedding_guided_nms, embedding_guided_nms_reference, soft_nms

A = [0.0, 0.0, 10.0, 10.0]
B = [5.0, 0.0, 15.0, 10.0]  # IoU(A, B) = 50 / 150 = 1/3
FAR = [100.0, 100.0, 110.0, 110.0]
IOU_AB = 1.0 / 3.0


def t(*rows: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


def eg_factor(iou: float, d: float, sigma: float = 0.5, delta: float = 0.3) -> float:
    """Algorithm 1, line 8-9, written out by hand."""
    s = 1.0 / (1.0 + math.exp(-2.0 * (d - delta)))
    return math.exp(-(iou ** (1.5 + s)) / sigma)


def test_box_iog_divides_by_second_box() -> None:
    a = t(A)
    b = t(B, [0, 0, 5, 5], FAR, [3, 3, 3, 8])  # last one has zero area
    torch.testing.assert_close(box_iog(a, b), torch.tensor([[0.5, 1.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(box_iog(b, a).T, torch.tensor([[0.5, 0.25, 0.0, 0.0]], dtype=torch.float64))
    assert box_iog(t(), a).shape == (0, 1)


def test_soft_nms_gaussian_decay_order_and_disjoint_boxes() -> None:
    keep, new = soft_nms(t(A, B, FAR), torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64))
    decayed = 0.8 * math.exp(-(IOU_AB**2) / 0.5)  # = 0.6406
    assert keep.tolist() == [0, 2, 1]  # B fell below the untouched FAR box
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, decayed], dtype=torch.float64))
    assert keep.dtype == torch.int64 and new.dtype == torch.float64


def test_soft_nms_sigma_and_threshold() -> None:
    boxes, scores = t(A, B, FAR), torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    _, new = soft_nms(boxes, scores, sigma=0.1)
    assert new[-1].item() == pytest.approx(0.8 * math.exp(-(IOU_AB**2) / 0.1))
    keep, new = soft_nms(boxes, scores, score_threshold=0.65)  # 0.6406 < 0.65: B is dropped
    assert keep.tolist() == [0, 2] and new.tolist() == pytest.approx([0.9, 0.7])
    keep, _ = soft_nms(boxes, scores, max_keep=2)
    assert keep.tolist() == [0, 2]


def test_soft_nms_decays_cumulatively_over_steps() -> None:
    c = [2.0, 0.0, 12.0, 10.0]  # IoU(A, C) = 80/120, IoU(B, C) = 70/130
    keep, new = soft_nms(t(A, B, c), torch.tensor([0.9, 0.5, 0.8], dtype=torch.float64))
    s_b = 0.5 * math.exp(-(IOU_AB**2) / 0.5)  # 0.4004 after A
    s_c = 0.8 * math.exp(-((80 / 120) ** 2) / 0.5)  # 0.3289 after A: B goes next
    expected = [0.9, s_b, s_c * math.exp(-((70 / 130) ** 2) / 0.5)]  # C decays again when B is taken
    assert keep.tolist() == [0, 1, 2]
    assert new.tolist() == pytest.approx(expected)


def test_soft_nms_empty_input_and_ties() -> None:
    keep, new = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert new.shape == (0,) and new.dtype == torch.float32
    keep, new = soft_nms(t(FAR, A, B), torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
    assert keep.tolist() == [0, 1, 2]  # equal scores: the lowest index first
    keep, _ = soft_nms(t(A, FAR), torch.zeros(2, dtype=torch.float64))
    assert keep.tolist() == [0, 1]


def test_soft_nms_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="scores must have shape"):
        soft_nms(t(A, B), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="boxes must have shape"):
        soft_nms(torch.zeros(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        soft_nms(t(A), torch.tensor([-0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(t(A), torch.tensor([0.1], dtype=torch.float64), sigma=0.0)


def test_eg_nms_far_embeddings_decay_lighter_than_soft_nms() -> None:
    boxes, scores = t(A, B), torch.tensor([0.9, 0.8], dtype=torch.float64)
    keep, new = embedding_guided_nms(boxes, scores, torch.tensor([0.0, 1.0], dtype=torch.float64))
    # d = 1 > 0.3: S = 1/(1+e^-1.4) = 0.80218, exponent 2.30218, (1/3)^2.30218 = 0.07972
    expected = 0.8 * eg_factor(IOU_AB, 1.0)
    assert expected == pytest.approx(0.8 * math.exp(-0.07972 / 0.5), rel=1e-4)  # = 0.68209
    assert keep.tolist() == [0, 1] and new[1].item() == pytest.approx(expected)
    assert new[1].item() > soft_nms(boxes, scores)[1][1].item()  # lighter than Soft-NMS (0.64059)


def test_eg_nms_near_embeddings_decay_heavier_than_soft_nms() -> None:
    boxes, scores = t(A, B), torch.tensor([0.9, 0.8], dtype=torch.float64)
    _, new = embedding_guided_nms(boxes, scores, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # d = 0 < 0.3: S = 1/(1+e^0.6) = 0.35434, exponent 1.85434, (1/3)^1.85434 = 0.13039
    expected = 0.8 * eg_factor(IOU_AB, 0.0)
    assert expected == pytest.approx(0.8 * math.exp(-0.13039 / 0.5), rel=1e-4)  # = 0.61636
    assert new[1].item() == pytest.approx(expected)
    assert new[1].item() < soft_nms(boxes, scores)[1][1].item()


def test_eg_nms_equals_soft_nms_at_delta_and_ignores_disjoint_boxes() -> None:
    boxes, scores = t(A, B, FAR), torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    emb = torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)  # d(A, B) = delta: exponent exactly 2
    keep, new = embedding_guided_nms(boxes, scores, emb)
    keep_s, new_s = soft_nms(boxes, scores)
    assert keep.tolist() == keep_s.tolist() == [0, 2, 1]
    torch.testing.assert_close(new, new_s)
    assert new[1].item() == 0.7  # FAR overlaps nothing: untouched whatever its embedding


def test_eg_nms_vector_embeddings_use_euclidean_distance() -> None:
    boxes, scores = t(A, B), torch.tensor([0.9, 0.8], dtype=torch.float64)
    vec = torch.tensor([[0.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # |.| = 1
    _, new_vec = embedding_guided_nms(boxes, scores, vec)
    _, new_1d = embedding_guided_nms(boxes, scores, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(new_vec, new_1d)
    _, new_col = embedding_guided_nms(boxes, scores, torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(new_col, new_1d)


def test_eg_nms_delta_sigma_and_threshold() -> None:
    boxes, scores = t(A, B), torch.tensor([0.9, 0.8], dtype=torch.float64)
    emb = torch.tensor([0.0, 0.5], dtype=torch.float64)
    _, new = embedding_guided_nms(boxes, scores, emb, sigma=0.2, delta=0.1)
    assert new[1].item() == pytest.approx(0.8 * eg_factor(IOU_AB, 0.5, sigma=0.2, delta=0.1))
    keep, _ = embedding_guided_nms(boxes, scores, emb, score_threshold=0.7)
    assert keep.tolist() == [0]


def test_eg_nms_empty_and_bad_embeddings() -> None:
    keep, new = embedding_guided_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    assert keep.shape == (0,) and new.shape == (0,) and keep.dtype == torch.int64
    with pytest.raises(ValueError, match="embeddings must have shape"):
        embedding_guided_nms(t(A, B), torch.tensor([0.9, 0.8], dtype=torch.float64), torch.zeros(3))


def random_candidates(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(12, 2, generator=g, dtype=torch.float64) * 150
    pick = torch.randint(0, 12, (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g, dtype=torch.float64) * 6
    wh = 10 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dim", [None, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_eg_nms_equals_reference_loop_on_random_input(dim: int | None, threshold: float) -> None:
    boxes, scores = random_candidates(80, seed=7)
    g = torch.Generator().manual_seed(11)
    shape = (80,) if dim is None else (80, dim)
    emb = torch.rand(shape, generator=g, dtype=torch.float64)
    keep, new = embedding_guided_nms(boxes, scores, emb, score_threshold=threshold)
    keep_ref, new_ref = embedding_guided_nms_reference(boxes, scores, emb, score_threshold=threshold)
    assert keep.tolist() == keep_ref.tolist()
    torch.testing.assert_close(new, new_ref)
    assert bool((new[1:] <= new[:-1]).all())  # decayed scores come out non-increasing


def test_eg_nms_float32_matches_reference() -> None:
    boxes, scores = random_candidates(50, seed=3)
    emb = torch.linspace(0, 2, 50, dtype=torch.float64)
    keep, new = embedding_guided_nms(boxes.float(), scores.float(), emb.float())
    keep_ref, new_ref = embedding_guided_nms_reference(boxes, scores, emb)
    assert sorted(keep.tolist()) == sorted(keep_ref.tolist()) == list(range(50))
    torch.testing.assert_close(new.double(), new_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_soft_nms_equals_reference_loop_on_random_input(threshold: float) -> None:
    """Algorithm 1 without embeddings is Gaussian Soft-NMS: the literal loop with exponent 2."""
    boxes, scores = random_candidates(120, seed=5)
    keep, new = soft_nms(boxes, scores, score_threshold=threshold)
    keep_ref, new_ref = embedding_guided_nms_reference(boxes, scores, None, score_threshold=threshold)
    assert keep.tolist() == keep_ref.tolist()
    torch.testing.assert_close(new, new_ref)


@pytest.mark.parametrize("with_embeddings", [False, True])
def test_max_keep_is_the_first_selections(with_embeddings: bool) -> None:
    """The RoI head caps selections at detections_per_img: equal to selecting all, then the top k."""
    boxes, scores = random_candidates(150, seed=9)
    emb = torch.rand(150, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(**kw: int) -> tuple[torch.Tensor, torch.Tensor]:
        if with_embeddings:
            return embedding_guided_nms(boxes, scores, emb, **kw)
        return soft_nms(boxes, scores, **kw)

    keep_all, new_all = run()
    keep, new = run(max_keep=40)
    assert keep.tolist() == keep_all[:40].tolist()
    torch.testing.assert_close(new, new_all[:40])
