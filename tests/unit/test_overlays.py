"""Prediction overlays: exact colours at box pixels, TP / FP / missed split, the written PNG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cytobench.reporting.overlays import (
    COLORS,
    classify_predictions,
    compose_grid,
    draw_boxes,
    draw_masks,
    draw_points,
    render_predictions,
    render_truth,
    save_overlay_grid,
    to_rgb_uint8,
)

GRAY = 0.5  # image value -> 128 in uint8
GT = np.array([[10, 20, 30, 40], [50, 10, 70, 30], [5, 50, 25, 60]], dtype=np.float64)


def _image() -> np.ndarray:
    return np.full((64, 80), GRAY, dtype=np.float32)


def test_to_rgb_uint8_layouts() -> None:
    chw = torch.full((1, 4, 5), 1.0)
    assert to_rgb_uint8(chw).shape == (4, 5, 3) and to_rgb_uint8(chw).max() == 255
    u16 = np.array([[0, 1000], [500, 1000]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(u16)[..., 0], [[0, 255], [128, 255]])
    with pytest.raises(ValueError, match="shape"):
        to_rgb_uint8(np.zeros((2, 3, 4, 5)))


def test_box_outline_covers_outermost_pixels_only() -> None:
    canvas = np.zeros((50, 50, 3), dtype=np.uint8)
    draw_boxes(canvas, np.array([[10, 20, 30, 40]]), (1, 2, 3), thickness=1)
    drawn = canvas.any(axis=-1)
    # columns 10..29, rows 20..39: 2 * 20 + 2 * 18 outline pixels
    assert drawn.sum() == 76
    assert (
        drawn[20, 10:30].all()
        and drawn[39, 10:30].all()
        and drawn[20:40, 10].all()
        and drawn[20:40, 29].all()
    )
    assert not drawn[30, 20] and not drawn[19, 15] and not drawn[25, 30]
    assert tuple(canvas[20, 10]) == (1, 2, 3)
    thick = draw_boxes(np.zeros((50, 50, 3), np.uint8), np.array([[10, 20, 30, 40]]), (9, 9, 9), 2)
    assert thick[21, 11].any() and not thick[22, 12].any() and not thick[19, 9].any()


def test_classify_predictions_by_hand() -> None:
    pred = np.array(
        [
            [10, 20, 30, 40],  # exact match of gt 0 -> TP
            [11, 20, 30, 40],  # duplicate of gt 0, lower score -> FP
            [50, 10, 70, 30],  # gt 1 but below the score threshold -> not kept, gt 1 missed
            [0, 0, 4, 4],  # nowhere -> FP
        ],
        dtype=np.float64,
    )
    scores = np.array([0.9, 0.8, 0.3, 0.6])
    split = classify_predictions(GT, pred, scores, score_thr=0.5)
    np.testing.assert_array_equal(split["kept"], [True, True, False, True])
    np.testing.assert_array_equal(split["tp"], [True, False, False, False])
    np.testing.assert_array_equal(split["fp"], [False, True, False, True])
    np.testing.assert_array_equal(split["missed"], [False, True, True])


def test_render_predictions_colours_and_counts() -> None:
    pred = {
        "boxes": torch.tensor([[10.0, 20, 30, 40], [60, 45, 75, 60]]),  # TP on gt 0, FP elsewhere
        "scores": torch.tensor([0.95, 0.7]),
    }
    canvas, counts = render_predictions(_image(), GT, pred, thickness=1)
    assert counts == {"tp": 1, "fp": 1, "missed": 2}
    assert tuple(canvas[20, 15]) == COLORS["tp"]  # top edge of the TP box
    assert tuple(canvas[45, 70]) == COLORS["fp"]  # top edge of the FP box
    assert tuple(canvas[10, 60]) == COLORS["missed"]  # top edge of missed gt 1
    assert tuple(canvas[59, 5]) == COLORS["missed"]  # bottom-left corner of missed gt 2
    assert tuple(canvas[30, 20]) == (128, 128, 128)  # inside a box: untouched
    truth = render_truth(_image(), GT, thickness=1)
    assert tuple(truth[20, 15]) == tuple(truth[10, 69]) == COLORS["truth"]


def test_masks_and_points() -> None:
    canvas = np.zeros((10, 10, 3), dtype=np.uint8)
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 2:4, 2:4] = 1
    draw_masks(canvas, masks, (200, 0, 0), alpha=0.5)
    assert tuple(canvas[2, 2]) == (100, 0, 0) and tuple(canvas[5, 5]) == (0, 0, 0)
    draw_points(canvas, np.array([[[7.0, 6.0, 2.0], [1.0, 1.0, 0.0]]]), (0, 0, 255), radius=0)
    assert tuple(canvas[6, 7]) == (0, 0, 255) and tuple(canvas[1, 1]) == (0, 0, 0)


def test_compose_grid_places_panels() -> None:
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((5, 3, 3), 20, np.uint8)
    grid = compose_grid([[a, b]], pad=2)
    assert grid.shape == (2 + 5 + 2, 2 + 2 * (6 + 2), 3)
    assert (grid[2:6, 2:8] == 10).all() and (grid[2:7, 10:13] == 20).all()
    assert (grid[0, :] == 255).all()


def test_save_overlay_grid_writes_png_with_box_colours(tmp_path: Path) -> None:
    pred = {"boxes": np.array([[10.0, 20, 30, 40]]), "scores": np.array([0.9])}
    path = save_overlay_grid(
        [_image(), _image()],
        [GT, GT[:1]],
        {"baseline": [pred, pred], "deepace": [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}] * 2},
        tmp_path / "sub" / "fig10.png",
        image_titles=["a.png", "b.png"],
        thickness=1,
    )
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    pad, title, cell_h, cell_w = 6, 16, 64, 80
    assert rgb.shape == (3 * (cell_h + title + pad) + pad + 18, 2 * (cell_w + pad) + pad, 3)

    def pixel(row: int, col: int, y: int, x: int) -> tuple[int, ...]:
        return tuple(rgb[pad + row * (cell_h + title + pad) + title + y, pad + col * (cell_w + pad) + x])

    assert pixel(0, 0, 20, 15) == COLORS["truth"]
    assert pixel(1, 0, 20, 15) == COLORS["tp"] and pixel(1, 0, 10, 60) == COLORS["missed"]
    assert pixel(1, 1, 20, 15) == COLORS["tp"] and pixel(1, 1, 10, 60) == (128, 128, 128)
    assert pixel(2, 0, 20, 15) == COLORS["missed"]  # the model without detections misses everything
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        save_overlay_grid([_image()], [GT], {"m": [pred, pred]}, tmp_path / "x.png")
