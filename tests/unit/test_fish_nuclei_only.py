"""`fish analyze` on nuclei-only (DAPI, no probe channels) images: channel rules, the same nuclei as the
RGB image, empty signal columns, the report and stdout saying so, mixed samples, the YOLO input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.cli import main
from cytobench.fish.channels import parse_channel_map, read_fish_image, resolve_channels
from cytobench.fish.segmenters import DESTROYED, WHOLE, YoloSegmenterAdapter
from cytobench.io.images import read_image, write_image
from cytobench.simulate.fish import simulate_fish


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated 384-px RGB FISH image (R, G = probes, B = DAPI)."""
    ann = simulate_fish(1, tmp_path_factory.mktemp("sim"), size=384, seed=5)
    return ann.parent / "images" / "fish_00000.png"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _analyze(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["fish", "analyze", "--segmenter", "otsu", "--no-overlays", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_channel_maps_for_nuclei_only() -> None:
    assert parse_channel_map("dapi=0") == {"dapi": 0}
    assert parse_channel_map("red=0,green=0,dapi=0") == {"dapi": 0}  # every role on the DAPI channel
    assert parse_channel_map("red=2,green=1,dapi=0") == {"red": 2, "green": 1, "dapi": 0}
    for bad in ("red=0,dapi=0", "red=0,green=0,dapi=1", "green=1,dapi=0", "red=0,green=1", "dapi=0,dapi=1"):
        with pytest.raises(ValueError, match="--channels|twice"):
            parse_channel_map(bad)
    assert resolve_channels(Path("a.png"), 1, None, None) == {"dapi": 0}
    assert resolve_channels(Path("a.czi"), 1, ["DAPI"], None) == {"dapi": 0}
    assert resolve_channels(Path("b.tif"), 4, None, {"dapi": 3}) == {"dapi": 3}


@pytest.mark.parametrize("channels", [None, "dapi=0", "red=0,green=0,dapi=0"])
def test_dapi_only_image_gives_the_rgb_images_nuclei(
    rgb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], channels: str | None
) -> None:
    planes = np.round(read_image(rgb).array * 255).astype(np.uint8)
    write_image(tmp_path / "dapi" / "img.png", planes[..., 2])  # a grey (1-channel) DAPI image
    assert _analyze(["--images", str(rgb), "--out", str(tmp_path / "rgb")], capsys)[0] == 0
    extra = ["--channels", channels] if channels else []
    code, out, err = _analyze(
        ["--images", str(tmp_path / "dapi"), "--out", str(tmp_path / "o"), *extra], capsys
    )
    assert code == 0, err
    full, only = _rows(tmp_path / "rgb" / "nuclei.csv"), _rows(tmp_path / "o" / "nuclei.csv")
    shape = ("nucleus", "category", "area", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "score")
    assert [[r[k] for k in shape] for r in only] == [[r[k] for k in shape] for r in full]
    assert all(r["n_red"] == r["n_green"] == r["pattern"] == "" for r in only)
    n_whole = sum(r["category"] == "whole" for r in only)
    assert n_whole >= 3
    assert f"dapi: {n_whole} whole nuclei" in out and "nuclei only (no probe channels)" in out
    assert "1 of 1 images have no probe channels" in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    entry = report["samples"]["dapi"]
    assert entry["n_whole"] == n_whole and entry["n_counted"] == 0 and entry["patterns"] == []
    assert report["images"]["img.png"]["probe_channels"] is False
    text = (tmp_path / "o" / "report.md").read_text()
    assert "Nuclei only: the images have no probe channels" in text and "nan" not in text.lower()


def test_grey_image_saved_as_rgb_is_dapi_only(rgb: Path, tmp_path: Path) -> None:
    dapi = np.round(read_image(rgb).array[..., 2] * 255).astype(np.uint8)
    write_image(tmp_path / "grey_rgb.png", np.repeat(dapi[..., None], 3, axis=2))
    image = read_fish_image(tmp_path / "grey_rgb.png")
    assert image.channels == {"dapi": 2} and not image.has_probes and image.red is None
    assert read_fish_image(
        tmp_path / "grey_rgb.png", {"red": 0, "green": 1, "dapi": 2}
    ).has_probes  # as mapped


def test_mixed_sample_counts_signals_of_rgb_images_only(
    rgb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planes = np.round(read_image(rgb).array * 255).astype(np.uint8)
    write_image(tmp_path / "s" / "a_rgb.png", planes)
    write_image(tmp_path / "s" / "b_dapi.png", planes[..., 2])
    code, _, err = _analyze(["--images", str(tmp_path / "s"), "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and "1 of 2 images have no probe channels" in err
    rows = _rows(tmp_path / "o" / "nuclei.csv")
    rgb_whole = [r for r in rows if r["image"] == "a_rgb.png" and r["category"] == "whole"]
    assert all(r["n_red"] != "" for r in rgb_whole)
    assert all(r["n_red"] == "" for r in rows if r["image"] == "b_dapi.png")
    entry = json.loads((tmp_path / "o" / "report.json").read_text())["samples"]["s"]
    assert entry["n_counted"] == len(rgb_whole) and entry["n_whole"] == 2 * len(rgb_whole)
    assert sum(p["count"] for p in entry["patterns"]) == len(rgb_whole)
    assert "come from images without probe channels" in (tmp_path / "o" / "report.md").read_text()


def test_yolo_sees_dapi_in_blue_and_empty_probes(rgb: Path, tmp_path: Path) -> None:
    dapi = np.round(read_image(rgb).array[..., 2] * 255).astype(np.uint8)
    write_image(tmp_path / "d.png", dapi)
    seen: list[torch.Tensor] = []

    def model(images):  # noqa: ANN001, ANN202 - the model contract
        seen.extend(images)
        empty = torch.zeros((0, *images[0].shape[1:]), dtype=torch.uint8)
        return [{"masks": empty, "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}]

    adapter = YoloSegmenterAdapter.__new__(YoloSegmenterAdapter)
    adapter.model, adapter._label_map, adapter.tile = model, np.array([0, WHOLE, DESTROYED]), 0
    assert len(adapter.segment(read_fish_image(tmp_path / "d.png")).labels) == 0
    x = seen[0].numpy()
    assert x.shape == (3, 384, 384) and not x[:2].any()
    np.testing.assert_array_equal(np.round(x[2] * 255).astype(np.uint8), dapi)
