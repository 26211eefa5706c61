"""`fish analyze` intensity scaling: one hot pixel of any value in a 16-bit DAPI channel leaves the nucleus
count unchanged, is reported on stderr and in the report, and the segmenter input keeps 16-bit precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cytobench.cli import main
from cytobench.fish.channels import read_fish_image
from cytobench.fish.otsu import OtsuSegmenter
from cytobench.fish.segmenters import DESTROYED, WHOLE, YoloSegmenterAdapter
from cytobench.io.images import read_image
from cytobench.simulate.fish import simulate_fish

HOT_VALUES = [4096, 16383, 65535]


@pytest.fixture(scope="module")
def rgb8(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One simulated 384-px FISH image as (H, W, 3) uint8 (R, G = probes, B = DAPI)."""
    ann = simulate_fish(1, tmp_path_factory.mktemp("sim"), size=384, seed=7)
    return np.round(read_image(ann.parent / "images" / "fish_00000.png").array * 255).astype(np.uint8)


def _counts(path: Path) -> tuple[int, int]:
    nuclei = OtsuSegmenter().segment(read_fish_image(path))
    return int((nuclei.labels == WHOLE).sum()), int((nuclei.labels == DESTROYED).sum())


@pytest.mark.parametrize("factor", [16, 1], ids=["12-bit", "8-bit-in-16"])
def test_nucleus_count_is_stable_under_one_hot_pixel(rgb8: np.ndarray, tmp_path: Path, factor: int) -> None:
    image = rgb8.astype(np.uint16) * factor
    tifffile.imwrite(tmp_path / "clean.tif", image, photometric="rgb")
    whole0, destroyed0 = _counts(tmp_path / "clean.tif")
    assert whole0 >= 5
    dapi = image[..., 2]
    background = np.unravel_index(np.argmin(dapi), dapi.shape)
    nucleus = np.unravel_index(np.argmax(dapi), dapi.shape)
    for where in (background, nucleus):
        for value in [0, *HOT_VALUES]:
            hot = image.copy()
            hot[where[0], where[1], 2] = value
            tifffile.imwrite(tmp_path / "hot.tif", hot, photometric="rgb")
            whole, destroyed = _counts(tmp_path / "hot.tif")
            assert abs(whole - whole0) <= 0.05 * whole0, (where, value, whole, whole0)
            total0 = whole0 + destroyed0
            assert abs(whole + destroyed - total0) <= 0.05 * total0, (where, value, destroyed, destroyed0)


def test_hot_pixel_is_reported_and_the_counts_match_the_clean_image(
    rgb8: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = rgb8.astype(np.uint16)  # 8-bit content in a 16-bit file (as a converted 8-bit image)
    rows, errs = {}, {}
    for name in ("clean", "hot"):
        if name == "hot":
            image[10, 10, 2] = 65535
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "a.tif", image, photometric="rgb")
        main(["fish", "analyze", "--segmenter", "otsu", "--no-overlays", "--images", str(tmp_path / name),
              "--out", str(tmp_path / f"out_{name}")])  # fmt: skip
        rows[name] = (tmp_path / f"out_{name}" / "nuclei.csv").read_text().replace("hot", "clean")
        errs[name] = capsys.readouterr().err
    assert rows["hot"] == rows["clean"]  # same nuclei, areas and signal counts
    assert "intensity range" not in errs["clean"]
    lines = [line for line in errs["hot"].splitlines() if "intensity range" in line]
    assert len(lines) == 1 and "1 dapi pixel up to 65535, range 0-255" in lines[0], errs["hot"]
    report = json.loads((tmp_path / "out_hot" / "report.json").read_text())
    assert report["images"]["a.tif"]["clipped"] == [
        {"channel": "dapi", "pixels": 1, "max": 65535.0, "range_max": 255.0}
    ]
    assert report["images"]["a.tif"]["bit_depth"] == 8
    assert "## Warnings" in (tmp_path / "out_hot" / "report.md").read_text()
    assert "## Warnings" not in (tmp_path / "out_clean" / "report.md").read_text()


class _RecordingModel:
    """Stands in for a YOLO model: records its input and finds nothing."""

    categories = [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}]

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, images):  # noqa: ANN001, ANN204 - the model contract
        self.inputs += list(images)
        empty = {"masks": torch.zeros((0, *images[0].shape[1:]), dtype=torch.uint8)}
        return [
            {**empty, "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)} for _ in images
        ]


def test_yolo_input_keeps_16_bit_precision_and_ignores_the_hot_pixel(
    rgb8: np.ndarray, tmp_path: Path
) -> None:
    image = rgb8.astype(np.uint16) * 16 + 7  # 12-bit content that 8 bits cannot hold
    image[0, 0, 2] = 65535
    tifffile.imwrite(tmp_path / "a.tif", image, photometric="rgb")
    adapter = YoloSegmenterAdapter.__new__(YoloSegmenterAdapter)
    adapter.model = _RecordingModel()
    adapter._label_map = np.array([0, WHOLE, DESTROYED])
    adapter.tile = 0
    adapter.segment(read_fish_image(tmp_path / "a.tif"))
    seen = adapter.model.inputs[0].numpy()
    assert seen.dtype == np.float32 and seen.shape == (3, 384, 384)
    expected = image[..., 2].astype(np.float32) / 4095.0  # the 12-bit range, not the hot pixel's
    np.testing.assert_allclose(seen[2, 1:, :], np.clip(expected, 0, 1)[1:, :], rtol=1e-6)
    assert seen[2, 0, 0] == 1.0
