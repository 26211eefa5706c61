"""Augmentation keeps boxes, masks and keypoints of each object consistent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cytobench.data.transforms import apply_transforms, build_transforms, derive_seed

H, W = 20, 30


def _sample() -> tuple[np.ndarray, dict[str, Any]]:
    """One object: mask rows 2..5, cols 4..9 -> box [4, 2, 10, 6]; keypoint at the centre of pixel (2, 4)."""
    image = np.zeros((H, W, 1), np.float32)
    image[2:6, 4:10] = 1.0
    image[2, 4] = 0.5  # marks the keypoint's pixel
    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 2:6, 4:10] = 1
    target = {
        "boxes": np.array([[4, 2, 10, 6]], np.float32),
        "labels": np.array([1], np.int64),
        "iscrowd": np.zeros(1, np.int64),
        "area": np.array([24], np.float32),
        "masks": masks,
        "keypoints": np.array([[[4.5, 2.5, 2.0]]], np.float32),
    }
    return image, target


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _pixel_at(keypoint: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel whose centre the keypoint is at."""
    col, row = keypoint[0] - 0.5, keypoint[1] - 0.5
    assert col == pytest.approx(round(col), abs=1e-4) and row == pytest.approx(round(row), abs=1e-4)
    return int(round(row)), int(round(col))


def _check_consistent(image: np.ndarray, target: dict[str, Any]) -> None:
    box = target["boxes"][0]
    np.testing.assert_allclose(_mask_box(target["masks"][0]), box, atol=1e-4)
    row, col = _pixel_at(target["keypoints"][0, 0])
    assert target["masks"][0][row, col] == 1 and image[row, col, 0] == pytest.approx(0.5)


def test_horizontal_flip_matches_hand_computed_mirror() -> None:
    image, target = _sample()
    out_image, out = apply_transforms(build_transforms(True, hflip=1.0), image, target, seed=0)
    np.testing.assert_allclose(out["boxes"], [[W - 10, 2, W - 4, 6]], atol=1e-4)
    np.testing.assert_allclose(out["keypoints"], [[[W - 4.5, 2.5, 2.0]]], atol=1e-4)
    np.testing.assert_array_equal(out["masks"][0], target["masks"][0][:, ::-1])
    _check_consistent(out_image, out)


def test_vertical_flip_matches_hand_computed_mirror() -> None:
    image, target = _sample()
    out_image, out = apply_transforms(build_transforms(True, hflip=0.0, vflip=1.0), image, target, seed=0)
    np.testing.assert_allclose(out["boxes"], [[4, H - 6, 10, H - 2]], atol=1e-4)
    np.testing.assert_allclose(out["keypoints"], [[[4.5, H - 2.5, 2.0]]], atol=1e-4)
    np.testing.assert_array_equal(out["masks"][0], target["masks"][0][::-1])
    _check_consistent(out_image, out)


def _rotate_point_ccw(x: float, y: float, k: int, width: int, height: int) -> tuple[float, float]:
    """Continuous (x, y) after k counter-clockwise quarter turns of a width x height image (np.rot90)."""
    for _ in range(k % 4):
        x, y = y, width - x
        width, height = height, width
    return x, y


def test_rotate90_all_factors_match_hand_computed_positions() -> None:
    compose = build_transforms(True, hflip=0.0, rotate90=1.0)
    seen = set()
    for seed in range(12):
        image, target = _sample()
        out_image, out = apply_transforms(compose, image, target, seed=seed)
        k = next(
            k
            for k in range(4)
            if np.rot90(image, k).shape == out_image.shape and np.array_equal(np.rot90(image, k), out_image)
        )
        seen.add(k)
        corners = [_rotate_point_ccw(x, y, k, W, H) for x, y in ((4, 2), (10, 6))]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        np.testing.assert_allclose(out["boxes"][0], [min(xs), min(ys), max(xs), max(ys)], atol=1e-4)
        np.testing.assert_allclose(
            out["keypoints"][0, 0, :2], _rotate_point_ccw(4.5, 2.5, k, W, H), atol=1e-4
        )
        np.testing.assert_array_equal(out["masks"][0], np.rot90(target["masks"][0], k))
        _check_consistent(out_image, out)
    assert seen == {0, 1, 2, 3}


