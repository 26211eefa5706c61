"""SparseSEU-Net: IAM, matching, Dice, losses, every variant's train / eval contract (small, fixed seeds)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from cytobench.errors import BadInputError, CytobenchError
from cytobench.models.sparse_seunet import build_sparse_seunet
from cytobench.models.sparse_seunet.decoder import InstanceBranch, coordinate_maps
from cytobench.models.sparse_seunet.losses import InstanceLossConfig, instance_losses, mask_iou
from cytobench.models.sparse_seunet.matching import (
    dice_scores,
    hungarian_match,
    matching_scores,
    pairwise_dice,
)
from cytobench.models.sparse_seunet.postprocess import instances_from_outputs, mask_boxes, maskness

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "depth": 2,
    "width": 8,
    "num_instances": 10,
    "branch_channels": 8,
    "kernel_dim": 8,
    "branch_convs": 2,
}
VARIANTS = {
    "single": {},
    "multi": {"aggregation": "multi"},
    "overlap_head": {"overlap_head": True},
    "attention_mask": {"overlap_head": True, "attention_mask": True},
    "objectness": {"objectness": True},
    "multi_all": {"aggregation": "multi", "overlap_head": True, "attention_mask": True, "objectness": True},
}


def build(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_sparse_seunet(3, **{**SMALL, **kw})


def batch(empty: bool = False) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes; the first has two cells (amodal masks overlapping) and a nucleus."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 30, 27, generator=g), torch.rand(2, 24, 32, generator=g)]
    amodal = torch.zeros(3, 30, 27, dtype=torch.uint8)
    amodal[0, 3:14, 4:16] = 1
    amodal[1, 10:26, 10:22] = 1
    amodal[2, 6:9, 7:10] = 1  # a nucleus (label 2): not an object of the model
    visible = amodal.clone()
    visible[0, 10:14, 10:16] = 0
    labels = torch.tensor([1, 1, 2])
    if empty:
        amodal, visible, labels = amodal[:0], visible[:0], labels[:0]
    overlap = (amodal[:2].sum(0) > 1).float() if not empty else torch.zeros(30, 27)
    targets = [
        {
            "masks": visible,
            "amodal_masks": amodal,
            "labels": labels,
            "overlap": overlap,
            "overlap_attention": torch.rand(30, 27, generator=g),
        },
        {
            "masks": torch.zeros(0, 24, 32, dtype=torch.uint8),
            "labels": torch.zeros(0, dtype=torch.int64),
            "overlap": torch.zeros(24, 32),
            "overlap_attention": torch.rand(24, 32, generator=g),
        },
    ]
    return images, targets


# ------------------------------------------------------------------------------------------ IAM
def test_iam_shapes_normalisation_and_instance_features() -> None:
    torch.manual_seed(0)
    branch = InstanceBranch(in_channels=5, dim=6, num_convs=2, num_instances=7, kernel_dim=4, objectness=True)
    x = torch.randn(2, 5, 9, 11)
    valid = torch.ones(2, 1, 9, 11)
    valid[1, :, 6:, :] = 0  # the second image is 6 x 11 inside the padded batch
    out = branch(x, valid)
    assert out["iam"].shape == (2, 7, 9, 11)
    assert out["logits"].shape == (2, 7) and out["objectness"].shape == (2, 7)
    assert out["kernels"].shape == (2, 7, 4) and out["features"].shape == (2, 7, 6)
    normalised = out["iam"] / out["normalizer"][..., None, None]  # A'
    torch.testing.assert_close(normalised.sum(dim=(2, 3)), torch.ones(2, 7))
    assert (out["iam"][1, :, 6:, :] == 0).all()  # the padding carries no activation
    features = branch.convs(x, valid)
    expected = torch.einsum("bnhw,bdhw->bnd", normalised, features)  # a = A' X^T, Eq. 4.9, written out
    torch.testing.assert_close(out["features"], expected, rtol=1e-5, atol=1e-6)
    # with the prior bias, every activation starts near 0.01
    assert abs(out["iam"][0].mean().item() - 0.01) < 0.005


def test_coordinate_maps_span_each_image() -> None:
    maps = coordinate_maps([(3, 5), (1, 3)], 3, 5)
    torch.testing.assert_close(maps[0, 0, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(maps[0, 1, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(maps[1, 0, 0, :3], torch.tensor([-1.0, 0.0, 1.0]))
    assert maps[1, 1, 0, 0].item() == 0.0  # a one-pixel side sits at 0


# ------------------------------------------------------------------------------------------ matching
def brute_force(scores: torch.Tensor) -> tuple[float, list[tuple[int, int]]]:
    """Best total score over every one-to-one assignment of min(N, M) pairs."""
    n, m = scores.shape
    best, pairs = -math.inf, []
    if n >= m:
        for perm in itertools.permutations(range(n), m):  # object j -> prediction perm[j]
            total = sum(scores[perm[j], j].item() for j in range(m))
            if total > best:
                best, pairs = total, sorted((perm[j], j) for j in range(m))
    else:
        for perm in itertools.permutations(range(m), n):  # prediction i -> object perm[i]
            total = sum(scores[i, perm[i]].item() for i in range(n))
            if total > best:
                best, pairs = total, [(i, perm[i]) for i in range(n)]
    return best, pairs


@pytest.mark.parametrize("shape", [(4, 3), (5, 5), (6, 2), (3, 1), (2, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_equals_brute_force(shape: tuple[int, int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    cls_prob = torch.rand(shape[0], generator=g)
    dice = torch.rand(shape, generator=g)
    scores = matching_scores(cls_prob, dice, 0.8)
    rows, cols = hungarian_match(scores)
    best, pairs = brute_force(scores)
    assert list(zip(rows.tolist(), cols.tolist())) == pairs
    assert scores[rows, cols].sum().item() == pytest.approx(best, rel=1e-6)


def test_matching_scores_and_empty_matching() -> None:
    scores = matching_scores(torch.tensor([0.5, 1.0]), torch.tensor([[1.0], [0.5]]), 0.8)
    torch.testing.assert_close(scores, torch.tensor([[0.5**0.2], [0.5**0.8]]))  # 0.8706, 0.5743
    rows, cols = hungarian_match(scores)
    assert rows.tolist() == [0] and cols.tolist() == [0]  # 0.8706 beats 0.5743
    rows, cols = hungarian_match(torch.zeros(5, 0))
    assert rows.numel() == cols.numel() == 0


def test_dice_hand_cases() -> None:
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    dice = dice_scores(pred, target)
    expected = torch.tensor(
        [
            [2 / 4, 4 / 4, 0.0],  # half overlap; identical; disjoint
            [1 / 2.5, 2 / 2.5, 0.0],  # soft: 2 * 0.5 / (0.5 + 2); 2 * 1 / (0.5 + 2)
            [0.0, 0.0, 0.0],  # an empty prediction
        ]
    )
    torch.testing.assert_close(dice, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(pairwise_dice(pred, target), expected.diagonal(), atol=1e-4, rtol=0)


def test_mask_iou_maskness_and_boxes_hand_cases() -> None:
    binary = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    target = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]])
    torch.testing.assert_close(mask_iou(binary, target), torch.tensor([0.5, 0.0]))
    prob = torch.tensor([[[0.9, 0.7], [0.2, 0.1]], [[0.1, 0.2], [0.3, 0.4]]])
    torch.testing.assert_close(maskness(prob, prob > 0.5), torch.tensor([0.8, 0.0]))
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    boxes = mask_boxes(masks)
    torch.testing.assert_close(boxes, torch.tensor([[2.0, 1, 5, 3], [0, 4, 1, 5], [0, 0, 0, 0]]))


# ------------------------------------------------------------------------------------------ losses
def test_losses_with_zero_targets_are_the_focal_term_only() -> None:
    cls_logits = torch.zeros(1, 4, requires_grad=True)
    mask_logits = torch.randn(1, 4, 6, 6, requires_grad=True)
    obj = torch.zeros(1, 4, requires_grad=True)
    config = InstanceLossConfig(objectness=True)
    losses = instance_losses(cls_logits, mask_logits, obj, [torch.zeros(0, 6, 6)], [(6, 6)], config)
    # p = 0.5, target 0: (1 - alpha) p^2 log 2 = 0.75 * 0.25 * 0.6931 per prediction, 4 of them, x lambda 2
    assert losses["loss_cls"].item() == pytest.approx(2 * 4 * 0.75 * 0.25 * math.log(2), rel=1e-6)
    for key in ("loss_dice", "loss_mask", "loss_objectness"):
        assert losses[key].item() == 0.0 and losses[key].requires_grad
    sum(losses.values()).backward()
    assert mask_logits.grad is not None and (mask_logits.grad == 0).all()
    assert obj.grad is not None and cls_logits.grad is not None and (cls_logits.grad > 0).all()


def test_losses_with_one_perfect_prediction() -> None:
    gt = torch.zeros(1, 8, 8)
    gt[0, 2:6, 1:5] = 1
    g = torch.Generator().manual_seed(0)
    mask_logits = torch.randn(1, 3, 8, 8, generator=g)
    mask_logits[0, 1] = torch.where(gt[0] > 0, 30.0, -30.0)  # prediction 1 is the object exactly
    cls_logits = torch.tensor([[-5.0, 5.0, -5.0]])
    obj = torch.tensor([[0.0, 20.0, 0.0]])
    for kind in ("bce", "mse"):
        config = InstanceLossConfig(objectness=True, objectness_loss=kind)
        losses = instance_losses(cls_logits, mask_logits, obj, [gt], [(8, 8)], config)
        assert losses["loss_dice"].item() == pytest.approx(0.0, abs=1e-4)  # 1 - 32 / (32 + 1e-4)
        assert losses["loss_mask"].item() == pytest.approx(0.0, abs=1e-10)
        assert losses["loss_cls"].item() == pytest.approx(0.0, abs=1e-5)
        if kind == "mse":  # sigmoid(20) against IoU 1
            assert losses["loss_objectness"].item() == pytest.approx(0.0, abs=1e-12)
        else:  # BCE at target 1: log(1 + e^-20)
            assert losses["loss_objectness"].item() == pytest.approx(math.log1p(math.exp(-20.0)), rel=1e-4)


def test_losses_crop_padding_and_normalise_by_pairs() -> None:
    """Two images in a padded batch: a hand-checked dice term and BCE over the images' own pixels."""
    gt_a = torch.zeros(2, 4, 4)
    gt_a[0, :2, :2] = 1
    gt_a[1, 2:, 2:] = 1
    gt_b = torch.zeros(1, 3, 2)
    gt_b[0, 0, 0] = 1
    mask_logits = torch.full((2, 2, 4, 4), -30.0)
    mask_logits[0, 0] = torch.where(gt_a[1] > 0, 30.0, -30.0)  # prediction 0 is object 1
    mask_logits[0, 1] = torch.where(gt_a[0] > 0, 30.0, -30.0)
    mask_logits[1, 1, :3, :2] = 0.0  # probability 0.5 over image b's 6 pixels; the padding says nothing
    mask_logits[1, 1, 3:, :] = 99.0
    mask_logits[1, 1, :, 2:] = 99.0
    cls_logits = torch.tensor([[3.0, 3.0], [-3.0, 3.0]])
    losses = instance_losses(cls_logits, mask_logits, None, [gt_a, gt_b], [(4, 4), (3, 2)])
    # image b: dice = 2 * 0.5 / (6 * 0.25 + 1) = 0.4 -> 1 - 0.4 = 0.6; three pairs -> lambda 2 * 0.6 / 3
    assert losses["loss_dice"].item() == pytest.approx(2 * 0.6 / 3, rel=1e-4)
    # BCE: 32 near-zero pixels of image a, 6 pixels of log 2 in image b -> lambda 5 * 6 log 2 / 38
    assert losses["loss_mask"].item() == pytest.approx(5 * 6 * math.log(2) / 38, rel=1e-5)


