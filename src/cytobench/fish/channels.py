"""FISH images: read any supported file and split it into DAPI / red (chr21) / green (X) planes.

Channel rule, in order:

1. an explicit mapping (``--channels red=0,green=1,dapi=2``, 0-based channel indices) when given;
   ``--channels dapi=K`` (or every role on DAPI's channel, ``red=0,green=0,dapi=0``) reads a
   **nuclei-only** image: DAPI alone, no probe channels;
2. channel names stored in the file (CZI, OME-TIFF) when every role is recognised by its dye or filter name
   (:data:`CHANNEL_KEYWORDS`: DAPI / Hoechst for nuclei, FITC / GFP / SpectrumGreen / AF488 for green,
   Cy3 / TRITC / SpectrumOrange / Texas Red / AF568 / Rhodamine for red);
3. otherwise a 3-channel image is read as RGB = (red probe, green probe, DAPI), like the paper's CZI / BMP /
   JPG images ("3-channel images ... can be interpreted as RGB"), unless its three channels are identical
   (a grey image saved as RGB), which is read as DAPI only;
4. a 1-channel image is DAPI only (nuclei only);
5. anything else (2, 4+ channels without a mapping) stops with a one-line error naming the file.

Nuclei-only images are segmented and their nuclei counted; their signal columns stay empty.

Intensities are float32 in [0, 1] at the file's precision: 8-bit data are divided by 255, wider data by their
robust range (:func:`cytobench.io.intensity.scale_to_unit_robust`: the bit depth holding each channel's
``range_percentile``-th percentile, default 99.99, so a few hot pixels cannot set the scale; they are
clipped and listed in :attr:`FishImage.clipped`). Only the YOLO model's input is quantised to 8 bits, as its
training images are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cytobench.errors import BadInputError
from cytobench.fish import RANGE_PERCENTILE
from cytobench.io.images import read_image
from cytobench.io.intensity import ClippedRange

__all__ = [
    "CHANNEL_KEYWORDS",
    "PROBES",
    "ROLES",
    "FishImage",
    "parse_channel_map",
    "read_fish_image",
    "resolve_channels",
]

ROLES = ("red", "green", "dapi")
PROBES = ("red", "green")
CHANNEL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "dapi": ("dapi", "hoechst", "nuclei", "blue"),
    "green": ("fitc", "gfp", "spectrumgreen", "af488", "alexa488", "alexa 488", "green", "x probe"),
    "red": (
        "cy3",
        "tritc",
        "spectrumorange",
        "orange",
        "texas",
        "af568",
        "alexa568",
        "alexa 568",
        "af594",
        "rhodamine",
        "red",
    ),
}


@dataclass
class FishImage:
    """One FISH image split by role.

    Attributes:
        path: the file read.
        red: ``(H, W)`` float32 chromosome-21 probe channel in [0, 1], or None (nuclei-only image).
        green: ``(H, W)`` float32 X probe channel in [0, 1], or None (nuclei-only image).
        dapi: ``(H, W)`` float32 nuclear stain in [0, 1].
        channels: the role -> file channel index mapping used (only ``dapi`` for a nuclei-only image).
        bit_depth: bits the file's integers were scaled by.
        pixel_size_um: ``(dy, dx)`` in micrometres, or None when unknown.
        pixel_size_source: ``"file"``, ``"given"`` (``--pixel-size``) or None.
        clipped: ``(role, ClippedRange)`` for channels whose range was set without a few outlier pixels.
    """

    path: Path
    red: np.ndarray | None
    green: np.ndarray | None
    dapi: np.ndarray
    channels: dict[str, int]
    bit_depth: int
    pixel_size_um: tuple[float, float] | None = None
    pixel_size_source: str | None = None
    clipped: list[tuple[str, ClippedRange]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.dapi.shape[0]), int(self.dapi.shape[1]))

    @property
    def has_probes(self) -> bool:
        """Whether the red and green probe channels are present (False: nuclei only)."""
        return self.red is not None and self.green is not None

    def plane(self, role: str) -> np.ndarray:
        """``(H, W)`` float32 plane of ``role``; zeros for an absent probe channel."""
        value = getattr(self, role)
        return value if value is not None else np.zeros(self.shape, np.float32)

    def rgb(self) -> np.ndarray:
        """``(H, W, 3)`` float32 RGB = (red, green, dapi) in [0, 1], zeros for absent probes: the segmenter's
        input at the file's precision (the YOLO model quantises it to 8 bits like its training images)."""
        return np.stack([self.plane("red"), self.plane("green"), self.dapi], axis=-1)

    def rgb8(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB = (red, green, dapi), the paper's display."""
        return np.round(np.clip(self.rgb(), 0.0, 1.0) * 255.0).astype(np.uint8)


def parse_channel_map(text: str | None) -> dict[str, int] | None:
    """Parse ``"red=0,green=1,dapi=2"`` into ``{"red": 0, "green": 1, "dapi": 2}`` (None passes through).

    ``"dapi=K"`` alone, or red and green both on DAPI's channel (``"red=0,green=0,dapi=0"``), is a
    nuclei-only mapping ``{"dapi": K}``.

    Raises:
        ValueError: unknown or repeated role, no dapi, one probe without the other, a probe sharing a
            channel with the other probe or (alone) with DAPI, or a negative or non-integer index.
    """
    if text is None or not text.strip():
        return None
    mapping: dict[str, int] = {}
    for part in text.split(","):
        role, _, index = part.partition("=")
        role = role.strip().lower()
        if role not in ROLES:
            raise ValueError(f"unknown channel role {role!r} in {text!r} (use red, green, dapi)")
        if role in mapping:
            raise ValueError(f"channel role {role} is given twice in {text!r}")
        try:
            mapping[role] = int(index)
        except ValueError:
            raise ValueError(f"channel index of {role} is not an integer in {text!r}") from None
    usage = (
        "--channels needs three distinct indices red=I,green=J,dapi=K, or dapi=K alone for an image "
        f"without probe channels, got {text!r}"
    )
    if "dapi" not in mapping or min(mapping.values()) < 0:
        raise ValueError(usage)
    probes = {role: mapping[role] for role in PROBES if role in mapping}
    if not probes or (len(probes) == 2 and set(probes.values()) == {mapping["dapi"]}):
        return {"dapi": mapping["dapi"]}
    if len(probes) != 2 or len(set(mapping.values())) != 3:
        raise ValueError(usage)
    return mapping


def resolve_channels(
    path: Path, n_channels: int, names: list[str] | None, mapping: Mapping[str, int] | None
) -> dict[str, int]:
    """Role -> channel index for one file by the module's rule.

    Raises:
        BadInputError: no rule applies (e.g. a CZI with 2 or 4 channels and no mapping).
    """
    kind = "CZI" if path.suffix.lower() == ".czi" else "image"
    if mapping is not None:
        bad = [f"{role}={i}" for role, i in mapping.items() if i >= n_channels]
        if bad:
            raise BadInputError(
                path, f"{kind} has {n_channels} channels; --channels asks for {', '.join(bad)}"
            )
        return dict(mapping)
    if names:
        found = _match_names(names)
        if found is not None:
            return found
    if n_channels == 3:
        return {"red": 0, "green": 1, "dapi": 2}
    if n_channels == 1:
        return {"dapi": 0}
    named = f" ({', '.join(names)})" if names else ""
    raise BadInputError(
        path,
        f"{kind} has {n_channels} channels{named}, expected 3 (red = chr21 probe, green = X probe, DAPI) or "
        "1 (DAPI only); map them with --channels red=I,green=J,dapi=K (or dapi=K for nuclei only)",
    )


def _match_names(names: list[str]) -> dict[str, int] | None:
    """Recognise every role from channel names, or None when any role is missing or ambiguous."""
    found: dict[str, int] = {}
    for role in ("dapi", "green", "red"):  # specific dye names before colour words
        hits = [
            i
            for i, name in enumerate(names)
            if i not in found.values() and any(key in name.lower() for key in CHANNEL_KEYWORDS[role])
        ]
        if len(hits) != 1:
            return None
        found[role] = hits[0]
    return found


def read_fish_image(
    path: str | Path,
    channels: Mapping[str, int] | None = None,
    *,
    pixel_size_um: float | tuple[float, float] | None = None,
    range_percentile: float = RANGE_PERCENTILE,
) -> FishImage:
    """Read a PNG / JPEG / BMP / TIFF (8 or 16 bit) / CZI FISH image and split it by role.

    Args:
        path: the image file.
        channels: explicit role -> channel index mapping (``{"dapi": k}`` alone: nuclei only), or None for
            the module's rule.
        pixel_size_um: pixel size in micrometres (one value, or ``(dy, dx)``) overriding the file's; None
            keeps the file's (or none).
        range_percentile: percentile that sets the intensity range of data wider than 8 bits (module
            docstring).

    Returns:
        The :class:`FishImage` (planes at full resolution).

    Raises:
        UnreadableImage: missing or undecodable file.
        BadInputError: the channels cannot be assigned to red / green / DAPI.
    """
    path = Path(path)
    data = read_image(path, range_percentile=range_percentile)
    mapping = resolve_channels(path, data.array.shape[2], data.channel_names, channels)
    if channels is None and not data.channel_names and len(mapping) == 3 and _identical_planes(data.array):
        mapping = {"dapi": 2}  # a grey image saved as RGB: probes would only echo the DAPI texture
    planes = {role: np.ascontiguousarray(data.array[:, :, i]) for role, i in mapping.items()}
    roles = {i: role for role, i in mapping.items()}
    size, source = data.pixel_size_um, "file" if data.pixel_size_um is not None else None
    if pixel_size_um is not None:
        given = (pixel_size_um, pixel_size_um) if np.isscalar(pixel_size_um) else pixel_size_um
        size, source = (float(given[0]), float(given[1])), "given"
    return FishImage(
        path=path,
        red=planes.get("red"),
        green=planes.get("green"),
        dapi=planes["dapi"],
        channels=mapping,
        bit_depth=data.bit_depth,
        pixel_size_um=size,
        pixel_size_source=source,
        clipped=[(roles[c.channel], c) for c in data.clipped if c.channel in roles],
    )


def _identical_planes(array: np.ndarray) -> bool:
    """Whether a ``(H, W, 3)`` image has three equal, non-constant channels."""
    first = array[:, :, 0]
    return bool(
        np.array_equal(first, array[:, :, 1])
        and np.array_equal(first, array[:, :, 2])
        and first.max() > first.min()
    )
