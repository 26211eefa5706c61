"""Tests of the two-stage karyotyper: one-class detector + chromosome-crop classifier + pair prior."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cytobench.models.deepace import DeepACE
from cytobench.models.two_stage import TwoStageKaryotyper, build_two_stage

DETECTOR_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
DEEPACE_KEYS = DETECTOR_KEYS | {"loss_pull", "loss_push", "loss_tnrl"}
TINY_DEEPACE: dict[str, Any] = {
    "_target_": "cytobench.models.deepace.build_deepace",
    "backbone": "resnet18",
    "min_size": 128,
    "max_size": 128,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 64,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 64,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_score_thresh": 0.0,
    "box_detections_per_img": 20,
}
TINY_CLASSIFIER = {"width": 4, "blocks": [1, 1, 1, 1]}


def _tiny(**overrides: Any) -> TwoStageKaryotyper:
    options: dict[str, Any] = {"detector": TINY_DEEPACE, "classifier": TINY_CLASSIFIER, "crop_size": (32, 16)}
    return build_two_stage(25, **{**options, **overrides})


def _batch(empty: tuple[bool, bool] = (False, True)) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 128, 128, generator=g), torch.rand(3, 128, 120, generator=g)]
    boxes = torch.tensor([[10.0, 10.0, 30.0, 90.0], [40.0, 15.0, 55.0, 60.0], [70.0, 60.0, 85.0, 120.0]])
    labels = torch.tensor([1, 21, 23])
    targets = []
    for is_empty in empty:
        n = 0 if is_empty else len(boxes)
        targets.append({"boxes": boxes[:n].clone(), "labels": labels[:n].clone()})
    return images, targets


def _losses(model: TwoStageKaryotyper, empty=(False, True), seed: int = 1) -> dict[str, torch.Tensor]:
    images, targets = _batch(empty)
    model.train()
    torch.manual_seed(seed)
    return model(images, targets)


def test_train_step_with_normal_and_empty_targets() -> None:
    torch.manual_seed(0)
    model = _tiny()
    losses = _losses(model, (False, True))
    assert set(losses) == DEEPACE_KEYS | {"loss_crop_classifier"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert float(losses["loss_crop_classifier"].detach()) > 0
    sum(losses.values()).backward()
    assert model.classifier.head.weight.grad is not None
    assert any(p.grad is not None for p in model.detector.parameters())


def test_train_step_with_only_empty_targets() -> None:
    torch.manual_seed(0)
    model = _tiny()
    losses = _losses(model, (True, True))
    assert set(losses) == DEEPACE_KEYS | {"loss_crop_classifier"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_crop_classifier"].detach()) == 0.0
    sum(losses.values()).backward()  # the zero loss still reaches the classifier (DDP sees every parameter)
    assert model.classifier.head.weight.grad is not None


def test_fixed_seed_gives_equal_losses() -> None:
    torch.manual_seed(0)
    a = _losses(_tiny(), seed=3)
    torch.manual_seed(0)
    b = _losses(_tiny(), seed=3)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_classifier_loss_is_the_cross_entropy_of_the_true_classes() -> None:
    torch.manual_seed(0)
    model = _tiny(box_jitter=0.0, augment=False, classifier_loss_weight=2.0)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    crops, rel = model._crops(images, [t["boxes"] for t in targets], [None, None], reference=None)
    logits = model.classifier(crops, rel)
    expected = 2.0 * torch.nn.functional.cross_entropy(logits, targets[0]["labels"] - 1)
    assert torch.allclose(losses["loss_crop_classifier"], expected, atol=1e-5)
    assert torch.allclose(rel, torch.tensor([80.0, 45.0, 60.0]) / 60.0)  # length / the image's median


def test_train_step_with_masks_orients_crops_by_them() -> None:
    torch.manual_seed(0)
    model = _tiny(crop_masks=True)
    images, targets = _batch((False, True))
    for img, t in zip(images, targets):
        masks = torch.zeros(len(t["boxes"]), *img.shape[-2:], dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(t["boxes"].int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        t["masks"] = masks
    model.train()
    losses = model(images, targets)
    assert set(losses) == DEEPACE_KEYS | {"loss_crop_classifier"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_returns_labels_of_the_24_classes() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    images, _ = _batch()
    with torch.no_grad():
        preds = model(images)
    assert len(preds) == 2
    for pred in preds:
        m = len(pred["boxes"])
        assert pred["boxes"].shape == (m, 4) and pred["scores"].shape == (m,)
        assert pred["labels"].dtype == torch.int64
        assert pred["class_scores"].shape == (m, 24) and pred["detection_scores"].shape == (m,)
        assert "embeddings" in pred  # what the detector returns per detection is kept
        if m:
            assert int(pred["labels"].min()) >= 1 and int(pred["labels"].max()) <= 24
            p = pred["class_scores"].gather(1, (pred["labels"] - 1)[:, None])[:, 0]
            assert torch.allclose(pred["scores"], pred["detection_scores"] * p)
    assert sum(len(p["boxes"]) for p in preds) > 0  # box_score_thresh 0: the untrained detector finds boxes


def test_eval_with_detection_scores_and_without_prior() -> None:
    torch.manual_seed(0)
    model = _tiny(score_mode="detection", pair_prior=False).eval()
    images, _ = _batch()
    with torch.no_grad():
        preds = model(images)
    for pred in preds:
        assert torch.equal(pred["scores"], pred["detection_scores"])
        assert torch.equal(pred["labels"], pred["class_scores"].argmax(1) + 1)


def test_pair_prior_is_applied_to_the_cell_at_inference() -> None:
    torch.manual_seed(0)
    model = _tiny(cell_score_thr=0.0).eval()
    detections = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 20.0, 50.0]] * 3),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.ones(3, dtype=torch.int64),
        }
    ]
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.zero_()
        model.classifier.head.bias[0] = 5.0  # every crop: class 1, clearly but not overwhelmingly
        model.classifier.head.bias[1] = 4.0
        pred = model.classify([torch.rand(1, 64, 64)], detections)[0]
    assert sorted(pred["labels"].tolist()) == [1, 1, 2]  # two 1s, the third takes its second choice
    model.pair_prior = False
    with torch.no_grad():
        plain = model.classify([torch.rand(1, 64, 64)], detections)[0]
    assert plain["labels"].tolist() == [1, 1, 1]


def test_tiling_runs_the_detector_per_window_and_classifies_the_whole_image_once() -> None:
    from cytobench.engine.tiling import TiledPredictor

    torch.manual_seed(0)
    model = _tiny(cell_score_thr=0.0).eval()
    windows: list[tuple[int, int]] = []
    seen: list[int] = []

    class CentreBox(torch.nn.Module):
        """One box per window, at its centre."""

        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            out = []
            for image in images:
                h, w = image.shape[-2:]
                windows.append((h, w))
                box = torch.tensor([[w / 2 - 4, h / 2 - 10, w / 2 + 4, h / 2 + 10]])
                out.append(
                    {"boxes": box, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}
                )
            return out

    classify = model.classify

    def counting_classify(images, detections):  # type: ignore[no-untyped-def]
        seen.append(len(detections[0]["boxes"]))
        assert images[0].shape[-2:] == (128, 128)  # the whole image, not a window
        return classify(images, detections)

    model.detector = CentreBox()
    model.classify = counting_classify  # type: ignore[method-assign]
    with torch.no_grad():
        pred = TiledPredictor(model, window=64, overlap=16)(  # 3 x 3 windows over 128 px
            [torch.rand(1, 128, 128)]
        )[0]
    assert len(windows) == 9 and all(max(hw) <= 64 for hw in windows)
    assert seen == [9] and len(pred["labels"]) == 9 and "class_scores" in pred


def test_predict_modes_classify_each_post_processing() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    images, _ = _batch()
    out = model.predict_modes(images, ["nms", "eg"])
    assert set(out) == {"nms", "eg"}
    for preds in out.values():
        assert len(preds) == 2 and all("class_scores" in p for p in preds)


def test_faster_rcnn_detector_and_frozen_detector() -> None:
    torch.manual_seed(0)
    detector = {
        "_target_": "cytobench.models.faster_rcnn.build_faster_rcnn",
        "backbone": "resnet18",
        "min_size": 128,
        "max_size": 128,
        "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 64,
    }
    model = _tiny(detector=detector)
    assert set(_losses(model)) == DETECTOR_KEYS | {"loss_crop_classifier"}
    frozen = _tiny(train_detector=False)
    losses = _losses(frozen)
    assert set(losses) == {"loss_crop_classifier"}
    assert not any(p.requires_grad for p in frozen.detector.parameters())
    assert not frozen.detector.training and frozen.classifier.training


def test_builder_checks() -> None:
    with pytest.raises(ValueError, match="num_classes must be 2"):
        build_two_stage(25, detector={**TINY_DEEPACE, "num_classes": 25}, classifier=TINY_CLASSIFIER)
    with pytest.raises(ValueError, match="pair prior"):
        _tiny_with_classes(11)
    model = build_two_stage(11, detector=TINY_DEEPACE, classifier=TINY_CLASSIFIER, pair_prior=False)
    assert model.classifier.num_classes == 10
    with pytest.raises(TypeError, match="unknown classifier options"):
        build_two_stage(25, detector=TINY_DEEPACE, classifier={"depth": 3})
    with pytest.raises(ValueError, match="score_mode"):
        _tiny(score_mode="max")


def _tiny_with_classes(num_classes: int) -> TwoStageKaryotyper:
    return build_two_stage(num_classes, detector=TINY_DEEPACE, classifier=TINY_CLASSIFIER)


def test_config_builds_the_model_through_hydra() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(
            config_name="train",
            overrides=["model=two_stage", "model.detector.backbone=resnet18", "model.classifier.width=4"],
        )
    assert cfg.model.detector._target_ == "cytobench.models.deepace.build_deepace"
    deepace_keys = set(OmegaConf.load(conf / "model" / "deepace.yaml"))
    assert deepace_keys <= set(cfg.model.detector)  # the detector node has every key of deepace.yaml
    for node in (cfg.model, OmegaConf.to_container(cfg.model, resolve=True)):  # as train.py and predict do
        model = instantiate(node, num_classes=25)
        assert isinstance(model, TwoStageKaryotyper) and isinstance(model.detector, DeepACE)
        assert model.classifier.num_classes == 24 and model.crop_size == (96, 32)
        assert model.detector.roi_heads.box_predictor.cls_score.out_features == 2
    assert math.isclose(model.prior_penalty, 3.0)
