"""Toy simulator: counts, geometry of the truth, determinism, splits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask
from cytobench.io.images import read_image
from cytobench.simulate.toy import simulate_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("toy")
    return load_coco(simulate_toy(16, out, size=(128, 96), seed=3, min_objects=2, max_objects=6)) | {
        "_dir": out
    }


def test_counts_files_and_categories(toy: dict) -> None:
    assert len(toy["images"]) == 16
    per_image = np.bincount([a["image_id"] for a in toy["annotations"]], minlength=17)[1:]
    assert per_image.min() >= 2 and per_image.max() <= 6
    assert {a["category_id"] for a in toy["annotations"]} == {1, 2}
    assert [c["name"] for c in toy["categories"]] == ["cell", "debris"]
    assert all(c["keypoints"] == ["center"] and c["skeleton"] == [] for c in toy["categories"])
    image = read_image(toy["_dir"] / "images" / toy["images"][0]["file_name"])
    assert image.array.shape == (96, 128, 3) and image.bit_depth == 8


def test_boxes_inside_images_and_keypoint_at_centre(toy: dict) -> None:
    for ann in toy["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96 and w > 0 and h > 0
        kx, ky, v = ann["keypoints"]
        assert v == 2
        assert kx == pytest.approx(x + w / 2, abs=1e-3) and ky == pytest.approx(y + h / 2, abs=1e-3)


def test_polygon_area_matches_ellipse_and_mask(toy: dict) -> None:
    cells = [a for a in toy["annotations"] if a["category_id"] == 1]
    assert cells
    for ann in cells:
        a, b = ann["truth"]["axes"]
        poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
        x, y = poly[:, 0], poly[:, 1]
        shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        assert shoelace == pytest.approx(math.pi * a * b, rel=0.02)
        assert ann["area"] == pytest.approx(shoelace, rel=1e-3)
        angle = ann["truth"]["angle"]  # the box is the exact ellipse's extent
        half_w = math.hypot(a * math.cos(angle), b * math.sin(angle))
        assert ann["bbox"][2] == pytest.approx(2 * half_w, abs=1e-3)
        mask = annotation_to_mask(ann, 96, 128)
        assert mask.sum() == pytest.approx(shoelace, rel=0.15)


def test_objects_are_drawn_where_the_truth_says(toy: dict) -> None:
    image = read_image(toy["_dir"] / "images" / toy["images"][0]["file_name"]).array.mean(axis=2)
    background = np.median(image)
    for ann in (a for a in toy["annotations"] if a["image_id"] == toy["images"][0]["id"]):
        kx, ky, _ = ann["keypoints"]
        assert image[int(ky), int(kx)] > background + 0.1


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = simulate_toy(4, tmp_path / "a", seed=11)
    b = simulate_toy(4, tmp_path / "b", seed=11)
    c = simulate_toy(4, tmp_path / "c", seed=12)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/images/toy_00002.png").read_bytes() == (
        tmp_path / "b/images/toy_00002.png"
    ).read_bytes()
    assert a.read_text() != c.read_text()
    prefix = simulate_toy(2, tmp_path / "d", seed=11)  # image i does not depend on n_images
    assert json.loads(prefix.read_text())["images"] == json.loads(a.read_text())["images"][:2]


def test_split_writes_train_and_val(tmp_path: Path) -> None:
    train_path = simulate_toy(10, tmp_path, seed=0, val_fraction=0.3)
    assert train_path == tmp_path / "train.json"
    train, val = load_coco(train_path), load_coco(tmp_path / "val.json")
    assert len(train["images"]) == 7 and len(val["images"]) == 3
    assert {i["id"] for i in train["images"]}.isdisjoint({i["id"] for i in val["images"]})
    assert all(a["image_id"] in {i["id"] for i in val["images"]} for a in val["annotations"])
    assert len(list((tmp_path / "images").glob("*.png"))) == 10


def test_size_is_width_then_height(tmp_path: Path) -> None:
    data = load_coco(simulate_toy(1, tmp_path / "wide", size=(80, 48), seed=1))
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (80, 48)
    assert read_image(tmp_path / "wide/images/toy_00000.png").array.shape == (48, 80, 3)
    square = load_coco(simulate_toy(1, tmp_path / "square", size=40, seed=1))
    assert (square["images"][0]["width"], square["images"][0]["height"]) == (40, 40)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"n_images": 0}, "n_images"),
        ({"size": (-5, 64)}, "size"),
        ({"size": (64, 8)}, "size"),
        ({"size": (64, 64, 3)}, "size"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 0.5}, "val_fraction"),  # one image cannot be split
        ({"n_images": 4, "val_fraction": 1.0}, "val_fraction"),
        ({"min_objects": 0}, "min_objects"),
    ],
)
def test_bad_input_names_the_argument_and_writes_nothing(tmp_path: Path, kwargs: dict, word: str) -> None:
    args = {"n_images": 1, "out_dir": tmp_path} | kwargs
    with pytest.raises(ValueError, match=word):
        simulate_toy(**args)
    assert not any(tmp_path.iterdir())
