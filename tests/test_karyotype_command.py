"""`cytobench karyotype`: karyogram rendering (crops upright, placement), counts / ISCN / summary, CLI errors.

The command runs on checkpoints saved like a training run's (plain data, loaded with ``weights_only``) whose
``model_config`` builds :class:`ColourCodedDetector`: a stand-in detector that "finds" every dark bar of the
test images and reads its class from the red channel and its score from the green one, so the predictions
(47 chromosomes of 47,XY,+21, two of them low-confidence, ...) are fixed by the images the tests draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cytobench.cli import main
from cytobench.fish.intervals import wilson_interval
from cytobench.io.images import read_image, write_image
from cytobench.karyotype.command import karyogram_names, karyotype_label_map
from cytobench.karyotype.render import (
    BACKGROUND,
    crop_box,
    principal_angle,
    render_karyogram,
    to_display_rgb,
    upright_crop,
)
from cytobench.karyotype.report import class_counts, image_entry, no_chromosomes_entry, summarize
from cytobench.simulate.chromosomes import CLASS_NAMES, format_karyotype
from cytobench.simulate.karyogram import karyogram_layout

NORMAL_XY = [c for c in range(1, 23) for _ in range(2)] + [23, 24]
TRISOMY_21 = sorted([*NORMAL_XY, 21])
RED = np.array([220, 0, 0])


class ColourCodedDetector(torch.nn.Module):
    """Every connected dark bar (blue < 0.5) is a detection: class = round(255 R / 10), score = G."""

    def __init__(self, num_classes: int, with_masks: bool = False) -> None:
        super().__init__()
        self.num_classes, self.with_masks = num_classes, with_masks

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            rgb = image.detach().cpu().numpy()
            if rgb.shape[0] == 1:
                rgb = np.repeat(rgb, 3, axis=0)
            regions, n = ndimage.label(rgb[2] < 0.5)
            boxes, scores, labels, masks = [], [], [], []
            for k, (sy, sx) in enumerate(ndimage.find_objects(regions), start=1):
                boxes.append([sx.start, sy.start, sx.stop, sy.stop])
                labels.append(int(round(float(rgb[0, sy.start, sx.start]) * 255 / 10)))
                scores.append(float(rgb[1, sy.start, sx.start]))
                masks.append(regions == k)
            pred = {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
            if self.with_masks:
                stack = np.stack(masks) if masks else np.zeros((0, *rgb.shape[1:]), bool)
                pred["masks"] = torch.from_numpy(stack[:, None].astype(np.float32))
            out.append(pred)
        return out


def save_checkpoint(path: Path, categories: list[dict], with_masks: bool = False) -> Path:
    """A checkpoint as the trainer writes it (model, its config, categories), building the stand-in."""
    state = {
        "model": ColourCodedDetector(len(categories) + 1).state_dict(),
        "model_config": {"_target_": f"{__name__}.ColourCodedDetector", "with_masks": with_masks},
        "data_config": None,
        "num_classes": len(categories) + 1,
        "label_to_cat_id": {k + 1: int(c["id"]) for k, c in enumerate(categories)},
        "categories": categories,
    }
    torch.save(state, path)
    return path


KARYOTYPE_CATEGORIES = [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)]


def draw_cell(path: Path, classes: list[int], scores: list[float] | None = None) -> Path:
    """A 'metaphase' of bars on white: bar k has red = 10 * class, green = 255 * score, blue 0; every
    fifth bar lies on its side (wider than tall)."""
    scores = scores or [0.95] * len(classes)
    image = np.full((132, 160, 3), 255, np.uint8)
    for k, (c, s) in enumerate(zip(classes, scores)):
        row, col = divmod(k, 8)
        y, x = 4 + 16 * row, 4 + 19 * col
        length = 6 + (24 - c) // 4
        h, w = (3, length) if k % 5 == 4 else (length, 3)
        image[y : y + h, x : x + w] = (10 * c, round(255 * s), 0)
    return write_image(path, image)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["karyotype", *argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("karyotype_ckpt")
    return {
        "boxes": save_checkpoint(root / "boxes.pt", KARYOTYPE_CATEGORIES),
        "masks": save_checkpoint(root / "masks.pt", KARYOTYPE_CATEGORIES, with_masks=True),
        "one_class": save_checkpoint(root / "one.pt", [{"id": 1, "name": "chromosome"}]),
        "other": save_checkpoint(root / "other.pt", [{"id": k, "name": f"c{k}"} for k in range(1, 25)]),
    }


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 46,XY cells and one 47,XY,+21 whose third 21 and one 7 score below 0.7 (one 3 below 0.5)."""
    folder = tmp_path_factory.mktemp("cells")
    draw_cell(folder / "cell_a.png", NORMAL_XY)
    draw_cell(folder / "cell_b.png", NORMAL_XY[::-1])
    scores = [0.95] * len(TRISOMY_21)
    scores[TRISOMY_21.index(21) + 2] = 0.6  # the third 21
    scores[TRISOMY_21.index(7)] = 0.55
    draw_cell(folder / "cell_c.png", [*TRISOMY_21, 3], [*scores, 0.3])  # a 3 below --score-thr 0.5
    return folder


