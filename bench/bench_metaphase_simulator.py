"""Benchmark: throughput of the G-banded metaphase simulator at the paper size and at a CPU size.

Named baseline, run in the same process: a brute-force body renderer that measures, for every pixel of a
body's crop, the distance to every segment of its centreline (NumPy broadcasting over 2-px segments), the
first vectorised approach one would write. The simulator's renderer
(:func:`cytobench.simulate.chromosomes.render_body`) instead finds each pixel's nearest centreline sample
with one OpenCV distance transform with pixel labels, then projects onto that sample's tangent. Rows, per
image size:

* ``bodies, brute force (baseline)`` / ``bodies, distance transform``: drawing the same laid-out 46 bodies
  (same model: waist, bands, chromatids); spreads per second;
* ``spread in memory``: :func:`render_metaphase` (karyotype, layout with overlap control, bodies,
  fragments, debris, image formation);
* ``dataset on disk``: :func:`simulate_metaphase` end to end (PNG + COCO json with RLE masks).

The ratio column compares only the two body rows (the same work); the other rows do more than draw bodies.
Also printed: the mask IoU between the two renderers and the mean S_o fraction (DeepACEv2 Eq. 14, tau 0.5)
of the in-memory spreads. Timings are the median of ``--repeats`` runs after one warm-up.

Summary rows (``make bench``), per size: the distance-transform renderer's spreads per CPU-second against
the brute-force baseline's; it holds when it is faster and draws the same bodies (mean mask IoU >= 0.99).

Usage: ``python bench/bench_metaphase_simulator.py [--repeats 3] [--spreads 4] [--disk-n 8]``
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from throughput import per_second

from cytobench.reporting.tables import format_table
from cytobench.simulate.chromosomes import CENTROMERE_DEPTH, CLASSES, RenderedBody, band_profile, render_body
from cytobench.simulate.metaphase import SpreadPlan, plan_spread, render_metaphase, simulate_metaphase
from cytobench.simulate.metaphase_layout import pose_points

SIZES = ((1600, 1200), (512, 384))
MIN_IOU = 0.99  # mean mask IoU of the two renderers, at least


def render_body_bruteforce(
    points: np.ndarray, half_width: float, profile: np.ndarray, image_size: tuple[int, int], centromere: float
) -> RenderedBody:
    """The baseline: exact point-to-polyline distance for every crop pixel and every 2-px segment."""
    width, height = image_size
    nodes = points[::4] if (len(points) - 1) % 4 == 0 else np.vstack([points[::4], points[-1:]])
    a, ab = nodes[:-1], np.diff(nodes, axis=0)
    seg_len = np.hypot(ab[:, 0], ab[:, 1])
    s_nodes = np.concatenate([[0.0], np.cumsum(seg_len)])
    length = s_nodes[-1]
    reach = half_width + 2.0
    x0, y0 = (max(math.floor(v - reach), 0) for v in points.min(axis=0))
    x1 = min(math.ceil(points[:, 0].max() + reach), width)
    y1 = min(math.ceil(points[:, 1].max() + reach), height)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    rel = pix[:, None, :] - a[None, :, :]  # (N, S, 2)
    t = np.clip((rel * ab[None]).sum(-1) / np.maximum(seg_len**2, 1e-12)[None], 0.0, 1.0)
    d2 = ((rel - t[..., None] * ab[None]) ** 2).sum(-1)
    k = d2.argmin(axis=1)
    rows = np.arange(len(pix))
    d = np.sqrt(d2[rows, k])
    s = np.clip(s_nodes[k] + t[rows, k] * seg_len[k], 0.0, length)
    local_w = half_width * (1.0 - CENTROMERE_DEPTH * np.exp(-(((s - centromere) / (0.9 * half_width)) ** 2)))
    inside = d <= local_w
    band = profile[np.clip(np.rint(s / length * (len(profile) - 1)).astype(np.int64), 0, len(profile) - 1)]
    od = np.where(inside, band * (1.0 - np.minimum((d / local_w) ** 2, 1.0) + 1e-6) ** 0.3, 0.0)
    shape = (y1 - y0, x1 - x0)
    return RenderedBody(x0, y0, od.reshape(shape).astype(np.float32), inside.reshape(shape))


def draw_bodies(plan: SpreadPlan, size: tuple[int, int], brute: bool) -> list[RenderedBody]:
    """Draw every chromosome of ``plan`` with one of the two renderers."""
    out = []
    for index, body, pose in zip(plan.classes, plan.bodies, plan.poses):
        points = pose_points(body.local, pose)
        centromere = CLASSES[index - 1].centromere_index * body.length
        profile = band_profile(index)
        if brute:
            out.append(render_body_bruteforce(points, body.half_width, profile, size, centromere))
        else:
            drawn = render_body(points, body.half_width, profile, size, centromere=centromere)
            assert drawn is not None
            out.append(drawn)
    return out


def mask_iou(a: RenderedBody, b: RenderedBody, size: tuple[int, int]) -> float:
    """IoU of two crop masks placed in an image of ``size`` (W, H)."""
    canvas = np.zeros((size[1], size[0], 2), dtype=bool)
    for k, body in enumerate((a, b)):
        h, w = body.mask.shape
        canvas[body.y0 : body.y0 + h, body.x0 : body.x0 + w, k] = body.mask
    return float((canvas[..., 0] & canvas[..., 1]).sum() / max((canvas[..., 0] | canvas[..., 1]).sum(), 1))


def bench_size(
    size: tuple[int, int], args: argparse.Namespace
) -> tuple[list[tuple], list[str], tuple[float, float, float]]:
    """Table rows, notes and (ours, baseline spreads/CPU-s, mean mask IoU) of one image size (W, H)."""
    scale = 0.13 * min(size)
    plans = [plan_spread(np.random.default_rng([0, i]), size, 46, 0.10, scale) for i in range(args.spreads)]
    n = len(plans)
    brute = per_second(lambda: [draw_bodies(p, size, True) for p in plans], n, 1)
    fast = per_second(lambda: [draw_bodies(p, size, False) for p in plans], n, args.repeats)
    ious = [
        mask_iou(a, b, size)
        for p in plans[:2]
        for a, b in zip(draw_bodies(p, size, True), draw_bodies(p, size, False))
    ]
    mem = per_second(
        lambda: [render_metaphase(np.random.default_rng([1, i]), size, 46) for i in range(n)], n, args.repeats
    )
    rows = [("bodies, brute force (baseline)", brute), ("bodies, distance transform", fast)]
    rows.append(("spread in memory (render_metaphase)", mem))
    if args.disk_n > 0:
        with tempfile.TemporaryDirectory() as tmp:
            counter = iter(range(10**6))
            disk = per_second(
                lambda: simulate_metaphase(args.disk_n, Path(tmp) / str(next(counter)), size=size),
                args.disk_n,
                1,
            )
        rows.append(("dataset on disk (PNG + COCO json)", disk))
    label = f"{size[0]}x{size[1]}"
    ratio = [f"{wall / brute[0]:.1f}x" if name.startswith("bodies") else "-" for name, (wall, _c) in rows]
    table = [(label, name, wall, cpu, r) for (name, (wall, cpu)), r in zip(rows, ratio)]
    notes = [f"{label}: renderer mask IoU vs baseline: mean {np.mean(ious):.3f}, min {np.min(ious):.3f}"]
    if args.so_n > 0:
        fractions = [
            render_metaphase(np.random.default_rng([2, i]), size, 46).overlap_fraction
            for i in range(args.so_n)
        ]
        notes.append(
            f"{label}: mean S_o fraction over {args.so_n} spreads: {np.mean(fractions):.4f} "
            f"(sd {np.std(fractions):.4f}; target 0.10; paper Table 4: 8.8-9.8 %)"
        )
    return table, notes, (fast[1], brute[1], float(np.mean(ious)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spreads", type=int, default=4, help="laid-out spreads per renderer row")
    parser.add_argument("--disk-n", type=int, default=8, help="images written by the on-disk row (0: skip)")
    parser.add_argument("--so-n", type=int, default=100, help="spreads for the mean S_o fraction (0: skip)")
    args = parser.parse_args()
    table, notes, summary = [], [], {}
    for size in SIZES:
        rows, lines, summary[size] = bench_size(size, args)
        table += rows
        notes += lines
    print(
        format_table(["size", "implementation", "images/s", "images/CPU-s", "vs baseline"], table, digits=3)
    )
    print("\n".join(notes))
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(HEADER)
    for (width, height), (ours, base, iou) in summary.items():
        row(
            f"metaphase bodies {width}x{height}, spreads/CPU-s, mask IoU {iou:.3f} (baseline: brute force)",
            round(ours, 2),
            round(base, 2),
            ours / base,
            f"faster, mean mask IoU >= {MIN_IOU:g}",
            ours > base and iou >= MIN_IOU,
        )


if __name__ == "__main__":
    main()
