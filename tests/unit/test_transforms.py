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


# ------------------------------------------------------------------ dense truth: maps and amodal masks


def _dense_sample() -> tuple[np.ndarray, dict[str, Any]]:
    """An image whose pixel values encode their position, and asymmetric maps of every kind.

    Object 0: visible mask rows 2..5 x cols 4..9, amodal mask extends it down to row 9 (hidden part).
    ``semantic``: an L of class 2 plus a class-1 block; ``weights``: a float ramp; ``overlap``: uint8 dots.
    """
    image = (np.arange(H * W, dtype=np.float32).reshape(H, W, 1) + 1) / (H * W + 1)
    target = _sample()[1]
    amodal = np.zeros((1, H, W), np.uint8)
    amodal[0, 2:10, 4:10] = 1
    semantic = np.zeros((H, W), np.int64)
    semantic[1:12, 2] = 2
    semantic[11, 2:9] = 2
    semantic[3:6, 20:27] = 1
    overlap = np.zeros((H, W), np.uint8)
    overlap[[0, 3, 15], [1, 25, 7]] = 1
    nucleus = np.zeros((1, H, W), np.uint8)
    nucleus[0, 3:5, 5:7] = 1
    target.update(
        amodal_masks=amodal,
        nucleus_masks=nucleus,  # any other named per-object stack
        semantic=semantic,
        weights=np.linspace(0.0, 3.0, H * W, dtype=np.float32).reshape(H, W),
        overlap=overlap,
    )
    return image, target


def _window(out_image: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """(row, col) of the source pixel at the output's top-left corner (pixel values encode positions)."""
    index = int(np.argmin(np.abs(image[:, :, 0].ravel() - out_image[0, 0, 0])))
    return divmod(index, W)


DENSE_KEYS = ("semantic", "weights", "overlap")


def test_flips_and_rotations_move_every_map_and_amodal_mask_exactly() -> None:
    image, target = _dense_sample()
    cases = [
        (dict(hflip=1.0), lambda a: a[..., ::-1]),
        (dict(hflip=0.0, vflip=1.0), lambda a: a[..., ::-1, :]),
    ]
    for kwargs, expect in cases:
        out_image, out = apply_transforms(build_transforms(True, **kwargs), image, target, seed=0)
        np.testing.assert_array_equal(out_image, expect(image.transpose(2, 0, 1)).transpose(1, 2, 0))
        for key in (*DENSE_KEYS, "amodal_masks", "masks", "nucleus_masks"):
            assert out[key].dtype == target[key].dtype
            np.testing.assert_array_equal(out[key], expect(target[key]))
    compose = build_transforms(True, hflip=0.0, rotate90=1.0)
    seen = set()
    for seed in range(12):
        out_image, out = apply_transforms(compose, image, target, seed=seed)
        k = next(k for k in range(4) if np.array_equal(np.rot90(image, k), out_image))
        seen.add(k)
        for key in DENSE_KEYS:
            np.testing.assert_array_equal(out[key], np.rot90(target[key], k))
        np.testing.assert_array_equal(out["amodal_masks"][0], np.rot90(target["amodal_masks"][0], k))
    assert seen == {0, 1, 2, 3}


def test_crops_cut_maps_at_the_image_window_and_drop_amodal_masks_with_boxes() -> None:
    image, target = _dense_sample()
    compose = build_transforms(True, hflip=0.0, crop=12)
    dropped = kept = 0
    for seed in range(25):
        out_image, out = apply_transforms(compose, image, target, seed=seed)
        r, c = _window(out_image, image)
        np.testing.assert_array_equal(out_image, image[r : r + 12, c : c + 12])
        for key in DENSE_KEYS:
            np.testing.assert_array_equal(out[key], target[key][r : r + 12, c : c + 12])
        assert len(out["amodal_masks"]) == len(out["masks"]) == len(out["nucleus_masks"]) == len(out["boxes"])
        if len(out["boxes"]):
            kept += 1
            np.testing.assert_array_equal(
                out["nucleus_masks"][0], target["nucleus_masks"][0, r : r + 12, c : c + 12]
            )
            np.testing.assert_array_equal(
                out["amodal_masks"][0], target["amodal_masks"][0, r : r + 12, c : c + 12]
            )
        else:
            dropped += 1
    assert kept and dropped


def test_padding_fills_maps_with_zero() -> None:
    image, target = _dense_sample()
    _, out = apply_transforms(build_transforms(True, hflip=0.0, crop=32), image, target, seed=0)
    assert out["semantic"].shape == (32, 32) and out["weights"].shape == (32, 32)
    assert out["semantic"].sum() == target["semantic"].sum()  # every class pixel kept, the rest is 0
    assert out["weights"].sum() == pytest.approx(target["weights"].sum(), rel=1e-6)


def test_resize_is_nearest_neighbour_for_class_and_float_maps() -> None:
    image, target = _dense_sample()
    out_image, out = apply_transforms(build_transforms(False, resize=2 * W), image, target)
    assert out_image.shape == (2 * H, 2 * W, 1)
    for key in (*DENSE_KEYS,):
        up = np.repeat(np.repeat(target[key], 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(out[key], up)
        assert out[key].dtype == target[key].dtype
    np.testing.assert_array_equal(
        out["amodal_masks"][0], np.repeat(np.repeat(target["amodal_masks"][0], 2, 0), 2, 1)
    )
    _, down = apply_transforms(build_transforms(False, resize=17), image, target)  # odd factor: no blends
    assert set(np.unique(down["semantic"])) <= {0, 1, 2}
    assert set(np.unique(down["weights"])) <= set(np.unique(target["weights"]))
    assert down["area"][0] == down["masks"][0].sum()  # area stays the visible mask's


@pytest.mark.filterwarnings("ignore:Got processor")
def test_photometric_changes_leave_maps_alone() -> None:
    image, target = _dense_sample()
    out_image, out = apply_transforms(
        build_transforms(True, hflip=0.0, brightness_contrast=1.0), image, target, 2
    )
    assert not np.array_equal(out_image, image)
    for key in DENSE_KEYS:
        np.testing.assert_array_equal(out[key], target[key])


def test_dense_keys_do_not_change_the_rest_of_the_sample() -> None:
    image, target = _dense_sample()
    plain = {k: v for k, v in target.items() if k not in (*DENSE_KEYS, "amodal_masks", "nucleus_masks")}
    compose = build_transforms(True, vflip=0.5, rotate90=0.5, brightness_contrast=0.5, crop=16)
    for seed in range(6):
        a_image, a = apply_transforms(compose, image, plain, seed=seed)
        b_image, b = apply_transforms(compose, image, target, seed=seed)
        np.testing.assert_array_equal(a_image, b_image)
        for key in plain:
            np.testing.assert_array_equal(a[key], b[key])


def test_empty_target_still_moves_maps_and_keeps_empty_amodal_stack() -> None:
    image, target = _dense_sample()
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "amodal_masks": np.zeros((0, H, W), np.uint8),
        "semantic": target["semantic"],
    }
    _, out = apply_transforms(build_transforms(True, hflip=1.0), image, empty, 0)
    assert out["amodal_masks"].shape == (0, H, W)
    np.testing.assert_array_equal(out["semantic"], target["semantic"][:, ::-1])


def test_map_values_beyond_float32_precision_are_refused() -> None:
    image, target = _dense_sample()
    target["ids"] = np.full((H, W), 2**25, np.int64)
    with pytest.raises(ValueError, match="per-pixel map 'ids' has values beyond"):
        apply_transforms(build_transforms(True), image, target, 0)