def has_red(image: np.ndarray) -> bool:
    return bool(np.all(image == RED, axis=-1).any())


# ------------------------------------------------------------------------------------------- the command
def test_folder_of_cells_karyograms_counts_and_summary(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(
        ["--checkpoint", str(ckpt["boxes"]), "--images", str(cells), "--out", str(out)], capsys
    )
    assert code == 0, err
    report = json.loads((out / "karyotypes.json").read_text(), parse_constant=pytest.fail)
    by_name = {e["image"]: e for e in report["images"]}
    assert [by_name[n]["karyotype"] for n in ("cell_a.png", "cell_b.png", "cell_c.png")] == [
        "46,XY",
        "46,XY",
        "47,XY,+21",
    ]
    c = by_name["cell_c.png"]
    assert c["n_chromosomes"] == 47 and c["counts"]["21"] == 3 and c["counts"]["Y"] == 1
    assert c["normal"] is False and by_name["cell_a.png"]["normal"] is True
    assert c["n_low_confidence"] == 2 and c["n_below_threshold"] == 1
    assert sorted(ch["score"] for ch in c["chromosomes"] if ch["low_confidence"]) == [
        round(140 / 255, 4),
        round(153 / 255, 4),
    ]
    assert {ch["class"] for ch in c["chromosomes"] if ch["low_confidence"]} == {"7", "21"}
    summary = report["summary"]
    assert summary["tally"] == "46,XY x 2, 47,XY,+21 x 1"
    assert [(k["karyotype"], k["cells"]) for k in summary["karyotypes"]] == [("46,XY", 2), ("47,XY,+21", 1)]
    assert (summary["n_cells"], summary["n_abnormal"], summary["n_low_confidence"]) == (3, 1, 2)
    lower, upper = wilson_interval(1, 3)
    assert summary["fraction_abnormal"] == pytest.approx(1 / 3)
    assert summary["abnormal_interval"]["lower"] == pytest.approx(float(lower))
    assert summary["abnormal_interval"]["upper"] == pytest.approx(float(upper))
    md = (out / "karyotypes.md").read_text()
    assert "| cell_c.png" in md and "47,XY,+21" in md and "46,XY x 2, 47,XY,+21 x 1" in md
    assert "Abnormal: 1 of 3 cells, 33.3%" in md
    assert "karyotypes: 46,XY x 2, 47,XY,+21 x 1" in stdout and "Abnormal: 1 of 3 cells" in stdout
    for name in ("cell_a", "cell_b", "cell_c"):
        png = read_image(out / f"{name}_karyogram.png").array
        assert png.shape[2] == 3 and 100 <= png.shape[0] <= 1000 and 150 <= png.shape[1] <= 2000
    normal = np.round(read_image(out / "cell_a_karyogram.png").array * 255).astype(np.uint8)
    trisomy = np.round(read_image(out / "cell_c_karyogram.png").array * 255).astype(np.uint8)
    assert not has_red(normal) and has_red(trisomy)  # frames of the low-confidence ones, the 21 label
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_a_karyogram.png",
        "cell_b_karyogram.png",
        "cell_c_karyogram.png",
        "karyotypes.json",
        "karyotypes.md",
    ]  # no staging folder left


