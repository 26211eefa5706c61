"""Two-photon laser-scan images of a single diffusing quantum dot (Netterstrøm et al., Sec. 4.6).

Physics, with every constant a field of :class:`ScanParams` (paper values as defaults):

* **Beam (Sec. 4.6.1).** The image is recorded line by line. Along a line the beam moves at the constant
  speed ``pixel_size_um / dwell_s``; each pixel dwell is split into ``substeps`` sub-steps of
  ``dt_line = dwell_s / substeps`` and the beam is sampled at the midpoint of each sub-step, i.e. at
  ``x = (j + (s + 0.5) / substeps) * pixel_size_um``, ``y = (i + 0.5) * pixel_size_um``, ``z = 0`` (the
  focal plane) for sub-step ``s`` of pixel (row ``i``, column ``j``). Between lines the beam flies back
  in ``retrace_s`` and records nothing. The time samples are therefore the ``T = rows * cols * substeps``
  sub-step midpoints: consecutive samples of a line are ``dt_line`` apart, and the last sample of a line
  is ``retrace_s + dt_line`` before the first sample of the next (half a sub-step, the fly-back, half a
  sub-step), so a frame lasts exactly ``rows * cols * dwell_s + (rows - 1) * retrace_s``.
* **Random walk (Sec. 4.6.2).** Independently per axis (x, y, z), the increment between consecutive
  samples is ``N(0, 2 D dt)`` with the ``dt`` of that step (``dt_line`` or ``retrace_s + dt_line``).
  The walk starts at the first sample, at ``x0, y0`` uniform over the field minus ``start_margin_px`` on
  each side and ``z0 ~ N(0, z_start_sigma_um**2)`` around the focal plane.
* **Photons (Sec. 4.6.3, Eq. 1).** With lengths in um,
  ``N = N_qd / (2 pi s_xy^2) exp(-((X-x)^2 + (Y-y)^2) / (2 s_xy^2)) / sqrt(2 pi s_z^2)
  exp(-(Z-z)^2 / (2 s_z^2)) + N_bkg`` (peak ``1.0587 N_qd + N_bkg`` at focus for the paper's PSF),
  averaged over the sub-steps of a pixel's dwell; the recorded count is ``Poisson(N)``.

Truth per image: the **trajectory centroid** is the time-weighted mean of the particle's xy position over
the whole acquisition (trapezoid rule over the time samples, plus half a sub-step held at each end), so
the long retrace intervals weigh by their duration, as the physical time average does; the trapezoid is
the mean of the Brownian bridge between samples. Coordinates are COCO pixels: pixel (row ``i``, col
``j``) covers ``[j, j+1) x [i, i+1)`` and ``x_px = x_um / pixel_size_um``. The box is the bounding box of
the sampled trajectory (xy) widened by ``2 sigma_xy`` on each side and clipped to the image.

Sampling (exact, vectorised over images): the walk's normals come from ``torch`` (``normal_`` with a
``torch.Generator`` seeded from the numpy stream); each count is drawn by inversion of two float64
uniforms (:func:`cytobench.ops.poisson.poisson_inverse`), so the whole image is an element-wise function
of a fixed number of draws per image and chunking never changes a result. Tiles of :data:`TILE` images
run on every core (:mod:`cytobench.simulate.qd_tiles`): draws in tile order, the rest in parallel, so the
number of threads never changes a result either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from numpy.typing import ArrayLike

from cytobench.ops.poisson import LAM_MAX
from cytobench.simulate.qd_tiles import TILE, Tiles, signal_term

__all__ = [
    "N_QD_DEFAULT",
    "PAPER_DIFFUSION_RANGE",
    "QDBatch",
    "ScanParams",
    "TILE",
    "expected_photons",
    "scan_timeline",
    "simulate_qd_batch",
    "simulate_qd_reference",
    "simulate_streams",
    "time_weights",
]

# Photons per dwell at focus, calibrated so that TrackPy's AUC on our D = 0.75 um^2/s test set comes
# closest to the paper's TrackPy row (experiments/qd/calibrate_nqd.py; numbers in experiments/qd/README.md).
N_QD_DEFAULT = 5.0
PAPER_DIFFUSION_RANGE = (0.75, 1.75)  # um^2/s, Sec. 4.1 (training set)
_F32 = np.float32


@dataclass(frozen=True)
class ScanParams:
    """Scan, PSF and photon parameters of the simulator (paper values by default, Sec. 4.1 and 4.6).

    Attributes:
        rows: image height in pixels (lines per frame).
        cols: image width in pixels (pixels per line).
        pixel_size_um: pixel size in um (square pixels).
        dwell_s: pixel dwell time in s; the beam crosses one pixel in this time.
        retrace_s: fly-back time between two lines in s (no photons recorded).
        substeps: time sub-steps per pixel dwell; a pixel's expected photons are the mean of Eq. 1 over them.
        sigma_xy_um: lateral standard deviation of the two-photon PSF in um.
        sigma_z_um: axial standard deviation of the PSF in um.
        n_qd: photons a QD in focus emits towards the objective per pixel dwell (``N_qd`` of Eq. 1).
        n_bkg: expected background photons per pixel (``N_bkg`` of Eq. 1).
        z_start_sigma_um: standard deviation of the starting depth, ``z0 ~ N(0, z_start_sigma_um**2)``
            around the focal plane (the paper images QDs found in focus; 0 starts every walk in focus).
        start_margin_px: the starting xy is uniform over the field shrunk by this many pixels per side.
    """

    rows: int = 24
    cols: int = 25
    pixel_size_um: float = 0.07
    dwell_s: float = 2e-6
    retrace_s: float = 1.1e-3
    substeps: int = 1
    sigma_xy_um: float = 0.21
    sigma_z_um: float = 1.36
    n_qd: float = N_QD_DEFAULT
    n_bkg: float = 8.4
    z_start_sigma_um: float = 0.5
    start_margin_px: float = 4.0

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "substeps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"ScanParams.{name} must be a positive integer, got {value!r}")
        positive = ("pixel_size_um", "dwell_s", "retrace_s", "sigma_xy_um", "sigma_z_um")
        non_negative = ("n_qd", "n_bkg", "z_start_sigma_um", "start_margin_px")
        for name in positive + non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"ScanParams.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or (value <= 0 if name in positive else value < 0):
                need = "> 0" if name in positive else ">= 0"
                raise ValueError(f"ScanParams.{name} must be finite and {need}, got {value!r}")
        if 2 * self.start_margin_px >= min(self.rows, self.cols):
            raise ValueError(
                f"ScanParams.start_margin_px must be < half the smaller image side "
                f"({min(self.rows, self.cols) / 2:g} px), got {self.start_margin_px!r}"
            )
        if self.peak_photons > LAM_MAX:
            raise ValueError(
                f"ScanParams.n_qd={self.n_qd!r} with n_bkg={self.n_bkg!r} gives up to {self.peak_photons:g} "
                f"expected photons per pixel; at most {LAM_MAX:g} are supported"
            )

    @property
    def peak_photons(self) -> float:
        """Expected photons of a pixel whose beam sits on a QD in focus: ``N_qd * psf_peak + N_bkg``."""
        peak = 1.0 / (2 * math.pi * self.sigma_xy_um**2) / math.sqrt(2 * math.pi * self.sigma_z_um**2)
        return self.n_qd * peak + self.n_bkg

    @property
    def n_samples(self) -> int:
        """Number of time samples ``T = rows * cols * substeps``."""
        return self.rows * self.cols * self.substeps

    @property
    def dt_line_s(self) -> float:
        """Duration of one sub-step, ``dwell_s / substeps`` (s)."""
        return self.dwell_s / self.substeps

    @property
    def frame_time_s(self) -> float:
        """Acquisition time of one frame, ``rows * cols * dwell_s + (rows - 1) * retrace_s`` (s)."""
        return self.rows * self.cols * self.dwell_s + (self.rows - 1) * self.retrace_s

    def to_dict(self) -> dict[str, float | int]:
        """The parameters as a plain dict (json-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class QDBatch:
    """A batch of simulated images with their truth.

    Attributes:
        counts: (n, rows, cols) int32 recorded photon counts.
        expected: (n, rows, cols) float32 expected photons (Eq. 1 averaged over each dwell).
        centroids_px: (n, 2) float64 time-weighted trajectory centroid ``(x, y)`` in COCO pixels.
        boxes_px: (n, 4) float64 xyxy box (trajectory extent + 2 sigma_xy, clipped to the image).
        diffusion: (n,) float64 diffusion coefficient D in um^2/s.
        times_s: (T,) float64 sample times in s (only with ``return_trajectories``).
        positions_um: (n, T, 3) float32 particle xyz in um (only with ``return_trajectories``).
        beam_um: (T, 3) float64 beam xyz in um (only with ``return_trajectories``).
        params: the scan parameters that produced the batch.
    """

    counts: np.ndarray
    expected: np.ndarray
    centroids_px: np.ndarray
    boxes_px: np.ndarray
    diffusion: np.ndarray
    times_s: np.ndarray | None = None
    positions_um: np.ndarray | None = None
    beam_um: np.ndarray | None = None
    params: ScanParams | None = None

    def __len__(self) -> int:
        return len(self.counts)


def scan_timeline(params: ScanParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time samples and beam positions of one frame (see the module docstring).

    Args:
        params: scan parameters.

    Returns:
        ``(times_s (T,), step_dt_s (T-1,), beam_um (T, 3))``: sample times from the start of the frame,
        the durations between consecutive samples, and the beam xyz at each sample, all float64.
    """
    r, c, s, dt = params.rows, params.cols, params.substeps, params.dt_line_s
    k = np.arange(c * s)
    line_period = c * params.dwell_s + params.retrace_s
    times = (np.arange(r)[:, None] * line_period + (k[None, :] + 0.5) * dt).reshape(-1)
    beam = np.zeros((r * c * s, 3))
    beam[:, 0] = np.tile((k + 0.5) / s * params.pixel_size_um, r)
    beam[:, 1] = np.repeat((np.arange(r) + 0.5) * params.pixel_size_um, c * s)
    return times, np.diff(times), beam


def time_weights(times_s: np.ndarray, params: ScanParams) -> np.ndarray:
    """Trapezoid weights (s) whose weighted mean is the time average over the whole frame.

    Args:
        times_s: (T,) sample times from :func:`scan_timeline`.
        params: scan parameters (the half sub-step held at each end of the frame).

    Returns:
        (T,) float64 weights summing to ``params.frame_time_s``.
    """
    w = np.zeros(len(times_s))
    steps = np.diff(times_s)
    w[:-1] += steps / 2
    w[1:] += steps / 2
    w[[0, -1]] += params.dt_line_s / 2
    return w


def simulate_qd_batch(
    n: int,
    diffusion: float | ArrayLike | None = None,
    params: ScanParams | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    diffusion_range: tuple[float, float] | None = None,
    return_trajectories: bool = False,
    workers: int | None = None,
) -> QDBatch:
    """Simulate ``n`` images of one diffusing QD each, vectorised over the batch and threaded over tiles.

    Args:
        n: number of images (>= 1).
        diffusion: D in um^2/s, one value or (n,) per image; None draws D uniformly from
            ``diffusion_range``.
        params: scan parameters (default :class:`ScanParams`).
        rng: the random stream: a Generator, or an int seed; None means seed 0 (every call reproducible).
        diffusion_range: ``(lo, hi)`` um^2/s, used only when ``diffusion`` is None.
        return_trajectories: also return ``times_s``, ``positions_um`` and ``beam_um``.
        workers: threads (None: every core torch would use); the result does not depend on it.

    Returns:
        The :class:`QDBatch`.

    Raises:
        ValueError: a bad ``n``, ``diffusion`` or ``diffusion_range``.
    """
    n = _check_n(n)
    params = params if params is not None else ScanParams()
    d = check_diffusion(diffusion, diffusion_range, n)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    return simulate_streams([(gen, n)], d, diffusion_range, params, return_trajectories, workers)


def simulate_streams(
    streams: Sequence[tuple[np.random.Generator, int]],
    diffusion: np.ndarray | None,
    diffusion_range: tuple[float, float] | None,
    params: ScanParams,
    return_trajectories: bool = False,
    workers: int | None = None,
) -> QDBatch:
    """Simulate consecutive groups of images, each group drawn from its own random stream.

    Group ``g`` draws from its own generator, in this order: D (only when drawn from the range), the start
    xy, the seed of a ``torch.Generator`` for its normals, then for each tile of :data:`TILE` images
    (counted from the first image of the call) that holds some of its images, two float64 uniforms per
    pixel of those images. The rest is a deterministic, per-image function of these draws, so a group that
    lies within one tile (a block of the seeded data sets) gives the same images alone or with others.

    Tiles run on ``workers`` threads (:class:`~cytobench.simulate.qd_tiles.Tiles`): each generator is
    drawn in tile order, as one thread would, and the rest runs in parallel, so the result does not depend
    on the number of threads.

    Args:
        streams: ``(generator, number of images)`` per group, in image order.
        diffusion: (n,) D in um^2/s, or None to draw it from ``diffusion_range`` per group.
        diffusion_range: ``(lo, hi)`` used when ``diffusion`` is None.
        params: scan parameters.
        return_trajectories: also return times, positions and beam.
        workers: threads (None: ``torch.get_num_threads()``, the cores torch would use; never more than
            there are tiles).

    Returns:
        The :class:`QDBatch` of all ``n = sum(sizes)`` images.
    """
    n, T, rows, cols = sum(size for _, size in streams), params.n_samples, params.rows, params.cols
    times, step_dt, beam = scan_timeline(params)
    d, start_xy = np.empty(n), np.empty((n, 2))
    extent = np.array([cols, rows], dtype=float) - 2 * params.start_margin_px
    groups, a = [], 0
    for gen, size in streams:
        b = a + size
        d[a:b] = gen.uniform(*diffusion_range, size) if diffusion is None else diffusion[a:b]  # type: ignore[misc]
        start_xy[a:b] = (params.start_margin_px + extent * gen.random((size, 2))) * params.pixel_size_um
        groups.append((gen, torch.Generator().manual_seed(int(gen.integers(0, 2**63))), a, b))
        a = b
    batch = QDBatch(
        counts=np.empty((n, rows, cols), dtype=np.int32),
        expected=np.empty((n, rows, cols), dtype=_F32),
        centroids_px=np.empty((n, 2)),
        boxes_px=np.empty((n, 4)),
        diffusion=d,
        params=params,
    )
    if return_trajectories:
        batch.times_s, batch.beam_um = times, beam
        batch.positions_um = np.empty((n, T, 3), dtype=_F32)
    w = time_weights(times, params)
    Tiles(batch, groups, start_xy, step_dt, beam, (w / w.sum()).astype(_F32)).run(workers)
    batch.centroids_px /= params.pixel_size_um
    margin = 2.0 * params.sigma_xy_um
    boxes = batch.boxes_px
    boxes[:, :2] -= margin
    boxes[:, 2:] += margin
    boxes /= params.pixel_size_um
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, cols)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, rows)
    return batch


def expected_photons(positions_um: np.ndarray, params: ScanParams | None = None) -> np.ndarray:
    """Expected photons per pixel (Eq. 1 averaged over each dwell) for given trajectories.

    Args:
        positions_um: (T, 3) or (n, T, 3) particle xyz in um at the samples of :func:`scan_timeline`.
        params: scan parameters.

    Returns:
        (rows, cols) or (n, rows, cols) float32 expected photons.
    """
    params = params if params is not None else ScanParams()
    pos = np.asarray(positions_um, dtype=_F32)
    if pos.shape[-2:] != (params.n_samples, 3):
        raise ValueError(f"positions_um must be (..., {params.n_samples}, 3), got {pos.shape}")
    single = pos.ndim == 2
    pos = np.ascontiguousarray(pos.reshape(-1, params.n_samples, 3).transpose(0, 2, 1))
    out = signal_term(pos, scan_timeline(params)[2][:, :2].T, params) + _F32(params.n_bkg)
    return out[0] if single else out


def simulate_qd_reference(positions_um: np.ndarray, params: ScanParams | None = None) -> np.ndarray:
    """Straightforward per-pixel, per-sub-step Python loop of Eq. 1 (the reference of tests and bench).

    Args:
        positions_um: (T, 3) particle xyz in um at the sub-step midpoints, pixel by pixel, line by line.
        params: scan parameters.

    Returns:
        (rows, cols) float64 expected photons.
    """
    p = params if params is not None else ScanParams()
    traj = np.asarray(positions_um, dtype=float).tolist()
    amp = p.n_qd / (2 * math.pi * p.sigma_xy_um**2) / math.sqrt(2 * math.pi * p.sigma_z_um**2)
    out = np.zeros((p.rows, p.cols))
    for i in range(p.rows):
        beam_y = (i + 0.5) * p.pixel_size_um
        for j in range(p.cols):
            total = 0.0
            for s in range(p.substeps):
                beam_x = (j + (s + 0.5) / p.substeps) * p.pixel_size_um
                x, y, z = traj[(i * p.cols + j) * p.substeps + s]
                r2 = (x - beam_x) ** 2 + (y - beam_y) ** 2
                total += (
                    amp * math.exp(-r2 / (2 * p.sigma_xy_um**2)) * math.exp(-(z**2) / (2 * p.sigma_z_um**2))
                )
            out[i, j] = total / p.substeps + p.n_bkg
    return out


def check_diffusion(
    diffusion: float | ArrayLike | None, diffusion_range: tuple[float, float] | None, n: int
) -> np.ndarray | None:
    """Validate D (um^2/s): one value or (n,) per image, or None with a valid ``(lo, hi)`` range.

    Returns:
        (n,) float64 D, or None when D is to be drawn from ``diffusion_range``.

    Raises:
        ValueError: negative / non-finite D, wrong length, both or neither of the two given, bad range.
    """
    if diffusion is None:
        if diffusion_range is None:
            raise ValueError("give diffusion (um^2/s) or diffusion_range=(lo, hi)")
        try:
            lo, hi = (float(v) for v in diffusion_range)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
            raise ValueError(
                f"diffusion_range must be (lo, hi) with 0 <= lo <= hi um^2/s, got {diffusion_range!r}"
            )
        return None
    if diffusion_range is not None:
        raise ValueError("give either diffusion or diffusion_range, not both")
    d = np.asarray(diffusion, dtype=float)
    if d.ndim == 0:
        d = np.full(n, float(d))
    if d.shape != (n,):
        raise ValueError(f"diffusion must be one value or {n} values (one per image), got shape {d.shape}")
    bad = ~np.isfinite(d) | (d < 0)
    if bad.any():
        raise ValueError(f"diffusion must be finite and >= 0 um^2/s, got {float(d[bad][0])!r}")
    return d


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)
