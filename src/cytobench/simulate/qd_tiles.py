"""The tile engine of the QD simulator (:mod:`cytobench.simulate.qd`): Eq. 1 and tiles on every core.

A call's images are cut into tiles of :data:`TILE`; threads take tiles one at a time. A thread makes its
tile's random draws under a lock (normals, then uniforms, hand over hand), so every generator is drawn
in tile order exactly as one thread would, then computes the tile (walk, expected image, Poisson counts,
truth) while the others draw or compute theirs. numpy, torch and the compiled (numba) loops release the
GIL, so the threads use every core; the images depend only on the draws, never on the number of threads.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from numba import njit

from cytobench.ops.poisson import poisson_inverse

if TYPE_CHECKING:
    from cytobench.simulate.qd import QDBatch, ScanParams

__all__ = ["TILE", "Tiles", "signal_term"]

TILE = 256  # images simulated together (working set in cache); a multiple of the data sets' block size
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
        self.z_sd = _F32(p.z_start_sigma_um)
        self.beam32 = beam[:, :2].T.astype(_F32)
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
        scratch = np.empty((min(m, _SLICE), T), dtype=_F32)
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
        pos = pos_buf[: t1 - t0]
        for a in range(0, t1 - t0, _SLICE):
            b = min(t1 - t0, a + _SLICE)
            part, g0, g1 = pos[a:b], t0 + a, t0 + b
            _walk(part, self.step_sd, self.sd[g0:g1], self.start_xy[g0:g1], self.z_sd, batch.boxes_px[g0:g1])
            expected = batch.expected[g0:g1]
            np.add(signal_term(part, self.beam32, p, scratch[: b - a]), _F32(p.n_bkg), out=expected)
            poisson_inverse(expected, u[0, a:b], u[1, a:b], out=batch.counts[g0:g1])
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
        scratch: optional (n, T) float32 work buffer; with one substep the result is a view into it.
    """
    pos, n = np.asarray(pos, dtype=_F32), pos.shape[0]
    amp = params.n_qd / (2 * math.pi * params.sigma_xy_um**2) / math.sqrt(2 * math.pi * params.sigma_z_um**2)
    bx, by = np.asarray(beam_xy[0], dtype=_F32), np.asarray(beam_xy[1], dtype=_F32)
    arg = np.empty((n, pos.shape[2]), dtype=_F32) if scratch is None else scratch
    _exponent(pos, bx, by, _F32(-0.5 / params.sigma_xy_um**2), _F32(-0.5 / params.sigma_z_um**2), arg)
    np.exp(arg, out=arg)
    out = arg.reshape(n, params.rows, params.cols, params.substeps)
    out = out[..., 0] if params.substeps == 1 else out.mean(-1, dtype=_F32)
    out *= _F32(amp)
    return out


@njit(nogil=True, cache=True)
def _walk(part, step_sd, sd, start_xy, z_sd, boxes):  # type: ignore[no-untyped-def]
    """Random walks in place: (n, 3, T) float32 standard normals -> positions in um; xyxy extents in ``boxes``.

    Step t of image i is ``normal * step_sd[t] * sd[i]`` (float32); column 0 holds the start (xy from
    ``start_xy``, z = ``normal * z_sd``). Positions are running sums in float64 rounded to float32, as
    torch's float32 ``cumsum`` on the CPU gives them (the seeded data sets were made that way).
    """
    for i in range(part.shape[0]):
        s = sd[i]
        x, y, z = np.float64(np.float32(start_xy[i, 0])), np.float64(np.float32(start_xy[i, 1])), 0.0
        z += part[i, 2, 0] * z_sd
        part[i, 0, 0], part[i, 1, 0], part[i, 2, 0] = x, y, z
        x_lo = x_hi = part[i, 0, 0]
        y_lo = y_hi = part[i, 1, 0]
        for t in range(1, part.shape[2]):  # x, y and z together: three independent sums keep the core busy
            x += (part[i, 0, t] * step_sd[t]) * s
            y += (part[i, 1, t] * step_sd[t]) * s
            z += (part[i, 2, t] * step_sd[t]) * s
            part[i, 0, t], part[i, 1, t], part[i, 2, t] = x, y, z
            x_lo, x_hi = min(x_lo, part[i, 0, t]), max(x_hi, part[i, 0, t])
            y_lo, y_hi = min(y_lo, part[i, 1, t]), max(y_hi, part[i, 1, t])
        boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x_lo, y_lo, x_hi, y_hi


@njit(nogil=True, cache=True)
def _exponent(pos, bx, by, c_xy, c_z, arg):  # type: ignore[no-untyped-def]
    """Eq. 1's exponent in float32: ``arg = ((x - bx)^2 + (y - by)^2) c_xy + z^2 c_z`` per sample."""
    for i in range(pos.shape[0]):
        for t in range(pos.shape[2]):
            dx, dy, z = pos[i, 0, t] - bx[t], pos[i, 1, t] - by[t], pos[i, 2, t]
            a = dx * dx
            a += dy * dy
            a *= c_xy
            a += (z * z) * c_z
            arg[i, t] = a
