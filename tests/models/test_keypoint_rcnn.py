"""The Keypoint R-CNN localiser: empty targets, fixed-seed losses, gray frames, local weights."""

from __future__ import annotations

from pathlib import Path

import torch

from cytobench.models.keypoint_rcnn import build_keypoint_rcnn

SMALL = {
    "backbone": "resnet18",
    "min_size": 48,
    "max_size": 50,
    "keypoint_head_layers": [16, 16],
    "anchor_sizes": [8, 16, 32, 64, 128],
    "box_batch_size_per_image": 16,
}


def build(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_keypoint_rcnn(2, **{**SMALL, **kw})


def batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 24, 25, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[6.0, 5.0, 18.0, 16.0]]),
            "labels": torch.tensor([1]),
            "keypoints": torch.tensor([[[12.3, 10.7, 2.0]]]),
        },
        {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "keypoints": torch.zeros((0, 1, 3)),
        },
    ]
    return images, targets


def losses(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(123)
    return model(*batch())


def test_losses_include_keypoint_and_tolerate_empty_images() -> None:
    out = losses(build())
    assert set(out) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_keypoint",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    assert all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()


def test_all_empty_targets() -> None:
    model = build().train()
    images, targets = batch()
    out = model(images, [targets[1], targets[1]])
    assert out["loss_keypoint"].item() == 0.0 and out["loss_box_reg"].item() == 0.0


def test_fixed_seed_losses_are_reproducible() -> None:
    a, b = losses(build(seed=3)), losses(build(seed=3))
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}


def test_predictions_carry_one_keypoint_per_detection() -> None:
    model = build().eval()
    with torch.no_grad():
        (pred,) = model([torch.rand(1, 24, 25)])
    assert pred["keypoints"].shape[1:] == (1, 3)
    assert len(pred["keypoints"]) == len(pred["scores"]) == len(pred["boxes"])


def test_detector_weights_from_local_file_skip_the_17_keypoint_head(tmp_path: Path) -> None:
    donor = build_keypoint_rcnn(2, **{**SMALL, "num_keypoints": 17})  # like torchvision's COCO person model
    path = tmp_path / "keypointrcnn_coco.pth"
    torch.save(donor.state_dict(), path)
    model = build(weights_path=path)
    assert torch.equal(
        model.backbone.fpn.layer_blocks[0][0].weight, donor.backbone.fpn.layer_blocks[0][0].weight
    )
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 1
