"""Tests of the DeepACEv2 detector: backbone, HNAS sampler, RoI-head switches, post-processing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork

from cytobench.models.deepace import (
    DeepACE,
    DeepACERegionProposalNetwork,
    HardNegativeSampler,
    build_deepace,
    build_single_level_anchor_generator,
    build_single_level_fpn,
)
from cytobench.models.deepace.roi_heads import scale_gradient

BASE_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
SMALL: dict[str, Any] = {
    "backbone": "resnet18",
    "min_size": 128,
    "max_size": 128,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 64,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 64,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
}


def _small(**overrides: Any) -> DeepACE:
    return build_deepace(2, **{**SMALL, **overrides})


def _batch(
    empty: tuple[bool, bool] = (False, True),
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 128, 128, generator=g), torch.rand(3, 128, 120, generator=g)]
    boxes = torch.tensor([[10.0, 10.0, 40.0, 90.0], [20.0, 15.0, 50.0, 80.0], [70.0, 60.0, 85.0, 120.0]])
    targets = []
    for is_empty in empty:
        b = boxes[:0] if is_empty else boxes
        targets.append({"boxes": b.clone(), "labels": torch.ones(len(b), dtype=torch.int64)})
    return images, targets


def _losses(
    model: DeepACE, empty: tuple[bool, bool] = (False, True), seed: int = 1
) -> dict[str, torch.Tensor]:
    images, targets = _batch(empty)
    model.train()
    torch.manual_seed(seed)
    return model(images, targets)


# ---------------------------------------------------------------- backbone and anchors
def test_single_level_backbone_returns_one_map_at_stride_8() -> None:
    body = build_single_level_fpn("resnet18", "P3", trainable_layers=5)
    body.eval()
    with torch.no_grad():
        out = body(torch.rand(1, 3, 128, 128))
    assert list(out) == ["0"]
    assert out["0"].shape == (1, 256, 16, 16)
    assert body.out_channels == 256 and body.stride == 8


def test_single_level_backbone_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="fpn level"):
        build_single_level_fpn("resnet18", "P7")


def test_anchor_generator_has_36_anchors_per_location() -> None:
    gen = build_single_level_anchor_generator()
    assert gen.num_anchors_per_location() == [36]
    assert gen.sizes == ((32, 64, 96, 128),)
    ratios = torch.tensor(gen.aspect_ratios[0])
    expected = torch.tensor([1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.allclose(ratios, expected)
    base = gen.generate_anchors(gen.sizes[0], gen.aspect_ratios[0])  # (36, 4) centred, ordered ratio-major
    heights, widths = base[:, 3] - base[:, 1], base[:, 2] - base[:, 0]
    assert torch.allclose(heights / widths, expected.repeat_interleave(4), rtol=0.05)


# ---------------------------------------------------------------- HNAS sampler
def _strata_vector(
    n_pos: int, n_hard: int, n_easy: int, n_ignored: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and max IoUs: positives (0.8), hard (0.2), easy (0.05), matcher-ignored in v2's hard range."""
    iou = torch.tensor([0.8] * n_pos + [0.2] * n_hard + [0.05] * n_easy + [0.6] * n_ignored)
    labels = torch.tensor([1.0] * n_pos + [0.0] * (n_hard + n_easy) + [-1.0] * n_ignored)
    return labels, iou


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ((10, 20, 20), (4, 6, 6)),  # every stratum full: 25 % / 37.5 % / 37.5 % of 16
        ((2, 3, 50), (2, 3, 11)),  # short positives and short hard: filled with easy negatives
        ((0, 100, 2), (0, 14, 2)),  # no positives, short easy: filled with hard negatives
        ((1, 0, 0), (1, 0, 0)),  # nothing to fill with
    ],
)
def test_hnas_counts_per_stratum(available: tuple[int, int, int], expected: tuple[int, int, int]) -> None:
    sampler = HardNegativeSampler(16, 0.25, 0.5, (0.1, 0.5), 0.1, generator=torch.Generator().manual_seed(0))
    labels, iou = _strata_vector(*available)
    (pos,), (neg,) = sampler([labels], [iou])
    n_pos, n_hard, _ = available
    hard_range = torch.zeros_like(pos, dtype=torch.bool)
    hard_range[n_pos : n_pos + n_hard] = True
    assert int(pos.sum()) == expected[0] and bool((labels[pos.bool()] == 1).all())
    assert int((neg.bool() & hard_range).sum()) == expected[1]
    assert int((neg.bool() & ~hard_range).sum()) == expected[2]
    assert not bool((pos.bool() & neg.bool()).any())


