"""Image readers and writers: PNG / JPEG / BMP / TIFF (8-16 bit) and Zeiss CZI.

Every reader returns an :class:`ImageData` whose ``array`` is float32 ``H x W x C`` in [0, 1].

Intensity scaling rule (DESIGN: 16-bit data is scaled by its *real* range, never assumed 8-bit):

* ``uint8``: divided by 255.
* ``uint16`` (and other integer types whose values fit in 16 bits): divided by ``2**b - 1`` where ``b`` is

  1. the ``bit_depth`` argument when given (use it to force one scale for a whole data set), else
  2. the significant bits stored in the file (TIFF ``BitsPerSample`` < 16, CZI ``ComponentBitCount``), else
  3. the smallest of 8, 10, 12, 14, 16 with ``max(image) <= 2**b - 1`` (a 12-bit camera image whose
     brightest pixel is 3000 is divided by 4095).

  When the data exceed the declared depth, the inferred depth wins (values are never clipped).
* wider integers: divided by the image maximum; ``bool``: 0 / 1.
* floats: kept when already in [0, 1], otherwise min-max normalised to [0, 1].

Channel rule: grayscale stays one channel, colour images are RGB, an alpha channel is dropped.
Multi-plane TIFFs: the channel axis is TIFF axis ``C`` (or the samples axis ``S``); every other
non-spatial axis (``T``, ``Z``, pages ``I``/``Q``, ...) is reduced to its first index, or to its maximum
for ``Z`` when ``z_project="max"``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cytobench.errors import BadInputError, UnreadableImage
from cytobench.io.axes import select_planes

__all__ = ["ImageData", "read_image", "read_image_tensor", "scale_to_unit", "write_image"]

ZProject = Literal["first", "max"]
_STANDARD_DEPTHS = (8, 10, 12, 14, 16)
_TIFF_SUFFIXES = {".tif", ".tiff"}


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
    """

    array: np.ndarray
    channel_names: list[str] | None
    pixel_size_um: tuple[float, float] | None
    bit_depth: int
    path: Path


def infer_bit_depth(array: np.ndarray, declared: int | None = None) -> int:
    """Bit depth used to scale integer data (see the module docstring for the rule).

    Args:
        array: integer image of any shape.
        declared: bits stated by the file or the caller, or None.

    Returns:
        The number of bits ``b``; ``2**b - 1`` maps to 1.0.
    """
    if array.dtype == np.uint8:
        return 8
    vmax = int(array.max()) if array.size else 0
    inferred = next((b for b in _STANDARD_DEPTHS if vmax <= 2**b - 1), int(vmax).bit_length())
    if declared is not None and declared > 0 and vmax <= 2**declared - 1:
        return int(declared)
    return inferred


def scale_to_unit(array: np.ndarray, bit_depth: int | None = None) -> tuple[np.ndarray, int]:
    """Convert raw pixel data to float32 in [0, 1].

    Args:
        array: raw data of any shape (uint8, uint16, other integers, bool or float).
        bit_depth: declared significant bits for integer data, or None to infer them.

    Returns:
        ``(scaled float32 array of the same shape, bit depth used)``.
    """
    if array.dtype == np.bool_:
        return array.astype(np.float32), 1
    if np.issubdtype(array.dtype, np.floating):
        out = np.nan_to_num(array.astype(np.float32))
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        return out, 32
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"unsupported pixel type {array.dtype}")
    data = np.clip(array, 0, None) if np.issubdtype(array.dtype, np.signedinteger) else array
    bits = infer_bit_depth(data, bit_depth)
    denom = float(2**bits - 1) if bits <= 16 else float(max(int(data.max()), 1))
    return (data.astype(np.float32) / denom).clip(0.0, 1.0), bits


def read_image(path: str | Path, *, bit_depth: int | None = None, z_project: ZProject = "first") -> ImageData:
    """Read an image file into float32 ``(H, W, C)`` in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (incl. OME / ImageJ hyperstacks) or CZI file.
        bit_depth: force the significant bits of integer data (e.g. 12 for a whole 12-bit data set);
            None follows the rule in the module docstring.
        z_project: ``"first"`` takes the first Z plane, ``"max"`` the maximum projection over Z.

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

            return read_czi(path, bit_depth=bit_depth, z_project=z_project)
        if suffix in _TIFF_SUFFIXES:
            raw, declared, names, pixel_size = _read_tiff(path, z_project)
        else:
            raw, declared, names, pixel_size = _read_raster(path), None, None, None
    except UnreadableImage:
        raise
    except Exception as err:  # decoder errors of PIL / cv2 / tifffile become one line
        raise UnreadableImage(path, f"cannot decode image ({_short(err)})") from err
    array, bits = scale_to_unit(raw, bit_depth if bit_depth is not None else declared)
    if names is not None and len(names) != array.shape[2]:
        names = None
    return ImageData(
        array=np.ascontiguousarray(array),
        channel_names=names,
        pixel_size_um=pixel_size,
        bit_depth=bits,
        path=path,
    )


def read_image_tensor(path: str | Path, *, bit_depth: int | None = None) -> torch.Tensor:
    """Read an image as a float32 tensor ``(C, H, W)`` in [0, 1] (see :func:`read_image`)."""
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


def _short(err: BaseException) -> str:
    """One-line, bounded description of a decoder exception."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


_OPENCV_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")  # PNG, JPEG, BMP signatures


def _read_raster(path: Path) -> np.ndarray:
    """Decode PNG / JPEG / BMP (and other OpenCV / Pillow formats) to ``(H, W, C)`` raw data, RGB order."""
    import cv2

    raw = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
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


def _ome_metadata(xml: str | None) -> tuple[list[str] | None, tuple[float, float] | None]:
    """Channel names and ``(dy, dx)`` pixel size (um) from OME-XML; missing parts are None."""
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
    scale = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "m": 1e6}
    size: tuple[float, float] | None = None
    if pixels.get("PhysicalSizeX") and pixels.get("PhysicalSizeY"):
        fx = scale.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
        fy = scale.get(pixels.get("PhysicalSizeYUnit", "µm"), 1.0)
        size = (float(pixels.get("PhysicalSizeY")) * fy, float(pixels.get("PhysicalSizeX")) * fx)
    return (names or None), size


def _tiff_resolution(page: Any, imagej: dict[str, Any] | None) -> tuple[float, float] | None:
    """``(dy, dx)`` in um from X/YResolution when the unit is micron (ImageJ) or centimetre.

    Inch-based resolutions (typically 72 dpi defaults of generic writers) are ignored.
    """
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = str((imagej or {}).get("unit", "")).lower()
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit in ("um", "micron", "µm", "\\u00b5m"):
        per_unit = 1.0
    elif res_unit == 3 and not imagej:
        per_unit = 1e4
    else:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if xn <= 0 or yn <= 0:
        return None
    return (per_unit * yd / yn, per_unit * xd / xn)


#: Files `cytobench predict` / `fish analyze` pick up from a folder.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".czi"}


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
