"""Dense predictions in `cytobench predict`: per-head maps through tiling, PNGs and RLE masks on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from cytobench.engine.predict_maps import DenseMapWriter
from cytobench.engine.tiling import TiledPredictor
from cytobench.io.images import read_image


def pixelwise_model(images: list[torch.Tensor]) -> list[dict]:
    """A model with no context: each head's probability is a function of the pixel alone."""
    return [
        {
            "maps": {"cytoplasm": image[0].clamp(0, 1), "overlap": (1 - image[0]).clamp(0, 1)},
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        for image in images
    ]


def test_tiled_maps_equal_whole_image_maps() -> None:
    image = torch.rand(1, 300, 420, generator=torch.Generator().manual_seed(0))
    whole = pixelwise_model([image])[0]["maps"]
    tiled = TiledPredictor(pixelwise_model, window=128, overlap=32, min_ratio=1.0).predict_one(image)
    assert set(tiled["maps"]) == {"cytoplasm", "overlap"}
    for head in whole:
        assert torch.equal(tiled["maps"][head], whole[head])
    scaled = TiledPredictor(pixelwise_model, window=0, scale=0.5).predict_one(image)
    assert scaled["maps"]["cytoplasm"].shape == (300, 420)  # back in the image's own pixels


def test_dense_map_writer_png_and_rle(tmp_path: Path) -> None:
    prob = np.zeros((6, 8), dtype=np.float32)
    prob[1:3, 2:5] = 0.9
    prob[4, 0] = 0.4  # above the overlap threshold 0.3, below the default 0.5
    writer = DenseMapWriter(tmp_path / "maps", thresholds={"overlap": 0.3})
    target = {"image_id": torch.tensor(7), "meta": {"file_name": "cells.png"}}
    writer.process_image(
        target, {"maps": {"cytoplasm": torch.from_numpy(prob), "overlap": torch.from_numpy(prob)}}
    )
    writer.process_image(
        target | {"image_id": torch.tensor(8)}, {"boxes": torch.zeros(0, 4)}
    )  # no maps: nothing
    assert writer.compute() == {"n_maps": 2.0}
    by_head = {r["head"]: r for r in writer.records}
    png = read_image(tmp_path / "maps" / by_head["cytoplasm"]["png"]).array[..., 0]
    np.testing.assert_allclose(png, np.rint(prob * 255) / 255, atol=1e-6)
    assert np.array_equal(mask_utils.decode(by_head["cytoplasm"]["segmentation"]), prob > 0.5)
    assert np.array_equal(mask_utils.decode(by_head["overlap"]["segmentation"]), prob > 0.3)
    assert by_head["overlap"]["threshold"] == 0.3 and by_head["cytoplasm"]["image_id"] == 7


def test_semantic_predictions_become_class_masks(tmp_path: Path) -> None:
    probs = torch.zeros(3, 4, 4)
    probs[0] = 1.0
    probs[2, :2] = 2.0  # class 2 wins in the top half
    writer = DenseMapWriter(tmp_path)
    writer.process_image({"image_id": 1}, {"semantic": probs})
    heads = {r["head"]: mask_utils.decode(r["segmentation"]) for r in writer.records}
    assert set(heads) == {"class_1", "class_2"}
    assert heads["class_1"].sum() == 0 and heads["class_2"][:2].all() and heads["class_2"][2:].sum() == 0


def test_image_list_stacks_plane_files(tmp_path: Path) -> None:
    import pytest

    from cytobench.data.image_list import ImageListDataset
    from cytobench.errors import BadInputError
    from cytobench.io.images import write_image

    lower, upper = np.full((5, 7), 10, np.uint8), np.full((5, 7), 200, np.uint8)
    write_image(tmp_path / "s1_bf_lower.png", lower)
    write_image(tmp_path / "s1_bf_upper.png", upper)
    image, target = ImageListDataset(
        [tmp_path / "s1_bf_lower.png"], plane_suffixes=["_bf_lower", "_bf_upper"]
    )[0]
    assert image.shape == (2, 5, 7) and target["meta"]["file_name"] == "s1_bf_lower.png"
    assert torch.allclose(image[0], torch.tensor(10 / 255)) and torch.allclose(
        image[1], torch.tensor(200 / 255)
    )
    write_image(tmp_path / "s2_bf_lower.png", lower)
    write_image(tmp_path / "s2_bf_upper.png", upper[:4])
    with pytest.raises(BadInputError, match="differs"):
        ImageListDataset([tmp_path / "s2_bf_lower.png"], plane_suffixes=["_bf_lower", "_bf_upper"])[0]
    with pytest.raises(BadInputError, match="not found"):
        ImageListDataset([tmp_path / "s1_bf_lower.png"], plane_suffixes=["_bf_lower", "_phase"])[0]
