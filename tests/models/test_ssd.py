"""SSD / SSDlite: losses with normal and empty targets, fixed-seed losses, the eval contract, input size,
weights from local files (no downloads) and the Hydra config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cytobench.models.ssd import SSD, build_ssd

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 25  # 24 chromosome classes + background, as in karyotyping
LOSS_KEYS = {"loss_classifier", "loss_box_reg"}


def build(seed: int = 0, **kw) -> SSD:
    torch.manual_seed(seed)
    return build_ssd(NUM_CLASSES, **{"size": 128, **kw})


def empty_target() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}


def batch(channels: int = 3, side: int = 128):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(channels, side, side, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[5.0, 5.0, 30.0, 60.0], [60.0, 70.0, 90.0, 120.0]]),
            "labels": torch.tensor([1, NUM_CLASSES - 1]),
        },
        {"boxes": torch.tensor([[40.0, 10.0, 70.0, 100.0]]), "labels": torch.tensor([7])},
    ]
    return images, targets


def losses(model: torch.nn.Module, targets: list[dict] | None = None, **kw) -> dict[str, torch.Tensor]:
    model.train()
    images, default = batch(**kw)
    return model(images, default if targets is None else targets)


def test_loss_keys_finite_and_backward() -> None:
    model = build()
    out = losses(model)
    assert set(out) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in out.values()) and all(v.item() > 0 for v in out.values())
    sum(out.values()).backward()
    assert model.backbone.features[0][0][0].weight.grad is not None  # the MobileNet stem trains


def test_empty_targets_give_finite_losses() -> None:
    out = losses(build(), targets=[empty_target(), empty_target()])
    assert set(out) == LOSS_KEYS and all(torch.isfinite(v) for v in out.values())
    assert out["loss_box_reg"].item() == 0.0  # nothing matched
    _, targets = batch()
    mixed = losses(build(), targets=[targets[0], empty_target()])  # one image without boxes
    assert all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_classifier"].item() > 0.0


def test_fixed_seed_losses_are_reproducible() -> None:
    a, b = losses(build(seed=7)), losses(build(seed=7))
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    c = losses(build(seed=8))
    assert c["loss_classifier"].item() != a["loss_classifier"].item()


def test_eval_predictions_follow_the_contract() -> None:
    model = build(detections_per_img=50).eval()
    images, _ = batch(channels=1)  # gray input is repeated to 3 channels
    with torch.no_grad():
        preds = model([images[0], images[1][:, :100, :120]])  # any input size: resized to 128 and back
    assert len(preds) == 2
    for pred, (h, w) in zip(preds, [(128, 128), (100, 120)]):
        assert set(pred) == {"boxes", "scores", "labels", "class_scores"}
        assert pred["class_scores"].shape == (len(pred["boxes"]), NUM_CLASSES - 1)
        assert 0 < len(pred["boxes"]) <= 50 and pred["boxes"].shape[-1] == 4
        assert len(pred["scores"]) == len(pred["labels"]) == len(pred["boxes"])
        assert int(pred["labels"].min()) >= 1 and int(pred["labels"].max()) <= NUM_CLASSES - 1
        assert float(pred["boxes"][:, 2].max()) <= w and float(pred["boxes"][:, 3].max()) <= h


def test_postprocessing_is_torchvisions_plus_each_detections_class_scores() -> None:
    model = build(detections_per_img=60, score_thresh=0.03).eval()
    g = torch.Generator().manual_seed(3)
    anchors = [torch.rand(500, 2, generator=g).repeat(1, 2) * 100 + torch.tensor([0, 0, 8, 20])] * 2
    head = {  # logits spread enough that several classes pass the threshold for many boxes
        "bbox_regression": torch.randn(2, 500, 4, generator=g) * 0.1,
        "cls_logits": torch.randn(2, 500, NUM_CLASSES, generator=g) * 3,
    }
    ours = model.postprocess_detections(head, anchors, [(128, 128), (100, 120)])
    stock = torchvision.models.detection.ssd.SSD.postprocess_detections(
        model, head, anchors, [(128, 128), (100, 120)]
    )
    for mine, theirs, logits in zip(ours, stock, head["cls_logits"]):
        assert len(mine["boxes"]) == 60
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(mine[key], theirs[key]), key
        # each detection's row is its default box's softmax without the background, its own score included
        rows = torch.softmax(logits, dim=-1)[:, 1:]
        picked = mine["class_scores"].gather(1, (mine["labels"] - 1)[:, None])[:, 0]
        assert torch.equal(picked, mine["scores"])
        assert all(any(torch.equal(row, r) for r in rows) for row in mine["class_scores"][:5])


def test_size_and_variant_settings() -> None:
    model = build(size=[160, 96], nms_thresh=0.3)
    assert model.transform.fixed_size == (160, 96) and model.nms_thresh == 0.3
    assert model.topk_candidates == 300 and model.transform.image_mean == [0.5, 0.5, 0.5]
    assert build_ssd(3).transform.fixed_size == (320, 320)
    with pytest.raises(ValueError, match="unknown SSD variant"):
        build_ssd(3, variant="ssd512")
    with pytest.raises(ValueError, match="at least 268"):
        build_ssd(3, variant="ssd300_vgg16", size=200)
    with pytest.raises(ValueError, match="7 values"):
        build_ssd(3, anchor_scales=[0.1, 0.5, 1.0])


@pytest.mark.slow
def test_ssd300_vgg16_trains_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_ssd(NUM_CLASSES, variant="ssd300_vgg16", trainable_backbone_layers=2)
    assert model.transform.fixed_size == (300, 300) and model.anchor_generator.steps is not None
    assert not model.backbone.features[0].weight.requires_grad  # conv1-3 frozen, conv4-5 train
    out = losses(model, side=300)
    assert set(out) == LOSS_KEYS and all(torch.isfinite(v) for v in out.values())
    model.eval()
    with torch.no_grad():
        pred = model([torch.rand(3, 300, 300)])[0]
    assert int(pred["labels"].min()) >= 1 and int(pred["labels"].max()) <= NUM_CLASSES - 1


def test_weights_load_from_local_files(tmp_path: Path) -> None:
    donor = build(seed=5)
    path = tmp_path / "ssd.pth"
    torch.save(donor.state_dict(), path)
    model = build(seed=6, weights_path=path, reduced_tail=True)  # a from-scratch donor has the reduced tail
    theirs = donor.state_dict()
    for name, ours in model.state_dict().items():
        assert torch.equal(ours, theirs[name]), name

    torch.manual_seed(42)
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)
    backbone_path = tmp_path / "mobilenet_v3_large_imagenet.pth"
    torch.save(mobilenet.state_dict(), backbone_path)
    model = build(backbone_weights_path=backbone_path)  # ImageNet weights: the full tail
    assert torch.equal(model.backbone.features[0][0][0].weight, mobilenet.features[0][0].weight)
    assert torch.equal(
        model.backbone.features[1][-1][0].weight, mobilenet.features[-1][0].weight
    )  # 960 channels


def test_hydra_config_instantiates() -> None:
    cfg = OmegaConf.create({"model": OmegaConf.load(ROOT / "conf" / "model" / "ssd.yaml")})
    model = instantiate(cfg.model, num_classes=NUM_CLASSES)  # as the trainer
    assert isinstance(model, SSD)
    assert model.transform.fixed_size == (320, 320) and model.detections_per_img == 100
    assert model.head.classification_head.num_columns == NUM_CLASSES


@pytest.mark.gpu
def test_amp_training_step_on_cuda() -> None:
    model = build().cuda().train()
    images, targets = batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast("cuda"):
        out = model(images, targets)
    assert all(torch.isfinite(v) for v in out.values())
