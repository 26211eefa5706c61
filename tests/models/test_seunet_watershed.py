"""SEU-Net + watershed: hand-built head maps -> instances, and the model's eval output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytobench.errors import BadInputError
from cytobench.models.seunet_watershed import (
    SEUNetWatershed,
    WatershedConfig,
    build_seunet_watershed,
    watershed_instances,
    watershed_labels,
)
from cytobench.ops.instances import labels_to_instances, mask_boxes

H, W = 40, 70


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def two_touching_cells(border: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Discs of radius 15 at x = 20 and x = 46 (they overlap on a 4 px lens), a nucleus of radius 4 in each."""
    left, right = disc(20, 20, 15), disc(46, 20, 15)
    cells = left | right
    maps = {
        "cytoplasm": np.where(cells, 0.9, 0.05).astype(np.float32),
        "background": np.where(cells, 0.1, 0.95).astype(np.float32),
        "nuclei": np.where(disc(20, 20, 4) | disc(46, 20, 4), 0.95, 0.02).astype(np.float32),
    }
    if border:
        line = np.zeros((H, W), bool)
        line[:, 32:34] = True  # the predicted border between the two cells
        maps["border"] = np.where(line & cells, 0.9, 0.0).astype(np.float32)
    return maps, left, right


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("border", [True, False])
def test_two_touching_discs_with_two_nuclei_give_two_instances(border: bool) -> None:
    maps, left, right = two_touching_cells(border)
    out = watershed_instances(maps)
    assert set(out) == {"boxes", "scores", "labels", "masks"}
    masks = out["masks"].numpy().astype(bool)
    assert masks.shape == (2, H, W) and out["masks"].dtype == torch.uint8
    assert out["labels"].tolist() == [1, 1]
    # the instance of each nucleus is its disc, the two split in the lens between them
    first = 0 if masks[0, 20, 20] else 1
    assert masks[first, 20, 20] and masks[1 - first, 20, 46]
    assert iou(masks[first], left) > 0.9 and iou(masks[1 - first], right) > 0.9
    assert not (masks[0] & masks[1]).any() and (masks[0] | masks[1]).sum() == (left | right).sum()
    if border:  # the fronts meet on the predicted border: left of column 33 is the left cell's
        assert masks[first][:, :32].sum() == (left | right)[:, :32].sum()
        assert not masks[first][:, 34:].any()
    # score: mean foreground probability ((0.9 + 1 - 0.1) / 2 on every cell pixel)
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.9]))
    np.testing.assert_array_equal(out["boxes"].numpy(), mask_boxes(masks))


def test_one_nucleus_gives_one_cell_and_no_nucleus_gives_none() -> None:
    maps, left, right = two_touching_cells(border=False)
    maps["nuclei"] = np.where(disc(20, 20, 4), 0.95, 0.02).astype(np.float32)
    out = watershed_instances(maps)
    assert len(out["masks"]) == 1 and out["masks"][0].numpy().sum() == (left | right).sum()
    maps["nuclei"][:] = 0.0
    empty = watershed_instances(maps)
    assert empty["masks"].shape == (0, H, W) and empty["boxes"].shape == (0, 4)


def test_small_markers_and_instances_are_dropped() -> None:
    maps, _, _ = two_touching_cells(border=False)
    maps["nuclei"] = np.where(disc(20, 20, 1), 0.95, 0.02).astype(np.float32)  # 5 px marker
    assert len(watershed_instances(maps, WatershedConfig(min_marker_area=6))["masks"]) == 0
    assert len(watershed_instances(maps, WatershedConfig(min_marker_area=5))["masks"]) == 1
    labels, _ = watershed_labels(maps, WatershedConfig(min_area=10))
    assert labels.max() == 1
    big = WatershedConfig(min_area=int((labels > 0).sum()) + 1)
    assert len(watershed_instances(maps, big)["masks"]) == 0


def test_missing_heads_are_an_error() -> None:
    with pytest.raises(BadInputError, match="nuclei"):
        watershed_labels({"cytoplasm": np.zeros((4, 4))})
    with pytest.raises(BadInputError, match="nuclei"):
        SEUNetWatershed(heads=["cytoplasm"], depth=1, width=4, se_reduction=2)
    with pytest.raises(BadInputError, match="model.watershed"):
        SEUNetWatershed(
            heads=["cytoplasm", "nuclei"], watershed={"bogus": 1}, depth=1, width=4, se_reduction=2
        )


def test_labels_to_instances_scores_and_order() -> None:
    labels = np.zeros((6, 8), np.int32)
    labels[0:2, 0:3] = 3
    labels[4:6, 5:8] = 1
    labels[3, 3] = 7  # one pixel
    prob = np.full((6, 8), 0.5, np.float32)
    prob[0:2, 0:3] = 0.8
    out = labels_to_instances(labels, probability=prob, min_area=2)
    assert out["masks"].shape == (2, 6, 8)
    assert out["boxes"].tolist() == [[5.0, 4.0, 8.0, 6.0], [0.0, 0.0, 3.0, 2.0]]
    assert torch.allclose(out["scores"], torch.tensor([0.5, 0.8]))
    given = labels_to_instances(labels, scores=np.array([0.1, 0, 0.3, 0, 0, 0, 0.7]))
    assert torch.allclose(given["scores"], torch.tensor([0.1, 0.3, 0.7]))
    assert labels_to_instances(labels)["scores"].tolist() == [1.0, 1.0, 1.0]


def test_model_eval_adds_instances_to_the_maps_and_trains_as_seunet() -> None:
    torch.manual_seed(0)
    model = build_seunet_watershed(
        2,
        in_channels=2,
        heads=["cytoplasm", "nuclei", "border", "background"],
        decoder="decoupled",
        depth=2,
        width=4,
        se_reduction=2,
        window=None,
        watershed={"min_area": 1, "min_marker_area": 1, "mask_threshold": 0.0, "marker_threshold": 0.0},
    )
    semantic = torch.zeros(32, 40, dtype=torch.int64)
    semantic[5:20, 5:20], semantic[10:14, 10:14] = 1, 2
    loss = model([torch.rand(2, 32, 40)], [{"semantic": semantic}])
    assert set(loss) == {"loss_cytoplasm", "loss_nuclei", "loss_border", "loss_background"}
    model.eval()
    (pred,) = model([torch.rand(2, 32, 40)])
    assert set(pred["maps"]) == {"cytoplasm", "nuclei", "border", "background"}
    # thresholds 0: every pixel is cell and marker -> one instance covering the image
    assert pred["masks"].shape == (1, 32, 40) and int(pred["masks"].sum()) == 32 * 40
    assert pred["boxes"].tolist() == [[0.0, 0.0, 40.0, 32.0]] and pred["labels"].tolist() == [1]
