"""Image readers and writers: PNG / JPEG / BMP / TIFF (8-16 bit) and Zeiss CZI.

Every reader returns an :class:`ImageData` whose ``array`` is float32 ``H x W x C`` in [0, 1].

Intensity scaling (:mod:`cytobench.io.intensity`): by default integer data are divided by ``2**b - 1`` for the
file's bit depth ``b`` (declared by the file, else the smallest of 8, 10, 12, 14, 16 holding the image
maximum), floats outside [0, 1] are min-max normalised. ``range_percentile=q`` (what ``fish analyze``
uses) sets that range from each channel's q-th percentile instead of its maximum, so that a few hot pixels
cannot set the scale; they are clipped and reported in :attr:`ImageData.clipped`.

Pixel size (``ImageData.pixel_size_um``, ``(dy, dx)`` in micrometres): OME-XML ``PhysicalSizeX/Y`` (with
their units), ImageJ metadata ``unit`` with the X/Y resolution tags, TIFF resolution tags in centimetres, or
in inches when they give at most :data:`MAX_INCH_PIXEL_UM` um per pixel (72 / 96 / 300 dpi defaults of
generic writers are ignored); CZI ``Scaling`` (:mod:`cytobench.io.czi`). Other formats state none.

Channel rule: grayscale stays one channel, colour images are RGB, an alpha channel is dropped.
Multi-plane TIFFs: the channel axis is TIFF axis ``C`` (or the samples axis ``S``); every other
non-spatial axis (``T``, ``Z``, pages ``I``/``Q``, ...) is reduced to its first index, or to its maximum
for ``Z`` when ``z_project="max"``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cytobench.errors import BadInputError, UnreadableImage
from cytobench.io.axes import select_planes
from cytobench.io.intensity import (
    ClippedRange,
    infer_bit_depth,
    scale_to_unit,
    scale_to_unit_robust,
)

if TYPE_CHECKING:  # torch is imported where a tensor is made: `cytobench eval` never needs it
    import torch

__all__ = [
    "MAX_INCH_PIXEL_UM",
    "DATASET_JSON_FILES",
    "ClippedRange",
    "ImageData",
    "image_file_size",
    "dataset_images_folder",
    "infer_bit_depth",
    "read_image",
    "read_image_tensor",
    "scale_intensities",
    "scale_to_unit",
    "write_image",
]

ZProject = Literal["first", "max"]
_TIFF_SUFFIXES = {".tif", ".tiff"}
_HEADER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}  # sizes readable from the header alone
#: Largest pixel size (um) accepted from inch-based TIFF resolution tags (2540 dpi and finer); coarser ones
#: are the print resolutions of generic writers, not a microscope's.
MAX_INCH_PIXEL_UM = 10.0


@dataclass
class ImageData:
    """A decoded image.

    Attributes:
        array: float32 ``(H, W, C)`` in [0, 1]; ``C`` is 1 for grayscale, 3 for RGB, or the number of
            fluorescence channels of a multi-channel TIFF / CZI.
        channel_names: one name per channel when the file stores them (OME-TIFF, CZI), else None.
        pixel_size_um: ``(dy, dx)`` physical pixel size in micrometres (same axis order as ``(H, W)``),
            or None when the file does not state it.
        bit_depth: the bit depth the integer data were scaled by (``2**bit_depth - 1`` maps to 1.0);
            32 for float data.
        path: the file that was read.
        clipped: channels with pixels outside the range the rest of the channel set (only with
            ``range_percentile``; empty otherwise).
    """

    array: np.ndarray
    channel_names: list[str] | None
    pixel_size_um: tuple[float, float] | None
    bit_depth: int
    path: Path
    clipped: list[ClippedRange] = field(default_factory=list)


def scale_intensities(
    raw: np.ndarray, bit_depth: int | None = None, range_percentile: float | None = None
) -> tuple[np.ndarray, int, list[ClippedRange]]:
    """Scale raw ``(H, W, C)`` data to float32 [0, 1] by the bit-depth rule, or the robust rule when
    ``range_percentile`` is given (:mod:`cytobench.io.intensity`).

    Returns:
        ``(array, bit depth used, clipped channels)``.
    """
    if range_percentile is None:
        array, bits = scale_to_unit(raw, bit_depth)
        return array, bits, []
    return scale_to_unit_robust(raw, bit_depth, range_percentile)


def read_image(
    path: str | Path,
    *,
    bit_depth: int | None = None,
    z_project: ZProject = "first",
    range_percentile: float | None = None,
) -> ImageData:
    """Read an image file into float32 ``(H, W, C)`` in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (incl. OME / ImageJ hyperstacks) or CZI file.
        bit_depth: force the significant bits of integer data (e.g. 12 for a whole 12-bit data set);
            None follows the rule in the module docstring.
        z_project: ``"first"`` takes the first Z plane, ``"max"`` the maximum projection over Z.
        range_percentile: None scales by the bit-depth rule; q in (50, 100] by the robust rule (the range
            set by each channel's q-th percentile; pixels above it clipped and listed in ``clipped``).

    Returns:
        The decoded :class:`ImageData`.

    Raises:
        UnreadableImage: the file is missing or cannot be decoded (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".czi":
            from cytobench.io.czi import read_czi

            return read_czi(path, bit_depth=bit_depth, z_project=z_project, range_percentile=range_percentile)
        if suffix in _TIFF_SUFFIXES:
            raw, declared, names, pixel_size = _read_tiff(path, z_project)
        else:
            raw, declared, names, pixel_size = _read_raster(path), None, None, None
    except UnreadableImage:
        raise
    except Exception as err:  # decoder errors of PIL / cv2 / tifffile become one line
        raise UnreadableImage(path, f"cannot decode image ({_short(err)})") from err
    array, bits, clipped = scale_intensities(
        raw, bit_depth if bit_depth is not None else declared, range_percentile
    )
    if names is not None and len(names) != array.shape[2]:
        names = None
    return ImageData(
        array=np.ascontiguousarray(array),
        channel_names=names,
        pixel_size_um=pixel_size,
        bit_depth=bits,
        path=path,
        clipped=clipped,
    )


def read_image_tensor(path: str | Path, *, bit_depth: int | None = None) -> torch.Tensor:
    """Read an image as a float32 tensor ``(C, H, W)`` in [0, 1] (see :func:`read_image`)."""
    import torch

    array = read_image(path, bit_depth=bit_depth).array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def write_image(path: str | Path, array: np.ndarray, bit_depth: Literal[8, 16] | None = None) -> Path:
    """Write an image as PNG / JPEG / BMP / TIFF (chosen by suffix).

    Args:
        path: output file; its folder is created.
        array: ``(H, W)`` or ``(H, W, C)`` with C in {1, 3} (RGB order), uint8 / uint16, or float in [0, 1].
        bit_depth: 8 or 16 to quantise float input (default 8); integer input is written as is.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array)
    if np.issubdtype(data.dtype, np.floating):
        depth = bit_depth or 8
        data = np.round(np.clip(data, 0.0, 1.0) * (2**depth - 1)).astype(
            np.uint8 if depth == 8 else np.uint16
        )
    elif data.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image supports uint8, uint16 or float data, not {data.dtype}")
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
        return path
    import cv2

    bgr = data[:, :, ::-1] if data.ndim == 3 else data
    ok, buffer = cv2.imencode(path.suffix.lower() or ".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"cannot encode image as {path.suffix}")
    tmp = path.with_name(path.name + ".tmp")
    buffer.tofile(tmp)
    os.replace(tmp, path)
    return path


def image_file_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file: read from the header for PNG / JPEG / BMP, else decoded.

    Raises:
        UnreadableImage: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found")
    if path.suffix.lower() in _HEADER_SUFFIXES:
        import warnings

        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning: the header alone is read
                with Image.open(path) as image:
                    width, height = image.size
            return int(width), int(height)
        except Exception:  # not what its suffix says, or too large for Pillow: decode it below
            pass
    array = read_image(path).array
    return int(array.shape[1]), int(array.shape[0])


def _short(err: BaseException) -> str:
    """One-line, bounded description of a decoder exception."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


_OPENCV_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")  # PNG, JPEG, BMP signatures


def _read_raster(path: Path) -> np.ndarray:
    """Decode PNG / JPEG / BMP (and other OpenCV / Pillow formats) to ``(H, W, C)`` raw data, RGB order."""

    raw = np.fromfile(path, dtype=np.uint8)
    image = _imdecode_quietly(raw) if raw.size else None
    if image is None and bytes(raw[:8]).startswith(_OPENCV_MAGIC):
        # OpenCV owns these formats: a failure means corrupt data (and Pillow's plugins, which other
        # packages extend, would only add their own noise)
        raise ValueError("corrupt or truncated image data")
    if image is None:  # formats OpenCV lacks (e.g. GIF), and a readable reason for garbage
        from PIL import Image

        with Image.open(path) as pil:
            pil.load()
            image = np.asarray(pil.convert("RGB") if pil.mode in ("P", "CMYK", "YCbCr") else pil)
        if image.ndim == 3 and image.shape[2] in (2, 4):
            image = image[:, :, :-1]
        return image[:, :, None] if image.ndim == 2 else image
    if image.ndim == 2:
        return image[:, :, None]
    gray_alpha = raw[:26].tobytes().startswith(b"\x89PNG") and raw.size > 25 and raw[25] == 4
    if gray_alpha or (image.shape[2] == 4 and _channels_equal(image[:, :, :3])):
        return image[:, :, :1]
    return np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) -> RGB, alpha dropped


def _imdecode_quietly(raw: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` without OpenCV's own log lines on stderr (a corrupt file is reported in one line)."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def _channels_equal(image: np.ndarray) -> bool:
    return bool(
        np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2])
    )


def _read_tiff(
    path: Path, z_project: ZProject
) -> tuple[np.ndarray, int | None, list[str] | None, tuple[float, float] | None]:
    """Decode the first series of a TIFF to ``(H, W, C)`` raw data plus declared bits, names, pixel size."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series or not tif.pages:
            raise UnreadableImage(path, "cannot decode image (TIFF contains no image data)")
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        page = tif.pages[0]
        bits = page.bitspersample
        declared = int(bits) if isinstance(bits, int) and bits < data.dtype.itemsize * 8 else None
        names, pixel_size = _ome_metadata(tif.ome_metadata) if tif.is_ome else (None, None)
        if pixel_size is None:
            pixel_size = _tiff_resolution(page, tif.imagej_metadata)
        alpha = bool(page.extrasamples) and page.samplesperpixel in (2, 4)
    array = _reduce_axes(path, data, axes, z_project)
    if alpha and "S" in axes and array.shape[2] in (2, 4):
        array = array[:, :, :-1]
    return array, declared, names, pixel_size


def _reduce_axes(path: Path, data: np.ndarray, axes: str, z_project: ZProject) -> np.ndarray:
    """Reduce a TIFF series with tifffile ``axes`` to ``(H, W, C)`` (see the module rule)."""
    if "Y" not in axes or "X" not in axes:
        raise UnreadableImage(path, f"cannot decode image (no Y/X axes in TIFF axes {axes!r})")
    channel_axes = [a for a in axes if a in "CS" and data.shape[axes.index(a)] > 1]
    if len(channel_axes) > 1:
        raise UnreadableImage(path, f"cannot decode image (both C and S channel axes in TIFF axes {axes!r})")
    reduced, kept = select_planes(data, axes, set("YX") | set(channel_axes), z_project)
    order = [kept.index("Y"), kept.index("X")] + ([kept.index(channel_axes[0])] if channel_axes else [])
    reduced = reduced.transpose(order)
    return reduced[:, :, None] if reduced.ndim == 2 else reduced


#: Micrometres per unit of length names found in OME-XML and ImageJ metadata (lower case).
_UM_PER_UNIT = {
    "pm": 1e-6,
    "å": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "um": 1.0,
    "µm": 1.0,  # U+00B5 micro sign
    "μm": 1.0,  # U+03BC Greek mu
    "\\u00b5m": 1.0,  # ImageJ writes the escape itself
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}


def _ome_metadata(xml: str | None) -> tuple[list[str] | None, tuple[float, float] | None]:
    """Channel names and ``(dy, dx)`` pixel size (um) from OME-XML; missing or unknown parts are None."""
    if not xml:
        return None, None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None, None
    names = [
        ch.get("Name") or f"C{i}" for i, ch in enumerate(el for el in pixels if el.tag.endswith("Channel"))
    ]
    dy = _length_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
    dx = _length_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
    size = (dy, dx) if dy is not None and dx is not None else None
    return (names or None), size


def _length_um(value: str | float | None, unit: str) -> float | None:
    """``value`` in ``unit`` as micrometres; None when missing, not a positive finite number or in an unknown unit."""
    scale = _UM_PER_UNIT.get(str(unit).strip().lower())
    try:
        number = float(value) if value is not None else float("nan")
    except ValueError:
        return None
    if scale is None or not (number > 0 and number < float("inf")):
        return None
    return number * scale


def _tiff_resolution(page: Any, imagej: dict[str, Any] | None) -> tuple[float, float] | None:
    """``(dy, dx)`` in um from the X/YResolution tags (pixels per unit).

    The unit is ImageJ's ``unit`` when the file has ImageJ metadata (``micron``, ``nm``, ``cm``, ...; ImageJ
    leaves ``ResolutionUnit`` at none), else ``ResolutionUnit``: centimetre, or inch when that gives at most
    :data:`MAX_INCH_PIXEL_UM` um per pixel (72 / 96 / 300 dpi defaults of generic writers are print
    resolutions, not pixel sizes). No unit (ImageJ ``pixel``, ``ResolutionUnit`` none) gives None.
    """
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    unit = str((imagej or {}).get("unit", "")).strip().lower()
    if unit:
        per_unit = _UM_PER_UNIT.get(unit)
    else:
        per_unit = {2: _UM_PER_UNIT["inch"], 3: _UM_PER_UNIT["cm"]}.get(res_unit)
    if per_unit is None:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if xn <= 0 or yn <= 0 or xd <= 0 or yd <= 0:
        return None
    size = (per_unit * yd / yn, per_unit * xd / xn)
    if per_unit == _UM_PER_UNIT["inch"] and max(size) > MAX_INCH_PIXEL_UM:
        return None
    return size


#: Files `cytobench predict` / `fish analyze` pick up from a folder.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".czi"}


#: COCO files a dataset folder written by ``cytobench simulate`` holds beside its ``images/``.
DATASET_JSON_FILES = ("annotations.json", "train.json", "val.json")


def dataset_images_folder(path: str | Path) -> tuple[Path, list[str]] | None:
    """``(images/ folder, COCO json names beside it)`` when ``path`` is a dataset folder (an ``images/``
    subfolder and no images of its own, as ``cytobench simulate`` writes), else None."""
    path = Path(path)
    inner = path / "images"
    if not (path.is_dir() and inner.is_dir()):
        return None
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return None
    return inner, [name for name in DATASET_JSON_FILES if (path / name).is_file()]


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in the given folders, sorted by name."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise BadInputError(path, "no such file or folder")
    if not found:
        raise BadInputError(", ".join(map(str, paths)), "no images found (png, jpg, bmp, tif, czi)")
    return found
