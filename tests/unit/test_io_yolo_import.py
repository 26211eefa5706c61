"""YOLO txt -> COCO: round trips through export_yolo (detect and segment), data.yaml names, every bad label
line naming its file and line, and ``cytobench import yolo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytobench.cli import main
from cytobench.errors import BadInputError
from cytobench.io.coco import load_coco
from cytobench.io.images import write_image
from cytobench.io.yolo import export_yolo, import_yolo, read_yolo_names

POLYGON = [3.25, 4.5, 30.125, 6.0, 28.0, 25.75, 10.5, 22.333333, 4.0, 14.2]
XS, YS = POLYGON[0::2], POLYGON[1::2]
GT: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 32},
        {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 20},
        {"id": 3, "file_name": "empty.png", "width": 16, "height": 16},
    ],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 23,
            "segmentation": [POLYGON],
            "bbox": [min(XS), min(YS), max(XS) - min(XS), max(YS) - min(YS)],
            "iscrowd": 0,
        },
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.5, 0.25, 8.125, 4.75], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [20, 20, 5, 5], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [3, 5, 6.3, 7.1], "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "1"}, {"id": 2, "name": "2"}, {"id": 23, "name": "X"}],
}


@pytest.fixture()
def source(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "src"
    write_image(images / "a.png", np.zeros((32, 40, 3), np.uint8))
    write_image(images / "sub" / "b.png", np.zeros((20, 20), np.uint8))
    write_image(images / "empty.png", np.zeros((16, 16), np.uint8))
    ann_file = tmp_path / "train.json"
    ann_file.write_text(json.dumps(GT))
    return images, ann_file


def objects(data: dict[str, Any]) -> dict[str, list[tuple[str, list[float], Any]]]:
    """``{file_name: [(category name, bbox, segmentation)]}`` of the non-crowd annotations, sorted."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {img["id"]: img["file_name"] for img in data["images"]}
    out: dict[str, list[tuple[str, list[float], Any]]] = {name: [] for name in files.values()}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            entry = (names[ann["category_id"]], ann["bbox"], ann.get("segmentation"))
            out[files[ann["image_id"]]].append(entry)
    return {key: sorted(value, key=lambda t: (t[0], t[1])) for key, value in out.items()}


def test_detect_round_trip(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    export_yolo(ann_file, images, tmp_path / "yolo", task="detect")
    names = read_yolo_names(tmp_path / "yolo" / "data.yaml")
    assert names == {0: "1", 1: "2", 2: "X"}
    data = import_yolo(tmp_path / "yolo" / "labels" / "train", tmp_path / "yolo" / "images" / "train", names)
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        ("a.png", 40, 32),
        ("empty.png", 16, 16),
        ("sub/b.png", 20, 20),
    ]
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "1"), (2, "2"), (3, "X")]
    ours, theirs = objects(data), objects(GT)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert [name for name, _, _ in ours[key]] == [name for name, _, _ in theirs[key]]
        ours_boxes, their_boxes = (
            np.array([b for _, b, _ in ours[key]]),
            np.array([b for _, b, _ in theirs[key]]),
        )
        np.testing.assert_allclose(ours_boxes, their_boxes, rtol=1e-6, atol=1e-6 * 40)
        assert all(segm is None for _, _, segm in ours[key])  # detect lines: boxes only
    out = tmp_path / "back.json"
    out.write_text(json.dumps(data))
    load_coco(out)  # valid COCO


