"""``cytobench fish analyze``: segment nuclei, count red / green FISH signals per whole nucleus, report mosaicism.

Pipeline per image (paper Secs. 3.2-3.3, then the mosaicism estimate the paper leaves to future work):

1. **read** any supported file (:func:`cytobench.fish.channels.read_fish_image`: PNG / JPEG / BMP / TIFF
   8-16 bit / CZI, any size) into full-resolution DAPI, red and green planes (DAPI alone for a nuclei-only
   image), with intensities scaled by a robust range and the pixel size from the file or ``pixel_size_um``;
2. **segment** nuclei into whole / destroyed with a :class:`~cytobench.fish.segmenters.Segmenter` (YOLOv8-seg,
   tiled for large images, or the Otsu fallback), masks at full resolution;
3. **detect signals** in the red and green planes inside the whole nuclei with the paper's classical detector
   (:func:`cytobench.models.classical.fish_spots.detect_spots`) and count them per nucleus (nuclei-only
   images: none, their ``n_red`` / ``n_green`` / ``pattern`` stay empty);
4. **write** ``nuclei.csv`` (one row per nucleus), ``overlays/<image>.png`` (paper Fig. 3 style), and per
   sample ``report.json`` / ``report.md`` (pattern fractions and mosaicism levels with 95% intervals,
   corrected by a confusion matrix when given, and the time split I/O / segmentation / spots / output);
   ``report.json`` also holds per image the scale and intensity facts (:func:`cytobench.fish.checks.image_summary`)
   (keyed by file name, or path when two share a name) and the run's warnings
   (:func:`cytobench.fish.checks.run_warnings`: clipped hot pixels, images without probe channels, nuclei
   nearly all rejected for their size or measuring far from the assumed size), also on stderr and in
   ``report.md``.

Samples: ``sample`` names every image's sample; otherwise an image belongs to the sample that
``folder_samples`` names for its folder, or else to the sample named after its folder.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.fish import RANGE_PERCENTILE
from cytobench.fish.channels import FishImage, read_fish_image
from cytobench.fish.checks import image_summary, run_warnings
from cytobench.fish.mosaicism import ConfusionMatrix, IntervalMethod, pattern_name
from cytobench.fish.overlay import draw_overlay
from cytobench.fish.report import build_report, render_markdown
from cytobench.fish.segmenters import WHOLE, Nuclei, Segmenter
from cytobench.io.files import write_json_atomic

__all__ = ["CSV_COLUMNS", "AnalysisResult", "ImageCounts", "analyze_images", "count_signals"]

CSV_COLUMNS = (
    "image",
    "sample",
    "nucleus",
    "category",
    "area",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "n_red",
    "n_green",
    "pattern",
    "score",
)
STAGES = ("io", "segmentation", "spots", "output")


@dataclass
class ImageCounts:
    """Signals found in one image.

    Attributes:
        spots: ``{"red": (M, 2), "green": (K, 2)}`` spot centres ``(x, y)``, COCO pixel coordinates.
        counts: ``(N, 2)`` int64 ``(n_red, n_green)`` per nucleus (-1 for destroyed nuclei).
    """

    spots: dict[str, np.ndarray]
    counts: np.ndarray


@dataclass
class AnalysisResult:
    """What :func:`analyze_images` wrote and measured.

    Attributes:
        rows: one dict per nucleus (:data:`CSV_COLUMNS`).
        report: the report dict (also ``out_dir/report.json``).
        out_dir: the output folder.
    """

    rows: list[dict[str, Any]]
    report: dict[str, Any]
    out_dir: Path


def count_signals(image: FishImage, nuclei: Nuclei, params: Any = None) -> ImageCounts:
    """Detect red and green signals inside the whole nuclei and count them per nucleus.

    Args:
        image: the FISH planes.
        nuclei: segmented nuclei; destroyed ones are not searched.
        params: :class:`~cytobench.models.classical.fish_spots.SpotDetectorParams` (None: the paper's).

    Returns:
        The :class:`ImageCounts` (spot nucleus indices refer to ``nuclei``); a nuclei-only image has no spots
        and every count -1.
    """
    from cytobench.models.classical.fish_spots import (
        NucleusCrop,
        SpotDetectorParams,
        count_per_nucleus,
        detect_spots,
    )

    params = params or SpotDetectorParams()
    whole = np.flatnonzero(nuclei.labels == WHOLE)
    counts = np.full((len(nuclei.labels), 2), -1, np.int64)
    spots: dict[str, np.ndarray] = {}
    if not image.has_probes:
        return ImageCounts({c: np.zeros((0, 2)) for c in ("red", "green")}, counts)
    # crops, not a second (N, H, W) stack: a 2873 px image holds ~240 nuclei (2 GB as full masks)
    crops = []
    for k in whole:
        ys, xs = np.nonzero(nuclei.masks[k])
        y0, x0 = (int(ys.min()), int(xs.min())) if ys.size else (0, 0)
        y1, x1 = (int(ys.max()) + 1, int(xs.max()) + 1) if ys.size else (1, 1)
        crops.append(NucleusCrop(x0, y0, nuclei.masks[k][y0:y1, x0:x1]))
    for c, channel in enumerate(("red", "green")):
        found = detect_spots(image.plane(channel), crops, params)
        spots[channel] = np.asarray(found.xy, np.float64).reshape(-1, 2)
        counts[whole, c] = count_per_nucleus(found, len(whole))
    return ImageCounts(spots, counts)


def _nucleus_rows(image: str, sample: str, nuclei: Nuclei, counts: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for k, (mask, label, score) in enumerate(zip(nuclei.masks, nuclei.labels, nuclei.scores)):
        ys, xs = np.nonzero(mask)
        if ys.size:
            bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        else:
            bbox = (0, 0, 0, 0)
        whole = int(label) == WHOLE
        counted = whole and counts[k, 0] >= 0
        red, green = (int(counts[k, 0]), int(counts[k, 1])) if counted else (None, None)
        rows.append(
            {
                "image": image,
                "sample": sample,
                "nucleus": k,
                "category": "whole" if whole else "destroyed",
                "area": int(ys.size),
                "bbox_x": bbox[0],
                "bbox_y": bbox[1],
                "bbox_w": bbox[2],
                "bbox_h": bbox[3],
                "n_red": red,
                "n_green": green,
                "pattern": pattern_name(red, green) if counted else "",
                "score": round(float(score), 4),
            }
        )
    return rows


def analyze_images(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    segmenter: Segmenter,
    *,
    spot_params: Any = None,
    channels: Mapping[str, int] | None = None,
    sample: str | None = None,
    folder_samples: Mapping[Path, str] | None = None,
    confusion: ConfusionMatrix | None = None,
    overlays: bool = True,
    confidence: float = 0.95,
    method: IntervalMethod = "wilson",
    n_boot: int = 1000,
    seed: int = 0,
    progress: Callable[[Sequence[Path]], Any] | None = None,
    pixel_size_um: float | None = None,
    range_percentile: float = RANGE_PERCENTILE,
    warn: Callable[[str], Any] | None = None,
) -> AnalysisResult:
    """Run the pipeline on images and write the table, overlays and report into ``out_dir``.

    Args:
        paths: image files.
        out_dir: output folder (created at the first write; existing files of the same names are replaced).
        segmenter: nucleus segmenter (:func:`cytobench.fish.segmenters.build_segmenter`).
        spot_params: spot detector parameters (None: the paper's defaults).
        channels: explicit ``{"red": i, "green": j, "dapi": k}`` channel mapping, or None for the rule of
            :mod:`cytobench.fish.channels`.
        sample: sample name of every image; None names each image's sample after its folder.
        folder_samples: ``{folder: sample name}`` overriding the folder-name rule for images directly in
            ``folder`` (e.g. a dataset's ``images/`` named after the dataset folder); ignored with ``sample``.
        confusion: counting-error matrix for the corrected mosaicism estimate, or None.
        overlays: write ``overlays/<image stem>.png``.
        confidence: interval level.
        method: binomial interval of the plain estimate (``"wilson"`` or ``"clopper-pearson"``).
        n_boot: bootstrap replicates of the corrected estimate.
        seed: bootstrap seed.
        progress: wraps the path list for a progress bar (e.g. ``tqdm``), or None.
        pixel_size_um: pixel size in um/px of every image, overriding the files' (None: the files').
        range_percentile: percentile setting the intensity range of data wider than 8 bits
            (:mod:`cytobench.fish.channels`).
        warn: receives each warning line (:func:`cytobench.fish.checks.run_warnings`); None prints them to
            stderr.

    Returns:
        The :class:`AnalysisResult`.

    Raises:
        UnreadableImage: an image is missing or undecodable (one line naming it).
        BadInputError: an image's channels cannot be mapped to red / green / DAPI.
    """
    out = Path(out_dir)  # created at its first write: an unreadable first image leaves nothing behind
    paths = [Path(p) for p in paths]
    timing = dict.fromkeys(STAGES, 0.0)
    rows: list[dict[str, Any]] = []
    n_images: dict[str, int] = {}
    used_channels: dict[str, dict[str, int]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for path in progress(paths) if progress else paths:
        t0 = time.perf_counter()
        image = read_fish_image(
            path, channels, pixel_size_um=pixel_size_um, range_percentile=range_percentile
        )
        t1 = time.perf_counter()
        nuclei = segmenter.segment(image)
        t2 = time.perf_counter()
        found = count_signals(image, nuclei, spot_params)
        t3 = time.perf_counter()
        name = sample or (folder_samples or {}).get(path.parent) or path.parent.name or "sample"
        n_images[name] = n_images.get(name, 0) + 1
        rows += _nucleus_rows(path.name, name, nuclei, found.counts)
        used_channels[path.name] = image.channels
        summaries[path.name if path.name not in summaries else str(path)] = image_summary(image, nuclei)
        if overlays:
            counts = [tuple(int(v) for v in c) if c[0] >= 0 else None for c in found.counts]
            draw_overlay(image, nuclei, found.spots, counts, out / "overlays" / f"{path.stem}.png")
        t4 = time.perf_counter()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            timing[stage] += dt
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "nuclei.csv", rows)
    settings = {
        "segmenter": getattr(segmenter, "name", type(segmenter).__name__),
        "spot_params": repr(spot_params) if spot_params is not None else "paper defaults",
        "channels": _channel_summary(used_channels),
        "confusion": (confusion.source or "given") if confusion is not None else None,
        "pixel_size_um": pixel_size_um if pixel_size_um is not None else "from the files",
        "range_percentile": range_percentile,
    }
    warnings = run_warnings(summaries, range_percentile, getattr(segmenter, "nucleus_diameter_um", None))
    for line in warnings:
        (warn or _print_stderr)(line)
    report = build_report(
        rows,
        timing,
        n_images=n_images,
        settings=settings,
        confusion=confusion,
        confidence=confidence,
        method=method,
        n_boot=n_boot,
        seed=seed,
    )
    report["timing"]["stages_s"]["output"] += time.perf_counter() - t0
    report["timing"]["total_s"] = float(sum(report["timing"]["stages_s"].values()))
    total = report["timing"]["total_s"]
    report["timing"]["images_per_s"] = len(paths) / total if total > 0 else float("nan")
    report["images"] = summaries
    report["warnings"] = warnings
    write_json_atomic(out / "report.json", report, indent=1)
    (out / "report.md").write_text(render_markdown(report))
    return AnalysisResult(rows, report, out)


def _channel_summary(used: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The channel mappings used and how many images used each."""
    seen: dict[str, int] = {}
    for mapping in used.values():
        key = ",".join(f"{role}={mapping[role]}" for role in ("red", "green", "dapi") if role in mapping)
        seen[key] = seen.get(key, 0) + 1
    return seen


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    tmp.replace(path)
