"""SEU-Net: SE gate, head configurations, targets, Eq. 4.1-4.2 losses, eval contract, padding, config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cytobench.errors import BadInputError, CytobenchError
from cytobench.evaluation.pixel import PixelEvaluator
from cytobench.models.seunet import SEUNet, build_seunet, head_target
from cytobench.models.seunet.blocks import SqueezeExcitation
from cytobench.models.seunet.heads import INFERENCE_THRESHOLDS, decoder_groups
from cytobench.models.seunet.losses import OverlapLossConfig, head_losses, masked_bce

ROOT = Path(__file__).resolve().parents[2]

# The thesis' model variants (Fig. 4.4, Tables 5.1-5.3): name -> (heads, decoder).
CONFIGS = {
    "base": (["cytoplasm"], "shared"),
    "multi_channel": (["cytoplasm", "nuclei", "border", "background"], "shared"),
    "2_head": (["cytoplasm", "nuclei"], "decoupled"),
    "3_head": (["cytoplasm", "border", "background"], "decoupled"),
    "4_head": (["cytoplasm", "nuclei", "border", "background"], "decoupled"),
    "overlap": (["cytoplasm", "overlap"], "shared"),
}


def tiny(seed: int = 0, **kw) -> SEUNet:
    torch.manual_seed(seed)
    options = {"depth": 2, "width": 4, "se_reduction": 2, "overlap_loss": "bce", **kw}
    return build_seunet(3, **options)


def semantic_of(height: int, width: int, top: int, left: int) -> torch.Tensor:
    """One square cell of side 10 at (top, left): border ring, cytoplasm, a 4 x 4 nucleus in the middle."""
    sem = torch.zeros(height, width, dtype=torch.int64)
    sem[top : top + 10, left : left + 10] = 3
    sem[top + 1 : top + 9, left + 1 : left + 9] = 1
    sem[top + 3 : top + 7, left + 3 : left + 7] = 2
    return sem


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of unequal, odd sizes: the first has two overlapping cells, the second none."""
    g = torch.Generator().manual_seed(0)
    sem = torch.maximum(semantic_of(21, 26, 2, 3), semantic_of(21, 26, 8, 9))
    overlap = torch.zeros(21, 26, dtype=torch.uint8)
    overlap[8:12, 9:13] = 1
    images = [torch.rand(2, 21, 26, generator=g), torch.rand(2, 15, 13, generator=g)]
    images[0][:, sem > 0] += 0.5  # the cells are brighter: a learnable signal
    targets = [
        {"semantic": sem, "overlap": overlap},
        {
            "semantic": torch.zeros(15, 13, dtype=torch.int64),
            "overlap": torch.zeros(15, 13, dtype=torch.uint8),
        },
    ]
    return images, targets


def pad_to(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]))


# ----------------------------------------------------------------------------------------------- SE block
def test_se_gate_lies_in_0_1_and_rescales_each_channel() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=4)
    x = torch.randn(3, 8, 5, 7)
    gate = se.gate(x)
    assert gate.shape == (3, 8, 1, 1)
    assert ((gate > 0) & (gate < 1)).all()
    out = se(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * gate)
    # the gate depends on the channel means only: a spatial permutation keeps it
    torch.testing.assert_close(se.gate(x.flip(-1).flip(-2)), gate)


def test_se_squeeze_ignores_padding() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(4, reduction=2)
    x = torch.randn(1, 4, 6, 5)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2), value=7.0)  # junk in the padding
    valid = torch.nn.functional.pad(torch.ones(1, 1, 6, 5), (0, 3, 0, 2))
    torch.testing.assert_close(se.gate(padded, valid), se.gate(x))


# -------------------------------------------------------------------------------------------- heads, targets
def test_head_targets_follow_the_semantic_classes() -> None:
    target = {
        "semantic": torch.tensor([[0, 1], [2, 3], [255, 1]]),
        "overlap": torch.tensor([[0, 1], [1, 0], [0, 0]]),
    }
    expected = {
        "cytoplasm": [[0, 1], [1, 1], [255, 1]],
        "nuclei": [[0, 0], [1, 0], [255, 0]],
        "border": [[0, 0], [0, 1], [255, 0]],
        "background": [[1, 0], [0, 0], [255, 0]],
        "overlap": [[0, 1], [1, 0], [0, 0]],
    }
    for head, values in expected.items():
        assert head_target(head, target).tolist() == values, head
    assert INFERENCE_THRESHOLDS["overlap"] == 0.3 and INFERENCE_THRESHOLDS["cytoplasm"] == 0.5