def test_segment_round_trip(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    export_yolo(ann_file, images, tmp_path / "yolo", task="segment")
    data = import_yolo(tmp_path / "yolo" / "labels" / "train", images, ["1", "2", "X"])
    [(name, bbox, segm)] = [o for o in objects(data)["a.png"] if o[0] == "X"]
    np.testing.assert_allclose(segm[0], POLYGON, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bbox, GT["annotations"][0]["bbox"], rtol=1e-6, atol=1e-6)
    polygon_ann = next(a for a in data["annotations"] if a["category_id"] == 3)
    x, y = np.array(POLYGON[0::2]), np.array(POLYGON[1::2])
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert polygon_ann["area"] == pytest.approx(shoelace)
    [(name, bbox, segm)] = objects(data)["sub/b.png"]  # a box-only object comes back as its box corners
    assert name == "2"
    np.testing.assert_allclose(bbox, [3, 5, 6.3, 7.1], rtol=1e-6)
    out = tmp_path / "back.json"
    out.write_text(json.dumps(data))
    load_coco(out)


def test_classes_txt_is_not_a_label_file_and_slack(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", np.zeros((10, 20), np.uint8))
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("1\nX\n")  # LabelImg's YOLO mode writes it beside the labels
    (labels / "a.txt").write_text("1 0.5 0.5 1.05 0.5\n\n0 1.05 0 1.0 0.5 0.5 1.1\n")  # 1 px slack: 0.05 * 20
    data = import_yolo(labels, tmp_path / "images", ["1", "X"])
    box, polygon = data["annotations"]
    assert box["category_id"] == 2 and box["bbox"] == pytest.approx([-0.5, 2.5, 21.0, 5.0])
    assert polygon["segmentation"] == [pytest.approx([21.0, 0.0, 20.0, 5.0, 10.0, 11.0])]


def test_read_yolo_names_forms_and_faults(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text("path: x\nnames: ['1', '2', X]\n")
    assert read_yolo_names(path) == {0: "1", 1: "2", 2: "X"}
    path.write_text("nc: 2\nnames:\n  0: 1\n  1: Y\n")
    assert read_yolo_names(path) == {0: "1", 1: "Y"}
    faults = {
        "names: [a, b\n": "malformed YAML at line",
        "train: images/train\n": "needs 'names'",
        "names: []\n": "'names' is empty",
        "names: [a, a]\n": "'a' is given twice",
        "nc: 3\nnames: [a, b]\n": "nc is 3 but 'names' has 2 names",
        "names: {a: b}\n": "keys must be class ids",
    }
    for text, needle in faults.items():
        path.write_text(text)
        with pytest.raises(BadInputError, match="data.yaml") as info:
            read_yolo_names(path)
        assert needle in str(info.value), text


# ------------------------------------------------------------------------------------------ bad input
BAD_LINES = {
    "class out of range": (
        "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n",
        ("line 2", "class id 3 is out of range", "0..2"),
    ),
    "negative class": ("-1 0.5 0.5 0.2 0.2\n", ("line 1", "class id must be a whole number")),
    "fractional class": ("1.5 0.5 0.5 0.2 0.2\n", ("line 1", "class id must be a whole number")),
    "box outside": ("0 0.95 0.5 0.2 0.2\n", ("line 1", "box", "x = 1.05", "outside [0, 1]", "40x32")),
    "point outside": ("1 0.1 0.1 0.5 -0.2 0.9 0.9\n", ("line 1", "polygon of 3 points", "y = -0.2")),
    "odd polygon": (
        "0 0.5 0.5 0.2 0.2\n\n0 0.1 0.1 0.5 0.1 0.5\n",
        ("line 3", "odd number of polygon coordinates (5)"),
    ),
    "two points": ("2 0.1 0.1 0.5 0.5 0.4\n", ("line 1", "odd number")),
    "a point": ("2 0.1 0.1\n", ("line 1", "neither a box (4) nor a polygon")),
    "not a number": ("0 0.5 abc 0.2 0.2\n", ("line 1", "not a number: 'abc'")),
    "nan": ("0 0.5 nan 0.2 0.2\n", ("line 1", "non-finite")),
    "zero width": ("0 0.5 0.5 0 0.2\n", ("line 1", "width and height must be > 0")),
    "flat polygon": ("0 0.1 0.5 0.5 0.5 0.9 0.5\n", ("line 1", "zero width or height")),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_label_line_names_file_and_line(tmp_path: Path, case: str) -> None:
    text, needles = BAD_LINES[case]
    write_image(tmp_path / "images" / "bad.png", np.zeros((32, 40), np.uint8))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "bad.txt").write_text(text)
    with pytest.raises(BadInputError) as info:
        import_yolo(tmp_path / "labels", tmp_path / "images", ["1", "2", "X"])
    message = str(info.value)
    assert "\n" not in message
    for needle in ("bad.txt", *needles):
        assert needle in message, message


def test_label_without_image_and_missing_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(BadInputError, match=r"orphan.txt: has no image orphan\.\* under"):
        import_yolo(tmp_path / "labels", tmp_path / "images", ["a"])
    with pytest.raises(BadInputError, match="nowhere: images folder not found"):
        import_yolo(tmp_path / "labels", tmp_path / "nowhere", ["a"])
    with pytest.raises(BadInputError, match="no images found"):
        import_yolo(tmp_path / "labels", tmp_path / "labels", ["a"])


# ------------------------------------------------------------------------------------------------ CLI
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_import_yolo(
    tmp_path: Path, source: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images, ann_file = source
    yolo = tmp_path / "yolo"
    export_yolo(ann_file, images, yolo, task="segment")
    out = tmp_path / "gt.json"
    argv = [
        "import",
        "yolo",
        "--labels",
        str(yolo / "labels" / "train"),
        "--images",
        str(yolo / "images" / "train"),
    ]
    code, stdout, _ = run_cli([*argv, "--data", str(yolo / "data.yaml"), "--out", str(out)], capsys)
    assert code == 0 and "imported 3 images, 3 objects and 3 categories" in stdout
    assert [c["name"] for c in load_coco(out)["categories"]] == ["1", "2", "X"]
    before = out.read_text()
    code, _, err = run_cli([*argv, "--classes", "1,2,X", "--out", str(out)], capsys)  # exists: refused
    assert code == 2 and err.count("\n") == 1 and "gt.json" in err and "--overwrite" in err
    assert out.read_text() == before
    code, _, _ = run_cli([*argv, "--classes", "karyotype", "--out", str(out), "--overwrite"], capsys)
    data = load_coco(out)
    assert code == 0 and len(data["categories"]) == 24
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3}  # YOLO class k -> the k-th name
    code, _, err = run_cli([*argv, "--classes", "1,2", "--out", str(tmp_path / "new.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "a.txt" in err and "class id 2 is out of range" in err
    assert not (tmp_path / "new.json").exists()
