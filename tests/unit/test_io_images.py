"""Image readers: formats, channel rules, 16-bit scaling, TIFF planes, CZI round trip, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cytobench.errors import UnreadableImage
from cytobench.io import czi as czi_module
from cytobench.io.czi import parse_czi_metadata, read_czi_raw
from cytobench.io.images import read_image, read_image_tensor, scale_to_unit, write_image

H, W = 12, 16


def _gradient(channels: int) -> np.ndarray:
    """Smooth uint8 (H, W, C) image (JPEG-friendly), distinct per channel."""
    y, x = np.mgrid[0:H, 0:W]
    planes = [x * 10 + y * 3 + 30 * c for c in range(channels)]  # max 243, no wrap
    return np.stack(planes, axis=2).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_raster_formats_keep_channels_and_rgb_order(tmp_path: Path, suffix: str, channels: int) -> None:
    data = _gradient(channels)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(data[:, :, 0] if channels == 1 else data).save(
        path, **({"quality": 95} if suffix == ".jpg" else {})
    )
    image = read_image(path)
    assert image.array.shape == (H, W, channels)
    assert image.array.dtype == np.float32
    assert image.bit_depth == 8
    tol = 0.06 if suffix == ".jpg" else 1e-6
    np.testing.assert_allclose(image.array, data / 255.0, atol=tol)
    assert image.array.min() >= 0.0 and image.array.max() <= 1.0


def test_rgba_png_drops_alpha_and_gray_alpha_stays_gray(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 77
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.array.shape == (H, W, 3)
    np.testing.assert_allclose(image.array[0, 0], [200 / 255, 0, 0])
    Image.fromarray(_gradient(1)[:, :, 0]).convert("LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").array.shape == (H, W, 1)


def test_uint16_tiff_with_12_bit_data_is_scaled_by_4095(tmp_path: Path) -> None:
    data = np.linspace(0, 4000, H * W).reshape(H, W).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cam12.tif", data)
    image = read_image(tmp_path / "cam12.tif")
    assert image.bit_depth == 12
    np.testing.assert_allclose(image.array[..., 0], data / 4095.0, rtol=1e-6)


def test_uint16_scaling_follows_bits_per_sample_tag_range_and_override(tmp_path: Path) -> None:
    dim = np.full((H, W), 100, np.uint16)
    tifffile.imwrite(tmp_path / "tag12.tif", dim, bitspersample=12)
    assert read_image(tmp_path / "tag12.tif").bit_depth == 12  # the tag, not the (dim) content
    np.testing.assert_allclose(read_image(tmp_path / "tag12.tif").array, 100 / 4095.0)
    tifffile.imwrite(tmp_path / "full.tif", np.full((H, W), 60000, np.uint16))
    assert read_image(tmp_path / "full.tif").bit_depth == 16
    np.testing.assert_allclose(read_image(tmp_path / "full.tif").array, 60000 / 65535.0)
    tifffile.imwrite(tmp_path / "plain.tif", dim)
    assert read_image(tmp_path / "plain.tif").bit_depth == 8  # 100 <= 255: rounds up to 2**8
    forced = read_image(tmp_path / "plain.tif", bit_depth=16)
    assert forced.bit_depth == 16
    np.testing.assert_allclose(forced.array, 100 / 65535.0)


def test_sixteen_bit_png_uses_real_range(tmp_path: Path) -> None:
    import cv2

    data = np.full((H, W, 3), [1000, 500, 0], np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), data[:, :, ::-1])  # cv2 writes BGR
    image = read_image(tmp_path / "rgb16.png")
    assert image.bit_depth == 10
    np.testing.assert_allclose(image.array[0, 0], [1000 / 1023, 500 / 1023, 0.0], rtol=1e-6)


def test_scale_to_unit_floats_and_never_8bit_for_16bit() -> None:
    out, bits = scale_to_unit(np.array([[0.2, 0.7]], np.float32))
    np.testing.assert_allclose(out, [[0.2, 0.7]])
    assert bits == 32
    out, _ = scale_to_unit(np.array([[-1.0, 3.0]], np.float64))
    np.testing.assert_allclose(out, [[0.0, 1.0]])
    out, bits = scale_to_unit(np.array([[300]], np.uint16))
    assert bits == 10 and out[0, 0] == pytest.approx(300 / 1023)
    out, bits = scale_to_unit(np.array([[5000]], np.uint16), bit_depth=12)  # data exceed the declared depth
    assert bits == 14 and out[0, 0] <= 1.0


def test_multi_plane_tiff_takes_first_plane_or_max_projection(tmp_path: Path) -> None:
    stack = np.zeros((3, 2, H, W), np.uint8)  # Z, C, Y, X
    for z in range(3):
        stack[z, 0], stack[z, 1] = 10 * (z + 1), 100 + z
    tifffile.imwrite(
        tmp_path / "zcyx.tif",
        stack,
        imagej=True,
        metadata={"axes": "ZCYX", "unit": "um"},
        resolution=(1 / 0.25, 1 / 0.5),
    )
    first = read_image(tmp_path / "zcyx.tif")
    assert first.array.shape == (H, W, 2)
    np.testing.assert_allclose(first.array[0, 0], [10 / 255, 100 / 255])
    assert first.pixel_size_um == pytest.approx((0.5, 0.25))  # (dy, dx)
    proj = read_image(tmp_path / "zcyx.tif", z_project="max")
    np.testing.assert_allclose(proj.array[0, 0], [30 / 255, 102 / 255])
    pages = np.stack([np.full((H, W), v, np.uint8) for v in (5, 6, 7, 8)])
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    assert read_image(tmp_path / "pages.tif").array.shape == (H, W, 1)
    np.testing.assert_allclose(read_image(tmp_path / "pages.tif").array, 5 / 255)


def test_ome_tiff_channel_names_and_pixel_size(tmp_path: Path) -> None:
    data = np.zeros((2, H, W), np.uint16)
    data[1] = 4095
    tifffile.imwrite(
        tmp_path / "ome.tif",
        data,
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.3,
            "PhysicalSizeY": 0.4,
            "Channel": {"Name": ["DAPI", "GFP"]},
        },
    )
    image = read_image(tmp_path / "ome.tif")
    assert image.array.shape == (H, W, 2)
    assert image.channel_names == ["DAPI", "GFP"]
    assert image.pixel_size_um == pytest.approx((0.4, 0.3))
    assert image.array[..., 1].max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "name,payload",
    [
        ("bad.png", b"not an image at all" * 4),
        ("empty.jpg", b""),
        ("bad.tif", b"II*\x00garbage"),
        ("bad.czi", b"ZISRAWFILE junk"),
    ],
)
def test_undecodable_file_raises_one_line_unreadable_image(tmp_path: Path, name: str, payload: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(UnreadableImage) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"UnreadableImage: {path}: cannot decode image (")
    assert "\n" not in message


def test_missing_file_raises_unreadable_image(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="nothere.png: file not found"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(UnreadableImage, match="file not found"):
        read_czi_raw(tmp_path / "nothere.czi")


def test_read_image_tensor_is_chw(tmp_path: Path) -> None:
    Image.fromarray(_gradient(3)).save(tmp_path / "x.png")
    tensor = read_image_tensor(tmp_path / "x.png")
    assert tuple(tensor.shape) == (3, H, W)
    assert tensor.dtype.is_floating_point
    np.testing.assert_allclose(tensor.numpy()[1], _gradient(3)[:, :, 1] / 255.0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_write_image_round_trip_8_and_16_bit(tmp_path: Path, suffix: str) -> None:
    rgb = _gradient(3)
    write_image(tmp_path / f"rgb{suffix}", rgb)
    np.testing.assert_allclose(read_image(tmp_path / f"rgb{suffix}").array, rgb / 255.0, atol=1e-6)
    gray16 = (np.arange(H * W).reshape(H, W) * 300).astype(np.uint16)
    write_image(tmp_path / f"g16{suffix}", gray16)
    back = read_image(tmp_path / f"g16{suffix}")
    assert back.array.shape == (H, W, 1) and back.bit_depth == 16
    np.testing.assert_allclose(back.array[..., 0], gray16 / 65535.0, rtol=1e-6)
    write_image(tmp_path / f"f{suffix}", np.full((H, W), 0.5, np.float32), bit_depth=16)
    assert read_image(tmp_path / f"f{suffix}", bit_depth=16).array[0, 0, 0] == pytest.approx(0.5, abs=1e-4)


# ------------------------------------------------------------------------------------------------ CZI
def _write_czi(path: Path, planes: np.ndarray, scale: float, names: dict[int, str]) -> None:
    """planes: (C, Z, H, W) uint16."""
    from pylibCZIrw import czi

    with czi.create_czi(str(path), exist_ok=True) as writer:
        for c in range(planes.shape[0]):
            for z in range(planes.shape[1]):
                writer.write(planes[c, z][:, :, None], plane={"C": c, "Z": z})
        writer.write_metadata(channel_names=names, scale_x=scale, scale_y=scale * 2)


@pytest.fixture(scope="module")
def czi_planes() -> np.ndarray:
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 3000, size=(2, 3, H, W)).astype(np.uint16)
    planes[1, 0, 0, 0] = 4000  # 12-bit content
    return planes


def test_czi_round_trip_channels_values_pixel_size(tmp_path: Path, czi_planes: np.ndarray) -> None:
    path = tmp_path / "two.czi"
    _write_czi(path, czi_planes, scale=0.65e-6, names={0: "DAPI", 1: "FITC"})  # ZEN stores metres
    raw, meta = read_czi_raw(path)
    np.testing.assert_array_equal(raw, czi_planes[:, 0].transpose(1, 2, 0))
    image = read_image(path)
    assert image.array.shape == (H, W, 2)
    assert image.channel_names == ["DAPI", "FITC"]
    assert image.pixel_size_um == pytest.approx((1.3, 0.65))
    assert image.bit_depth == 12
    np.testing.assert_allclose(image.array, czi_planes[:, 0].transpose(1, 2, 0) / 4095.0, rtol=1e-6)
    projected, _ = read_czi_raw(path, z_project="max")
    np.testing.assert_array_equal(projected, czi_planes.max(axis=1).transpose(1, 2, 0))


def test_czi_czifile_fallback_gives_the_same_plane(
    tmp_path: Path, czi_planes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "two.czi"
    _write_czi(path, czi_planes, scale=0.65, names={0: "A", 1: "B"})  # micrometres, as pylibCZIrw documents
    expected, _ = read_czi_raw(path)

    def no_aics(*args: object, **kwargs: object) -> None:
        raise ImportError("aicspylibczi missing")

    monkeypatch.setattr(czi_module, "_read_aicspylibczi", no_aics)
    raw, meta = read_czi_raw(path)
    np.testing.assert_array_equal(raw, expected)
    assert meta.channel_names == ["A", "B"]
    assert meta.pixel_size_um == pytest.approx((1.3, 0.65))


def test_czi_rgb_mosaic_is_stitched_in_rgb_order(tmp_path: Path) -> None:
    from pylibCZIrw import czi

    path = tmp_path / "rgb.czi"
    with czi.create_czi(str(path), exist_ok=True) as writer:  # tiles are BGR
        writer.write(np.full((8, 8, 3), [10, 20, 30], np.uint8), location=(0, 0))
        writer.write(np.full((8, 8, 3), [40, 50, 60], np.uint8), location=(8, 0))
        writer.write_metadata(scale_x=1e-6, scale_y=1e-6)
    image = read_image(path)
    assert image.array.shape == (8, 16, 3)
    np.testing.assert_allclose(image.array[0, 0] * 255, [30, 20, 10])
    np.testing.assert_allclose(image.array[0, 15] * 255, [60, 50, 40])


def test_czi_metadata_component_bit_count() -> None:
    xml = (
        "<ImageDocument><Metadata><Information><Image><ComponentBitCount>14</ComponentBitCount>"
        "<Dimensions><Channels><Channel Id='Channel:0' Name='Cy5'/></Channels></Dimensions></Image>"
        "</Information><Scaling><Items><Distance Id='X'><Value>1.0833E-07</Value></Distance>"
        "<Distance Id='Y'><Value>1.0833E-07</Value></Distance></Items></Scaling></Metadata></ImageDocument>"
    )
    meta = parse_czi_metadata(xml)
    assert meta.bit_depth == 14
    assert meta.channel_names == ["Cy5"]
    assert meta.pixel_size_um == pytest.approx((0.10833, 0.10833))