# ------------------------------------------------------------------------------------------ model contract
# sum of the loss terms of `build(seed=0, **VARIANTS[name])` on `batch()` (computed once, hard-coded)
FIXED_SEED_TOTALS = {
    "single": 6.840698,
    "multi": 6.845631,
    "overlap_head": 7.500533,
    "attention_mask": 6.961051,
    "objectness": 7.63269,
    "multi_all": 7.555667,
}


def expected_keys(variant: dict) -> set[str]:
    keys = {"loss_cls", "loss_dice", "loss_mask"}
    keys |= {"loss_objectness"} if variant.get("objectness") else set()
    return keys | ({"loss_overlap"} if variant.get("overlap_head") else set())


def assert_finite_grads(model: torch.nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_fixed_seed_loss(name: str) -> None:
    model = build(seed=0, **VARIANTS[name]).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == expected_keys(VARIANTS[name])
    total = sum(losses.values())
    assert total.item() == pytest.approx(FIXED_SEED_TOTALS[name], rel=2e-5)
    total.backward()
    assert_finite_grads(model)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_empty_targets(name: str) -> None:
    model = build(seed=0, **VARIANTS[name]).train()
    images, targets = batch(empty=True)
    losses = model(images, targets)
    assert set(losses) == expected_keys(VARIANTS[name])
    for key in ("loss_dice", "loss_mask", "loss_objectness"):
        if key in losses:
            assert losses[key].item() == 0.0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert_finite_grads(model)


def test_mask_key_and_object_labels_select_the_learned_masks() -> None:
    images, targets = batch()
    auto = build().target_masks(targets[0], images[0])
    assert auto.shape == (2, 30, 27) and torch.equal(auto, targets[0]["amodal_masks"][:2])
    visible = build(mask_key="masks").target_masks(targets[0], images[0])
    assert torch.equal(visible, targets[0]["masks"][:2])
    assert build(object_labels=None).target_masks(targets[0], images[0]).shape == (3, 30, 27)
    no_masks = {"labels": torch.tensor([1])}
    with pytest.raises(CytobenchError, match="no 'masks'"):
        build().target_masks(no_masks, images[0])
    assert build().target_masks({"labels": torch.zeros(0)}, images[0]).shape == (0, 30, 27)


def test_overlap_head_needs_its_maps() -> None:
    images, targets = batch()
    del targets[1]["overlap_attention"]
    with pytest.raises(CytobenchError, match="overlap_attention"):
        build(overlap_head=True, attention_mask=True).train()(images, targets)


@pytest.mark.parametrize(
    "kw",
    [
        {"aggregation": "pyramid"},
        {"mask_key": "visible"},
        {"attention_mask": True},
        {"objectness_loss": "l1"},
        {"loss_weights": {"box": 1.0}},
        {"num_instances": 0},
    ],
)
def test_bad_config_is_one_line(kw: dict) -> None:
    with pytest.raises(BadInputError):
        build(**kw)


@pytest.mark.parametrize("name", ["single", "multi_all"])
def test_eval_outputs_on_an_odd_sized_image(name: str) -> None:
    model = build(seed=0, score_threshold=0.0, **VARIANTS[name]).eval()
    g = torch.Generator().manual_seed(1)
    odd, big = torch.rand(2, 37, 29, generator=g), torch.rand(2, 41, 44, generator=g)
    (pred,) = model([odd])
    n = SMALL["num_instances"]
    assert pred["masks"].shape == (n, 37, 29) and pred["masks"].dtype == torch.uint8
    assert pred["boxes"].shape == (n, 4) and pred["boxes"].dtype == torch.float32
    assert pred["scores"].shape == (n,) and pred["scores"].dtype == torch.float32
    assert pred["labels"].dtype == torch.int64 and (pred["labels"] == 1).all()
    assert (pred["scores"][:-1] >= pred["scores"][1:]).all()
    torch.testing.assert_close(pred["boxes"], mask_boxes(pred["masks"].bool()))
    # the same image inside a padded batch with a larger one gives the same predictions
    batched = model([odd, big])[0]
    torch.testing.assert_close(batched["scores"], pred["scores"], rtol=1e-4, atol=1e-6)
    assert batched["masks"].shape == (n, 37, 29)
    few = build(seed=0, max_detections=3, score_threshold=0.0, **VARIANTS[name]).eval()([odd])[0]
    assert len(few["scores"]) == 3


def test_score_is_class_times_maskness_times_objectness() -> None:
    mask_logits = torch.full((3, 4, 4), -10.0)
    mask_logits[0, :2, :2] = math.log(0.8 / 0.2)  # 4 pixels at 0.8
    mask_logits[1, :, :] = math.log(0.6 / 0.4)  # 16 pixels at 0.6
    cls_logits = torch.tensor([0.0, math.log(0.9 / 0.1), 0.0])  # class 0.5, 0.9, 0.5; mask 2 is empty
    out = instances_from_outputs(cls_logits, mask_logits, None, score_threshold=0.05, max_detections=10)
    torch.testing.assert_close(out["scores"], torch.tensor([0.9 * 0.6, 0.5 * 0.8]))
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0, 4, 4], [0, 0, 2, 2]]))
    obj = torch.tensor([0.0, 0.0, 0.0])  # objectness 0.5 halves every score
    halved = instances_from_outputs(cls_logits, mask_logits, obj, score_threshold=0.05, max_detections=1)
    torch.testing.assert_close(halved["scores"], torch.tensor([0.5 * 0.9 * 0.6]))


def test_config_builds_the_model() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "conf" / "model" / "sparse_seunet.yaml")
    config.depth, config.width, config.num_instances = 2, 8, 5
    model = instantiate(config, num_classes=3)
    assert model.in_channels == 2 and model.num_instances == 5 and model.max_detections == 5
    assert model.object_labels == (1,) and model.tiles_itself is False
