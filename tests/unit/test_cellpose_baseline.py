"""Cellpose baseline: label images <-> cytobench instances (without cellpose), and, when cellpose 3.x is
installed (the optional extra), a tiny from-scratch training scored by cytobench's COCO evaluator."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cytobench.errors import BadInputError
from cytobench.evaluation import CocoEvaluator
from cytobench.models.cellpose_baseline import (
    CellposeSettings,
    cellpose_predictions,
    import_cellpose,
    predict_cellpose,
    score_predictions,
    target_label_image,
    train_cellpose,
)


def test_target_label_image_numbers_objects_and_later_masks_win() -> None:
    masks = np.zeros((3, 4, 5), np.uint8)
    masks[0, 0:2, 0:2] = 1
    masks[1, 1:3, 1:3] = 1  # overlaps object 0 at (1, 1): the later object wins
    masks[2, 3, 4] = 1
    labels = target_label_image(torch.from_numpy(masks))
    expected = np.array([[1, 1, 0, 0, 0], [1, 2, 2, 0, 0], [0, 2, 2, 0, 0], [0, 0, 0, 0, 3]], np.int32)
    np.testing.assert_array_equal(labels, expected)
    assert target_label_image(np.zeros((0, 3, 2)), 3, 2).shape == (3, 2)


def test_predictions_from_label_images_score_by_mean_cell_probability() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[0:2, 0:2] = 5  # Cellpose numbers masks 1..M; any value works
    labels[3:6, 3:6] = 2
    logits = np.zeros((6, 6), np.float32)
    logits[0:2, 0:2] = np.log(3.0)  # sigmoid = 0.75
    (pred,) = cellpose_predictions([labels], [logits])
    assert pred["labels"].tolist() == [1, 1] and pred["masks"].shape == (2, 6, 6)
    assert pred["boxes"].tolist() == [[3.0, 3.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]]
    assert torch.allclose(pred["scores"], torch.tensor([0.5, 0.75]))
    (plain,) = cellpose_predictions([labels])
    assert plain["scores"].tolist() == [1.0, 1.0]


def test_perfect_label_image_scores_ap_one_with_cytobench_coco() -> None:
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[0, 2:12, 2:12] = 1
    masks[1, 16:30, 10:28] = 1
    target = {
        "image_id": 1,
        "boxes": torch.zeros((2, 4)),
        "labels": torch.ones(2, dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }
    (pred,) = cellpose_predictions([target_label_image(masks)])
    target["boxes"] = pred["boxes"].clone()
    metrics = score_predictions(
        CocoEvaluator(iou_types=["segm"], max_dets=[100, 500, 2000]), [target], [pred]
    )
    assert metrics["coco/segm_AP"] == pytest.approx(1.0)


def test_unknown_settings_and_missing_cellpose_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadInputError, match="unknown"):
        CellposeSettings(epochs=3)
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import fails as if absent
    with pytest.raises(BadInputError, match=r"\[cellpose\]"):
        import_cellpose()


@pytest.mark.slow
def test_cellpose_trains_from_scratch_without_downloads(tmp_path) -> None:
    pytest.importorskip("cellpose")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    images, labels = [], []
    for _ in range(4):
        lab = np.zeros((96, 96), np.int32)
        for k, (cx, cy) in enumerate(rng.uniform(15, 81, (4, 2))):
            lab[(xx - cx) ** 2 + (yy - cy) ** 2 < 100] = k + 1
        noise = rng.normal(0, 0.05, (2, 96, 96))
        images.append(((lab > 0) * np.array([0.6, 0.3])[:, None, None] + noise).astype(np.float32))
        labels.append(lab)
    settings = CellposeSettings(n_epochs=2, batch_size=4, bsize=96)
    model = train_cellpose(images, labels, tmp_path, settings=settings)
    assert (tmp_path / "models" / "cellpose_cytobench").is_file()
    preds = predict_cellpose(model, images[:2], settings)
    assert len(preds) == 2
    for pred in preds:
        assert pred["masks"].shape[1:] == (96, 96) and pred["masks"].dtype == torch.uint8
        assert (
            len(pred["scores"]) == len(pred["boxes"])
            and ((pred["scores"] >= 0) & (pred["scores"] <= 1)).all()
        )
