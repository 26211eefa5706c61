"""Tiled inference: every object once, in the image's own pixels, whatever the windows and scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cytobench.engine.tiling import TiledPredictor, tile_windows, training_image_size


class BlobDetector:
    """Stands in for a model: each connected blob of channel 0 (> 0.5) is one object, box + mask + semantic."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            self.calls.append(tuple(image.shape[1:]))
            fg = image[0].numpy() > 0.5
            lab, n = ndimage.label(fg)
            slices = ndimage.find_objects(lab)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices]
            masks = np.stack([lab == k for k in range(1, n + 1)]) if n else np.zeros((0, *fg.shape), bool)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.ones(n),
                    "labels": torch.ones(n, dtype=torch.int64),
                    "masks": torch.from_numpy(masks.astype(np.uint8)),
                    "keypoints": torch.tensor(
                        [[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 1.0]] for b in boxes]
                    ).reshape(-1, 1, 3),
                    "semantic": torch.stack([1 - image[0], image[0]]),
                }
            )
        return out


def _image(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, list[list[int]]]:
    """Squares of 6-10 px on a grid (some straddle window borders), and their xyxy boxes."""
    rng = np.random.default_rng(seed)
    img = torch.zeros(1, height, width)
    boxes = []
    for y in range(3, height - 12, 17):
        for x in range(3, width - 12, 17):
            s = int(rng.integers(6, 11))
            img[0, y : y + s, x : x + s] = 1
            boxes.append([x, y, x + s, y + s])
    return img, boxes


def _sorted(boxes: torch.Tensor | list) -> list[list[float]]:
    return sorted(torch.as_tensor(boxes, dtype=torch.float32).tolist())


def test_windows_cover_the_image_and_cores_tile_it_exactly() -> None:
    windows = tile_windows(100, 70, 40, 10)
    covered = np.zeros((100, 70), int)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in windows:
        assert y1 - y0 == 40 and x1 - x0 == 40 and y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1
        covered[int(cy0) : int(cy1), int(cx0) : int(cx1)] += 1
    assert (covered == 1).all()  # the cores here fall on whole pixels


def test_every_object_once_with_its_full_box_mask_and_keypoint() -> None:
    image, truth = _image(150, 170)
    model = BlobDetector()
    pred = TiledPredictor(model, window=64, overlap=20, min_ratio=1.0).predict_one(image)
    assert len(model.calls) > 4 and all(max(c) <= 64 for c in model.calls)
    assert _sorted(pred["boxes"]) == _sorted(truth)  # each square exactly once, none cut by a window edge
    assert pred["masks"].shape == (len(truth), 150, 170)
    np.testing.assert_array_equal(pred["masks"].sum(0).numpy() > 0, image[0].numpy() > 0.5)
    centres = (pred["boxes"][:, :2] + pred["boxes"][:, 2:]) / 2
    torch.testing.assert_close(pred["keypoints"][:, 0, :2], centres)
    whole = BlobDetector()([image])[0]
    torch.testing.assert_close(pred["semantic"], whole["semantic"])  # pasted core by core


def test_small_images_are_predicted_whole_and_scale_maps_back_to_original_pixels() -> None:
    image, truth = _image(60, 60)
    model = BlobDetector()
    TiledPredictor(model, window=48).predict_one(image)  # 60 <= 1.5 x 48: one call, whole image
    assert model.calls == [(60, 60)]
    big = torch.nn.functional.interpolate(image[None], scale_factor=2, mode="nearest")[0]
    pred = TiledPredictor(BlobDetector(), window=64, scale=0.5).predict_one(big)
    assert pred["masks"].shape[1:] == (120, 120)
    got = _sorted(pred["boxes"])
    assert len(got) == len(truth)
    np.testing.assert_allclose(got, _sorted([[2 * v for v in b] for b in truth]), atol=2.0)


def test_empty_images_and_bad_settings() -> None:
    pred = TiledPredictor(BlobDetector(), window=32, min_ratio=1.0).predict_one(torch.zeros(1, 100, 90))
    assert pred["boxes"].shape == (0, 4) and pred["masks"].shape == (0, 100, 90)
    with pytest.raises(ValueError, match="tiling"):
        TiledPredictor(BlobDetector(), window=32, overlap=40)
    assert training_image_size({"size": [320, 240]}) == 320 and training_image_size({"size": 96}) == 96
    assert training_image_size({}) == 512
