"""Intensity scaling of raw pixel data to float32 in [0, 1]: the bit-depth rule and its robust variant.

**Bit-depth rule** (:func:`scale_to_unit`, the default of :func:`cytobench.io.images.read_image`):

* ``uint8``: divided by 255.
* ``uint16`` (and other integer types whose values fit in 16 bits): divided by ``2**b - 1`` where ``b`` is

  1. the ``bit_depth`` argument when given (use it to force one scale for a whole data set), else
  2. the significant bits stored in the file (TIFF ``BitsPerSample`` < 16, CZI ``ComponentBitCount``), else
  3. the smallest of 8, 10, 12, 14, 16 with ``max(image) <= 2**b - 1`` (a 12-bit camera image whose
     brightest pixel is 3000 is divided by 4095).

  When the data exceed the declared depth, the inferred depth wins (values are never clipped).
* wider integers: divided by the image maximum; ``bool``: 0 / 1.
* floats: kept when already in [0, 1], otherwise min-max normalised to [0, 1].

**Robust rule** (:func:`scale_to_unit_robust`; ``read_image(..., range_percentile=q)``; ``fish analyze`` uses
``q =`` :data:`DEFAULT_RANGE_PERCENTILE`): the same rule with each channel's maximum replaced by its
*q-th percentile*, so that a few outlier (hot, dead, cosmic-ray) pixels can never set the scale:

* ``uint8`` and ``bool``: as above (a fixed range, nothing is estimated from the data).
* other integers: ``b`` is the declared depth when every channel's q-th percentile fits in it, else the
  smallest of 8, 10, 12, 14, 16 holding the largest channel q-th percentile (beyond 16 bits the data are
  divided by that percentile). Pixels above ``2**b - 1`` are clipped to 1.0 and reported
  (:class:`ClippedRange`). Images without such pixels read exactly as with the bit-depth rule.
* floats in [0, 1]: kept; otherwise mapped from the lowest channel's ``(100 - q)``-th percentile to the
  highest channel's q-th percentile and clipped.

The q-th percentile of a channel of ``n`` pixels is its ``(k + 1)``-th largest value with
``k = ceil(n (100 - q) / 100)``: q = 100 is the maximum; q = 99.99 ignores the brightest pixel of a
100 x 100 image, 27 of 512 x 512, 138 of 1344 x 1024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_RANGE_PERCENTILE",
    "ClippedRange",
    "check_range_percentile",
    "infer_bit_depth",
    "scale_to_unit",
    "scale_to_unit_robust",
]

#: Percentile that sets an image's range under the robust rule (``fish analyze --range-percentile``).
DEFAULT_RANGE_PERCENTILE = 99.99
_STANDARD_DEPTHS = (8, 10, 12, 14, 16)


@dataclass(frozen=True)
class ClippedRange:
    """Pixels of one channel outside the range the rest of the channel set (robust rule).

    Attributes:
        channel: channel index (last axis of the data; 0 for a 2-D array).
        n_pixels: pixels clipped (to 1.0, or to 0.0 below the range of float data).
        raw_max: the channel's largest raw value.
        range_max: the raw value mapped to 1.0 (``2**b - 1`` for integer data).
    """

    channel: int
    n_pixels: int
    raw_max: float
    range_max: float


def check_range_percentile(percentile: float) -> float:
    """``percentile`` as a float in (50, 100]; ValueError otherwise."""
    value = float(percentile)
    if not (math.isfinite(value) and 50.0 < value <= 100.0):
        raise ValueError(f"the range percentile must be in (50, 100], got {percentile}")
    return value


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
    return _depth_for(vmax, declared)


def _depth_for(vmax: int, declared: int | None) -> int:
    """Declared bits when ``vmax`` fits in them, else the smallest standard depth holding ``vmax``."""
    if declared is not None and declared > 0 and vmax <= 2**declared - 1:
        return int(declared)
    return next((b for b in _STANDARD_DEPTHS if vmax <= 2**b - 1), int(vmax).bit_length())


def scale_to_unit(array: np.ndarray, bit_depth: int | None = None) -> tuple[np.ndarray, int]:
    """Convert raw pixel data to float32 in [0, 1] by the bit-depth rule.

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


