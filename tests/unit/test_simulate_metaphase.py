"""G-banded metaphase simulator: counts and karyotypes, box/mask geometry, class-dependent lengths and
centromeres, band patterns, absorbance, S_o fraction, determinism, label modes and bad input."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from cytobench.evaluation.enumeration import overlapping_subset
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask
from cytobench.io.images import read_image
from cytobench.simulate.chromosomes import (
    CENTROMERE_DEPTH,
    CLASS_NAMES,
    CLASSES,
    band_profile,
    class_by_name,
    format_karyotype,
    render_body,
    sample_karyotype,
)
from cytobench.simulate.metaphase import simulate_metaphase

W, H = 512, 384


@pytest.fixture(scope="module")
def spreads(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("metaphase")
    path = simulate_metaphase(
        20, out, size=(W, H), seed=7, n_chromosomes={45: 0.25, 46: 0.5, 47: 0.25}, label_mode="karyotype"
    )
    return load_coco(path) | {"_dir": out}


def _by_image(data: dict) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        groups[ann["image_id"]].append(ann)
    return groups


def _expected_counts(karyotype: str) -> Counter:
    """Class multiset of an ISCN string such as ``47,XXY,+21,-13``."""
    fields = karyotype.split(",")
    counts = Counter({str(i): 2 for i in range(1, 23)})
    counts.update(Counter(fields[1]) if not re.match(r"[+-]", fields[1]) else Counter())
    for change in fields[2:] if not re.match(r"[+-]", fields[1]) else fields[1:]:
        counts[change[1:]] += 1 if change[0] == "+" else -1
    return +counts


def test_counts_and_karyotypes_match_the_drawn_classes(spreads: dict) -> None:
    groups = _by_image(spreads)
    assert {img["n_chromosomes"] for img in spreads["images"]} == {45, 46, 47}
    for img in spreads["images"]:
        anns = groups[img["id"]]
        assert len(anns) == img["n_chromosomes"] == int(img["karyotype"].split(",")[0])
        assert Counter(a["chromosome_class"] for a in anns) == _expected_counts(img["karyotype"])


def test_karyotype_sampling_and_format() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 44, 45, 46, 47, 48, 92):
        cells = sample_karyotype(rng, n)
        assert len(cells) == n and all(1 <= c <= 24 for c in cells)
        assert _expected_counts(format_karyotype(cells)) == Counter(CLASS_NAMES[c - 1] for c in cells)
    normal = [i for i in range(1, 23) for _ in range(2)]
    assert format_karyotype([*normal, 23, 23, 21]) == "47,XX,+21"
    assert format_karyotype([*normal, 23]) == "45,X"


def test_boxes_inside_image_and_equal_to_mask_boxes(spreads: dict) -> None:
    for ann in spreads["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= W and y + h <= H
        mask = annotation_to_mask(ann, H, W)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == ann["bbox"]
        assert int(mask.sum()) == ann["area"] and ann["iscrowd"] == 0
        # full body: a tube of half-width w around the centreline of length L, round caps, a Gaussian waist
        length, hw = ann["truth"]["length"], ann["truth"]["half_width"]
        waist = 2 * CENTROMERE_DEPTH * 0.9 * np.sqrt(np.pi) * hw**2
        assert 0.88 < ann["area"] / (2 * hw * length + np.pi * hw**2 - waist) < 1.1
        cx, cy = ann["truth"]["centromere"]
        assert mask[int(cy), int(cx)] == 1


def test_image_files_are_8bit_grayscale(spreads: dict) -> None:
    img = spreads["images"][0]
    data = read_image(spreads["_dir"] / "images" / img["file_name"])
    assert data.array.shape == (H, W, 1) and data.bit_depth == 8


def test_length_depends_on_class(spreads: dict) -> None:
    areas: dict[str, list[float]] = {}
    lengths: dict[str, list[float]] = {}
    for ann in spreads["annotations"]:
        for key in (ann["chromosome_class"], ann["denver_group"]):
            areas.setdefault(key, []).append(ann["area"])
            lengths.setdefault(key, []).append(ann["truth"]["length"])
    for long, short in (("1", "21"), ("A", "G"), ("A", "C"), ("C", "F")):
        assert np.mean(areas[long]) > 1.3 * np.mean(areas[short])
        assert np.mean(lengths[long]) > 1.3 * np.mean(lengths[short])
    ratio = np.mean(lengths["1"]) / np.mean(lengths["21"])
    assert ratio == pytest.approx(8.44 / 1.90, rel=0.15)


def test_denver_groups_are_ordered_by_length(spreads: dict) -> None:
    """Group means A > B > C > D > E > F > G, in the class table and in the simulated truth."""
    groups = "ABCDEFG"
    table = [np.mean([c.relative_length for c in CLASSES if c.group == g]) for g in groups]
    lengths: dict[str, list[float]] = {}
    for ann in spreads["annotations"]:
        lengths.setdefault(ann["denver_group"], []).append(ann["truth"]["length"])
    simulated = [np.mean(lengths[g]) for g in groups]
    for means in (table, simulated):
        assert all(a > b for a, b in zip(means, means[1:])), means


@pytest.mark.parametrize("name", ["1", "4", "13", "X"])
def test_centromere_waist_at_the_class_index(name: str) -> None:
    cls = class_by_name(name)
    length, hw = 200.0, 6.0
    points = np.stack([np.linspace(20.0, 20.0 + length, 401), np.full(401, 20.5)], axis=1)
    body = render_body(
        points, hw, band_profile(cls.index), (260, 41), centromere=cls.centromere_index * length
    )
    assert body is not None
    heights = body.mask.sum(axis=0).astype(float)
    xs = body.x0 + np.arange(len(heights)) + 0.5
    inner = (xs > 20 + 2 * hw) & (xs < 20 + length - 2 * hw)
    waist = xs[inner][heights[inner] == heights[inner].min()].mean()
    assert (waist - 20.0) / length == pytest.approx(cls.centromere_index, abs=0.02)
    assert heights[inner].min() == pytest.approx(2 * hw * (1 - CENTROMERE_DEPTH), abs=1.5)
    assert np.median(heights[inner]) == pytest.approx(2 * hw, abs=1.0)


def test_band_pattern_is_fixed_per_class_and_drawn_along_the_body() -> None:
    one = band_profile(1)
    assert np.array_equal(one, band_profile(1)) and not one.flags.writeable
    assert np.corrcoef(one, band_profile(2))[0, 1] < 0.8
    length = 300.0
    points = np.stack([np.linspace(10.0, 10.0 + length, 601), np.full(601, 15.5)], axis=1)
    body = render_body(points, 5.0, one, (330, 31))
    assert body is not None
    axis = body.od[int(15.5) - body.y0, :]
    u = (body.x0 + np.arange(len(axis)) + 0.5 - 10.0) / length
    keep = (u > 0.02) & (u < 0.98)
    expected = np.interp(u[keep], np.linspace(0, 1, len(one)), one)
    assert np.corrcoef(axis[keep], expected)[0, 1] > 0.98


def test_overlaps_are_darker_absorbance(spreads: dict) -> None:
    groups = _by_image(spreads)
    tested = 0
    for img in spreads["images"]:
        cover = sum(annotation_to_mask(a, H, W).astype(np.int32) for a in groups[img["id"]])
        pixels = read_image(spreads["_dir"] / "images" / img["file_name"]).array[:, :, 0]
        if (cover >= 2).sum() < 30:
            continue
        tested += 1
        assert pixels[cover >= 2].mean() < pixels[cover == 1].mean() < pixels[cover == 0].mean()
    assert tested >= 10


def test_overlap_fraction_matches_eq14_and_the_target(spreads: dict) -> None:
    groups = _by_image(spreads)
    fractions = []
    for img in spreads["images"]:
        boxes = np.array([a["bbox"] for a in groups[img["id"]]], dtype=float)
        boxes[:, 2:] += boxes[:, :2]
        assert img["overlap_fraction"] == pytest.approx(overlapping_subset(boxes, 0.5).mean(), abs=1e-6)
        fractions.append(img["overlap_fraction"])
    assert 0.05 <= np.mean(fractions) <= 0.15


def test_confounders_are_drawn_but_not_annotated(tmp_path: Path) -> None:
    dark_outside = []
    for name, count in (("with", (4, 4)), ("without", (0, 0))):
        data = load_coco(
            simulate_metaphase(
                2,
                tmp_path / name,
                size=(400, 300),
                seed=3,
                n_chromosomes=3,
                n_fragments=count,
                n_debris=count,
            )
        )
        assert len(data["annotations"]) == 6
        for img in data["images"]:
            pixels = cv2.imread(str(tmp_path / name / "images" / img["file_name"]), cv2.IMREAD_GRAYSCALE)
            cover = sum(
                annotation_to_mask(a, 300, 400) for a in data["annotations"] if a["image_id"] == img["id"]
            )
            near = cv2.dilate(cover.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            dark = pixels.astype(float) < 0.7 * cv2.medianBlur(pixels, 41)
            dark_outside.append(int((dark & ~near).sum()))
    assert min(dark_outside[:2]) > 20 and max(dark_outside[2:]) == 0


def test_same_seed_same_files(tmp_path: Path) -> None:
    def files(out: Path, seed: int) -> list[bytes]:
        simulate_metaphase(2, out, size=(160, 120), seed=seed, n_chromosomes=46)
        return [p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()]

    first = files(tmp_path / "a", 11)
    assert first == files(tmp_path / "b", 11)
    assert first != files(tmp_path / "c", 12)


def test_label_modes_and_split(tmp_path: Path, spreads: dict) -> None:
    assert [c["name"] for c in spreads["categories"]] == list(CLASS_NAMES)
    assert [c["id"] for c in spreads["categories"]] == list(range(1, 25))
    for ann in spreads["annotations"]:
        cls = class_by_name(ann["chromosome_class"])
        assert ann["category_id"] == cls.index and ann["denver_group"] == cls.group
    train = simulate_metaphase(3, tmp_path, size=(160, 120), n_chromosomes=10, val_fraction=0.34)
    data, val = load_coco(train), load_coco(tmp_path / "val.json")
    assert data["categories"] == [{"id": 1, "name": "chromosome", "supercategory": "chromosome"}]
    assert {a["category_id"] for a in data["annotations"]} == {1}
    assert len(data["images"]) == 2 and len(val["images"]) == 1 and len(val["annotations"]) == 10


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"n_images": 0}, "n_images"),
        ({"size": (0, 100)}, "size"),
        ({"size": (100, -5)}, "size"),
        ({"size": 256}, "size"),
        ({"size": (32, 32)}, "size"),
        ({"n_chromosomes": 0}, "n_chromosomes"),
        ({"n_chromosomes": {46: 0.5, 0: 0.5}}, "n_chromosomes"),
        ({"n_chromosomes": {46: 0.0}}, "n_chromosomes"),
        ({"overlap_target": 1.5}, "overlap_target"),
        ({"n_debris": (3, 1)}, "n_debris"),
        ({"scale": -1.0}, "scale"),
        ({"scale": 100.0}, "scale"),
        ({"label_mode": "bands"}, "label_mode"),
    ],
)
def test_bad_input_names_the_argument(tmp_path: Path, kwargs: dict, word: str) -> None:
    args = {"n_images": 1, "out_dir": tmp_path, "size": (160, 120)} | kwargs
    with pytest.raises(ValueError, match=word):
        simulate_metaphase(**args)
    assert not any(tmp_path.iterdir())
