"""Interphase-FISH simulator: nuclei and signal geometry, karyotype mixes and samples, image channels,
determinism, sizes, the val split, the truth reader, the CLI and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cytobench.cli import main
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask
from cytobench.simulate.fish import (
    KARYOTYPES,
    FishParams,
    load_fish_truth,
    parse_mix,
    signal_points,
    simulate_fish,
)

SAMPLES = {"A": {"normal": 1.0}, "B": {"trisomy21": 0.5, "monosomyX": 0.5}}


@pytest.fixture(scope="module")
def fish(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fish")
    path = simulate_fish(6, out, size=512, seed=5, samples=SAMPLES)
    return load_coco(path) | {"_dir": out, "_path": path}


def _by_image(data: dict) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        groups[ann["image_id"]].append(ann)
    return groups


def _polygon(ann: dict) -> np.ndarray:
    return np.asarray(ann["segmentation"][0], dtype=np.float32).reshape(-1, 2)


def test_categories_counts_and_boxes(fish: dict) -> None:
    assert [(c["id"], c["name"], c["supercategory"]) for c in fish["categories"]] == [
        (1, "whole", "nucleus"),
        (2, "destroyed", "nucleus"),
    ]
    groups = _by_image(fish)
    for img in fish["images"]:
        anns = groups[img["id"]]
        assert img["n_whole"] == sum(a["category_id"] == 1 for a in anns) >= 2
        assert img["n_destroyed"] == sum(a["category_id"] == 2 for a in anns)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            poly = _polygon(ann)
            assert ann["iscrowd"] == 0 and w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert np.allclose([x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=1e-2)
            # the polygon area equals its raster area up to the boundary pixels
            raster = annotation_to_mask(ann, img["height"], img["width"]).sum()
            assert abs(raster - ann["area"]) <= 0.06 * ann["area"] + 10
    whole = [a for a in fish["annotations"] if a["category_id"] == 1]
    diameters = [2 * math.sqrt(a["area"] / math.pi) for a in whole]
    assert 55 < np.mean(diameters) < 75  # 10 um at 0.15 um / px = 66.7 px (aspect 0.8-1 shrinks it a bit)
    assert {a["image_id"] for a in fish["annotations"] if a["category_id"] == 2}  # destroyed ones occur


def test_signals_lie_inside_their_nucleus_away_from_borders_and_neighbours(fish: dict) -> None:
    groups = _by_image(fish)
    n_signals = 0
    for img in fish["images"]:
        anns = groups[img["id"]]
        for ann in anns:
            if ann["category_id"] == 2:
                assert ann["signals"] == [] and ann["karyotype"] is None
                assert ann["n_red"] == ann["n_green"] == 0
                continue
            assert ann["n_red"] == len(signal_points([ann], "red"))
            assert ann["n_green"] == len(signal_points([ann], "green"))
            assert (ann["n_red"], ann["n_green"]) == KARYOTYPES[ann["karyotype"]]  # no signal loss by default
            for s in ann["signals"]:
                inside = cv2.pointPolygonTest(_polygon(ann), (s["x"], s["y"]), True)
                assert inside >= 3.0, (ann["id"], s, inside)
                for other in anns:
                    if other is not ann:
                        assert cv2.pointPolygonTest(_polygon(other), (s["x"], s["y"]), True) < -3.0
                n_signals += 1
            for channel in ("red", "green"):  # copies of one probe stay 1 um (6.7 px) apart
                pts = signal_points([ann], channel)
                d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
                assert (d[np.triu_indices(len(pts), 1)] >= 6.6).all()
    assert n_signals > 100


def test_image_channels_show_nuclei_and_signals(fish: dict) -> None:
    truth = load_fish_truth(fish["_path"])
    bright = total = 0
    for item in truth:
        image = cv2.imread(str(fish["_dir"] / "images" / item.file_name), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
        rgb = image[:, :, ::-1]
        nuclei = item.masks(None).any(axis=0)
        assert rgb[:, :, 2][nuclei].mean() > 4 * rgb[:, :, 2][~nuclei].mean()  # DAPI in blue
        for nuc in item.whole():
            for index, channel in enumerate(("red", "green")):
                for x, y in nuc.signals[channel]:
                    patch = rgb[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2, index]
                    bright += int(patch.max() > 80)  # the paper's T = 80 sees the signal
                    total += 1
                    # the other probe channel stays dim there unless its own signal is close
                    other = nuc.signals["green" if channel == "red" else "red"]
                    if len(other) == 0 or np.hypot(*(other - [x, y]).T).min() > 8:
                        assert rgb[int(y), int(x), 1 - index] < 80
    assert bright >= 0.97 * total


def test_samples_alternate_and_follow_their_mix(fish: dict) -> None:
    groups = _by_image(fish)
    for index, img in enumerate(fish["images"]):
        name = "AB"[index % 2]
        assert img["sample"] == name and img["karyotype_mix"] == pytest.approx(SAMPLES[name])
        kinds = {a["karyotype"] for a in groups[img["id"]] if a["category_id"] == 1}
        assert kinds <= set(SAMPLES[name])
    assert fish["info"]["karyotypes"]["trisomy21"] == [3, 2]


def test_karyotype_frequencies_match_the_mix(tmp_path: Path) -> None:
    mix = {"normal": 0.6, "trisomy21": 0.3, "monosomyX": 0.1}
    # 0.3 um pixels: nuclei 33 px across, about 40 per 512 px image
    data = load_coco(simulate_fish(16, tmp_path, size=512, seed=2, karyotype_mix=mix, pixel_size_um=0.3))
    kinds = [a["karyotype"] for a in data["annotations"] if a["category_id"] == 1]
    n = len(kinds)
    assert n > 400
    for name, p in mix.items():
        tolerance = 4 * math.sqrt(p * (1 - p) / n)
        assert tolerance < 0.1  # a swapped mix (0.3 <-> 0.1) or the default mix would fail
        assert abs(kinds.count(name) / n - p) < tolerance, name
    assert data["images"][0]["sample"] == "S1"


def test_custom_karyotypes_doublets_and_signal_loss(tmp_path: Path) -> None:
    params = FishParams(doublet_fraction=1.0, signal_loss=0.0)
    path = simulate_fish(
        2,
        tmp_path,
        size=256,
        seed=1,
        karyotype_mix={"t21x0": 1.0},
        karyotypes={"t21x0": (3, 1)},
        params=params,
    )
    whole = [a for a in load_coco(path)["annotations"] if a["category_id"] == 1]
    assert whole and all((a["n_red"], a["n_green"], a["karyotype"]) == (3, 1, "t21x0") for a in whole)
    assert all(s["doublet"] for a in whole for s in a["signals"])
    lost = load_coco(
        simulate_fish(4, tmp_path / "loss", size=256, seed=1, params=FishParams(signal_loss=1.0))
    )
    assert all(a["signals"] == [] for a in lost["annotations"])
    default = load_coco(simulate_fish(4, tmp_path / "d", size=512, seed=3))
    flags = [s["doublet"] for a in default["annotations"] for s in a["signals"]]
    assert 0.12 < np.mean(flags) < 0.38  # 25 % of copies are doublets


def test_determinism_by_seed(tmp_path: Path) -> None:
    a = simulate_fish(2, tmp_path / "a", size=256, seed=9)
    b = simulate_fish(2, tmp_path / "b", size=256, seed=9)
    c = simulate_fish(1, tmp_path / "c", size=256, seed=9)
    d = simulate_fish(1, tmp_path / "d", size=256, seed=10)
    assert a.read_text() == b.read_text()
    image = (tmp_path / "a/images/fish_00001.png").read_bytes()
    assert image == (tmp_path / "b/images/fish_00001.png").read_bytes()
    first = (tmp_path / "a/images/fish_00000.png").read_bytes()
    assert first == (tmp_path / "c/images/fish_00000.png").read_bytes()  # image i does not depend on n
    assert first != (tmp_path / "d/images/fish_00000.png").read_bytes()
    first_anns = [x for x in load_coco(a)["annotations"] if x["image_id"] == 1]
    assert first_anns == load_coco(c)["annotations"] != load_coco(d)["annotations"]


@pytest.mark.parametrize("size", [(640, 480), 1293])
def test_other_sizes(tmp_path: Path, size: int | tuple[int, int]) -> None:
    data = load_coco(simulate_fish(1, tmp_path, size=size, seed=4))
    w, h = size if isinstance(size, tuple) else (size, size)
    img = data["images"][0]
    assert (img["width"], img["height"]) == (w, h)
    assert cv2.imread(str(tmp_path / "images" / img["file_name"])).shape == (h, w, 3)
    # same physical nuclei, so the count grows with the area (8-22 % covered by ~3500 px^2 nuclei)
    n = img["n_whole"] + img["n_destroyed"]
    assert 0.07 * w * h / 3500 <= n <= 0.24 * w * h / 3500


@pytest.mark.slow
def test_paper_largest_size(tmp_path: Path) -> None:
    truth = load_fish_truth(simulate_fish(1, tmp_path, size=2873, seed=0))[0]
    assert (truth.width, truth.height) == (2873, 2873) and len(truth.nuclei) > 150
    crops = truth.mask_crops("whole")
    for nuc, (x0, y0, mask) in zip(truth.whole(), crops):
        for x, y in np.concatenate([nuc.signals["red"], nuc.signals["green"]]):
            assert mask[int(y) - y0, int(x) - x0]


def test_val_split(tmp_path: Path) -> None:
    path = simulate_fish(5, tmp_path, size=256, seed=0, val_fraction=0.4)
    train, val = load_coco(path), load_coco(tmp_path / "val.json")
    assert path.name == "train.json" and not (tmp_path / "annotations.json").exists()
    assert [i["id"] for i in train["images"]] == [1, 2, 3] and [i["id"] for i in val["images"]] == [4, 5]
    assert {a["image_id"] for a in val["annotations"]} <= {4, 5}
    assert {a["image_id"] for a in train["annotations"]} <= {1, 2, 3}


def test_truth_reader(fish: dict) -> None:
    truth = load_fish_truth(fish["_path"])
    assert [t.file_name for t in truth] == [i["file_name"] for i in fish["images"]]
    item = truth[0]
    anns = _by_image(fish)[item.image_id]
    assert [n.ann_id for n in item.nuclei] == [a["id"] for a in anns]
    masks = item.masks("whole")
    assert masks.shape == (len(item.whole()), 512, 512) and masks.dtype == bool
    for full, (x0, y0, crop) in zip(masks, item.mask_crops("whole")):
        assert full.sum() == crop.sum() and full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]].all(
            where=crop
        )
    red = np.concatenate([n.signals["red"] for n in item.nuclei])
    assert np.allclose(red, signal_points(anns, "red"))


def test_parse_mix() -> None:
    assert parse_mix("normal=0.9,trisomy21=0.1") == (None, {"normal": 0.9, "trisomy21": 0.1})
    assert parse_mix("P7:monosomyX=1") == ("P7", {"monosomyX": 1.0})
    with pytest.raises(ValueError, match="karyotype=probability"):
        parse_mix("normal=lots")


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"size": 32}, "size"),
        ({"n_images": 0}, "n_images"),
        ({"karyotype_mix": {"pentasomy": 1.0}}, "unknown karyotype"),
        ({"karyotype_mix": {"normal": -0.1}}, ">= 0"),
        ({"karyotype_mix": {"normal": 1.0}, "samples": SAMPLES}, "not both"),
        ({"val_fraction": 1.5, "n_images": 2}, "val_fraction"),
        ({"pixel_size_um": 5.0}, "under 8 px"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, fault: str) -> None:
    args = {"n_images": 1, "out_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=fault):
        simulate_fish(**args)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    main(
        [
            "simulate",
            "fish",
            "--n",
            "2",
            "--size",
            "256",
            "--seed",
            "3",
            "--mix",
            "P1:normal=1",
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "annotations.json").read_text())
    assert [i["sample"] for i in data["images"]] == ["P1", "P1"] and (out / "images/fish_00001.png").is_file()
    assert {a["karyotype"] for a in data["annotations"]} <= {"normal", None}
    assert "simulated 2 interphase-FISH images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "simulate",
                "fish",
                "--n",
                "2",
                "--mix",
                "normal=0.5,trisomy22=0.5",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown karyotype 'trisomy22'" in err
