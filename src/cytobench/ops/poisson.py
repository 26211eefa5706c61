"""Exact, vectorised Poisson sampling by inversion of tabulated CDFs.

Each count is an element-wise function of its expected value and two uniforms, so a simulation
gives the same counts however its images are chunked, and it is several times faster than
``numpy.random.Generator.poisson`` for the small means of photon-counting microscopy.
"""

from __future__ import annotations

import math
import threading

import numpy as np

LAM_MAX = 1024.0  # largest expected count per element the tables cover
_CELL_BITS = 10  # log2(_PoissonTable.CELLS)


def poisson_inverse(lam: np.ndarray, u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
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

    Returns:
        int64 counts, the shape of ``lam``.
    """
    lam_flat = np.asarray(lam)
    if lam_flat.dtype != np.float32:
        lam_flat = lam_flat.astype(float, copy=False)
    lam_flat = lam_flat.reshape(-1)
    u0, u1 = np.asarray(u0, dtype=float).reshape(-1), np.asarray(u1, dtype=float).reshape(-1)
    table = _PoissonTable.cover(float(lam_flat.max(initial=0.0)))
    # q = floor(lam * STEPS): the product is exact in float32 as in float64 (a power of two)
    q_cells = np.multiply(
        lam_flat, _PoissonTable.STEPS, out=np.empty(lam_flat.size, np.intp), casting="unsafe"
    )
    q_cells <<= _CELL_BITS  # q * CELLS
    cell = np.multiply(u0, table.CELLS, out=np.empty(lam_flat.size, np.intp), casting="unsafe")
    cell += q_cells  # q * CELLS + floor(u0 * CELLS)
    k = table.sure.take(cell, mode="clip")  # the count, or ~guide where the cell straddles a CDF step
    amb = np.flatnonzero(k < 0)
    if amb.size:
        kk, u, base = ~k[amb], u0.take(amb), table.base.take(cell.take(amb) >> _CELL_BITS)
        idx = np.flatnonzero(u >= table.cdf.take(base + kk))  # the count is the first k with u < cdf[k]
        while idx.size:
            kk[idx] += 1
            idx = idx[u[idx] >= table.cdf.take(base[idx] + kk[idx])]
        k[amb] = kk
    # Poisson(f), f < 1/STEPS: k >= 1 iff u1 >= exp(-f), which needs u1 >= exp(-1/STEPS) first
    idx = np.flatnonzero(u1 >= math.exp(-1.0 / _PoissonTable.STEPS))
    f = lam_flat.take(idx).astype(float) - (cell.take(idx) >> _CELL_BITS) * (1.0 / _PoissonTable.STEPS)
    u, term = u1.take(idx), np.exp(-f)
    cum = term * (1.0 + f)  # P(k <= 1)
    k[idx] += (u >= term).astype(np.intp) + (u >= cum)
    more = u >= cum  # k >= 2 (probability < 0.008): continue the sequential search from P(k <= 1)
    idx, u, f, term, cum, j = idx[more], u[more], f[more], (term * f)[more], cum[more], 1
    while idx.size:
        j += 1
        term = term * f / j  # P(k = j)
        cum = cum + term  # P(k <= j)
        more = u >= cum
        idx, u, f, term, cum = idx[more], u[more], f[more], term[more], cum[more]
        k[idx] += 1
    return k.astype(np.int64).reshape(np.shape(lam))


class _PoissonTable:
    """Float64 CDFs and guide tables of ``Poisson(q / STEPS)`` for ``q = 0, 1, ...`` (grown on demand)."""

    STEPS = 8  # table rows per unit of lam
    CELLS = 1 << _CELL_BITS  # guide cells per row
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