def test_single_image_with_masks(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "one"
    image = cells / "cell_c.png"
    args = ["--checkpoint", str(ckpt["masks"]), "--images", str(image), "--out", str(out)]
    code, stdout, err = run([*args, "--low-confidence", "0.58", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "cell_c.png: 47,XY,+21 (47 chromosomes, 1 low-confidence, abnormal)" in stdout
    entry = json.loads((out / "karyotypes.json").read_text())["images"][0]
    assert entry["cut_out_by"] == "mask" and entry["karyogram"] == "cell_c_karyogram.png"
    assert "47,XY,+21" in (out / "karyotypes.md").read_text()


class CellStepDetector(ColourCodedDetector):
    """ColourCodedDetector with a whole-cell step, as a YOLO karyotyper's pair prior: it calls every
    chromosome of the cell 1 and records how many detections each call saw."""

    calls: list[int] = []

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.pair_prior = True

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = super().forward(images)
        return [self.cell_step(pred) for pred in out] if self.pair_prior else out

    def cell_step(self, pred: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        CellStepDetector.calls.append(len(pred["boxes"]))
        return {**pred, "labels": torch.ones_like(pred["labels"])}


def test_the_cell_step_sees_the_whole_image_also_when_it_is_tiled(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cell_step.pt"
    state = {
        "model": CellStepDetector(25).state_dict(),
        "model_config": {"_target_": f"{__name__}.CellStepDetector"},
        "data_config": None,
        "num_classes": 25,
        "label_to_cat_id": {k + 1: k + 1 for k in range(24)},
        "categories": KARYOTYPE_CATEGORIES,
    }
    torch.save(state, path)
    image = str(cells / "cell_a.png")  # 160 x 132 px: 64 px windows tile it
    for flag, calls in (([], [46]), (["--no-pair-prior"], [])):
        CellStepDetector.calls = []
        out = tmp_path / f"out{len(flag)}"
        argv = ["--checkpoint", str(path), "--images", image, "--out", str(out), "--tile", "64", *flag]
        code, _, err = run(argv, capsys)
        assert code == 0, err
        entry = json.loads((out / "karyotypes.json").read_text())["images"][0]
        assert CellStepDetector.calls == calls  # once, on all 46 detections of the tiled image
        assert entry["counts"]["1"] == (46 if calls else 2)
    code, _, err = run(  # a model without a pair prior: one line, exit 2
        ["--checkpoint", str(ckpt["boxes"]), "--images", image, "--out", str(tmp_path / "x"), "--pair-prior"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "has no pair prior" in err


class ScoredColourCodedDetector(ColourCodedDetector):
    """ColourCodedDetector with per-class scores, as SSD and R-FCN give them: score G at its class and, for a
    bar scored at most 0.52, 0.45 at the next class (a weak 4 that may be a 5)."""

    gives_class_scores = True

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = super().forward(images)
        for pred in out:
            rows = torch.arange(len(pred["labels"]))
            class_scores = torch.zeros(len(rows), 24)
            class_scores[rows, pred["labels"] - 1] = pred["scores"]
            weak = pred["scores"] <= 0.52
            class_scores[rows[weak], pred["labels"][weak] % 24] = 0.45
            pred["class_scores"] = class_scores
        return out


def test_pair_prior_on_a_detector_with_class_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SSD / R-FCN style: off unless asked (they are not trained with it); --pair-prior relabels the whole
    image's detections as one cell, also when it is tiled: a third, weak 4 (0.5; 5 at 0.45) becomes the 5."""
    path = tmp_path / "scored.pt"
    torch.save(
        {
            "model": {},
            "model_config": {"_target_": f"{__name__}.ScoredColourCodedDetector"},
            "data_config": None,
            "num_classes": 25,
            "label_to_cat_id": {k + 1: k + 1 for k in range(24)},
            "categories": KARYOTYPE_CATEGORIES,
        },
        path,
    )
    classes, scores = list(NORMAL_XY), [0.95] * len(NORMAL_XY)
    classes[NORMAL_XY.index(5)], scores[NORMAL_XY.index(5)] = 4, 0.5  # one 5 seen as a weak 4
    image = str(draw_cell(tmp_path / "cell.png", classes, scores))
    for k, (flags, karyotype) in enumerate(
        (
            ([], None),
            (["--no-pair-prior"], None),
            (["--pair-prior"], "46,XY"),
            (["--pair-prior", "--tile", "64"], "46,XY"),
        )
    ):
        out = tmp_path / f"out{k}"
        code, _, err = run(["--checkpoint", str(path), "--images", image, "--out", str(out), *flags], capsys)
        assert code == 0, err
        entry = json.loads((out / "karyotypes.json").read_text())["images"][0]
        counts = (entry["counts"]["4"], entry["counts"]["5"])
        if karyotype is None:  # raw: three 4s and one 5
            assert counts == (3, 1) and entry["karyotype"] != "46,XY"
        else:
            assert counts == (2, 2) and entry["karyotype"] == karyotype and entry["n_chromosomes"] == 46


def test_refuses_checkpoints_of_other_classes(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, words in (("one_class", "1 category (chromosome)"), ("other", "24 categories (c1, c2")):
        out = tmp_path / key
        code, _, err = run(
            ["--checkpoint", str(ckpt[key]), "--images", str(cells), "--out", str(out)], capsys
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"BadInputError: {ckpt[key]}: a detector of {words}")
        assert "1..22, X, Y" in lines[0] and not out.exists()


def test_unreadable_image(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for images in ([str(broken)], [str(cells / "cell_a.png"), str(broken)]):  # alone, and after a good one
        out = tmp_path / "out"
        code, _, err = run(
            ["--checkpoint", str(ckpt["boxes"]), "--images", *images, "--out", str(out)], capsys
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"UnreadableImage: {broken}: cannot decode image")
        assert not out.exists()  # nothing left behind


def test_no_chromosomes_found(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    blank = write_image(folder / "blank.png", np.full((40, 50, 3), 255, np.uint8))
    code, _, err = run(
        ["--checkpoint", str(ckpt["boxes"]), "--images", str(blank), "--out", str(tmp_path / "o")], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert (
        lines[0] == f"BadInputError: {blank}: no chromosomes found (no detection scored >= --score-thr 0.5)"
    )
    assert not (tmp_path / "o").exists()
    draw_cell(folder / "cell.png", NORMAL_XY)
    out = tmp_path / "folder"
    code, stdout, err = run(
        ["--checkpoint", str(ckpt["boxes"]), "--images", str(folder), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert f"karyotype: {blank}: no chromosomes found" in err
    report = json.loads((out / "karyotypes.json").read_text(), parse_constant=pytest.fail)
    summary = report["summary"]
    assert (summary["n_images"], summary["n_cells"], summary["no_chromosomes"]) == (2, 1, ["blank.png"])
    assert summary["tally"] == "46,XY x 1" and report["images"][0]["status"] == "no_chromosomes"
    md = (out / "karyotypes.md").read_text()
    assert (
        "| blank.png" in md
        and "no chromosomes found" in md
        and "No chromosomes found in 1: `blank.png`" in md
    )
    assert not (out / "blank_karyogram.png").exists() and (out / "cell_karyogram.png").is_file()
    assert "no chromosomes found in 1 of 2 images" in stdout


def test_refuses_to_overwrite_results(
    ckpt: dict[str, Path], cells: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt["boxes"]), "--out", str(out)]
    assert run([*args, "--images", str(cells)], capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run([*args, "--images", str(cells)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"BadInputError: {out}: already holds karyotype results (karyotypes.json")
    assert "--overwrite" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, _, err = run([*args, "--images", str(cells / "cell_c.png"), "--overwrite"], capsys)
    assert code == 0, err  # the old run's other karyograms go: the folder matches the new json
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_c_karyogram.png",
        "karyotypes.json",
        "karyotypes.md",
    ]
    (tmp_path / "file").write_text("x")
    code, _, err = run([*args[:2], "--out", str(tmp_path / "file"), "--images", str(cells)], capsys)
    assert code == 2 and "is a file, not a folder" in err


@pytest.mark.parametrize(
    ("flags", "fault"),
    [
        (["--score-thr", "1.5"], "--score-thr: must be in [0, 1]"),
        (["--low-confidence", "-0.1"], "--low-confidence: must be in [0, 1]"),
        (["--tile", "-3"], "--tile: must be >= 0"),
    ],
)
def test_bad_options_are_one_line(
    ckpt: dict[str, Path],
    cells: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    fault: str,
) -> None:
    out = tmp_path / "o"
    code, _, err = run(
        ["--checkpoint", str(ckpt["boxes"]), "--images", str(cells), "--out", str(out), *flags], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and fault in err, err
    assert not out.exists()


@pytest.mark.slow  # builds a ResNet-18 FPN: a few seconds on one core
def test_real_tiny_faster_rcnn_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An untrained 24-class Faster R-CNN saved as the trainer saves it runs through the command."""
    from hydra.utils import instantiate

    config = {
        "_target_": "cytobench.models.faster_rcnn.build_faster_rcnn",
        "backbone": "resnet18",
        "min_size": 64,
        "max_size": 64,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "box_score_thresh": 0.0,
        "box_detections_per_img": 30,
        "rpn_pre_nms_top_n_test": 50,
        "rpn_post_nms_top_n_test": 30,
    }
    torch.manual_seed(0)
    model = instantiate(config, num_classes=25)
    path = tmp_path / "frcnn.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": config,
            "data_config": {"size": [64, 64]},
            "num_classes": 25,
            "label_to_cat_id": {k: k for k in range(1, 25)},
            "categories": KARYOTYPE_CATEGORIES,
        },
        path,
    )
    image = draw_cell(tmp_path / "spread.png", NORMAL_XY[:8])
    out = tmp_path / "out"
    code, stdout, err = run(
        [
            "--checkpoint",
            str(path),
            "--images",
            str(image),
            "--out",
            str(out),
            "--score-thr",
            "0",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    entry = json.loads((out / "karyotypes.json").read_text())["images"][0]
    assert entry["n_chromosomes"] == sum(entry["counts"].values()) > 0
    assert entry["karyotype"] == format_karyotype(
        [CLASS_NAMES.index(ch["class"]) + 1 for ch in entry["chromosomes"]]
    )
    assert (out / "spread_karyogram.png").is_file() and entry["karyotype"] in stdout


# ----------------------------------------------------------------------------------- pure parts: render
def test_box_crop_turns_wide_crops_upright() -> None:
    image = np.full((20, 30, 3), 255, np.uint8)
    image[5:8, 4:16] = np.arange(12, dtype=np.uint8)[None, :, None] * 10  # a 3 x 12 bar, a gradient along it
    crop = upright_crop(image, [4, 5, 16, 8])
    assert crop.pixels.shape == (12, 3, 3) and crop.angle == 90.0 and crop.mask is None
    np.testing.assert_array_equal(crop.pixels, np.rot90(image[5:8, 4:16], k=1))
    tall = upright_crop(image, [4.2, 5.0, 6.9, 7.5])  # fractional box: pixel edges floor / ceil
    assert tall.angle == 0.0 and tall.pixels.shape == (3, 3, 3)
    assert crop_box([-3, -2, 500, 400], 20, 30) == (0, 0, 30, 20)
    assert crop_box([10, 10, 10, 10], 20, 30) == (10, 10, 11, 11)  # at least one pixel


def _bar_mask(height: int, width: int, angle_deg: float, length: float, half_width: float) -> np.ndarray:
    """A bar through the image centre whose axis makes ``angle_deg`` with the x axis as displayed (y up)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    t = np.radians(angle_deg)
    u = (xs - cx) * np.cos(t) - (ys - cy) * np.sin(t)  # along the axis
    v = (xs - cx) * np.sin(t) + (ys - cy) * np.cos(t)  # across
    return (np.abs(u) <= length / 2) & (np.abs(v) <= half_width)


@pytest.mark.parametrize("axis_deg", [0.0, 30.0, 45.0, 90.0, 120.0, 160.0])
def test_mask_crop_is_turned_along_its_principal_axis(axis_deg: float) -> None:
    mask = _bar_mask(60, 60, axis_deg, length=40, half_width=3)
    expected = (90.0 - axis_deg + 90.0) % 180.0 - 90.0  # the smallest turn to vertical
    assert principal_angle(mask) == pytest.approx(90.0 if expected == -90.0 else expected, abs=1.0)
    image = np.full((60, 60, 3), 255, np.uint8)
    image[mask] = (40, 80, 120)
    ys, xs = np.nonzero(mask)
    crop = upright_crop(image, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], mask)
    assert crop.mask is not None and crop.pixels.shape[:2] == crop.mask.shape
    h, w = crop.mask.shape
    assert h >= 38 and w <= 10, (h, w)  # long side vertical
    assert abs(principal_angle(crop.mask)) < 2.0
    assert abs(int(crop.mask.sum()) - int(mask.sum())) <= 0.15 * mask.sum()
    assert np.all(crop.pixels[~crop.mask] == BACKGROUND)  # off the mask: white
    inside = crop.pixels[crop.mask]
    assert np.abs(inside.astype(int) - (40, 80, 120)).max(axis=1).mean() < 40


def test_to_display_rgb_channels() -> None:
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4, 1)
    rgb = to_display_rgb(grey)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and rgb[-1, -1, 0] == 255
    assert np.all(rgb[..., 0] == rgb[..., 2])


def test_render_places_each_crop_at_its_karyogram_slot() -> None:
    classes = [c for c in range(1, 23) for _ in range(2)] + [23]  # 45,X
    rng = np.random.default_rng(0)
    crops, sizes = [], []
    for k, c in enumerate(classes):
        h, w = 40 - c, 6 + k % 3
        crops.append(np.full((h, w, 3), (k, 255 - k, 7), np.uint8))  # a colour unique to each crop
        sizes.append((h, w))
    scores = rng.uniform(0.75, 1.0, len(classes))
    scores[5] = 0.2
    fig = render_karyogram(crops, classes, scores, low_confidence=0.7, title="45,X")
    layout = karyogram_layout(classes, sizes, **fig.spacing)
    np.testing.assert_array_equal(fig.layout.boxes, layout.boxes)
    np.testing.assert_array_equal(fig.boxes, layout.boxes + [0, fig.title_height, 0, fig.title_height])
    assert fig.title_height > 0 and fig.low_confidence.tolist() == [k == 5 for k in range(len(classes))]
    for k, (x0, y0, x1, y1) in enumerate(fig.boxes):
        np.testing.assert_array_equal(fig.image[y0:y1, x0:x1], crops[k])
    assert np.all(fig.image[fig.boxes[:, 3].max() :].reshape(-1, 3).min(axis=0) < 255)  # labels drawn below
    rows = fig.layout.rows
    assert rows[classes.index(1)] == 0 and rows[classes.index(6)] == 1 and rows[classes.index(23)] == 3
    first, second = fig.boxes[0], fig.boxes[1]  # the pair of 1s side by side on one baseline
    assert second[0] > first[2] and second[3] == first[3]
    y_slot = fig.layout.slots[23]  # no Y: its slot stays empty
    x0, y0, x1, y1 = (int(v) for v in y_slot)
    assert np.all(fig.image[y0 + fig.title_height : y1 + fig.title_height, x0:x1] == BACKGROUND)
    x0, y0, x1, y1 = fig.boxes[5]  # the low-confidence one is framed in red
    assert np.all(fig.image[y0 - 1, x0:x1] == RED)
    assert not np.all(fig.image[fig.boxes[4][1] - 1, fig.boxes[4][0] : fig.boxes[4][2]] == RED)


def test_render_widens_the_canvas_for_a_long_title() -> None:
    crops = [np.zeros((12, 4, 3), np.uint8)] * 2
    narrow = render_karyogram(crops, [21, 21], [0.9, 0.9], title="46")
    wide = render_karyogram(crops, [21, 21], [0.9, 0.9], title="47,XY,+21 " + "x" * 300)
    assert "canvas_size" not in narrow.spacing and wide.spacing["canvas_size"][0] > narrow.image.shape[1]
    assert wide.image.shape[1] == wide.spacing["canvas_size"][0] and wide.image.shape[1] > 1000
    np.testing.assert_array_equal(
        wide.layout.boxes, karyogram_layout([21, 21], [(12, 4)] * 2, **wide.spacing).boxes
    )


def test_render_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="differ in number"):
        render_karyogram([np.zeros((4, 2, 3), np.uint8)], [1, 2], [0.9, 0.9])


# ----------------------------------------------------------------------------------- pure parts: report
def test_counts_iscn_and_summary() -> None:
    counts = class_counts(TRISOMY_21)
    assert len(counts) == 24 and counts["21"] == 3 and counts["X"] == counts["Y"] == 1
    boxes = np.zeros((47, 4))
    e = image_entry(
        "c.png", "c.png", TRISOMY_21, [0.9] * 46 + [0.5], boxes, low_confidence=0.7, karyogram="k.png"
    )
    assert (e["karyotype"], e["normal"], e["n_low_confidence"]) == ("47,XY,+21", False, 1)
    assert format_karyotype([c for c in NORMAL_XY if c != 24]) == "45,X"
    assert format_karyotype([*NORMAL_XY[:-1], 23, 24]) == "47,XXY"
    normal = image_entry(
        "n.png", "n.png", NORMAL_XY, [0.9] * 46, np.zeros((46, 4)), low_confidence=0.7, karyogram="n"
    )
    entries = [normal] * 18 + [e] * 2 + [no_chromosomes_entry("blank.png", "blank.png")]
    summary = summarize(entries)
    assert summary["tally"] == "46,XY x 18, 47,XY,+21 x 2"
    assert (summary["n_cells"], summary["n_abnormal"], summary["no_chromosomes"]) == (20, 2, ["blank.png"])
    lower, upper = wilson_interval(2, 20)
    assert summary["abnormal_interval"]["lower"] == pytest.approx(float(lower))
    assert summary["abnormal_interval"]["upper"] == pytest.approx(float(upper))
    assert summary["karyotypes"][0] == {"karyotype": "46,XY", "cells": 18, "fraction": 0.9, "normal": True}
    empty = summarize([no_chromosomes_entry("b.png", "b.png")])
    assert (
        empty["n_cells"] == 0
        and empty["tally"] == "no cells"
        and empty["fraction_abnormal"] != empty["fraction_abnormal"]
    )


def test_label_map_and_karyogram_names() -> None:
    cats = [{"id": 100 + k, "name": n} for k, n in enumerate(reversed(CLASS_NAMES))]  # Y first, other ids
    info = {"categories": cats, "label_to_cat_id": {k + 1: 100 + k for k in range(24)}}
    mapping = karyotype_label_map(info, "x.pt")
    assert mapping[1] == 24 and mapping[24] == 1 and mapping[3] == 22
    assert karyotype_label_map({"categories": KARYOTYPE_CATEGORIES}, "x.pt") == {k: k for k in range(1, 25)}
    names = karyogram_names([Path("a/x.png"), Path("b/x.tif"), Path("x_2.png"), Path("c/x.png")])
    assert names == ["x_karyogram.png", "x_2_karyogram.png", "x_2_2_karyogram.png", "x_3_karyogram.png"]
