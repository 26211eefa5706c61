"""Benchmark: throughput of the two-photon QD simulator (24 x 25 images, substeps = 1, paper parameters).

Compared in the same run against a named baseline, a straightforward per-image Python loop (random walk
step by step, Eq. 1 pixel by pixel with :func:`~cytobench.simulate.qd.simulate_qd_reference`, one
``Generator.poisson`` per pixel). Rows:

* ``simulate_qd_batch, N threads``: the simulator on chunks of 4096 images, on every core torch uses
  (the claim), then on one thread (the rate per core).
* ``vectorised, numpy ziggurat + Generator.poisson``: the same maths with numpy's own samplers on one
  thread (the alternative route measured to choose the samplers).
* ``per-block streams (dataset route, no I/O)``: :func:`simulate_qd_range`, 32-image seeded blocks.
* ``dataset on disk (PNG + json + npz)``: :func:`simulate_qd_dataset` end to end.

``images/s`` is wall-clock throughput (median of ``--repeats`` calls); ``images/CPU-s`` divides by the
CPU time of this process (all its threads), i.e. the rate per busy core, which other processes sharing the
cores do not lower. Goal: >= 50,000 images/s in total for the simulator. The summary row (bench/summary.py)
gives it against the reference loop.

``--busy N`` keeps N other processes spinning on the CPU for the whole run (the goal is to hold with other
work on the machine): five runs with one busy process,
``for i in 1 2 3 4 5; do python bench/bench_qd_simulator.py --dataset-n 0 --busy 1; done``.

Usage: ``python bench/bench_qd_simulator.py [--chunk 4096] [--repeats 7] [--dataset-n 8192] [--threads N]
[--busy N]``
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from throughput import per_second

from cytobench.reporting.tables import format_table
from cytobench.simulate.qd import ScanParams, scan_timeline, simulate_qd_batch, simulate_qd_reference
from cytobench.simulate.qd_dataset import simulate_qd_dataset, simulate_qd_range
from cytobench.simulate.qd_tiles import signal_term

GOAL = 50_000  # images/s in total


def reference_loop(n: int, diffusion: float, params: ScanParams, rng: np.random.Generator) -> np.ndarray:
    """The baseline: per image, a step-by-step walk, a per-pixel Eq. 1 loop and per-pixel Poisson draws."""
    _, step_dt, _ = scan_timeline(params)
    counts = np.empty((n, params.rows, params.cols), dtype=np.int64)
    margin, px = params.start_margin_px, params.pixel_size_um
    for k in range(n):
        x = rng.uniform(margin, params.cols - margin) * px
        y = rng.uniform(margin, params.rows - margin) * px
        z = rng.normal(0.0, params.z_start_sigma_um)
        traj = [(x, y, z)]
        for dt in step_dt.tolist():
            s = math.sqrt(2.0 * diffusion * dt)
            x, y, z = x + rng.normal(0.0, s), y + rng.normal(0.0, s), z + rng.normal(0.0, s)
            traj.append((x, y, z))
        expected = simulate_qd_reference(np.array(traj), params)
        for i in range(params.rows):
            for j in range(params.cols):
                counts[k, i, j] = rng.poisson(expected[i, j])
    return counts


def numpy_route(n: int, diffusion: float, params: ScanParams, rng: np.random.Generator) -> np.ndarray:
    """The vectorised maths with numpy's samplers: float32 ziggurat normals and ``Generator.poisson``."""
    _, step_dt, beam = scan_timeline(params)
    pos = rng.standard_normal((n, 3, params.n_samples), dtype=np.float32)
    sigma = np.empty(params.n_samples, dtype=np.float32)
    sigma[1:] = np.sqrt(2.0 * diffusion * step_dt)
    sigma[0] = params.z_start_sigma_um
    pos *= sigma
    extent = np.array([params.cols, params.rows]) - 2 * params.start_margin_px
    start = (params.start_margin_px + extent * rng.random((n, 2))) * params.pixel_size_um
    pos[:, 0, 0], pos[:, 1, 0] = start[:, 0], start[:, 1]
    np.cumsum(pos, axis=2, out=pos)
    expected = signal_term(pos, beam[:, :2].T, params) + np.float32(params.n_bkg)
    return rng.poisson(expected)


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """``n`` Python processes spinning on the CPU while the block runs (other work on the machine)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=4096, help="images per simulator call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-n", type=int, default=20, help="images for the Python loop baseline")
    parser.add_argument("--threads", type=int, default=None, help="simulator threads (default: torch's)")
    parser.add_argument(
        "--dataset-n", type=int, default=8192, help="images written by the on-disk row (0: skip)"
    )
    parser.add_argument("--busy", type=int, default=0, help="other processes kept busy during the run")
    args = parser.parse_args()
    if args.busy:
        print(f"other work: {args.busy} busy process(es) for the whole run")
    with busy_processes(args.busy):
        run(args)


def run(args: argparse.Namespace) -> None:
    params, diffusion = ScanParams(), 1.25
    threads = args.threads or torch.get_num_threads()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; numpy {np.__version__}")
    print(f"images {params.rows} x {params.cols}, substeps {params.substeps}, T = {params.n_samples} samples")

    def simulator(workers: int) -> tuple[float, float]:
        call = lambda: simulate_qd_batch(args.chunk, diffusion, params, rng, workers=workers)  # noqa: E731
        return per_second(call, args.chunk, args.repeats)

    rows: list[tuple[str, tuple[float, float]]] = []
    ref = per_second(lambda: reference_loop(args.reference_n, diffusion, params, rng), args.reference_n, 1)
    rows.append(("reference: per-pixel Python loop (baseline)", ref))
    ours = simulator(threads)
    rows.append((f"simulate_qd_batch, {threads} threads", ours))
    if threads > 1:
        rows.append(("simulate_qd_batch, 1 thread (per core)", simulator(1)))
    rows.append(
        (
            "vectorised, numpy ziggurat + Generator.poisson",
            per_second(lambda: numpy_route(args.chunk, diffusion, params, rng), args.chunk, args.repeats),
        )
    )
    rows.append(
        (
            f"per-block streams (dataset route, no I/O), {threads} threads",
            per_second(
                lambda: simulate_qd_range(0, 0, args.chunk, None, (0.75, 1.75), params),
                args.chunk,
                args.repeats,
            ),
        )
    )
    if args.dataset_n > 0:
        with tempfile.TemporaryDirectory() as tmp:
            counter = iter(range(10**6))
            rate = per_second(
                lambda: simulate_qd_dataset(Path(tmp) / str(next(counter)), args.dataset_n, seed=0),
                args.dataset_n,
                1,
            )
        rows.append(("dataset on disk (PNG + json + npz)", rate))
    table = [(name, round(wall), round(cpu), f"{wall / ref[0]:.0f}x") for name, (wall, cpu) in rows]
    print(format_table(["implementation", "images/s", "images/CPU-s", "vs reference"], table))
    print(
        f"simulator: {ours[0]:,.0f} images/s in total on {threads} threads = {ours[0] / threads:,.0f} per thread "
        f"({ours[1]:,.0f} per CPU-second)"
    )
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(HEADER)
    row(
        f"QD simulator, images/s ({threads} threads; baseline: per-pixel loop)",
        float(round(ours[0])),
        float(round(ref[0])),
        ours[0] / ref[0],
        f">= {GOAL:,} images/s",
        ours[0] >= GOAL,
    )


if __name__ == "__main__":
    main()
