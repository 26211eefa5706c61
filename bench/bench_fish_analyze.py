"""Benchmark: ``fish analyze`` throughput on CPU for 512 x 512 images, split into I/O, segmentation, spots.

Rows (all through :func:`cytobench.fish.analyze.analyze_images`, the code behind the CLI, on the same simulated
images, overlays on):

* ``truth nuclei (baseline)``: ground-truth masks looked up from the COCO file, so segmentation costs nearly
  nothing; the named baseline is the pipeline without a segmenter (read + spot detection + output);
* ``otsu``: the classical segmenter (``--segmenter otsu``);
* ``yolo``: YOLOv8-seg from ``--checkpoint`` (e.g. ``runs/fish_cpu/<date>/checkpoints/best.pt``), when given.

Columns: images per wall-clock second of the whole pipeline, seconds per image of each stage (I/O = reading
and channel split, segmentation, spots = red + green detection and counting, output = overlays, table and
report), and the throughput ratio against the baseline. Timings are the median of ``--repeats`` runs after one
warm-up.

``--coverage-samples S`` also simulates S samples with known karyotype mixes and reports how often the 95%
intervals of the plain and the confusion-corrected mosaicism estimates (otsu nuclei, confusion measured on
a separate balanced simulated set of ``--calibration-images`` images with the same segmenter) contain the
true mix (12 images per sample, trisomy-21 share drawn from 2-20 %, X-monosomy from 2-15 %).

Summary rows (``make bench``): images/s of each segmenter's pipeline against the baseline's, and the
intervals' coverage when measured. No throughput goal is stated for ``fish analyze`` (the measured numbers
are in ``experiments/fish/README.md``), so the goal column says ``report`` and a row holds when it ran.

Usage: ``python bench/bench_fish_analyze.py [--images 16] [--repeats 3] [--checkpoint CKPT] [--coverage-samples 12]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.fish.analyze import STAGES, analyze_images
from cytobench.fish.calibrate import TruthSegmenter, calibrate_confusion
from cytobench.fish.otsu import OtsuSegmenter
from cytobench.reporting.tables import format_table
from cytobench.simulate.fish import simulate_fish


def time_pipeline(
    segmenter: object, paths: list[Path], out: Path, repeats: int
) -> tuple[float, dict[str, float]]:
    """Median images/s and median seconds per image per stage over ``repeats`` runs (after a warm-up)."""
    analyze_images(paths[:2], out / "warmup", segmenter, n_boot=100)
    rates, stages = [], {s: [] for s in STAGES}
    for r in range(repeats):
        timing = analyze_images(paths, out / f"run{r}", segmenter, n_boot=100).report["timing"]
        rates.append(timing["images_per_s"])
        for s in STAGES:
            stages[s].append(timing["stages_s"][s] / len(paths))
    return statistics.median(rates), {s: statistics.median(v) for s, v in stages.items()}


def coverage(n_samples: int, work: Path, seed: int, n_calibration: int) -> list[tuple]:
    """Coverage of the plain and corrected 95% intervals over simulated samples with random mixes."""
    rng = np.random.default_rng(seed)
    seg = OtsuSegmenter()
    confusion = calibrate_confusion(work / "calibration", n_calibration, seed=seed + 1000, segmenter=seg)
    hits = {"plain": [], "corrected": []}
    widths = {"plain": [], "corrected": []}
    n_whole = []
    for s in range(n_samples):
        tri, mono = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.15)
        mix = {"normal": 1.0 - tri - mono, "trisomy21": tri, "monosomyX": mono}
        ann = simulate_fish(12, work / f"sample{s}", size=512, seed=seed + s, karyotype_mix=mix)
        paths = sorted((ann.parent / "images").glob("*.png"))
        entry = analyze_images(paths, work / f"out{s}", seg, overlays=False, confusion=confusion).report
        entry = next(iter(entry["samples"].values()))
        n_whole.append(entry["n_whole"])
        for kind in hits:
            for lv in entry["mosaicism"][kind]["levels"]:
                hits[kind].append(lv["lower"] <= mix[lv["karyotype"]] <= lv["upper"])
                widths[kind].append(lv["upper"] - lv["lower"])
    rows = [
        (
            kind,
            len(hits[kind]),
            float(np.mean(hits[kind])),
            float(np.mean(widths[kind])),
            float(np.mean(n_whole)),
        )
        for kind in hits
    ]
    print(
        f"confusion matrix: {int(confusion.counts.sum())} matched calibration nuclei, rows {confusion.karyotypes}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="YOLOv8-seg checkpoint for a yolo row")
    parser.add_argument(
        "--coverage-samples", type=int, default=0, help="simulated samples for interval coverage"
    )
    parser.add_argument(
        "--calibration-images", type=int, default=100, help="balanced images for the confusion"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ann = simulate_fish(args.images, work / "sim", size=512, seed=args.seed)
        paths = sorted((ann.parent / "images").glob("*.png"))
        segmenters: list[tuple[str, object]] = [
            ("truth nuclei (baseline)", TruthSegmenter(ann)),
            ("otsu", OtsuSegmenter()),
        ]
        if args.checkpoint:
            from cytobench.fish.segmenters import YoloSegmenterAdapter

            segmenters.append(("yolo", YoloSegmenterAdapter(args.checkpoint)))
        rows, base, rates = [], None, {}
        for name, seg in segmenters:
            rate, per_stage = time_pipeline(seg, paths, work / name.split()[0], args.repeats)
            base = base or rate
            rates[name] = rate
            rows.append((name, rate, *(1000.0 * per_stage[s] for s in STAGES), f"{rate / base:.2f}x"))
        header = ["pipeline", "images/s", *(f"{s} ms/img" for s in STAGES), "vs baseline"]
        print(f"fish analyze on {len(paths)} simulated 512 x 512 images (CPU, {os.cpu_count()} cores)")
        print(format_table(header, rows, digits=2))
        table = []
        if args.coverage_samples > 0:
            table = coverage(
                args.coverage_samples, work / "coverage", args.seed + 100, args.calibration_images
            )
            print(
                format_table(
                    ["estimate", "intervals", "coverage", "mean width", "whole nuclei/sample"], table, 3
                )
            )
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(HEADER)
    for name, rate in list(rates.items())[1:]:
        row(
            f"fish analyze {name}, {len(paths)} images 512 px, images/s (baseline: truth nuclei)",
            round(rate, 2),
            round(base, 2),
            rate / base,
            "report",
            True,
        )
    if table:
        cover = {kind: (n, cov) for kind, n, cov, *_ in table}
        row(
            f"fish mosaicism 95% intervals, coverage of {cover['corrected'][0]} (baseline: plain Wilson)",
            round(cover["corrected"][1], 3),
            round(cover["plain"][1], 3),
            cover["corrected"][1] / cover["plain"][1],
            "report",
            True,
        )


if __name__ == "__main__":
    main()