def scale_to_unit_robust(
    array: np.ndarray, bit_depth: int | None = None, percentile: float = DEFAULT_RANGE_PERCENTILE
) -> tuple[np.ndarray, int, list[ClippedRange]]:
    """Convert raw pixel data to float32 in [0, 1] by the robust rule (see the module docstring).

    Args:
        array: raw data, ``(H, W)`` (one channel) or ``(H, W, C)`` (channels last), any dtype
            :func:`scale_to_unit` takes.
        bit_depth: declared significant bits for integer data, or None to infer them.
        percentile: q in (50, 100]; 100 gives exactly :func:`scale_to_unit`.

    Returns:
        ``(scaled float32 array of the same shape, bit depth used, clipped channels)``; the list is empty
        when no pixel lies outside the range.
    """
    percentile = check_range_percentile(percentile)
    if array.dtype in (np.bool_, np.uint8) or array.size == 0:
        out, bits = scale_to_unit(array, bit_depth)
        return out, bits, []
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"unsupported pixel type {array.dtype}")
    columns = array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array.reshape(-1, 1)
    k = _n_ignored(columns.shape[0], percentile)
    if np.issubdtype(array.dtype, np.floating):
        return _robust_float(array, columns, k)
    data = np.clip(array, 0, None) if np.issubdtype(array.dtype, np.signedinteger) else array
    columns = np.clip(columns, 0, None) if np.issubdtype(array.dtype, np.signedinteger) else columns
    highs = [_kth_largest(columns[:, c], k) for c in range(columns.shape[1])]
    bits = _depth_for(int(max(highs)), bit_depth)
    top = 2**bits - 1 if bits <= 16 else max(int(max(highs)), 1)
    clipped = []
    for c in range(columns.shape[1]):
        raw_max = int(columns[:, c].max())
        if raw_max > top:
            n = int(np.count_nonzero(columns[:, c] > top))
            clipped.append(ClippedRange(c, n, float(raw_max), float(top)))
    return (data.astype(np.float32) / np.float32(top)).clip(0.0, 1.0), bits, clipped


def _robust_float(
    array: np.ndarray, columns: np.ndarray, k: int
) -> tuple[np.ndarray, int, list[ClippedRange]]:
    """Floats: kept in [0, 1]; otherwise mapped from the robust low to the robust high percentile."""
    out = np.nan_to_num(array.astype(np.float32))
    cols = np.nan_to_num(columns.astype(np.float32))
    if float(out.min()) >= 0.0 and float(out.max()) <= 1.0:
        return out, 32, []
    lo = min(-_kth_largest(-cols[:, c], k) for c in range(cols.shape[1]))
    hi = max(_kth_largest(cols[:, c], k) for c in range(cols.shape[1]))
    if hi <= lo:  # nearly constant: fall back to the full range
        lo, hi = float(out.min()), float(out.max())
        if hi <= lo:
            return np.zeros_like(out), 32, []
    clipped = []
    for c in range(cols.shape[1]):
        n = int(np.count_nonzero((cols[:, c] > hi) | (cols[:, c] < lo)))
        if n:
            clipped.append(ClippedRange(c, n, float(cols[:, c].max()), float(hi)))
    return ((out - np.float32(lo)) / np.float32(hi - lo)).clip(0.0, 1.0), 32, clipped


def _n_ignored(n: int, percentile: float) -> int:
    """Pixels of ``n`` that may lie above the q-th percentile: ``ceil(n (100 - q) / 100)``, at most n - 1."""
    return min(max(n - 1, 0), math.ceil(n * (100.0 - percentile) / 100.0 - 1e-9))


def _kth_largest(values: np.ndarray, k: int) -> float:
    """The ``(k + 1)``-th largest entry of a 1-D array (``k = 0``: the maximum)."""
    if k <= 0:
        return float(values.max())
    index = values.shape[0] - 1 - k
    return float(np.partition(values, index)[index])
