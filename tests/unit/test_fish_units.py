"""`fish analyze` in physical units: the Otsu segmenter's sizes follow the pixel size from the file (ImageJ
TIFF, CZI) or ``--pixel-size``; a run whose nuclei are nearly all rejected for their size says so."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytobench.cli import main
from cytobench.fish.checks import NEARLY_ALL, run_warnings
from cytobench.io.images import read_image, write_image
from cytobench.simulate.fish import load_fish_truth, simulate_fish

#: name: (pixel size um, image side px, seed); the simulator's default scale is 0.15 um/px (10 um nuclei of
#: 67 px): "small" nuclei are 33 px across, "large" ones 100 px.
SCALES = {"small": (0.3, 512, 11), "large": (0.1, 768, 2)}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, int]]:
    """Per scale: (ImageJ TIFF with its pixel size, PNG without one, true number of whole nuclei)."""
    out = {}
    for name, (px, side, seed) in SCALES.items():
        folder = tmp_path_factory.mktemp(name)
        ann = simulate_fish(1, folder / "sim", size=side, seed=seed, pixel_size_um=px)
        rgb = np.round(read_image(ann.parent / "images" / "fish_00000.png").array * 255).astype(np.uint8)
        (folder / "tif").mkdir()
        tifffile.imwrite(
            folder / "tif" / "img.tif",
            rgb,
            photometric="rgb",
            imagej=True,
            resolution=(1 / px, 1 / px),
            metadata={"unit": "micron"},
        )
        write_image(folder / "png" / "img.png", rgb)
        out[name] = (folder / "tif", folder / "png", len(load_fish_truth(ann)[0].whole()))
    return out


def _run(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, list[str], str]:
    main(["fish", "analyze", "--segmenter", "otsu", "--no-overlays", "--out", str(out), *args])
    err = capsys.readouterr().err
    with (out / "nuclei.csv").open() as fh:
        rows = [(r["category"], r["area"], r["bbox_x"], r["bbox_y"]) for r in csv.DictReader(fh)]
    return json.loads((out / "report.json").read_text()), rows, err


@pytest.mark.parametrize("name", list(SCALES))
def test_pixel_size_from_the_tiff_or_the_command_line(
    images: dict, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    px = SCALES[name][0]
    tif, png, n_true = images[name]
    report, rows, err = _run(["--images", str(tif)], tmp_path / "tif", capsys)
    image = report["images"]["img.tif"]
    assert image["pixel_size_um"] == [px, px] and image["pixel_size_source"] == "file"
    assert image["nucleus_diameter_source"] == "pixel size"
    assert image["nucleus_diameter_px"] == pytest.approx(10.0 / px, abs=0.01)
    n_whole = next(iter(report["samples"].values()))["n_whole"]
    assert abs(n_whole - n_true) <= max(1, 0.1 * n_true), (n_whole, n_true)
    assert report["warnings"] == [] and "rejected" not in err
    given, given_rows, _ = _run(["--images", str(png), "--pixel-size", str(px)], tmp_path / "png", capsys)
    assert given["images"]["img.png"]["pixel_size_source"] == "given"
    assert given_rows == rows  # the same nuclei from the file's pixel size and from --pixel-size


@pytest.mark.parametrize(("name", "wrong", "kind"), [("small", 0.15, "small"), ("large", 0.3, "large")])
def test_wrong_scale_says_nuclei_were_rejected(
    images: dict, name: str, wrong: float, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tif, _, n_true = images[name]
    report, _, err = _run(["--images", str(tif), "--pixel-size", str(wrong)], tmp_path, capsys)
    lines = [line for line in err.splitlines() if "rejected" in line]
    assert len(lines) == 1 and f"nearly all nuclei were rejected as too {kind}" in lines[0], err
    assert f"at {wrong:g} um/px from --pixel-size" in lines[0] and "--pixel-size UM" in lines[0]
    assert report["warnings"] == lines
    assert "## Warnings" in (tmp_path / "report.md").read_text()
    image = report["images"]["img.tif"]
    rejected = image["too_small_px" if kind == "small" else "too_large_px"] / image["foreground_px"]
    assert rejected >= NEARLY_ALL


def test_czi_scaling_sets_the_nucleus_size(
    images: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pylibCZIrw import czi

    tif, _, _ = images["small"]
    rgb = tifffile.imread(tif / "img.tif")
    with czi.create_czi(str(tmp_path / "img.czi"), exist_ok=True) as writer:
        for c in range(3):
            writer.write(rgb[:, :, c : c + 1].astype(np.uint16) * 16, plane={"C": c})
        writer.write_metadata(channel_names={0: "Cy3", 1: "FITC", 2: "DAPI"}, scale_x=0.3e-6, scale_y=0.3e-6)
    report, _, _ = _run(["--images", str(tmp_path / "img.czi")], tmp_path / "out", capsys)
    image = report["images"]["img.czi"]
    assert image["pixel_size_um"] == pytest.approx([0.3, 0.3]) and image["pixel_size_source"] == "file"
    assert image["nucleus_diameter_px"] == pytest.approx(33.33, abs=0.01) and report["warnings"] == []


def _summary(
    fg: int, small: int, large: int, source: str, size: list[float] | None, measured: float = 45.0
) -> dict:
    disc = np.pi * 50.0**2 / 4
    return {
        "pixel_size_um": size,
        "pixel_size_source": "file" if size else None,
        "probe_channels": True,
        "bit_depth": 8,
        "clipped": [],
        "nucleus_diameter_px": 50.0,
        "nucleus_diameter_source": source,
        "measured_diameter_px": measured,
        "whole_area_px": [0.5 * disc, 4 * disc],
        "foreground_px": fg,
        "too_small_px": small,
        "too_large_px": large,
    }


def test_size_warnings_thresholds_and_units() -> None:
    assert run_warnings({"a": _summary(1000, 790, 0, "pixel size", [0.2, 0.2])}, 99.99, 10.0) == []
    (line,) = run_warnings({"a": _summary(1000, 810, 0, "pixel size", [0.2, 0.2])}, 99.99, 10.0)
    # half a 50 px disc = 981.7 px = 39.3 um^2 at 0.2 um/px
    assert "81% lies in objects under 39.3 um^2" in line
    assert "a 10 um nucleus at 0.2 um/px from the file" in line
    (line,) = run_warnings({"a": _summary(1000, 100, 700, "measured", None)}, 99.99)
    assert "too large" in line and "70% in objects over 7854 px" in line and "no pixel size is known" in line
    assert run_warnings({"a": _summary(0, 0, 0, "measured", None)}, 99.99) == []  # a blank image
    # the scale check: median measured / assumed diameter beyond 1.6 either way, not when measured itself
    ok = {k: _summary(1000, 100, 0, "pixel size", [0.2, 0.2], m) for k, m in (("a", 79.0), ("b", 32.0))}
    assert run_warnings(ok, 99.99, 10.0) == []
    big = {k: _summary(1000, 100, 0, "pixel size", [0.2, 0.2], m) for k, m in (("a", 90.0), ("b", 85.0))}
    (line,) = run_warnings(big, 99.99, 10.0)
    assert "look 1.8 times larger" in line and "they measure 90 px (18 um) across" in line
    (line,) = run_warnings({"a": _summary(1000, 100, 0, "given", None, 25.0)}, 99.99)
    assert "look 2.0 times smaller" in line and "--nucleus-diameter 50 px" in line
    assert run_warnings({"a": _summary(1000, 100, 0, "measured", None, 25.0)}, 99.99) == []


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["--pixel-size", "0"], "--pixel-size must be > 0"),
        (["--pixel-size", "nan"], "--pixel-size must be > 0"),
        (["--nucleus-diameter-um", "-3"], "--nucleus-diameter-um must be > 0"),
        (["--range-percentile", "40"], "--range-percentile must be in (50, 100]"),
    ],
)
def test_bad_scale_options_are_one_line(
    images: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fault: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fish", "analyze", "--segmenter", "otsu", "--images", str(images["small"][0]), "--out",
              str(tmp_path / "o"), *args])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and fault in err
    assert not (tmp_path / "o").exists()
