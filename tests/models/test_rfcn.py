"""R-FCN: losses with normal and empty targets, fixed-seed losses, position-sensitive pooling shapes and
layout, the eval contract, weights from local files and the Hydra config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cytobench.models.rfcn import RFCN, PSRoIHead, build_rfcn

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 25  # 24 chromosome classes + background, as in karyotyping
SMALL = {
    "backbone": "resnet18",
    "min_size": 128,
    "max_size": 128,
    "anchor_sizes": [16, 32, 64],
    "mid_channels": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 50,
}
LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def build(seed: int = 0, **kw) -> RFCN:
    torch.manual_seed(seed)
    return build_rfcn(NUM_CLASSES, **{**SMALL, **kw})


def empty_target() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}


def batch(channels: int = 3):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(channels, 128, 128, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[5.0, 5.0, 30.0, 60.0], [60.0, 70.0, 90.0, 120.0]]),
            "labels": torch.tensor([1, NUM_CLASSES - 1]),
        },
        {"boxes": torch.tensor([[40.0, 10.0, 70.0, 100.0]]), "labels": torch.tensor([7])},
    ]
    return images, targets


def losses(
    model: torch.nn.Module, targets: list[dict] | None = None, channels: int = 3
) -> dict[str, torch.Tensor]:
    model.train()
    images, default = batch(channels)
    torch.manual_seed(123)  # the RPN / RoI samplers draw from the global generator
    return model(images, default if targets is None else targets)


def test_loss_keys_finite_and_backward() -> None:
    model = build()
    out = losses(model)
    assert set(out) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert model.roi_heads.cls_maps.weight.grad is not None and model.backbone.conv1.weight.grad is not None


def test_empty_targets_give_finite_losses() -> None:
    out = losses(build(), targets=[empty_target(), empty_target()])
    assert set(out) == LOSS_KEYS and all(torch.isfinite(v) for v in out.values())
    assert out["loss_box_reg"].item() == 0.0 and out["loss_rpn_box_reg"].item() == 0.0
    assert out["loss_classifier"].item() > 0.0  # every sampled RoI is background and still scored
    _, targets = batch()
    mixed = losses(build(), targets=[targets[0], empty_target()])  # one image without boxes
    assert all(torch.isfinite(v) for v in mixed.values())


def test_fixed_seed_losses_are_reproducible() -> None:
    a, b = losses(build(seed=7)), losses(build(seed=7))
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    c = losses(build(seed=8))
    assert c["loss_classifier"].item() != a["loss_classifier"].item()


def test_position_sensitive_pooling_shapes() -> None:
    k, rois = (
        7,
        [
            torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 32.0, 120.0, 100.0]]),
            torch.tensor([[8.0, 8.0, 40.0, 90.0]]),
        ],
    )
    head = PSRoIHead(32, NUM_CLASSES, k=k, mid_channels=16)
    cls_maps, box_maps = head.score_maps(torch.rand(2, 32, 8, 8))
    assert cls_maps.shape == (2, k * k * NUM_CLASSES, 8, 8) and box_maps.shape == (2, k * k * 4, 8, 8)
    assert head.pool(cls_maps, rois).shape == (3, NUM_CLASSES, k, k)
    assert head.pool(box_maps, rois).shape == (3, 4, k, k)
    logits, deltas = head.vote(cls_maps, box_maps, rois)
    assert logits.shape == (3, NUM_CLASSES) and deltas.shape == (3, 4)


@pytest.mark.parametrize("pooling", ["align", "pool"])
def test_bin_i_j_of_class_c_reads_only_its_own_map(pooling: str) -> None:
    """Channel (c * k + i) * k + j holds bin (i, j) of class c; voting averages the k x k bins."""
    k, classes = 3, 4
    head = PSRoIHead(8, classes, k=k, mid_channels=0, pooling=pooling)
    maps = (
        torch.arange(k * k * classes, dtype=torch.float32).view(1, -1, 1, 1).expand(1, -1, 6, 6).contiguous()
    )
    pooled = head.pool(maps, [torch.tensor([[0.0, 0.0, 96.0, 96.0]])])  # the whole 6 x 6 map at stride 16
    expected = torch.arange(k * k * classes, dtype=torch.float32).view(1, classes, k, k)
    assert torch.allclose(pooled, expected)
    logits, _ = head.vote(maps, torch.zeros(1, k * k * 4, 6, 6), [torch.tensor([[0.0, 0.0, 96.0, 96.0]])])
    assert torch.allclose(logits, expected.mean(dim=(2, 3)))


def test_eval_predictions_follow_the_contract() -> None:
    model = build(box_score_thresh=0.0).eval()  # untrained: near-uniform scores, so keep them all
    images, _ = batch(channels=1)  # gray input is repeated to 3 channels
    with torch.no_grad():
        preds = model([images[0], images[1][:, :100, :120]])
    assert len(preds) == 2
    for pred, (h, w) in zip(preds, [(128, 128), (100, 120)]):
        assert set(pred) == {"boxes", "scores", "labels", "class_scores"}
        # each detection's RoI softmax (background left out), its own score in its label's column
        assert pred["class_scores"].shape == (len(pred["boxes"]), NUM_CLASSES - 1)
        assert torch.equal(
            pred["class_scores"].gather(1, (pred["labels"] - 1)[:, None])[:, 0], pred["scores"]
        )
        assert bool((pred["class_scores"].sum(dim=1) <= 1 + 1e-6).all())
        assert len(pred["boxes"]) > 0 and pred["boxes"].shape[-1] == 4
        assert len(pred["boxes"]) <= 100 and len(pred["scores"]) == len(pred["labels"]) == len(pred["boxes"])
        assert int(pred["labels"].min()) >= 1 and int(pred["labels"].max()) <= NUM_CLASSES - 1
        assert float(pred["boxes"][:, 2].max()) <= w and float(pred["boxes"][:, 3].max()) <= h


def test_conv5_keeps_stride_16_for_basic_and_bottleneck_blocks() -> None:
    for name in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        trunk = build_rfcn(3, backbone=name, mid_channels=0).backbone.eval()
        with torch.no_grad():
            conv4, conv5 = trunk(torch.rand(1, 3, 64, 96))
        assert conv4.shape[-2:] == conv5.shape[-2:] == (4, 6)
        assert conv5.shape[1] == trunk.conv5_channels
    conv4, conv5 = build(use_layer4=False).backbone.eval()(torch.rand(1, 3, 64, 64))
    assert conv5 is conv4


def test_output_stride_8_dilates_conv4_and_conv5_as_torchvision_does() -> None:
    torch.manual_seed(0)
    model = build_rfcn(3, backbone="resnet50", mid_channels=0, output_stride=8)
    trunk = model.backbone.eval()
    with torch.no_grad():
        conv4, conv5 = trunk(torch.rand(1, 3, 64, 96))
    assert conv4.shape[-2:] == conv5.shape[-2:] == (8, 12)
    assert model.roi_heads.spatial_scale == 1 / 8
    # the same strides and dilations, conv by conv, as torchvision's dilated ResNet-50 (DeepLab's)
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    for stage in ("layer3", "layer4"):
        ours = [
            (m.stride, m.dilation, m.padding)
            for m in getattr(trunk, stage).modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        theirs = [
            (m.stride, m.dilation, m.padding)
            for m in getattr(reference, stage).modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        assert ours == theirs, stage
    with pytest.raises(ValueError, match="output_stride"):
        build_rfcn(3, backbone="resnet18", output_stride=4)


def test_output_stride_8_trains_on_basic_blocks() -> None:
    model = build(output_stride=8)
    assert model.backbone.layer3[1].conv1.dilation == (2, 2)
    assert model.backbone.layer4[0].conv1.dilation == (2, 2) and model.backbone.layer4[1].conv2.dilation == (
        4,
        4,
    )
    out = losses(model)
    assert set(out) == LOSS_KEYS and all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()


def test_weights_load_from_local_files(tmp_path: Path) -> None:
    donor = build(seed=5)
    path = tmp_path / "rfcn.pth"
    torch.save(donor.state_dict(), path)
    model = build(seed=6, weights_path=path)
    theirs = donor.state_dict()
    for name, ours in model.state_dict().items():  # every tensor (batch norm is frozen once pretrained)
        assert torch.equal(ours, theirs[name]), name

    torch.manual_seed(42)
    resnet = torchvision.models.resnet18(weights=None)
    backbone_path = tmp_path / "resnet18_imagenet.pth"
    torch.save(resnet.state_dict(), backbone_path)
    trunk = build(backbone_weights_path=backbone_path).backbone.state_dict()
    assert torch.equal(trunk["conv1.weight"], resnet.conv1.weight)
    assert torch.equal(trunk["layer4.1.conv2.weight"], resnet.layer4[1].conv2.weight)


def test_hydra_config_instantiates() -> None:
    cfg = OmegaConf.create({"model": OmegaConf.load(ROOT / "conf" / "model" / "rfcn.yaml")})
    model = instantiate(
        cfg.model, num_classes=NUM_CLASSES, backbone="resnet18", mid_channels=64
    )  # as the trainer
    assert isinstance(model, RFCN)
    assert model.roi_heads.cls_maps.out_channels == 7 * 7 * NUM_CLASSES
    assert model.transform.min_size == (800,) and model.rpn._post_nms_top_n["testing"] == 300


@pytest.mark.gpu
def test_amp_training_step_and_eval_on_cuda() -> None:
    model = build().cuda().train()
    images, targets = batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast("cuda"):
        out = model(images, targets)
    assert all(torch.isfinite(v) for v in out.values())
    model.eval()
    with torch.no_grad(), torch.autocast("cuda"):
        preds = model(images)
    assert set(preds[0]) == {"boxes", "scores", "labels"}
