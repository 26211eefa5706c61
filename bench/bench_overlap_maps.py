"""Benchmark: the SEU-Net overlap attention map v4 (thesis Sec. 4.3) on a 512 x 512 crop with 50 cells.

The v4 map needs, per cell, the Euclidean distance transform from its border (Eq. 4.3). Rows, all through
:func:`cytobench.data.overlap_maps.border_proximity_map` on the same cells (random ellipses, equivalent radii
~10-30 px, many touching or overlapping, some cut by the crop edge):

* ``full`` (the named baseline): the plain per-cell loop, one full-image EDT per cell;
* ``crops`` (the default): one EDT per cell on its box grown by the reach, folded into the image;
* ``stacked``: the same crops in one EDT call.

``same as loop``: the map equals the baseline's bit for bit. Also timed, for scale: every variant v0-v4 at
its defaults. Times are milliseconds per map, the median of ``--repeats`` calls after one warm-up, wall
clock and CPU time of this process (other processes sharing the cores do not inflate the latter). Goal:
the default path >= 10x faster than the per-cell full-image loop; one summary row (bench/summary.py).

Usage: ``python bench/bench_overlap_maps.py [--cells 50] [--size 512] [--repeats 5] [--seed 0]``
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from throughput import per_second

from cytobench.data.overlap_maps import VARIANTS, attention_map, border_proximity_map, default_reach
from cytobench.reporting.tables import format_table

GOAL = 10.0  # times faster than the per-cell full-image loop


def make_cells(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, size, size)`` bool: ellipses at random centres and orientations, radii 10-30 px."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0, size, (2, n)).astype(np.float32)[:, :, None, None]
    ry, rx = rng.uniform(10, 30, (2, n)).astype(np.float32)[:, :, None, None]
    angle = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    dy, dx = rows - cy, cols - cx
    u = dy * np.cos(angle) + dx * np.sin(angle)
    v = -dy * np.sin(angle) + dx * np.cos(angle)
    return (u / ry) ** 2 + (v / rx) ** 2 <= 1.0


def milliseconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) milliseconds per call."""
    wall_rate, cpu_rate = per_second(fn, 1, repeats)
    return 1000.0 / wall_rate, 1000.0 / cpu_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cells = make_cells(args.cells, args.size, np.random.default_rng(args.seed))
    touching = int((cells.sum(axis=0) >= 2).sum())
    print(
        f"{args.cells} cells in {args.size} x {args.size}, reach (median equivalent radius) "
        f"{default_reach(cells):.1f} px, {touching} px covered by two or more cells"
    )

    baseline_map = border_proximity_map(cells, method="full")
    timings: dict[str, tuple[float, float]] = {}
    rows = []
    for method in ("full", "crops", "stacked"):
        timings[method] = milliseconds(lambda m=method: border_proximity_map(cells, method=m), args.repeats)
        same = np.array_equal(border_proximity_map(cells, method=method), baseline_map)
        wall, cpu = timings[method]
        rows.append(
            (f"v4, {method}", round(wall, 1), round(cpu, 1), f"{timings['full'][1] / cpu:.1f}x", same)
        )
    print(
        format_table(["map, method", "ms/map", "CPU ms/map", "vs loop (CPU)", "same as loop"], rows, digits=1)
    )

    variant_rows = []
    for variant in VARIANTS:
        wall, cpu = milliseconds(lambda v=variant: attention_map(cells, variant=v), args.repeats)
        variant_rows.append((variant, round(wall, 1), round(cpu, 1)))
    print(format_table(["variant (defaults)", "ms/map", "CPU ms/map"], variant_rows, digits=1))
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    ratio = timings["full"][1] / timings["crops"][1]
    same = np.array_equal(border_proximity_map(cells), baseline_map)
    print(HEADER)
    row(
        f"overlap attention v4, {args.size}^2 with {args.cells} cells (CPU ms; baseline: per-cell full-image EDT loop)",
        round(timings["crops"][1], 1),
        round(timings["full"][1], 1),
        ratio,
        f">= {GOAL:.0f}x the loop, same map",
        ratio >= GOAL and same,
    )


if __name__ == "__main__":
    main()