def test_hnas_v2_samples_matcher_ignored_anchors_in_hard_range() -> None:
    # IoU 0.4 anchors are ignored by the RPN matcher (0.3 <= IoU < 0.7) but are v2 hard negatives.
    labels = torch.tensor([-1.0] * 10 + [0.0] * 10)
    iou = torch.tensor([0.4] * 10 + [0.0] * 10)
    (_,), (neg,) = HardNegativeSampler(8, 0.25, 0.5, (0.1, 0.5), 0.1)([labels], [iou])
    assert int(neg[:10].sum()) == 4 and int(neg[10:].sum()) == 4


def test_hnas_v1_and_v2_criteria() -> None:
    labels = torch.tensor([0.0, 0.0, -1.0, -1.0, 1.0])
    iou = torch.tensor([0.05, 0.2, 0.35, 0.6, 0.75])
    v2 = HardNegativeSampler(hard_iou=(0.1, 0.5), easy_iou_below=0.1).strata(labels, iou)
    v1 = HardNegativeSampler(hard_iou=(0.3, 0.7), easy_iou_below=0.3).strata(labels, iou)
    assert [m.tolist() for m in v2] == [
        [False, False, False, False, True],
        [False, True, True, False, False],
        [True, False, False, False, False],
    ]
    assert v1[1].tolist() == [False, False, True, True, False]
    assert v1[2].tolist() == [True, True, False, False, False]


def test_builder_wires_hnas_criteria() -> None:
    v1 = _small(hnas_criterion="v1").rpn
    assert isinstance(v1, DeepACERegionProposalNetwork)
    assert v1.hnas_sampler.hard_iou == (0.3, 0.7) and v1.hnas_sampler.easy_iou_below == 0.3
    assert _small().rpn.hnas_sampler.hard_iou == (0.1, 0.5)
    assert type(_small(hnas=False).rpn) is RegionProposalNetwork


# ---------------------------------------------------------------- training losses
@pytest.mark.parametrize("empty", [(False, True), (True, True)])
def test_empty_targets_give_finite_losses(empty: tuple[bool, bool]) -> None:
    torch.manual_seed(0)
    losses = _losses(_small(), empty)
    assert set(losses) == BASE_KEYS | {"loss_pull", "loss_push", "loss_tnrl"}
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()


def test_fixed_seed_losses_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append({k: float(v.detach()) for k, v in _losses(_small(), seed=3).items()})
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("switches", "extra"),
    [
        ({"template": True, "tnrl": True}, {"loss_pull", "loss_push", "loss_tnrl"}),
        ({"template": False, "tnrl": True, "postprocess": "soft"}, {"loss_tnrl"}),
        ({"template": True, "tnrl": False}, {"loss_pull", "loss_push"}),
        ({"template": False, "tnrl": False, "hnas": False, "postprocess": "nms"}, set()),
    ],
)
def test_each_switch_adds_exactly_its_losses(switches: dict[str, Any], extra: set[str]) -> None:
    torch.manual_seed(0)
    losses = _losses(_small(**switches))
    assert set(losses) == BASE_KEYS | extra
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


def test_two_sgd_steps_stay_finite() -> None:
    torch.manual_seed(0)
    model = _small()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    images, targets = _batch((False, False))
    model.train()
    for _ in range(2):
        losses = model(images, targets)
        total = sum(losses.values())
        assert math.isfinite(float(total.detach()))
        opt.zero_grad()
        total.backward()
        opt.step()


@pytest.mark.parametrize("scale", [0.0, 0.25, 1.0])
def test_scale_gradient_keeps_values_and_scales_gradient(scale: float) -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = scale_gradient(x, scale)
    assert torch.equal(y, x)
    if scale == 0.0:  # detached: nothing flows back
        assert not y.requires_grad
        return
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, scale * torch.tensor([1.0, 2.0, 3.0]))


def _backbone_grad_norm(model: DeepACE, key: str) -> float:
    loss = _losses(model, (False, False))[key]
    params = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]
    return float(torch.sqrt(sum((g**2).sum() for g in grads))) if grads else 0.0


