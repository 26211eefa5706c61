"""Robust intensity range (hot pixels cannot set the scale) and pixel sizes from TIFF / OME / ImageJ tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytobench.io.images import read_image
from cytobench.io.intensity import ClippedRange, scale_to_unit, scale_to_unit_robust


@pytest.mark.parametrize("top", [255, 1023, 4095, 16383, 65535])
def test_robust_rule_equals_bit_depth_rule_without_outliers(top: int) -> None:
    rng = np.random.default_rng(top)
    data = rng.integers(0, top + 1, size=(64, 48, 3)).astype(np.uint16)
    data[0, 0, 0] = top  # the depth is reached by many pixels' worth of range, not by one
    plain, bits = scale_to_unit(data)
    robust, rbits, clipped = scale_to_unit_robust(data)
    assert rbits == bits and not clipped
    np.testing.assert_array_equal(robust, plain)
    at_max, mbits, _ = scale_to_unit_robust(data, percentile=100.0)  # q = 100 is the maximum
    assert mbits == bits
    np.testing.assert_array_equal(at_max, plain)


@pytest.mark.parametrize(("content", "bits"), [(255, 8), (4095, 12)])
@pytest.mark.parametrize("hot", [4096, 16383, 65535])
def test_one_hot_pixel_is_clipped_not_the_scale(content: int, bits: int, hot: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, content + 1, size=(40, 50, 2)).astype(np.uint16)
    clean, _ = scale_to_unit(data)
    data[5, 7, 1] = hot
    assert scale_to_unit(data)[1] > bits  # the bit-depth rule lets one pixel set the scale
    out, used, clipped = scale_to_unit_robust(data)
    assert used == bits
    assert clipped == [ClippedRange(channel=1, n_pixels=1, raw_max=float(hot), range_max=float(content))]
    assert out[5, 7, 1] == 1.0
    mask = np.ones(data.shape, bool)
    mask[5, 7, 1] = False
    np.testing.assert_array_equal(out[mask], clean[mask])


def test_declared_depth_holds_and_floats_use_percentiles() -> None:
    data = np.full((30, 30), 1000, np.uint16)
    data[0, 0] = 60000
    out, bits, clipped = scale_to_unit_robust(data, bit_depth=12)
    assert bits == 12 and out[1, 1] == pytest.approx(1000 / 4095) and clipped[0].n_pixels == 1
    ramp = np.linspace(0.0, 5.0, 900, dtype=np.float32).reshape(30, 30)
    ramp[3, 3] = 1e6
    out, bits, clipped = scale_to_unit_robust(ramp)
    assert bits == 32 and out.max() == 1.0 and clipped and clipped[0].raw_max == 1e6
    assert np.percentile(out, 50) == pytest.approx(0.5, abs=0.01)  # the ramp, not squashed near 0
    unit = np.linspace(0.0, 1.0, 100, dtype=np.float32)
    np.testing.assert_array_equal(scale_to_unit_robust(unit)[0], unit)  # already in [0, 1]: kept
    with pytest.raises(ValueError, match="range percentile"):
        scale_to_unit_robust(data, percentile=40)


def test_read_image_default_keeps_the_bit_depth_rule(tmp_path: Path) -> None:
    data = np.tile(np.arange(200, dtype=np.uint16), (20, 1))
    data[3, 3] = 65535
    tifffile.imwrite(tmp_path / "hot.tif", data)
    plain = read_image(tmp_path / "hot.tif")
    assert plain.bit_depth == 16 and not plain.clipped  # unchanged default
    robust = read_image(tmp_path / "hot.tif", range_percentile=99.99)
    assert robust.bit_depth == 8 and robust.clipped[0].n_pixels == 1
    assert robust.array[0, 199, 0] == pytest.approx(199 / 255)


# ---------------------------------------------------------------------------------------------- pixel size
def _imagej(path: Path, unit: str, per_unit: float) -> None:
    tifffile.imwrite(
        path,
        np.zeros((8, 8), np.uint8),
        imagej=True,
        resolution=(per_unit, per_unit),
        metadata={"unit": unit},
    )


@pytest.mark.parametrize(
    ("unit", "per_unit", "expected"),
    [
        ("micron", 1 / 0.25, 0.25),
        ("um", 1 / 0.3, 0.3),
        ("\\u00B5m", 1 / 0.2, 0.2),  # ImageJ writes the escape itself
        ("nm", 1 / 150.0, 0.15),
        ("mm", 1 / 0.0005, 0.5),
        ("pixel", 1.0, None),  # uncalibrated
    ],
)
def test_imagej_units(tmp_path: Path, unit: str, per_unit: float, expected: float | None) -> None:
    _imagej(tmp_path / "ij.tif", unit, per_unit)
    size = read_image(tmp_path / "ij.tif").pixel_size_um
    assert size == (pytest.approx((expected, expected)) if expected is not None else None)


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((1e4 / 0.4, 1e4 / 0.4), "CENTIMETER", 0.4),
        ((25400.0, 25400.0), "INCH", 1.0),  # 25400 dpi: a microscope's pixel
        ((72.0, 72.0), "INCH", None),  # a generic writer's print resolution
        ((300.0, 300.0), "INCH", None),
        ((2.0, 2.0), "NONE", None),
    ],
)
def test_tiff_resolution_units(
    tmp_path: Path, resolution: tuple[float, float], unit: str, expected: float | None
) -> None:
    tifffile.imwrite(
        tmp_path / "r.tif", np.zeros((8, 8), np.uint16), resolution=resolution, resolutionunit=unit
    )
    size = read_image(tmp_path / "r.tif").pixel_size_um
    assert size == (pytest.approx((expected, expected)) if expected is not None else None)


@pytest.mark.parametrize(("unit", "expected"), [("nm", 0.12), ("\u03bcm", 120.0), ("furlong", None)])
def test_ome_units(tmp_path: Path, unit: str, expected: float | None) -> None:
    tifffile.imwrite(
        tmp_path / "o.ome.tif",
        np.zeros((8, 8), np.uint16),
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": 120.0, "PhysicalSizeXUnit": unit, "PhysicalSizeY": 120.0},
    )
    size = read_image(tmp_path / "o.ome.tif").pixel_size_um
    if expected is None:
        assert size is None
    else:  # Y keeps the default unit (um)
        assert size == pytest.approx((120.0, expected))
