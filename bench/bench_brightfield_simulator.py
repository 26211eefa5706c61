"""Benchmark: throughput of the brightfield / phase-contrast simulator at the thesis size and a crop size.

Named baseline, run in the same process: the same simulator with every per-cell step done on the whole
frame instead of the cell's bounding-box crop (each cell's distance transforms, texture and phase, the
truth's visible masks and borders on full (H, W) arrays), the first version one would write. The
simulator (:func:`cytobench.simulate.brightfield.render_brightfield_sample`) keeps per-cell work on crops.
Rows, per image size (W = H):

* ``full-frame per-cell work (baseline)`` / ``crops (simulator)``: one sample in memory (layout, cell
  phases, debris, brightfield planes, phase contrast, illumination, shot noise, truth); samples per second;
* ``dataset on disk``: :func:`simulate_brightfield` end to end (5 PNGs per sample + COCO json with RLE
  visible, amodal and nucleus masks).

Timings are the median of ``--repeats`` runs after one warm-up (the baseline: one run, no warm-up). Also printed: the
realised overlapping-cell fraction (requested 0.3) and the cells per image. The summary rows
(bench/summary.py) give the in-memory rate per CPU-second (the rate of one busy core, which other
processes sharing the cores do not lower) against the baseline at each size.

Usage: ``python bench/bench_brightfield_simulator.py [--repeats 3] [--disk-n 4]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from throughput import per_second

from cytobench.reporting.tables import format_table
from cytobench.simulate.brightfield import (
    BrightfieldParams,
    BrightfieldSample,
    render_brightfield_sample,
    render_layout,
    simulate_brightfield,
)
from cytobench.simulate.brightfield_layout import place_cells
from cytobench.simulate.brightfield_shapes import CellRaster

SIZES = (1080, 512)
GOAL_1080 = 1.0  # samples per CPU-second in memory at 1080 x 1080 (one core; robust to shared cores)


def full_frame(cell: CellRaster, width: int, height: int) -> CellRaster:
    """The same cell with its crop grown to the whole image (what the baseline works on)."""
    big, nucleus = np.zeros((height, width), bool), np.zeros((height, width), bool)
    big[cell.window], nucleus[cell.window] = cell.cell, cell.nucleus
    return replace(cell, x0=0, y0=0, cell=big, nucleus=nucleus)


def baseline_sample(seed: int, size: int) -> BrightfieldSample:
    """One sample with every per-cell step on the full frame (same layout and draws as the simulator's)."""
    rng, params = np.random.default_rng([seed, 0]), BrightfieldParams()
    layout = place_cells(rng, size, size, 0.3, params)
    layout = replace(layout, cells=[full_frame(c, size, size) for c in layout.cells])
    return render_layout(rng, layout, size, size, params)


def once_per_second(fn: Callable[[], object]) -> tuple[float, float]:
    """``(calls per wall-clock second, calls per CPU second)`` of one call, no warm-up (the slow baseline)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return 1.0 / (time.perf_counter() - start), 1.0 / (time.process_time() - start_cpu)


def bench_size(size: int, args: argparse.Namespace) -> tuple[list[tuple], list[str], tuple[float, float]]:
    """Table rows, notes and (ours, baseline) in-memory rates of one size."""
    n = 2 if size >= 1000 else 4
    counter = iter(range(10**6))
    ours = per_second(
        lambda: [
            render_brightfield_sample(np.random.default_rng([next(counter), i]), size, size) for i in range(n)
        ],
        n,
        args.repeats,
    )
    base = once_per_second(lambda: baseline_sample(next(counter), size))
    rows = [("full-frame per-cell work (baseline)", base), ("crops (simulator)", ours)]
    if args.disk_n > 0:
        with tempfile.TemporaryDirectory() as tmp:
            disk = per_second(
                lambda: simulate_brightfield(args.disk_n, Path(tmp) / str(next(counter)), size=size),
                args.disk_n,
                1,
            )
        rows.append(("dataset on disk (5 PNG + COCO json, RLE)", disk))
    samples = [
        render_brightfield_sample(np.random.default_rng([99, i]), size, size) for i in range(args.fraction_n)
    ]
    fractions = [s.layout.overlap_fraction for s in samples]
    notes = [
        f"{size}x{size}: overlapping cells {np.mean(fractions):.3f} (requested 0.3, {len(samples)} images), "
        f"{np.mean([len(s.layout.cells) for s in samples]):.1f} cells per image"
    ]
    label = f"{size}x{size}"
    table = [(label, name, wall, cpu, f"{wall / base[0]:.1f}x") for name, (wall, cpu) in rows]
    return table, notes, (ours[1], base[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--disk-n", type=int, default=2, help="samples written by the on-disk row (0: skip)")
    parser.add_argument("--fraction-n", type=int, default=8, help="samples for the realised overlap fraction")
    args = parser.parse_args()
    table, notes, rates = [], [], {}
    for size in SIZES:
        rows, lines, rates[size] = bench_size(size, args)
        table += rows
        notes += lines
    print(
        format_table(["size", "implementation", "samples/s", "samples/CPU-s", "vs baseline"], table, digits=3)
    )
    print("\n".join(notes))
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(HEADER)
    for size in SIZES:
        ours, base = rates[size]
        goal = f">= {GOAL_1080:g} sample/CPU-s" if size >= 1000 else "faster than the baseline"
        held = ours >= GOAL_1080 if size >= 1000 else ours > base
        row(
            f"brightfield simulator {size}x{size}, samples/CPU-s in memory (baseline: full-frame per-cell work)",
            round(ours, 2),
            round(base, 2),
            ours / base,
            goal,
            held,
        )


if __name__ == "__main__":
    main()
