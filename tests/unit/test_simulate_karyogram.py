"""Karyogram layout (rows by Denver group, pairs side by side, trisomies, empty slots) and the karyogram
simulator (determinism, boxes and masks, categories, karyotype strings, CLI)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cytobench.cli import main
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask
from cytobench.io.images import read_image
from cytobench.simulate.chromosomes import CLASS_NAMES, CLASSES, format_karyotype
from cytobench.simulate.karyogram import KARYOGRAM_ROWS, karyogram_layout, simulate_karyogram
from cytobench.simulate.metaphase import categories

W, H = 256, 192
NORMAL = [i for i in range(1, 23) for _ in range(2)]
GAPS = {"copy_gap": 3, "slot_gap": 7, "group_gap": 15, "row_gap": 5, "label_height": 9, "margin": 4}
ROW_OF_GROUP = {"A": 0, "B": 0, "C": 1, "D": 2, "E": 2, "F": 3, "G": 3}


def _sizes(classes: list[int]) -> list[tuple[int, int]]:
    """Upright crop sizes (h, w): height by class length, widths varying a little."""
    return [(round(100 * CLASSES[c - 1].relative_length / 8.44), 8 + (k % 3)) for k, c in enumerate(classes)]


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _no_overlaps(boxes: np.ndarray) -> bool:
    return not any(_overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def test_rows_follow_the_denver_groups_and_pairs_stand_side_by_side() -> None:
    classes = [*NORMAL, 23, 24]
    order = np.random.default_rng(0).permutation(len(classes))  # input order does not matter
    classes = [classes[k] for k in order]
    sizes = _sizes(classes)
    layout = karyogram_layout(classes, sizes, **GAPS)
    boxes, cls = layout.boxes, np.array(classes)
    assert boxes.shape == (46, 4) and _no_overlaps(boxes)
    assert np.array_equal(boxes[:, 3] - boxes[:, 1], [h for h, _ in sizes])
    assert np.array_equal(boxes[:, 2] - boxes[:, 0], [w for _, w in sizes])
    width, height = layout.size
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
    for i, c in enumerate(classes):
        expected = 3 if c > 22 else ROW_OF_GROUP[CLASSES[c - 1].group]  # documented: X, Y end row 4
        assert layout.rows[i] == expected
        assert c in KARYOGRAM_ROWS[expected]
    for row in KARYOGRAM_ROWS:  # one baseline per row; classes left to right in numeric order
        rows_boxes = boxes[np.isin(cls, row)]
        assert len(set(rows_boxes[:, 3].tolist())) == 1
        for a, b in zip(row[:-1], row[1:]):
            assert boxes[cls == a, 2].max() < boxes[cls == b, 0].min()
    for r in range(3):  # rows stacked top to bottom
        upper, lower = boxes[layout.rows == r], boxes[layout.rows == r + 1]
        assert upper[:, 3].max() < lower[:, 1].min()
    for c in range(1, 23):  # the pair: adjacent, copy_gap apart, nothing between them
        left, right = sorted(boxes[cls == c].tolist())
        assert right[0] - left[2] == GAPS["copy_gap"]
        between = (
            (boxes[:, 0] < right[0]) & (boxes[:, 2] > left[2]) & (layout.rows == layout.rows[cls == c][0])
        )
        assert not between.any()
    for k, c in enumerate(range(1, 25)):  # the class number sits under its slot, below the baseline
        x0, _y0, x1, baseline = layout.slots[c - 1]
        assert x0 <= layout.labels[k, 0] <= x1 and layout.labels[k, 1] > baseline
        assert np.all(boxes[cls == c, 0] >= x0) and np.all(boxes[cls == c, 2] <= x1)


def test_trisomy_copy_stands_beside_its_pair() -> None:
    classes = sorted([*NORMAL, 23, 23, 21])  # 47,XX,+21
    assert format_karyotype(classes) == "47,XX,+21"
    layout = karyogram_layout(classes, _sizes(classes), **GAPS)
    cls = np.array(classes)
    trio = layout.boxes[cls == 21]
    assert len(trio) == 3 and len(set(layout.rows[cls == 21].tolist())) == 1 and _no_overlaps(layout.boxes)
    trio = trio[np.argsort(trio[:, 0])]
    assert np.all(trio[1:, 0] - trio[:-1, 2] == GAPS["copy_gap"])
    assert layout.boxes[cls == 20, 2].max() < trio[0, 0] and trio[2, 2] < layout.boxes[cls == 22, 0].min()
    x0, _, x1, _ = layout.slots[20]
    assert trio[0, 0] == x0 and trio[2, 2] == x1


def test_missing_chromosomes_leave_their_slots_empty() -> None:
    classes = [*NORMAL, 23]  # 45,X
    assert format_karyotype(classes) == "45,X"
    sizes = _sizes(classes)
    layout = karyogram_layout(classes, sizes, placeholder=(20, 9), **GAPS)
    cls = np.array(classes)
    y_slot, x_slot = layout.slots[23], layout.slots[22]
    assert y_slot[2] - y_slot[0] == 9  # Y keeps room for one copy
    assert not any(_overlap(b, y_slot) for b in layout.boxes)
    (x_box,) = layout.boxes[cls == 23]
    assert x_box[0] == x_slot[0]  # the X stands left, the second copy's place stays empty
    empty = np.array([x_box[2], x_slot[1], x_slot[2], x_slot[3]])
    assert empty[2] - empty[0] == GAPS["copy_gap"] + 9
    assert not any(_overlap(b, empty) for b in layout.boxes)
    # the slots sit where a 46,XX karyogram puts them when the placeholder matches the crops
    full = karyogram_layout([*classes, 23], [*sizes, (20, 9)], placeholder=(20, 9), **GAPS)
    assert np.array_equal(full.slots, layout.slots) and np.array_equal(full.labels, layout.labels)


def test_canvas_size_justifies_rows_and_refuses_too_small() -> None:
    classes = [*NORMAL, 23, 24]
    natural = karyogram_layout(classes, _sizes(classes), **GAPS)
    big = karyogram_layout(classes, _sizes(classes), canvas_size=(600, 400), **GAPS)
    assert big.size == (600, 400) and _no_overlaps(big.boxes)
    for row in KARYOGRAM_ROWS:  # every row spans the canvas between the margins
        assert (
            big.slots[row[0] - 1, 0] == GAPS["margin"] and big.slots[row[-1] - 1, 2] == 600 - GAPS["margin"]
        )
    assert big.boxes[:, 3].max() <= 400 and big.boxes[:, :2].min() >= 0
    with pytest.raises(ValueError, match="needs"):
        karyogram_layout(classes, _sizes(classes), canvas_size=(natural.size[0] - 1, natural.size[1]), **GAPS)
    with pytest.raises(ValueError, match="1-24"):
        karyogram_layout([25], [(10, 5)])
    with pytest.raises(ValueError, match="length"):
        karyogram_layout([1, 2], [(10, 5)])
    with pytest.raises(ValueError, match="exactly once"):
        karyogram_layout([1], [(10, 5)], rows=[(1, 2)])
    empty = karyogram_layout([], [])
    assert empty.boxes.shape == (0, 4) and empty.size[0] > 0


# --------------------------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("karyogram")
    path = simulate_karyogram(10, out, size=(W, H), seed=3, n_chromosomes={45: 0.3, 46: 0.4, 47: 0.3})
    return load_coco(path) | {"_dir": out}


def _by_image(data: dict) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        groups[ann["image_id"]].append(ann)
    return groups


def test_simulator_is_deterministic_for_a_seed(dataset: dict, tmp_path: Path) -> None:
    first = dataset["_dir"]
    again = simulate_karyogram(
        2, tmp_path / "a", size=(W, H), seed=3, n_chromosomes={45: 0.3, 46: 0.4, 47: 0.3}
    )
    data = load_coco(again)
    assert data["annotations"] == [a for a in dataset["annotations"] if a["image_id"] <= 2]
    for img in data["images"]:
        assert (tmp_path / "a" / "images" / img["file_name"]).read_bytes() == (
            first / "images" / img["file_name"]
        ).read_bytes()
    simulate_karyogram(1, tmp_path / "b", size=(W, H), seed=4)
    name = data["images"][0]["file_name"]
    assert (tmp_path / "b" / "images" / name).read_bytes() != (first / "images" / name).read_bytes()


def test_boxes_inside_the_image_disjoint_and_equal_to_mask_boxes(dataset: dict) -> None:
    for anns in _by_image(dataset).values():
        boxes = np.array([a["bbox"] for a in anns], dtype=np.int64)
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] > 0)
        assert np.all(boxes[:, 0] + boxes[:, 2] <= W) and np.all(boxes[:, 1] + boxes[:, 3] <= H)
        boxes[:, 2:] += boxes[:, :2]
        assert _no_overlaps(boxes)
        for ann in anns[:8]:
            mask = annotation_to_mask(ann, H, W)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == ann["bbox"]
            assert int(mask.sum()) == ann["area"] and ann["iscrowd"] == 0
            assert ann["bbox"][3] > ann["bbox"][2]  # upright


def test_categories_and_karyotypes_match_the_annotations(dataset: dict) -> None:
    assert dataset["categories"] == categories("karyotype")
    assert [c["name"] for c in dataset["categories"]] == list(CLASS_NAMES)
    groups = _by_image(dataset)
    assert {img["n_chromosomes"] for img in dataset["images"]} == {45, 46, 47}
    for img in dataset["images"]:
        anns = groups[img["id"]]
        for ann in anns:
            cls = CLASSES[ann["category_id"] - 1]
            assert ann["chromosome_class"] == cls.name and ann["denver_group"] == cls.group
        indices = [a["category_id"] for a in anns]
        assert len(anns) == img["n_chromosomes"]
        assert img["karyotype"] == format_karyotype(sorted(indices))
        counts = Counter(a["chromosome_class"] for a in anns)
        assert sum(counts.values()) == int(img["karyotype"].split(",")[0])


def test_rendered_karyogram_rows_and_light_background(dataset: dict) -> None:
    img = dataset["images"][0]
    image = read_image(dataset["_dir"] / "images" / img["file_name"]).array[:, :, 0]
    assert image.shape == (H, W) and np.median(image) > 0.7  # read_image scales to [0, 1]
    anns = _by_image(dataset)[img["id"]]
    inside = np.zeros((H, W), dtype=bool)
    for ann in anns:
        inside |= annotation_to_mask(ann, H, W).astype(bool)
    assert image[inside].mean() < image[~inside].mean() - 0.15
    row_of = {c: r for r, row in enumerate(KARYOGRAM_ROWS) for c in row}
    for r in range(3):
        upper = [a["bbox"] for a in anns if row_of[a["category_id"]] == r]
        lower = [a["bbox"] for a in anns if row_of[a["category_id"]] == r + 1]
        assert max(b[1] + b[3] for b in upper) < min(b[1] for b in lower)


def test_cli_writes_two_small_karyograms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    main(["simulate", "karyogram", "--n", "2", "--size", "192", "160", "--seed", "1", "--out", str(out)])
    assert "simulated 2 karyograms" in capsys.readouterr().out
    data = json.loads((out / "annotations.json").read_text())
    assert len(data["images"]) == 2 and len(data["categories"]) == 24
    assert all((out / "images" / img["file_name"]).is_file() for img in data["images"])
    assert all(img["karyotype"].startswith("46,") for img in data["images"])
    for bad in (["--n", "-1"], ["--n", "1", "--n-chromosomes", "46=x"], ["--n", "1", "--size", "64"]):
        with pytest.raises(SystemExit) as exc:
            main(["simulate", "karyogram", *bad, "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("simulate karyogram:")
    assert not (tmp_path / "bad").exists()
