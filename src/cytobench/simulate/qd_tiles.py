"""The tile engine of the QD simulator (:mod:`cytobench.simulate.qd`): Eq. 1 and tiles on every core.

A call's images are cut into tiles of :data:`TILE`; threads take tiles one at a time. A thread makes its
tile's random draws under a lock (normals, then uniforms, hand over hand), so every generator is drawn
in tile order exactly as one thread would, then computes the tile (walk, expected image, Poisson counts,
truth) while the others draw or compute theirs. numpy and torch kernels release the GIL, so the threads
use every core; the images depend only on the draws, never on the number of threads.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from cytobench.ops.poisson import poisson_inverse

if TYPE_CHECKING:
    from cytobench.simulate.qd import QDBatch, ScanParams

__all__ = ["TILE", "Tiles", "signal_term"]

TILE = 256  # images simulated together (working set in cache); a multiple of the data sets' block size
_CUMSUM_GRAIN = 30_000  # elements per torch cumsum call: below torch's grain size (32768), so it runs inline
_SLICE = 128  # images per slice of a tile's element-wise work (fits the core's L2 cache)
_F32 = np.float32


class Tiles:
    """The tiles of one call: draws in tile order under a lock, the rest of each tile on its own thread."""

    def __init__(
        self,
        batch: QDBatch,
        groups: list[tuple[np.random.Generator, torch.Generator, int, int]],
        start_xy: np.ndarray,
        step_dt: np.ndarray,
        beam: np.ndarray,
        w32: np.ndarray,
    ) -> None:
        p = batch.params
        assert p is not None
        self.batch, self.groups, self.start_xy, self.w32 = batch, groups, start_xy, w32
        self.n, self.params = len(batch.counts), p
        self.step_sd = np.ones(p.n_samples, dtype=_F32)  # column 0 (the start) is set apart
        self.step_sd[1:] = np.sqrt(step_dt).astype(_F32)
        self.sd = np.sqrt(2.0 * batch.diffusion).astype(_F32)
        self.beam32 = beam[:, :2].T.astype(_F32)
        self.cumsum_rows = max(1, _CUMSUM_GRAIN // p.n_samples)
        self.next_tile, self.failed = 0, False
        self.normals_lock, self.uniforms_lock = threading.Lock(), threading.Lock()

    def run(self, workers: int | None) -> None:
        """Simulate every tile on ``workers`` threads (None: ``torch.get_num_threads()``; at most one a tile)."""
        n_tiles = -(-self.n // TILE)
        n_workers = max(1, min(n_tiles, torch.get_num_threads() if workers is None else int(workers)))
        if n_workers == 1:
            self.work()
            return
        with ThreadPoolExecutor(n_workers - 1) as pool:
            helpers = [pool.submit(self.work) for _ in range(n_workers - 1)]
            self.work()  # the calling thread is one of the workers
            for helper in helpers:
                helper.result()

    def work(self) -> None:
        """Take, draw and compute tiles until none is left (one thread; scratch buffers of its own)."""
        m, T, pixels = min(self.n, TILE), self.params.n_samples, self.params.rows * self.params.cols
        pos, u = np.empty((m, 3, T), dtype=_F32), np.empty((2, m, pixels))
        scratch = np.empty((2, min(m, _SLICE), T), dtype=_F32)
        try:
            while (t0 := self._draw(pos, u)) is not None:
                self._compute(t0, pos, u, scratch)
        except BaseException:
            self.failed = True
            raise

    def _draw(self, pos: np.ndarray, u: np.ndarray) -> int | None:
        """Claim the next tile and make its draws (normals into ``pos``, uniforms into ``u``).

        Hand over hand: a thread takes the uniforms' lock before it lets go of the normals' one, so both
        kinds are drawn in tile order while one thread's uniforms overlap the next one's normals.
        """
        with self.normals_lock:
            t0 = self.next_tile
            if self.failed or t0 >= self.n:
                return None
            t1 = min(self.n, t0 + TILE)
            self.next_tile = t1
            parts = [(gen, normals, max(a, t0) - t0, min(b, t1) - t0) for gen, normals, a, b in self.groups]
            parts = [part for part in parts if part[2] < part[3]]
            for _, normals, lo, hi in parts:
                torch.from_numpy(pos[lo:hi]).normal_(generator=normals)
            self.uniforms_lock.acquire()
        try:
            for gen, _, lo, hi in parts:
                gen.random(out=u[0, lo:hi])
                gen.random(out=u[1, lo:hi])
        finally:
            self.uniforms_lock.release()
        return t0

    def _compute(self, t0: int, pos_buf: np.ndarray, u: np.ndarray, scratch: np.ndarray) -> None:
        """Walk, expected image, counts and truth of the tile starting at image ``t0``.

        Element-wise work goes in slices of :data:`_SLICE` images that stay in the core's cache; the
        centroids (one matrix-vector product) take the whole tile at once.
        """
        p, batch = self.params, self.batch
        t1 = min(self.n, t0 + TILE)
        pos, T = pos_buf[: t1 - t0], p.n_samples
        for a in range(0, t1 - t0, _SLICE):
            b = min(t1 - t0, a + _SLICE)
            part, g0, g1 = pos[a:b], t0 + a, t0 + b
            z0 = part[:, 2, 0] * _F32(p.z_start_sigma_um)
            part *= self.step_sd  # steps ~ N(0, 2 D dt); column 0 becomes the start position
            part *= self.sd[g0:g1, None, None]
            part[:, 0, 0], part[:, 1, 0], part[:, 2, 0] = self.start_xy[g0:g1, 0], self.start_xy[g0:g1, 1], z0
            flat = torch.from_numpy(part).view(-1, T)
            for r in range(0, len(flat), self.cumsum_rows):  # small calls run inline, never in torch's pool
                flat[r : r + self.cumsum_rows].cumsum_(1)
            expected = signal_term(part, self.beam32, p, scratch[:, : b - a])
            expected += _F32(p.n_bkg)
            batch.expected[g0:g1] = expected
            batch.counts[g0:g1] = poisson_inverse(expected, u[0, a:b], u[1, a:b])
            batch.boxes_px[g0:g1, :2] = part[:, :2].min(2)
            batch.boxes_px[g0:g1, 2:] = part[:, :2].max(2)
            if batch.positions_um is not None:
                batch.positions_um[g0:g1] = part.transpose(0, 2, 1)
        batch.centroids_px[t0:t1, 0], batch.centroids_px[t0:t1, 1] = (
            pos[:, 0] @ self.w32,
            pos[:, 1] @ self.w32,
        )


def signal_term(
    pos: np.ndarray, beam_xy: np.ndarray, params: ScanParams, scratch: np.ndarray | None = None
) -> np.ndarray:
    """QD term of Eq. 1 averaged over each dwell: (n, 3, T) float32 um -> (n, rows, cols) float32.

    Args:
        pos: (n, 3, T) float32 particle xyz in um.
        beam_xy: (2, T) beam xy in um (made float32; the beam's z is 0, the focal plane).
        params: scan parameters.
        scratch: optional (2, n, T) float32 work buffer; the result is then a view into it.
    """
    n = pos.shape[0]
    amp = params.n_qd / (2 * math.pi * params.sigma_xy_um**2) / math.sqrt(2 * math.pi * params.sigma_z_um**2)
    bx, by = np.asarray(beam_xy[0], dtype=_F32), np.asarray(beam_xy[1], dtype=_F32)
    if scratch is None:
        scratch = np.empty((2, n, pos.shape[2]), dtype=_F32)
    arg, tmp = scratch[0], scratch[1]
    np.subtract(pos[:, 0], bx, out=arg)
    np.multiply(arg, arg, out=arg)
    np.subtract(pos[:, 1], by, out=tmp)
    np.multiply(tmp, tmp, out=tmp)
    arg += tmp
    arg *= _F32(-0.5 / params.sigma_xy_um**2)
    np.multiply(pos[:, 2], pos[:, 2], out=tmp)  # beam z = 0 (focal plane)
    tmp *= _F32(-0.5 / params.sigma_z_um**2)
    arg += tmp
    np.exp(arg, out=arg)
    out = arg.reshape(n, params.rows, params.cols, params.substeps)
    out = out[..., 0] if params.substeps == 1 else out.mean(-1, dtype=_F32)
    out *= _F32(amp)
    return out