def test_resize_scales_box_mask_and_keypoint_together() -> None:
    image, target = _sample()
    out_image, out = apply_transforms(build_transforms(False, resize=60), image, target)
    assert out_image.shape == (40, 60, 1)
    np.testing.assert_allclose(out["boxes"], [[8, 4, 20, 12]], atol=1e-4)
    np.testing.assert_allclose(out["keypoints"], [[[9.0, 5.0, 2.0]]], atol=1e-4)  # continuous frame: x * 2
    np.testing.assert_allclose(_mask_box(out["masks"][0]), [8, 4, 20, 12])
    assert out["area"][0] == pytest.approx(96)


def test_crop_drops_boxes_with_their_masks_and_keypoints() -> None:
    image = np.zeros((40, 40, 1), np.float32)
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 1:7, 1:5] = 1  # object A (label 1): 4 x 6, top-left
    masks[1, 30:39, 32:38] = 1  # object B (label 2): 6 x 9, bottom-right
    target = {
        "boxes": np.array([[1, 1, 5, 7], [32, 30, 38, 39]], np.float32),
        "labels": np.array([1, 2], np.int64),
        "masks": masks,
        "keypoints": np.array([[[3, 4, 2]], [[35, 34.5, 2]]], np.float32),
    }
    compose = build_transforms(True, hflip=0.5, crop=20)
    counts = set()
    for seed in range(30):
        _, out = apply_transforms(compose, image, target, seed=seed)
        n = len(out["boxes"])
        counts.add(n)
        assert len(out["labels"]) == len(out["masks"]) == len(out["keypoints"]) == n
        for box, label, mask, kp in zip(out["boxes"], out["labels"], out["masks"], out["keypoints"]):
            full_w, full_h = (4, 6) if label == 1 else (6, 9)  # the label identifies the object
            assert box[2] - box[0] <= full_w + 1e-4 and box[3] - box[1] <= full_h + 1e-4
            np.testing.assert_allclose(_mask_box(mask), box, atol=1e-4)
            assert mask.sum() == pytest.approx((box[2] - box[0]) * (box[3] - box[1]), abs=1e-3)
            if kp[0, 2] > 0:  # a visible keypoint lies in its (possibly clipped) box
                assert box[0] <= kp[0, 0] <= box[2] and box[1] <= kp[0, 1] <= box[3]
    assert 0 in counts and 1 in counts  # crops that miss both objects and crops that keep one


def test_keypoint_leaving_the_image_gets_visibility_zero() -> None:
    image = np.zeros((40, 40, 1), np.float32)
    target = {
        "boxes": np.array([[10, 10, 30, 30]], np.float32),
        "labels": np.array([1], np.int64),
        "keypoints": np.array([[[20, 20, 2], [1, 1, 2]]], np.float32),
    }
    compose = build_transforms(True, hflip=0.0, crop=30, min_visibility=0.0)
    hidden = 0
    for seed in range(10):
        _, out = apply_transforms(compose, image, target, seed=seed)
        x, y, v = out["keypoints"][0, 1]
        inside = 0 <= x <= 30 and 0 <= y <= 30
        assert v == (2.0 if inside else 0.0)
        hidden += not inside
    assert hidden > 0


def test_empty_target_passes_through() -> None:
    image = np.zeros((H, W, 3), np.float32)
    target = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "masks": np.zeros((0, H, W), np.uint8),
        "keypoints": np.zeros((0, 2, 3), np.float32),
        "area": np.zeros(0, np.float32),
    }
    out_image, out = apply_transforms(
        build_transforms(True, hflip=1.0, rotate90=1.0, resize=60), image, target, 1
    )
    assert out_image.shape[2] == 3
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["masks"].shape == (0, *out_image.shape[:2]) and out["keypoints"].shape == (0, 2, 3)


def test_same_seed_same_output_other_seed_differs() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((H, W, 3), dtype=np.float32)
    _, target = _sample()
    compose = build_transforms(True, hflip=0.5, vflip=0.5, rotate90=0.5, brightness_contrast=1.0)
    outs = [apply_transforms(compose, image, target, seed=s)[0] for s in (7, 8, 7)]
    np.testing.assert_array_equal(outs[0], outs[2])
    assert outs[0].shape != outs[1].shape or not np.array_equal(outs[0], outs[1])
    assert all(o.min() >= 0.0 and o.max() <= 1.0 for o in outs)
    eval_out = apply_transforms(build_transforms(False), image, target, seed=3)[0]
    np.testing.assert_array_equal(eval_out, image)


def test_derive_seed_is_pure_and_distinguishes_parts() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, 2), derive_seed(0, 2, 1), derive_seed(1, 1, 2), derive_seed(0, 1, 3)}) == 4