def test_head_target_errors_name_the_missing_data_option() -> None:
    with pytest.raises(CytobenchError, match="with_semantic"):
        head_target("nuclei", {"overlap": torch.zeros(2, 2)})
    with pytest.raises(CytobenchError, match=r"maps: \[overlap\]"):
        head_target("overlap", {"semantic": torch.zeros(2, 2)})
    with pytest.raises(CytobenchError, match="must be 0 background"):
        head_target("cytoplasm", {"semantic": torch.tensor([[0, 4]])})


def test_decoder_groups_per_variant() -> None:
    assert decoder_groups(["cytoplasm"], "shared") == [("cytoplasm",)]
    assert decoder_groups(["cytoplasm", "nuclei", "border"], "shared") == [("cytoplasm", "nuclei", "border")]
    assert decoder_groups(["cytoplasm", "nuclei"], "decoupled") == [("cytoplasm",), ("nuclei",)]
    assert decoder_groups(["overlap", "cytoplasm", "nuclei"], "shared") == [
        ("cytoplasm", "nuclei"),
        ("overlap",),
    ]
    assert decoder_groups(["overlap"], "shared") == [("overlap",)]
    # the multi-channel model has one decoder with one 1x1-conv channel per head
    model = tiny(heads=CONFIGS["multi_channel"][0], decoder="shared")
    assert len(model.decoders) == 1 and model.decoders[0].classifier.out_channels == 4
    assert len(tiny(heads=CONFIGS["4_head"][0], decoder="decoupled").decoders) == 4


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"heads": ["cytoplasm", "mitochondria"]}, "distinct heads"),
        ({"heads": ["nuclei", "nuclei"]}, "distinct heads"),
        ({"heads": []}, "distinct heads"),
        ({"decoder": "separate"}, "shared"),
        ({"window": 64, "window_overlap": 64}, "window_overlap"),
        ({"width": 0}, ">= 1"),
        ({"overlap_loss": "dice"}, "overlap_loss"),
        ({"focal_mode": "eq4_4"}, "focal_mode"),
        ({"loss_weights": {"cytoplsm": 1.0}}, "loss_weights"),
        ({"loss_weights": {"nuclei": -1.0}}, "loss_weights"),
        ({"window": -4}, "model.window"),
    ],
)
def test_bad_configs_are_one_line_errors(kw: dict, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        tiny(**kw)


def test_image_with_the_wrong_channel_count_is_refused() -> None:
    model = tiny().eval()
    with pytest.raises(CytobenchError, match="in_channels"):
        model([torch.rand(3, 16, 16)])


# --------------------------------------------------------------------------------------------------- losses
def test_masked_bce_on_hand_values() -> None:
    logits = torch.tensor([[[0.0, 2.0, -1.0]]])
    target = torch.tensor([[[1.0, 0.0, 0.0]]])
    valid = torch.tensor([[[True, True, False]]])
    expected = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2  # the third pixel is left out
    assert masked_bce(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)
    logits.requires_grad_(True)
    none = masked_bce(logits, target, torch.zeros_like(valid))  # no valid pixel: 0, still differentiable
    assert none.item() == 0.0 and none.requires_grad


def test_loss_weights_scale_each_term_as_eq_4_2() -> None:
    zeros = torch.zeros(1, 2, 2)  # logit 0: BCE = log 2 whatever the target
    heads = ["cytoplasm", "nuclei", "border"]
    logits = {h: zeros for h in heads}
    targets = {"cytoplasm": torch.ones(1, 2, 2), "nuclei": torch.zeros(1, 2, 2), "border": torch.eye(2)[None]}
    valid = {h: torch.ones(1, 2, 2, dtype=torch.bool) for h in heads}
    losses = head_losses(logits, targets, valid, {"cytoplasm": 2.0, "nuclei": 0.5})
    assert list(losses) == ["loss_cytoplasm", "loss_nuclei", "loss_border"]
    values = {k: v.item() for k, v in losses.items()}
    assert values == pytest.approx(
        {"loss_cytoplasm": 2 * math.log(2), "loss_nuclei": 0.5 * math.log(2), "loss_border": math.log(2)}
    )
    assert sum(values.values()) == pytest.approx(3.5 * math.log(2))  # what the trainer sums: L_total


def test_model_loss_terms_scale_with_lambda() -> None:
    images, targets = batch()
    heads = ["cytoplasm", "nuclei"]
    plain = tiny(seed=3, heads=heads).train()(images, targets)
    weighted = tiny(seed=3, heads=heads, loss_weights={"cytoplasm": 3.0, "nuclei": 0.0}).train()(
        images, targets
    )
    torch.testing.assert_close(weighted["loss_cytoplasm"], 3.0 * plain["loss_cytoplasm"])
    assert weighted["loss_nuclei"].item() == 0.0


def test_model_loss_is_the_mean_bce_over_the_valid_pixels_of_the_batch() -> None:
    model = tiny(heads=["cytoplasm", "border"]).train()
    images, targets = batch()
    targets[0]["semantic"][0, :5] = 255  # ignored pixels
    losses = model(images, targets)
    logits, inside = model.logits(images)
    for channel, head in enumerate(["cytoplasm", "border"]):
        parts, counted = [], 0
        for i, target in enumerate(targets):
            label = head_target(head, target)
            h, w = label.shape
            keep = label != 255
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[i, channel, :h, :w][keep], (label[keep] == 1).float(), reduction="sum"
            )
            parts.append(bce)
            counted += int(keep.sum())
        torch.testing.assert_close(losses[f"loss_{head}"], sum(parts) / counted)


