"""COCO json: every bad-input case gives its one-line message; atomic saving; per-image conversion."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.io.coco import load_coco, load_coco_results, save_coco, save_coco_results
from cytobench.io.coco_convert import annotation_to_mask, coco_to_targets, encode_mask, results_to_predictions


def _dataset() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
            {"id": 3, "file_name": "c.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {
                "id": 17,
                "image_id": 1,
                "category_id": 5,
                "bbox": [2, 3, 10, 5],
                "area": 50,
                "iscrowd": 0,
                "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]],
                "keypoints": [7, 5.5, 2],
            },
            {"id": 18, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 19, "image_id": 1, "category_id": 9, "bbox": [30, 20, 10, 10], "iscrowd": 1},
        ],
        "categories": [
            {"id": 5, "name": "cell", "keypoints": ["center"]},
            {"id": 9, "name": "debris", "keypoints": ["center"]},
        ],
    }


def _write(tmp_path: Path, data: Any, name: str = "train.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_valid_file_loads(tmp_path: Path) -> None:
    data = load_coco(_write(tmp_path, _dataset()))
    assert len(data["annotations"]) == 3


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


BAD_CASES = [
    (
        "negative width",
        _set(["annotations", 0, "bbox"], [2, 3, -3.0, 5]),
        "annotation 17: bbox has a negative width (-3.0)",
    ),
    ("zero height", _set(["annotations", 0, "bbox"], [2, 3, 4, 0]), "annotation 17: bbox has a zero height"),
    (
        "not 4 numbers",
        _set(["annotations", 0, "bbox"], [2, 3, 4]),
        "annotation 17: bbox must be 4 numbers [x, y, w, h], got [2, 3, 4]",
    ),
    (
        "outside right",
        _set(["annotations", 0, "bbox"], [35, 3, 6.5, 5]),
        "annotation 17: bbox [35, 3, 6.5, 5] lies outside image 1 (40x30): right edge at 41.5",
    ),
    (
        "outside top",
        _set(["annotations", 0, "bbox"], [2, -2, 4, 5]),
        "annotation 17: bbox [2, -2, 4, 5] lies outside image 1 (40x30): top edge at -2",
    ),
    (
        "unknown category",
        _set(["annotations", 0, "category_id"], 7),
        "annotation 17: category_id 7 is not in categories",
    ),
    (
        "unknown image",
        _set(["annotations", 0, "image_id"], 99),
        "annotation 17: image_id 99 is not in images",
    ),
    (
        "duplicate annotation id",
        _set(["annotations", 1, "id"], 17),
        "annotation 17: duplicate annotation id 17",
    ),
    ("duplicate image id", _set(["images", 1, "id"], 1), "image 1: duplicate image id 1"),
    ("duplicate category id", _set(["categories", 1, "id"], 5), "category 5: duplicate category id 5"),
    (
        "annotation without bbox",
        lambda d: d["annotations"][1].pop("bbox"),
        "annotation 18: missing required key 'bbox'",
    ),
    ("image without width", lambda d: d["images"][2].pop("width"), "image 3: missing required key 'width'"),
    ("missing categories", lambda d: d.pop("categories"), "missing required key 'categories'"),
    (
        "keypoint count",
        _set(["annotations", 0, "keypoints"], [1, 2, 2, 3, 4, 2]),
        "annotation 17: keypoints has 6 values, expected 3 for category 5",
    ),
    (
        "odd polygon",
        _set(["annotations", 0, "segmentation"], [[1, 2, 3, 4, 5]]),
        "annotation 17: segmentation polygon needs an even number (>= 6) of coordinates",
    ),
    (
        "rle size",
        _set(["annotations", 0, "segmentation"], {"size": [10, 10], "counts": "abc"}),
        "annotation 17: segmentation RLE size [10, 10] differs from the image size [30, 40]",
    ),
]


@pytest.mark.parametrize("name,edit,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_annotation_gives_exact_one_line_message(
    tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = _dataset()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(CorruptAnnotation) as info:
        load_coco(path)
    assert str(info.value) == f"CorruptAnnotation: {path}: {expected}"
    assert "train.json" in str(info.value) and "\n" not in str(info.value)


def test_box_within_one_pixel_tolerance_is_accepted(tmp_path: Path) -> None:
    data = _dataset()
    data["annotations"][0]["bbox"] = [-0.6, 3, 40.5, 5]  # 0.6 px left, 0.1 px right of the border
    load_coco(_write(tmp_path, data))


def test_missing_file_and_malformed_json(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        load_coco(tmp_path / "none.json")
    assert str(info.value) == f"BadInputError: {tmp_path / 'none.json'}: file not found"
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(CorruptAnnotation) as info:
        load_coco(path)
    assert (
        str(info.value) == f"CorruptAnnotation: {path}: malformed JSON at line 3, column 19: Expecting value"
    )
    path.write_text("[1, 2]")
    with pytest.raises(CorruptAnnotation, match="expected a JSON object"):
        load_coco(path)


# -------------------------------------------------------------------------------------------- results
def _results() -> list[dict[str, Any]]:
    return [
        {"image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "score": 0.9, "keypoints": [3, 3, 1]},
        {"image_id": 1, "category_id": 9, "bbox": [10, 10, 2, 3], "score": 0.3},
        {"image_id": 2, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.5},
    ]


def test_results_list_and_annotations_form_load(tmp_path: Path) -> None:
    gt = _dataset()
    assert load_coco_results(_write(tmp_path, _results(), "r.json"), gt) == _results()
    assert load_coco_results(_write(tmp_path, {"annotations": _results()}, "r2.json")) == _results()


RESULT_CASES = [
    ("negative width", 1, "bbox", [10, 10, -2.0, 3], "result 1: bbox has a negative width (-2.0)"),
    ("zero height", 0, "bbox", [1, 1, 4, 0], "result 0: bbox has a zero height"),
    ("unknown image", 2, "image_id", 42, "result 2: image_id 42 is not in the ground truth images"),
    (
        "unknown category",
        2,
        "category_id",
        6,
        "result 2: category_id 6 is not in the ground truth categories",
    ),
    ("score not a number", 0, "score", "high", "result 0: score must be a number, got 'high'"),
    ("score above 1", 1, "score", 1.3, "result 1: score must be in [0, 1], got 1.3"),
    ("score NaN", 1, "score", float("nan"), "result 1: score must be in [0, 1], got nan"),
]


@pytest.mark.parametrize("name,index,key,value,expected", RESULT_CASES, ids=[c[0] for c in RESULT_CASES])
def test_bad_result_gives_exact_message(
    tmp_path: Path, name: str, index: int, key: str, value: Any, expected: str
) -> None:
    results = _results()
    results[index][key] = value
    path = _write(tmp_path, results, "preds.json")
    with pytest.raises(CorruptAnnotation) as info:
        load_coco_results(path, _dataset())
    assert str(info.value) == f"CorruptAnnotation: {path}: {expected}"


def test_result_without_score_is_an_error(tmp_path: Path) -> None:
    results = _results()
    del results[1]["score"]
    path = _write(tmp_path, results, "preds.json")
    with pytest.raises(CorruptAnnotation, match=r"preds.json: result 1: missing required key 'score'"):
        load_coco_results(path)


# ---------------------------------------------------------------------------------------------- saving
def test_save_is_atomic_and_serialises_numpy(tmp_path: Path) -> None:
    data = _dataset()
    data["annotations"][0]["area"] = np.float32(50.0)
    data["annotations"][0]["id"] = np.int64(17)
    path = save_coco(tmp_path / "out" / "gt.json", data)
    assert load_coco(path)["annotations"][0]["area"] == 50.0
    before = path.read_text()
    bad = copy.deepcopy(_dataset())
    bad["info"] = {"unserialisable": object()}
    with pytest.raises(TypeError):
        save_coco(path, bad)
    assert path.read_text() == before  # the previous file survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["gt.json"]  # no temp file left
    res_path = save_coco_results(
        tmp_path / "res.json",
        [
            {
                "image_id": 1,
                "category_id": 5,
                "score": np.float32(0.5),
                "segmentation": {"size": [2, 2], "counts": b"04"},
            }
        ],
    )
    assert json.loads(res_path.read_text())[0]["segmentation"]["counts"] == "04"


# ------------------------------------------------------------------------------------------ conversion
def test_coco_to_targets_groups_per_image_in_order(tmp_path: Path) -> None:
    targets = coco_to_targets(_dataset(), with_masks=True)
    assert [t["image_id"] for t in targets] == [1, 2, 3]
    first = targets[0]
    np.testing.assert_allclose(first["boxes"], [[2, 3, 12, 8], [30, 20, 40, 30]])
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int64
    np.testing.assert_array_equal(first["labels"], [5, 9])  # raw category ids by default
    np.testing.assert_array_equal(first["iscrowd"], [0, 1])  # crowds are kept for evaluation
    assert first["keypoints"].shape == (2, 1, 3)
    np.testing.assert_allclose(first["keypoints"][0, 0], [7, 5.5, 2])
    np.testing.assert_allclose(first["keypoints"][1], 0.0)
    assert first["masks"].shape == (2, 30, 40) and first["masks"].dtype == np.uint8
    assert first["masks"][0].sum() == 50  # the 10 x 5 polygon
    assert first["meta"] == {"file_name": "a.png", "orig_size": (30, 40)}
    assert targets[2]["boxes"].shape == (0, 4) and targets[2]["masks"].shape == (0, 20, 20)
    mapped = coco_to_targets(_dataset(), cat_id_to_label={5: 1, 9: 2})
    np.testing.assert_array_equal(mapped[0]["labels"], [1, 2])


def test_results_to_predictions(tmp_path: Path) -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[4:9, 2:5] = 1
    results = [
        *_results(),
        {"image_id": 2, "category_id": 9, "score": 0.2, "segmentation": encode_mask(mask)},
    ]
    preds = results_to_predictions(results, [1, 2, 3], image_sizes={1: (30, 40), 2: (20, 20), 3: (20, 20)})
    assert [p["image_id"] for p in preds] == [1, 2, 3]
    np.testing.assert_allclose(preds[0]["boxes"], [[1, 1, 5, 5], [10, 10, 12, 13]])
    np.testing.assert_allclose(preds[0]["scores"], [0.9, 0.3])
    np.testing.assert_array_equal(preds[0]["labels"], [5, 9])
    assert preds[0]["keypoints"].shape == (2, 1, 3)
    np.testing.assert_allclose(preds[1]["boxes"][1], [2, 4, 5, 9])  # from the RLE
    np.testing.assert_array_equal(preds[1]["masks"][1], mask)
    assert preds[2]["boxes"].shape == (0, 4) and preds[2]["scores"].shape == (0,)


def test_annotation_to_mask_polygon_and_both_rle_forms() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 1
    mask[7, 0:12] = 1
    compressed = encode_mask(mask)
    assert isinstance(compressed["counts"], str)
    np.testing.assert_array_equal(annotation_to_mask({"segmentation": compressed}, 10, 12), mask)
    as_bytes = {"size": [10, 12], "counts": compressed["counts"].encode()}
    np.testing.assert_array_equal(annotation_to_mask({"segmentation": as_bytes}, 10, 12), mask)
    flat = mask.flatten(order="F")  # uncompressed RLE: run lengths in column-major order, starting with 0s
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    np.testing.assert_array_equal(
        annotation_to_mask({"segmentation": {"size": [10, 12], "counts": counts}}, 10, 12), mask
    )
    polygon = annotation_to_mask({"segmentation": [[3, 2, 7, 2, 7, 5, 3, 5]]}, 10, 12)
    np.testing.assert_array_equal(
        polygon, mask_utils.decode(mask_utils.frPyObjects([[3, 2, 7, 2, 7, 5, 3, 5]], 10, 12))[:, :, 0]
    )
    assert polygon.sum() == 12 and polygon[2:5, 3:7].all()
    assert annotation_to_mask({}, 4, 5).shape == (4, 5)
