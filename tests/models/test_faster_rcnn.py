"""The baseline detector: empty targets, fixed-seed losses, gray input, weights from local files, AMP on GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cytobench.errors import BadInputError
from cytobench.models.faster_rcnn import build_faster_rcnn

SMALL = {"backbone": "resnet18", "min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128]}


def build(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_faster_rcnn(3, **{**SMALL, **kw})


def batch(channels: int = 3):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(channels, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[5.0, 5.0, 30.0, 20.0], [40.0, 40.0, 60.0, 58.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # an empty image
    ]
    return images, targets


def losses(model: torch.nn.Module, channels: int = 3) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(123)  # the RPN / RoI samplers draw from the global generator
    return model(*batch(channels))


def test_loss_keys_and_empty_targets() -> None:
    out = losses(build())
    assert set(out) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in out.values())
    total = sum(out.values())
    total.backward()


def test_all_empty_targets_give_finite_losses() -> None:
    model = build().train()
    images, _ = batch()
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    out = model(images, empty)
    assert out["loss_box_reg"].item() == 0.0 and out["loss_rpn_box_reg"].item() == 0.0
    assert out["loss_classifier"].item() > 0.0  # every sampled RoI is background and still scored


def test_fixed_seed_losses_are_reproducible() -> None:
    a, b = losses(build(seed=7)), losses(build(seed=7))
    assert {k: float(v) for k, v in a.items()} == {k: float(v) for k, v in b.items()}
    c = losses(build(seed=8))
    assert float(c["loss_classifier"]) != float(a["loss_classifier"])


def test_gray_images_are_accepted_and_predictions_follow_contract() -> None:
    model = build()
    assert all(torch.isfinite(v) for v in losses(model, channels=1).values())
    model.eval()
    with torch.no_grad():
        preds = model([torch.rand(1, 64, 64)])
    assert set(preds[0]) >= {"boxes", "scores", "labels"} and preds[0]["boxes"].shape[-1] == 4


def test_backbone_weights_load_from_local_file(tmp_path: Path) -> None:
    torch.manual_seed(42)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(resnet.state_dict(), path)
    model = build(backbone_weights_path=path)
    body = model.backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], resnet.conv1.weight)
    assert torch.equal(body["layer4.1.conv2.weight"], resnet.layer4[1].conv2.weight)


def test_backbone_weights_with_a_wrapper_prefix_load(tmp_path: Path) -> None:
    """A DDP-saved ResNet (``module.``) or a whole detector (``backbone.body.``) serves as backbone weights."""
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(weights=None)
    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in resnet.state_dict().items()}, ddp)
    body = build(backbone_weights_path=ddp).backbone.body.state_dict()
    assert torch.equal(body["layer2.0.conv1.weight"], resnet.layer2[0].conv1.weight)

    donor = build(seed=5)
    detector = tmp_path / "detector.pth"
    torch.save(donor.state_dict(), detector)
    body = build(backbone_weights_path=detector).backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], donor.backbone.body.conv1.weight)


def test_weights_that_fit_nothing_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.stem.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(BadInputError, match="none of its 1 tensors fits the model"):
        build(backbone_weights_path=path)


def test_detector_weights_skip_mismatched_heads(tmp_path: Path) -> None:
    donor = build_faster_rcnn(5, **SMALL)  # another task: 4 classes + background
    path = tmp_path / "detector.pth"
    torch.save(donor.state_dict(), path)
    model = build(weights_path=path)
    assert torch.equal(model.rpn.head.conv[0][0].weight, donor.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # kept its own head


@pytest.mark.gpu
def test_amp_training_step_on_cuda() -> None:
    model = build().cuda().train()
    images, targets = batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast("cuda"):
        out = model(images, targets)
    assert all(torch.isfinite(v) for v in out.values())
