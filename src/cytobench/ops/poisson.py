"""Exact Poisson sampling by inversion of tabulated CDFs, in a compiled loop.

Each count is an element-wise function of its expected value and two uniforms, so a simulation
gives the same counts however its images are chunked, and it is several times faster than
``numpy.random.Generator.poisson`` for the small means of photon-counting microscopy. The loop is
compiled by numba (``cache=True``: once per machine) and releases the GIL, so threads run it in parallel.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

LAM_MAX = 1024.0  # largest expected count per element the tables cover
_CELL_BITS = 10  # log2 of the guide cells per table row
_CELLS = 1 << _CELL_BITS
_STEPS = 8  # table rows per unit of lam


def poisson_inverse(
    lam: np.ndarray, u0: np.ndarray, u1: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Exact Poisson draws by inversion: ``k = F_lam^-1(u)``, an element-wise function of ``(lam, u)``.

    ``lam`` is split as ``q / 8 + f`` with ``f`` in ``[0, 1/8)``; the count is ``Poisson(q / 8)`` by
    guide-table inversion of ``u0`` plus ``Poisson(f)`` by sequential inversion of ``u1`` (the sum of
    independent Poisson variables is Poisson with the summed mean). Tables are exact float64 CDFs
    truncated where the remaining mass is below 1e-30. Most guide cells lie within one step of the CDF
    and give the count outright; only the draws in the other cells (a few percent) search the CDF.

    Args:
        lam: float expected counts (>= 0), any shape (float32 is used as is, other types as float64).
        u0: float64 uniforms in [0, 1), the shape of ``lam``.
        u1: float64 uniforms in [0, 1), the shape of ``lam``.
        out: optional contiguous integer array of ``lam``'s size to write the counts into (returned).

    Returns:
        The counts: ``out``, or a new int64 array the shape of ``lam``.
    """
    lam_flat = np.asarray(lam)
    if lam_flat.dtype != np.float32:
        lam_flat = lam_flat.astype(float, copy=False)
    lam_flat = np.ascontiguousarray(lam_flat).reshape(-1)
    u0 = np.ascontiguousarray(u0, dtype=float).reshape(-1)
    u1 = np.ascontiguousarray(u1, dtype=float).reshape(-1)
    if not lam_flat.size == u0.size == u1.size:
        raise ValueError(f"lam, u0 and u1 differ in size ({lam_flat.size}, {u0.size}, {u1.size})")
    result = np.empty(np.shape(lam), np.int64) if out is None else out
    if result.size != lam_flat.size or not result.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of {lam_flat.size} elements")
    table = _PoissonTable.cover(float(lam_flat.max(initial=0.0)))
    _invert(lam_flat, u0, u1, table.sure, table.base, table.cdf, result.reshape(-1))
    return result


@njit(nogil=True, cache=True)
def _invert(lam, u0, u1, sure, base, cdf, out):  # type: ignore[no-untyped-def]
    """The loop of :func:`poisson_inverse`, one element at a time (compiled; releases the GIL)."""
    last_cell, steps = sure.size - 1, _STEPS
    sure_threshold = math.exp(-1.0 / steps)  # Poisson(f) > 0 needs u1 >= exp(-f) >= exp(-1 / STEPS)
    for e in range(lam.size):
        # q = floor(lam * STEPS): the product is exact in float32 as in float64 (a power of two)
        row = np.intp(lam[e] * steps)
        cell = np.intp(u0[e] * _CELLS) + (row << _CELL_BITS)  # q * CELLS + floor(u0 * CELLS)
        k = np.intp(sure[min(cell, last_cell)])  # the count, or ~guide where the cell straddles a CDF step
        if k < 0:  # the count is the first k with u0 < cdf[k]
            k, at = ~k, base[row]
            while u0[e] >= cdf[at + k]:
                k += 1
        u = u1[e]
        if u >= sure_threshold:  # Poisson(f), f < 1 / STEPS, by sequential inversion
            f = np.float64(lam[e]) - row * (1.0 / steps)
            term = math.exp(-f)  # P(k = 0)
            cum = term * (1.0 + f)  # P(k <= 1)
            if u >= term:
                k += 1
            if u >= cum:  # k >= 2 (probability < 0.008): go on from P(k <= 1)
                term, j = term * f, 1
                while u >= cum:  # k > j
                    k += 1
                    j += 1
                    term = term * f / j  # P(k = j)
                    cum = cum + term  # P(k <= j)
        out[e] = k


class _PoissonTable:
    """Float64 CDFs and guide tables of ``Poisson(q / STEPS)`` for ``q = 0, 1, ...`` (grown on demand)."""

    STEPS = _STEPS
    CELLS = _CELLS
    _current: _PoissonTable | None = None
    _lock = threading.Lock()

    def __init__(self, rows: int) -> None:
        from scipy.special import pdtr

        lam = np.arange(rows) / self.STEPS
        spread = 15.0 * np.sqrt(lam) + 40.0
        self.low = np.maximum(np.floor(lam - spread), 0).astype(np.intp)
        width = (np.ceil(lam + spread).astype(np.intp) - self.low + 1).astype(np.intp)
        self.offset = np.concatenate([[0], np.cumsum(width)[:-1]]).astype(np.intp)
        ks = np.concatenate([np.arange(lo, lo + w) for lo, w in zip(self.low, width)])
        self.cdf = pdtr(ks, np.repeat(lam, width))
        self.cdf[self.offset + width - 1] = 1.0  # the truncated tail (< 1e-30) joins the last entry
        self.base = self.offset - self.low  # cdf of count k of row q sits at base[q] + k
        cells = np.arange(self.CELLS) / self.CELLS
        self.guide = np.concatenate(  # guide[q * CELLS + c]: the smallest count k with cdf > c / CELLS
            [
                lo + np.searchsorted(self.cdf[o : o + w], cells, side="right")
                for lo, o, w in zip(self.low, self.offset, width)
            ]
        ).astype(np.int32)
        # sure[q * CELLS + c]: the count itself where every u of cell c maps to guide (its cdf reaches the
        # cell's upper end, (c + 1) / CELLS), else ~guide (negative): the search starts there
        row_of_cell = np.repeat(np.arange(rows), self.CELLS)
        reaches = self.cdf[self.base[row_of_cell] + self.guide] >= np.tile(cells + 1.0 / self.CELLS, rows)
        self.sure = np.where(reaches, self.guide, ~self.guide)  # int32
        self.rows = rows

    @classmethod
    def cover(cls, lam_max: float) -> _PoissonTable:
        """A table with a row for every ``q <= lam_max * STEPS`` (rows never change once built)."""
        if not lam_max <= LAM_MAX:
            raise ValueError(
                f"expected photons per pixel reach {lam_max:g} (> {LAM_MAX:g} supported); lower n_qd / n_bkg"
            )
        need = int(lam_max * cls.STEPS) + 1
        with cls._lock:
            if cls._current is None or cls._current.rows < need:
                cls._current = cls(max(need, 2 * cls._current.rows if cls._current else 1024))
            return cls._current