# -------------------------------------------------------------------------------------- every configuration
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_variant_trains_and_predicts(name: str) -> None:
    heads, decoder = CONFIGS[name]
    model = tiny(heads=heads, decoder=decoder).train()
    images, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    totals = []
    for _ in range(6):
        losses = model(images, targets)
        assert set(losses) == {f"loss_{h}" for h in heads}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], f"{name}: loss did not decrease: {totals}"

    model.eval()
    out = model(images)
    assert len(out) == 2
    for image, pred in zip(images, out):
        assert set(pred) == {"maps", "boxes", "scores", "labels"}
        assert list(pred["maps"]) == heads
        for prob in pred["maps"].values():
            assert prob.shape == image.shape[-2:] and prob.dtype == torch.float32
            assert ((prob >= 0) & (prob <= 1)).all()
        assert pred["boxes"].shape == (0, 4) and pred["scores"].shape == (0,)
        assert pred["labels"].shape == (0,) and pred["labels"].dtype == torch.int64


def test_all_background_targets_give_a_finite_positive_loss() -> None:
    model = tiny(heads=CONFIGS["4_head"][0], decoder="decoupled").train()
    images, targets = batch()
    losses = model(images[1:], targets[1:])  # the image without cells
    for value in losses.values():
        assert torch.isfinite(value) and value.item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_fixed_seed_losses_are_reproducible() -> None:
    images, targets = batch()
    heads, decoder = CONFIGS["4_head"]
    a = tiny(seed=5, heads=heads, decoder=decoder).train()(images, targets)
    b = tiny(seed=5, heads=heads, decoder=decoder).train()(images, targets)
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    c = tiny(seed=6, heads=heads, decoder=decoder).train()(images, targets)
    assert c["loss_cytoplasm"].item() != a["loss_cytoplasm"].item()


