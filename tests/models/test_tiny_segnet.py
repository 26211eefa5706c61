"""The tiny semantic model: empty targets, fixed-seed losses, weight maps, ignored pixels, eval contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cytobench.errors import BadInputError, CytobenchError
from cytobench.models.tiny_segnet import build_tiny_segnet


def build(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_tiny_segnet(3, **{"in_channels": 2, "width": 8, "num_layers": 2, **kw})


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes; the second has no objects (all background)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 20, 24, generator=g), torch.rand(2, 16, 12, generator=g)]
    semantic = torch.zeros(20, 24, dtype=torch.int64)
    semantic[2:9, 3:12] = 1
    semantic[12:18, 14:22] = 2
    targets = [
        {"boxes": torch.tensor([[3.0, 2.0, 12.0, 9.0]]), "labels": torch.tensor([1]), "semantic": semantic},
        {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros(0, dtype=torch.int64),
            "semantic": torch.zeros(16, 12, dtype=torch.int64),
        },
    ]
    return images, targets


def test_loss_keys_and_empty_targets() -> None:
    model = build().train()
    images, targets = batch()
    out = model(images, targets)
    assert set(out) == {"loss_semantic"} and torch.isfinite(out["loss_semantic"])
    out["loss_semantic"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    empty = model(images[1:], targets[1:])["loss_semantic"]  # only background: still a real loss
    assert torch.isfinite(empty) and empty > 0


def test_fixed_seed_losses_are_reproducible() -> None:
    images, targets = batch()
    a = build(seed=7).train()(images, targets)["loss_semantic"]
    b = build(seed=7).train()(images, targets)["loss_semantic"]
    assert a.item() == b.item()
    assert build(seed=8).train()(images, targets)["loss_semantic"].item() != a.item()


def test_loss_is_the_weighted_mean_pixel_cross_entropy() -> None:
    model = build().train()
    images, targets = batch()
    logits = model.logits(images[:1])[0]
    ce = F.cross_entropy(logits[None], targets[0]["semantic"][None], reduction="none")[0]
    torch.testing.assert_close(model(images[:1], targets[:1])["loss_semantic"], ce.mean())
    weights = torch.zeros(20, 24)
    weights[2:9, 3:12] = 3.0  # only the class-1 block counts
    weighted = model(images[:1], [{**targets[0], "weights": weights}])["loss_semantic"]
    torch.testing.assert_close(weighted, ce[2:9, 3:12].mean())
    ignored = targets[0]["semantic"].clone()
    ignored[:10] = 255
    torch.testing.assert_close(
        model(images[:1], [{**targets[0], "semantic": ignored}])["loss_semantic"], ce[10:].mean()
    )
    nothing = model(images[:1], [{**targets[0], "semantic": torch.full((20, 24), 255)}])["loss_semantic"]
    assert nothing.item() == 0.0
    nothing.backward()  # still part of the graph


def test_padding_in_mixed_size_batches_does_not_change_the_loss() -> None:
    model = build().train()
    images, targets = batch()
    one = [model([img], [t])["loss_semantic"] for img, t in zip(images, targets)]
    both = model(images, targets)["loss_semantic"]
    pixels = torch.tensor([20 * 24, 16 * 12], dtype=torch.float32)
    torch.testing.assert_close(both, (torch.stack(one) * pixels).sum() / pixels.sum())


def test_eval_predictions_follow_the_contract() -> None:
    model = build(extra_classes=1).eval()  # 3 + a border class
    images, _ = batch()
    with torch.no_grad():
        preds = model(images)
    assert len(preds) == 2
    for pred, image in zip(preds, images):
        assert pred["semantic"].shape == (4, *image.shape[-2:]) and pred["semantic"].dtype == torch.float32
        torch.testing.assert_close(pred["semantic"].sum(0), torch.ones(image.shape[-2:]))
        assert pred["boxes"].shape == (0, 4) and pred["scores"].shape == (0,)
        assert pred["labels"].shape == (0,) and pred["labels"].dtype == torch.int64


def test_fixed_normalisation_and_bad_input_are_reported() -> None:
    model = build(image_mean=[0.5, 0.5], image_std=[0.25, 0.25]).eval()
    image = torch.full((2, 4, 4), 0.75)
    torch.testing.assert_close(model.normalize(image), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"expects \(2, H, W\) images, got \(3, 4, 4\)"):
        model([torch.rand(3, 4, 4)])
    with pytest.raises(BadInputError, match="3 values for 2 channels"):
        build(image_mean=[0.1, 0.2, 0.3], image_std=[1, 1, 1])
    train = build().train()
    images, targets = batch()
    with pytest.raises(CytobenchError, match="no 'semantic' map"):
        train(images[:1], [{"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]}])
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\)"):
        train(images[:1], [{**targets[0], "semantic": targets[0]["semantic"] * 2}])


@pytest.mark.gpu
def test_amp_training_step_and_probabilities_on_cuda() -> None:
    model = build().cuda().train()
    images, targets = batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    with torch.autocast("cuda"):
        loss = model(images, targets)["loss_semantic"]
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda"):
        preds = model(images)
    assert preds[0]["semantic"].dtype == torch.float32 and preds[0]["semantic"].is_cuda
    torch.testing.assert_close(preds[1]["semantic"].sum(0), torch.ones(16, 12, device="cuda"))
