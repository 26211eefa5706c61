"""YOLO export: label lines, class mapping, polygon round trip, RLE contours, data.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytobench.errors import UnreadableImage
from cytobench.io.coco_convert import annotation_to_mask, encode_mask
from cytobench.io.images import write_image
from cytobench.io.yolo import export_yolo, read_yolo_labels

POLYGON = [3.25, 4.5, 30.125, 6.0, 28.0, 25.75, 10.5, 22.333333, 4.0, 14.2]


@pytest.fixture()
def source(tmp_path: Path) -> tuple[Path, Path]:
    """Images folder and a COCO json with non-contiguous category ids, a crowd, an RLE and a box-only object."""
    images = tmp_path / "src"
    write_image(images / "a.png", np.zeros((32, 40, 3), np.uint8))
    write_image(images / "sub" / "b.png", np.zeros((20, 20), np.uint8))
    rle_mask = np.zeros((20, 20), np.uint8)
    rle_mask[5:12, 3:9] = 1
    xs, ys = POLYGON[0::2], POLYGON[1::2]
    data: dict[str, Any] = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 32},
            {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 9,
                "segmentation": [[1, 1, 2, 1, 2, 2], POLYGON],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0,
            },
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [0, 0, 8, 4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 4, "bbox": [20, 20, 5, 5], "iscrowd": 1},
            {
                "id": 4,
                "image_id": 2,
                "category_id": 4,
                "bbox": [3, 5, 6, 7],
                "iscrowd": 0,
                "segmentation": encode_mask(rle_mask),
            },
        ],
        "categories": [{"id": 9, "name": "cell"}, {"id": 4, "name": "debris"}],
    }
    ann_file = tmp_path / "train.json"
    ann_file.write_text(json.dumps(data))
    return images, ann_file


def test_detect_export_lines_mapping_and_layout(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    out = tmp_path / "yolo"
    mapping = export_yolo(ann_file, images, out, split="train", task="detect")
    assert mapping == {9: 0, 4: 1}  # 0-based in the order of categories
    lines = (out / "labels" / "train" / "a.txt").read_text().splitlines()
    assert len(lines) == 2  # the crowd is skipped
    cls, cx, cy, w, h = lines[1].split()
    assert cls == "1"
    np.testing.assert_allclose([float(cx), float(cy), float(w), float(h)], [4 / 40, 2 / 32, 8 / 40, 4 / 32])
    assert (out / "images" / "train" / "sub" / "b.png").is_file()
    assert (out / "labels" / "train" / "sub" / "b.txt").is_file()
    yaml_text = (out / "data.yaml").read_text()
    assert "train: images/train" in yaml_text and "val: images/train" in yaml_text  # no val split yet
    assert '  0: "cell"' in yaml_text and '  1: "debris"' in yaml_text
    export_yolo(ann_file, images, out, split="val", task="detect", copy=True)
    assert "val: images/val" in (out / "data.yaml").read_text()
    assert not (out / "images" / "val" / "a.png").is_symlink()


def test_segment_polygon_round_trip(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    out = tmp_path / "yolo"
    export_yolo(ann_file, images, out, task="segment")
    parsed = read_yolo_labels(out / "labels" / "train" / "a.txt", 40, 32)
    cls, polygon = parsed[0]
    assert cls == 0
    np.testing.assert_allclose(polygon, np.array(POLYGON).reshape(-1, 2), atol=1e-6)  # largest polygon kept
    cls, box_polygon = parsed[1]  # no segmentation: box corners
    np.testing.assert_allclose(box_polygon, [[0, 0], [8, 0], [8, 4], [0, 4]], atol=1e-6)


def test_segment_rle_becomes_largest_contour(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    out = tmp_path / "yolo"
    export_yolo(ann_file, images, out, task="segment")
    [(cls, polygon)] = read_yolo_labels(out / "labels" / "train" / "sub" / "b.txt", 20, 20)
    assert cls == 1
    redrawn = annotation_to_mask({"segmentation": [polygon.reshape(-1).tolist()]}, 20, 20)
    truth = np.zeros((20, 20), np.uint8)
    truth[5:12, 3:9] = 1
    iou = (redrawn & truth).sum() / (redrawn | truth).sum()
    assert iou > 0.95


def test_missing_image_raises(tmp_path: Path, source: tuple[Path, Path]) -> None:
    images, ann_file = source
    (images / "a.png").unlink()
    with pytest.raises(UnreadableImage, match=r"a.png: file not found \(image 1 of train.json\)"):
        export_yolo(ann_file, images, tmp_path / "yolo")
