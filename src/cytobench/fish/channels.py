"""FISH images: read any supported file and split it into DAPI / red (chr21) / green (X) planes.

Channel rule, in order:

1. an explicit mapping (``--channels red=0,green=1,dapi=2``, 0-based channel indices) when given;
2. channel names stored in the file (CZI, OME-TIFF) when every role is recognised by its dye or filter name
   (:data:`CHANNEL_KEYWORDS`: DAPI / Hoechst for nuclei, FITC / GFP / SpectrumGreen / AF488 for green,
   Cy3 / TRITC / SpectrumOrange / Texas Red / AF568 / Rhodamine for red);
3. otherwise a 3-channel image is read as RGB = (red probe, green probe, DAPI), like the paper's CZI / BMP /
   JPG images ("3-channel images ... can be interpreted as RGB");
4. anything else (1, 2, 4+ channels without a mapping) stops with a one-line error naming the file.

Intensities are float32 in [0, 1]; 16-bit data are scaled by their real range (:mod:`cytobench.io.images`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cytobench.errors import BadInputError
from cytobench.io.images import read_image

__all__ = [
    "CHANNEL_KEYWORDS",
    "ROLES",
    "FishImage",
    "parse_channel_map",
    "read_fish_image",
    "resolve_channels",
]

ROLES = ("red", "green", "dapi")
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
        red: ``(H, W)`` float32 chromosome-21 probe channel in [0, 1].
        green: ``(H, W)`` float32 X probe channel in [0, 1].
        dapi: ``(H, W)`` float32 nuclear stain in [0, 1].
        channels: the role -> file channel index mapping used.
        bit_depth: bits the file's integers were scaled by.
        pixel_size_um: ``(dy, dx)`` from the file, or None.
    """

    path: Path
    red: np.ndarray
    green: np.ndarray
    dapi: np.ndarray
    channels: dict[str, int]
    bit_depth: int
    pixel_size_um: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.dapi.shape[0]), int(self.dapi.shape[1]))

    def rgb8(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB = (red, green, dapi), the paper's display and the segmenter's input."""
        stack = np.stack([self.red, self.green, self.dapi], axis=-1)
        return np.round(np.clip(stack, 0.0, 1.0) * 255.0).astype(np.uint8)


def parse_channel_map(text: str | None) -> dict[str, int] | None:
    """Parse ``"red=0,green=1,dapi=2"`` into ``{"red": 0, "green": 1, "dapi": 2}`` (None passes through).

    Raises:
        ValueError: unknown role, missing role, repeated index or a non-integer index.
    """
    if text is None or not text.strip():
        return None
    mapping: dict[str, int] = {}
    for part in text.split(","):
        role, _, index = part.partition("=")
        role = role.strip().lower()
        if role not in ROLES:
            raise ValueError(f"unknown channel role {role!r} in {text!r} (use red, green, dapi)")
        try:
            mapping[role] = int(index)
        except ValueError:
            raise ValueError(f"channel index of {role} is not an integer in {text!r}") from None
    if set(mapping) != set(ROLES) or len(set(mapping.values())) != 3 or min(mapping.values()) < 0:
        raise ValueError(f"--channels needs three distinct indices for red, green and dapi, got {text!r}")
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
    named = f" ({', '.join(names)})" if names else ""
    raise BadInputError(
        path,
        f"{kind} has {n_channels} channel{'s' if n_channels != 1 else ''}{named}, expected 3 (red = chr21 probe, "
        "green = X probe, DAPI); map them with --channels red=I,green=J,dapi=K",
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


def read_fish_image(path: str | Path, channels: Mapping[str, int] | None = None) -> FishImage:
    """Read a PNG / JPEG / BMP / TIFF (8 or 16 bit) / CZI FISH image and split it by role.

    Args:
        path: the image file.
        channels: explicit role -> channel index mapping, or None for the module's rule.

    Returns:
        The :class:`FishImage` (planes at full resolution).

    Raises:
        UnreadableImage: missing or undecodable file.
        BadInputError: the channels cannot be assigned to red / green / DAPI.
    """
    path = Path(path)
    data = read_image(path)
    mapping = resolve_channels(path, data.array.shape[2], data.channel_names, channels)
    planes = {role: np.ascontiguousarray(data.array[:, :, i]) for role, i in mapping.items()}
    return FishImage(
        path=path,
        red=planes["red"],
        green=planes["green"],
        dapi=planes["dapi"],
        channels=mapping,
        bit_depth=data.bit_depth,
        pixel_size_um=data.pixel_size_um,
    )