def test_template_feature_grad_scales_what_reaches_the_backbone() -> None:
    """Pull / push change the backbone in proportion to ``template_feature_grad``; the branch still learns."""
    norms = {}
    for scale in (1.0, 0.5, 0.0):
        torch.manual_seed(0)
        model = _small(template_feature_grad=scale)
        norms[scale] = _backbone_grad_norm(model, "loss_push") + _backbone_grad_norm(model, "loss_pull")
        if scale == 0.0:
            push = _losses(model, (False, False))["loss_push"]
            fc_grad = torch.autograd.grad(push, model.roi_heads.template.fc.weight)[0]
            assert fc_grad.abs().sum() > 0
    assert norms[1.0] > 0
    assert norms[0.5] == pytest.approx(0.5 * norms[1.0], rel=1e-4)
    assert norms[0.0] == 0.0
    with pytest.raises(ValueError, match="template_feature_grad"):
        _small(template_feature_grad=1.5)


# ---------------------------------------------------------------- inference and post-processing
@pytest.mark.parametrize("mode", ["soft", "eg"])
def test_score_decaying_postprocess_returns_embeddings_and_decayed_scores(mode: str) -> None:
    torch.manual_seed(0)
    model = _small(postprocess=mode, box_score_thresh=0.01)
    heads = model.roi_heads
    captured: dict[str, Any] = {}
    candidates, postprocess = heads._candidates, heads.postprocess_detections

    def capture_candidates(*args: Any) -> Any:
        captured["cands"] = candidates(*args)
        return captured["cands"]

    def capture_final(*args: Any) -> Any:
        captured["final"] = postprocess(*args)
        return captured["final"]

    heads._candidates = capture_candidates
    heads.postprocess_detections = capture_final
    model.eval()
    images, _ = _batch()
    with torch.no_grad():
        preds = model(images)
    decayed = 0
    for i, pred in enumerate(preds):
        assert set(pred) == {"boxes", "scores", "labels", "embeddings"}
        m = len(pred["scores"])
        assert pred["embeddings"].shape == (m,) and pred["boxes"].shape == (m, 4)
        assert m <= 100 and bool((pred["scores"] >= 0.01).all())
        raw_boxes, raw_scores, _ = captured["cands"][i]
        boxes = captured["final"][0][i]
        for box, score in zip(boxes, captured["final"][1][i]):
            j = torch.where((raw_boxes == box).all(dim=1))[0]
            assert j.numel() >= 1
            raw = float(raw_scores[j].max())
            assert float(score) <= raw + 1e-6
            decayed += float(score) < raw - 1e-6
    assert decayed > 0


def test_plain_nms_with_template_returns_embeddings_and_empty_predictions_work() -> None:
    torch.manual_seed(0)
    model = _small(postprocess="nms", box_score_thresh=0.999)
    model.eval()
    with torch.no_grad():
        preds = model(_batch()[0])
    for pred in preds:
        assert pred["boxes"].shape == (0, 4) and pred["embeddings"].shape == (0,)
    torch.manual_seed(0)
    model = _small(postprocess="eg", box_score_thresh=0.999)
    model.eval()
    with torch.no_grad():
        assert all(p["embeddings"].numel() == 0 for p in model(_batch()[0]))


def test_baseline_has_no_embeddings() -> None:
    torch.manual_seed(0)
    model = _small(template=False, tnrl=False, hnas=False, postprocess="nms")
    model.eval()
    with torch.no_grad():
        preds = model(_batch()[0])
    assert all(set(p) == {"boxes", "scores", "labels"} for p in preds)


def test_loss_hyperparameters_reach_the_losses() -> None:
    """pull_theta / pull_lambda / push_delta / tnrl_sigma are wired; push margin 0 leaves nothing to push."""
    model = _small(pull_theta=0.3, pull_lambda=1.0, push_delta=0.0, tnrl_sigma=0.2)
    assert model.roi_heads.template_kwargs == {"theta": 0.3, "lam": 1.0, "delta": 0.0}
    assert model.roi_heads.tnrl_sigma == 0.2
    torch.manual_seed(0)
    assert float(_losses(model)["loss_push"]) == 0.0  # max(0 - |de|, 0)
    torch.manual_seed(0)
    assert float(_losses(_small())["loss_push"]) > 0.0  # the paper's margin 1 at init


def test_eg_without_template_raises() -> None:
    with pytest.raises(ValueError, match="template"):
        _small(template=False, postprocess="eg")


def test_unknown_options_raise() -> None:
    with pytest.raises(ValueError, match="postprocess"):
        _small(postprocess="greedy", template=True)
    with pytest.raises(ValueError, match="hnas_criterion"):
        _small(hnas_criterion="v3")
    with pytest.raises(TypeError, match="unknown"):
        _small(rpn_typo=1)
