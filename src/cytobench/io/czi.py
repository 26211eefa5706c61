"""Zeiss CZI reader (aicspylibczi, with czifile as fallback).

Reads one 2-D multi-channel plane: scene 0, time 0 and either Z 0 or the maximum projection over Z.
Mosaic (tiled) files are stitched. Channel names come from ``Information/Image/Dimensions/Channels``,
the pixel size from ``Scaling/Items/Distance[@Id=X|Y]/Value`` (metres, as ZEN writes it, converted to um),
the significant bits from ``Information/Image/ComponentBitCount``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cytobench.errors import UnreadableImage
from cytobench.io.axes import select_planes

if TYPE_CHECKING:
    from cytobench.io.images import ImageData

__all__ = ["CziMetadata", "parse_czi_metadata", "read_czi", "read_czi_raw"]

# A distance stored as >= 1 mm per pixel cannot be metres for a microscope: such files (e.g. written with
# pylibCZIrw, whose docs ask for micrometres) already store micrometres.
_METRES_MAX = 1e-3


@dataclass
class CziMetadata:
    """What cytobench uses from a CZI's XML metadata.

    Attributes:
        channel_names: names in channel order, or None.
        pixel_size_um: ``(dy, dx)`` in micrometres, or None.
        bit_depth: significant bits per component (``ComponentBitCount``), or None.
    """

    channel_names: list[str] | None
    pixel_size_um: tuple[float, float] | None
    bit_depth: int | None


def parse_czi_metadata(xml: str | ET.Element | None) -> CziMetadata:
    """Parse channel names, pixel size (um) and bit depth from CZI metadata XML.

    Args:
        xml: the metadata document as a string or an ElementTree element.

    Returns:
        The parsed :class:`CziMetadata`; missing parts are None.
    """
    if xml is None:
        return CziMetadata(None, None, None)
    root = ET.fromstring(xml) if isinstance(xml, str) else xml
    names = [
        ch.get("Name") or ch.get("Id") or f"C{i}"
        for i, ch in enumerate(root.findall(".//Dimensions/Channels/Channel"))
    ]
    distances: dict[str, float] = {}
    for dist in root.findall(".//Scaling/Items/Distance"):
        value = dist.findtext("Value")
        try:
            distances[dist.get("Id", "")] = float(value) if value is not None else 0.0
        except ValueError:
            continue
    size = None
    dx, dy = distances.get("X", 0.0), distances.get("Y", 0.0)
    if 0 < dx < float("inf") and 0 < dy < float("inf"):
        size = (dy if dy >= _METRES_MAX else dy * 1e6, dx if dx >= _METRES_MAX else dx * 1e6)
    bits_text = root.findtext(".//Information/Image/ComponentBitCount")
    bits = int(bits_text) if bits_text and bits_text.strip().isdigit() and int(bits_text) > 0 else None
    return CziMetadata(names or None, size, bits)


def read_czi_raw(
    path: str | Path, z_project: Literal["first", "max"] = "first"
) -> tuple[np.ndarray, CziMetadata]:
    """Read the raw pixels of the first scene / time point of a CZI.

    Args:
        path: the ``.czi`` file.
        z_project: ``"first"`` for Z plane 0, ``"max"`` for the maximum projection over Z.

    Returns:
        ``(raw (H, W, C) array in the file's dtype, metadata)``; RGB files (Bgr24/48) give RGB order.

    Raises:
        UnreadableImage: the file is missing or neither reader can decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found")
    try:
        return _read_aicspylibczi(path, z_project)
    except ImportError:
        pass
    except Exception as first:
        try:
            return _read_czifile(path, z_project)
        except Exception:
            raise UnreadableImage(path, f"cannot decode image ({_short(first)})") from first
    try:
        return _read_czifile(path, z_project)
    except Exception as err:
        raise UnreadableImage(path, f"cannot decode image ({_short(err)})") from err


def read_czi(
    path: str | Path,
    *,
    bit_depth: int | None = None,
    z_project: Literal["first", "max"] = "first",
    range_percentile: float | None = None,
) -> ImageData:
    """Read a CZI into :class:`~cytobench.io.images.ImageData` (float32 ``(H, W, C)`` in [0, 1]).

    Args:
        path: the ``.czi`` file.
        bit_depth: force the significant bits; None uses ``ComponentBitCount`` or the inference rule of
            :mod:`cytobench.io.images`.
        z_project: ``"first"`` or ``"max"`` (see :func:`read_czi_raw`).
        range_percentile: None for the bit-depth rule, q for the robust rule
            (:func:`cytobench.io.images.scale_intensities`).
    """
    from cytobench.io.images import ImageData, scale_intensities

    raw, meta = read_czi_raw(path, z_project)
    array, bits, clipped = scale_intensities(
        raw, bit_depth if bit_depth is not None else meta.bit_depth, range_percentile
    )
    names = meta.channel_names if meta.channel_names and len(meta.channel_names) == array.shape[2] else None
    return ImageData(
        array=np.ascontiguousarray(array),
        channel_names=names,
        pixel_size_um=meta.pixel_size_um,
        bit_depth=bits,
        path=Path(path),
        clipped=clipped,
    )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _read_aicspylibczi(path: Path, z_project: str) -> tuple[np.ndarray, CziMetadata]:
    from aicspylibczi import CziFile

    czi = CziFile(str(path))
    meta = parse_czi_metadata(czi.meta)
    shape = czi.get_dims_shape()[0]
    n_channels = shape["C"][1] - shape["C"][0] if "C" in shape else 1
    z_range = range(*shape["Z"]) if "Z" in shape else range(1)
    fixed: dict[str, int] = {d: rng[0] for d, rng in shape.items() if d not in "CZYXAM"}
    planes = []
    for c in range(n_channels):
        z_planes = []
        for z in z_range if z_project == "max" else z_range[:1]:
            coords = dict(fixed)
            if "C" in shape:
                coords["C"] = shape["C"][0] + c
            if "Z" in shape:
                coords["Z"] = z
            z_planes.append(_aics_plane(czi, coords))
        planes.append(np.max(np.stack(z_planes), axis=0))
    data = np.concatenate(planes, axis=2)
    return data, meta


def _aics_plane(czi: Any, coords: dict[str, int]) -> np.ndarray:
    """One ``(H, W, S)`` plane (S = 1, or 3 for RGB) from aicspylibczi."""
    if czi.is_mosaic():
        coords = {k: v for k, v in coords.items() if k != "S"}
        data = np.asarray(czi.read_mosaic(scale_factor=1.0, **coords))
        data = data.reshape(data.shape[-3:]) if data.shape[-1] in (3, 4) else data.reshape(data.shape[-2:])
    else:
        data, dims = czi.read_image(**coords)
        names = [d for d, _ in dims]
        index = tuple(slice(None) if d in "YXA" else 0 for d in names)
        data = data[index]
    if data.ndim == 2:
        return data[:, :, None]
    return data[:, :, 2::-1]  # BGR(A) -> RGB


def _read_czifile(path: Path, z_project: str) -> tuple[np.ndarray, CziMetadata]:
    import czifile

    with czifile.CziFile(str(path)) as czi:
        axes = czi.axes
        data = czi.asarray()
        meta = parse_czi_metadata(czi.metadata())
    reduced, kept = select_planes(data, axes, "CYX0", z_project)  # "0": czifile's sample (RGB) axis
    order = [kept.index(a) for a in "YXC0" if a in kept]
    reduced = reduced.transpose(order)
    if reduced.ndim == 2:
        return reduced[:, :, None], meta
    if "0" in kept and reduced.shape[-1] == 4:  # czifile already gives RGB(A); drop alpha
        reduced = reduced[..., :3]
    return reduced.reshape(reduced.shape[0], reduced.shape[1], -1), meta
