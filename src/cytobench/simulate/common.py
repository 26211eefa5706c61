"""What every simulator shares: argument checks and the writer of its COCO files.

:func:`save_simulated_coco` writes a simulated dataset either whole (``annotations.json``) or split into
``train.json`` and ``val.json``; every simulator (toy, quantum dot, metaphase, FISH) writes its json
through it, so a split means the same thing everywhere: the **last** ``round(n * val_fraction)`` images
(at least one, at most ``n - 1``) form ``val``. The split draws no random numbers: with image ``i``
depending only on ``(seed, i)``, the same seed and arguments give byte-identical files.

Sizes follow the CLI's convention, ``(W, H)`` (``--size W H``); :func:`check_size` also accepts one
int for a square.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.io.coco import save_coco

__all__ = [
    "check_n_images",
    "check_out_dir",
    "check_seed",
    "check_size",
    "check_val_fraction",
    "save_simulated_coco",
    "split_coco",
    "val_count",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_n_images(n_images: Any, name: str = "n_images") -> int:
    """``n_images`` as an int >= 1.

    Raises:
        ValueError: not a positive integer (the message names ``name``).
    """
    if not _is_int(n_images) or n_images < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_images!r}")
    return int(n_images)


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, checked to be a folder or not yet there (nothing is created).

    Raises:
        ValueError: ``out_dir`` or one of its parents is an existing file, or ``out_dir/images`` is.
    """
    out = Path(out_dir)
    for path in (out / "images", out, *out.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"out_dir {out}: {path} is a file, not a folder")
    return out


def check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0 (``numpy.random.default_rng([seed, i])`` takes no negative entries).

    Raises:
        ValueError: not a non-negative integer.
    """
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_size(size: int | Sequence[int], min_side: int = 1, max_side: int | None = None) -> tuple[int, int]:
    """An image size as ``(W, H)``: one int (a square) or two ints ``(W, H)``.

    Args:
        size: ``S`` or ``(W, H)`` in px.
        min_side: smallest allowed side.
        max_side: largest allowed side, or None for no limit.

    Returns:
        ``(width, height)``.

    Raises:
        ValueError: not one or two integers, or a side outside ``[min_side, max_side]``.
    """
    if _is_int(size):
        sides: list[Any] = [size, size]
    elif isinstance(size, str | bytes):
        sides = []
    else:
        try:
            sides = list(size)
        except TypeError:
            sides = []
    if len(sides) != 2 or not all(_is_int(v) for v in sides):
        raise ValueError(f"size must be an integer or two integers (W, H), got {size!r}")
    if not all(v >= min_side and (max_side is None or v <= max_side) for v in sides):
        bound = f"in [{min_side}, {max_side}]" if max_side is not None else f">= {min_side}"
        raise ValueError(f"size {tuple(int(v) for v in sides)}: each side must be {bound} px")
    return int(sides[0]), int(sides[1])


def check_val_fraction(val_fraction: float | None, n_images: int) -> None:
    """Accept None (no split) or a fraction in (0, 1) of at least two images.

    Raises:
        ValueError: a fraction outside (0, 1), or fewer than two images to split.
    """
    if val_fraction is None:
        return
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float | np.floating):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < float(val_fraction) < 1.0:  # NaN fails too
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if n_images < 2:
        raise ValueError(f"val_fraction {val_fraction!r} needs at least 2 images to split, got {n_images}")


def val_count(n_images: int, val_fraction: float) -> int:
    """Images in ``val``: ``round(n * val_fraction)`` clipped to ``[1, n - 1]``."""
    return min(max(1, round(n_images * val_fraction)), n_images - 1)


def split_coco(dataset: dict[str, Any], val_fraction: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a COCO dataset dict into ``(train, val)``: the last :func:`val_count` images form ``val``.

    Every other top-level key (``info``, ``categories``, ...) is shared by both, in the same order.

    Args:
        dataset: COCO dataset with ``images`` (in simulation order) and ``annotations``.
        val_fraction: fraction in (0, 1); needs at least two images.

    Returns:
        ``(train, val)`` dataset dicts; the input is not modified.

    Raises:
        ValueError: see :func:`check_val_fraction`.
    """
    images = dataset["images"]
    check_val_fraction(val_fraction, len(images))
    n_val = val_count(len(images), val_fraction)
    val_ids = {img["id"] for img in images[len(images) - n_val :]}
    parts = []
    for keep in (False, True):
        subset = [img for img in images if (img["id"] in val_ids) == keep]
        anns = [ann for ann in dataset["annotations"] if (ann["image_id"] in val_ids) == keep]
        parts.append({**dataset, "images": subset, "annotations": anns})
    return parts[0], parts[1]


def save_simulated_coco(
    out_dir: str | Path, dataset: dict[str, Any], val_fraction: float | None = None
) -> Path:
    """Write a simulated dataset: ``annotations.json``, or ``train.json`` + ``val.json`` (atomic writes).

    Args:
        out_dir: the dataset folder (images already in ``out_dir/images``).
        dataset: the whole COCO dataset dict.
        val_fraction: None writes ``annotations.json``; a fraction in (0, 1) splits (:func:`split_coco`).

    Returns:
        Path of ``annotations.json``, or of ``train.json`` (``val.json`` lies beside it) when splitting.
    """
    out_dir = Path(out_dir)
    if val_fraction is None:
        return save_coco(out_dir / "annotations.json", dataset)
    train, val = split_coco(dataset, val_fraction)
    save_coco(out_dir / "train.json", train)
    save_coco(out_dir / "val.json", val)
    return out_dir / "train.json"