# ----------------------------------------------------------------------------------------- padding, sizes
def _randomise_batch_norm(model: SEUNet) -> None:
    """Running statistics away from (0, 1), so eval mode is not an identity normalisation."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)


def test_an_image_predicts_the_same_alone_and_in_a_padded_batch() -> None:
    model = tiny(heads=["cytoplasm", "nuclei"], decoder="decoupled", depth=3).eval()
    _randomise_batch_norm(model)
    g = torch.Generator().manual_seed(2)
    small, large = torch.rand(2, 19, 23, generator=g), torch.rand(2, 41, 34, generator=g)
    alone = model([small])[0]["maps"]
    together = model([small, large])[0]["maps"]
    for head in alone:
        torch.testing.assert_close(alone[head], together[head], atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (17, 33), (32, 32)])
def test_sizes_not_divisible_by_two_to_the_depth(size: tuple[int, int]) -> None:
    model = tiny(depth=3)
    image = torch.rand(2, *size)
    target = {"semantic": torch.zeros(size, dtype=torch.int64)}
    assert model.eval()([image])[0]["maps"]["cytoplasm"].shape == size
    if max(size) <= 8:  # one 8 x 8 padded image: batch norm would see one value per channel at the bottom
        with pytest.raises(CytobenchError, match="larger crops"):
            model.train()([image], [target])
        return
    assert torch.isfinite(model.train()([image], [target])["loss_cytoplasm"])


def test_large_images_are_predicted_in_averaged_windows() -> None:
    from cytobench.models.seunet.sliding import sliding_window_inference

    image = torch.rand(2, 40, 29)
    whole = tiny(seed=4, window=None).eval()
    windowed = tiny(seed=4, window=16, window_overlap=8, window_batch_size=3).eval()
    # an image no larger than the window is predicted whole
    torch.testing.assert_close(
        windowed([image[:, :16, :16]])[0]["maps"]["cytoplasm"],
        whole([image[:, :16, :16]])[0]["maps"]["cytoplasm"],
    )
    # a larger one: the average of the windows of the standardised image (the SE squeeze is global, so
    # it differs from the whole-image prediction)
    expected = sliding_window_inference(windowed._window_probabilities, windowed.normalize(image), 16, 8, 3)[
        0
    ]
    got = windowed([image])[0]["maps"]["cytoplasm"]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, whole([image])[0]["maps"]["cytoplasm"])


# ------------------------------------------------------------------------------------------- overlap head
def test_overlap_head_needs_the_overlap_map() -> None:
    images, targets = batch()
    del targets[0]["overlap"]
    with pytest.raises(CytobenchError, match=r"maps: \[overlap\]"):
        tiny(heads=["cytoplasm", "overlap"]).train()(images, targets)


def test_overlap_focal_loss_gets_the_attention_map() -> None:
    focal = pytest.importorskip("cytobench.ops.focal")
    images, targets = batch()
    for target in targets:
        target["overlap_attention"] = torch.linspace(0.1, 1.0, target["semantic"].numel()).view(
            target["semantic"].shape
        )
    config = {"heads": ["cytoplasm", "overlap"], "overlap_loss": "focal", "focal_mode": "eq5_1"}
    model = tiny(**config, loss_weights={"overlap": 2.0}).train()
    losses = model(images, targets)
    logits, inside = model.logits(images)
    label = torch.stack([pad_to(head_target("overlap", t), 21, 26) for t in targets])
    attention = torch.stack([pad_to(t["overlap_attention"], 21, 26) for t in targets])
    expected = focal.overlap_focal_loss(
        logits[:, 1], label.float(), attention, alpha=0.25, gamma=2.0, mode="eq5_1", valid=inside
    )
    torch.testing.assert_close(losses["loss_overlap"], 2.0 * expected)
    assert torch.isfinite(losses["loss_cytoplasm"])
    # without attention maps in the targets: the plain focal loss
    for target in targets:
        del target["overlap_attention"]
    plain = focal.overlap_focal_loss(
        logits[:, 1], label.float(), None, alpha=0.25, gamma=2.0, mode="eq5_1", valid=inside
    )
    torch.testing.assert_close(model(images, targets)["loss_overlap"], 2.0 * plain)


def test_attention_maps_on_some_targets_only_are_refused() -> None:
    images, targets = batch()
    targets[0]["overlap_attention"] = torch.ones(21, 26)
    model = tiny(heads=["overlap"], overlap_loss="focal").train()
    with pytest.raises(CytobenchError, match="some targets"):
        model(images, targets)
    targets[1]["overlap_attention"] = torch.ones(15, 12)  # one column short of its image
    with pytest.raises(CytobenchError, match=r"'overlap_attention' map is \(15, 12\)"):
        model(images, targets)


def test_overlap_loss_config_defaults_to_focal() -> None:
    assert OverlapLossConfig().kind == "focal"
    assert tiny(heads=["overlap"], overlap_loss="focal").overlap_loss.mode == "eq4_5"


# -------------------------------------------------------------------------------------- contract, config
def test_each_head_map_scores_with_a_binary_pixel_evaluator() -> None:
    """The eval contract: maps[head] against head_target(head, target) at the head's threshold."""
    _, targets = batch()
    target = {**targets[0], "image_id": 1}
    exact = (head_target("nuclei", target) == 1).float() * 0.8 + 0.1  # 0.9 inside nuclei, 0.1 elsewhere
    missed = torch.full_like(exact, 0.2)  # 0.2: below the 0.3 overlap threshold, i.e. nothing predicted
    predictions = {"maps": {"nuclei": exact, "overlap": missed}}
    scores = {}
    for head in ("nuclei", "overlap"):
        evaluator = PixelEvaluator(num_classes=2, threshold=INFERENCE_THRESHOLDS[head], ignore_index=255)
        evaluator.process(
            [{"semantic": head_target(head, target), "image_id": 1}],
            [{"semantic": predictions["maps"][head]}],
        )
        scores[head] = evaluator.compute()
    assert scores["nuclei"]["pix/iou_c1"] == 1.0
    assert scores["overlap"]["pix/recall_c1"] == 0.0


def test_config_builds_the_model() -> None:
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "seunet.yaml")
    cfg = OmegaConf.create({"data": {"in_channels": 2}, "model": model_cfg})
    model = instantiate(cfg.model, num_classes=3, depth=2, width=4)  # the trainer passes num_classes
    assert isinstance(model, SEUNet)
    assert model.heads == ("cytoplasm",) and model.window == 512 and model.window_overlap == 256
    assert model.overlap_loss == OverlapLossConfig("focal", 0.25, 2.0, "eq4_5")
    assert model.attention_key == "overlap_attention"
    four = instantiate(
        cfg.model, num_classes=3, depth=2, width=4, heads=CONFIGS["4_head"][0], decoder="decoupled"
    )
    assert len(four.decoders) == 4 and four.loss_weights["background"] == 1.0
