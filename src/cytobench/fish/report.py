"""Per-sample mosaicism report of ``fish analyze``: json dict and a markdown rendering.

Whole nuclei without signal counts (from images without probe channels) are counted in ``n_whole`` but not
in the patterns or mosaicism levels; ``n_counted`` is the number that are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.fish.mosaicism import (
    ConfusionMatrix,
    IntervalMethod,
    estimate_mosaicism,
    pattern_fractions,
)
from cytobench.reporting.tables import format_table

__all__ = ["build_report", "render_markdown"]


def build_report(
    rows: Sequence[Mapping[str, Any]],
    timing: Mapping[str, float],
    *,
    n_images: Mapping[str, int],
    settings: Mapping[str, Any],
    confusion: ConfusionMatrix | None = None,
    confidence: float = 0.95,
    method: IntervalMethod = "wilson",
    n_boot: int = 1000,
    seed: int = 0,
    max_patterns: int = 12,
) -> dict[str, Any]:
    """Summarise per-nucleus rows into per-sample pattern fractions and mosaicism levels.

    Args:
        rows: one dict per nucleus with at least ``sample``, ``category`` ("whole" / "destroyed"),
            ``n_red`` and ``n_green`` (None for destroyed nuclei and for nuclei of images without probes).
        timing: seconds spent per stage (``io``, ``segmentation``, ``spots``, ``output``).
        n_images: images per sample.
        settings: what produced the numbers (segmenter, channel rule, detector parameters), copied in.
        confusion: counting-error matrix for the corrected estimate, or None.
        confidence: interval level.
        method: binomial interval method of the plain estimates.
        n_boot: bootstrap replicates of the corrected estimate.
        seed: bootstrap seed.
        max_patterns: patterns listed per sample (most frequent first; the json keeps all).

    Returns:
        ``{"samples": {name: {...}}, "timing": {...}, "settings": {...}}`` (json-ready).
    """
    samples: dict[str, Any] = {}
    for name in sorted({str(r["sample"]) for r in rows} | set(n_images)):
        mine = [r for r in rows if str(r["sample"]) == name]
        whole = [r for r in mine if r["category"] == "whole"]
        counted = [r for r in whole if r["n_red"] is not None and r["n_green"] is not None]
        red = np.array([int(r["n_red"]) for r in counted], np.int64)
        green = np.array([int(r["n_green"]) for r in counted], np.int64)
        plain = estimate_mosaicism(red, green, confidence=confidence, method=method)
        entry: dict[str, Any] = {
            "n_images": int(n_images.get(name, 0)),
            "n_whole": len(whole),
            "n_counted": len(counted),
            "n_destroyed": len(mine) - len(whole),
            "patterns": [
                {**vars(p), "pattern": p.name} for p in pattern_fractions(red, green, confidence, method)
            ],
            "mosaicism": {"plain": plain.to_json()},
        }
        if confusion is not None:
            corrected = estimate_mosaicism(
                red,
                green,
                confusion=confusion,
                confidence=confidence,
                n_boot=n_boot,
                seed=seed,
                groups=[r["image"] for r in counted],
            )
            entry["mosaicism"]["corrected"] = corrected.to_json()
        entry["patterns_shown"] = max_patterns
        samples[name] = entry
    total_images = int(sum(n_images.values()))
    busy = float(sum(timing.values()))
    timing_out = {
        "stages_s": {k: float(v) for k, v in timing.items()},
        "total_s": busy,
        "images": total_images,
        "images_per_s": total_images / busy if busy > 0 else float("nan"),
    }
    return {"samples": samples, "timing": timing_out, "settings": dict(settings)}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100.0 * value:.1f}%"


def _interval(level: Mapping[str, Any]) -> str:
    return f"{_pct(level['fraction'])} [{_pct(level['lower'])}, {_pct(level['upper'])}]"


def render_markdown(report: Mapping[str, Any]) -> str:
    """Markdown: the run's warnings, per sample the pattern table and the mosaicism levels; then the timing
    split and the settings."""
    lines = ["# FISH mosaicism report", ""]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w.removeprefix('fish analyze: ')}" for w in warnings] + [""]
    for name, entry in report["samples"].items():
        uncounted = entry["n_whole"] - entry.get("n_counted", entry["n_whole"])
        if entry["n_whole"] and uncounted == entry["n_whole"]:
            lines += [
                f"## Sample `{name}`",
                "",
                f"{entry['n_images']} images, {entry['n_whole']} whole nuclei, {entry['n_destroyed']} destroyed "
                "nuclei.",
                "",
                "Nuclei only: the images have no probe channels, so no signals were counted and no signal "
                "pattern or mosaicism level can be estimated.",
                "",
            ]
            continue
        lines += [
            f"## Sample `{name}`",
            "",
            f"{entry['n_images']} images, {entry['n_whole']} whole nuclei counted, "
            f"{entry['n_destroyed']} destroyed nuclei (not counted).",
            "",
        ]
        if entry["n_whole"] == 0:
            lines += [
                "No whole nuclei were found, so no signal pattern or mosaicism level can be estimated.",
                "",
            ]
            continue
        if uncounted:
            lines += [
                f"{uncounted} of the whole nuclei come from images without probe channels: they are not in the "
                f"patterns and levels below ({entry['n_counted']} nuclei are).",
                "",
            ]
        patterns = entry["patterns"][: entry.get("patterns_shown", 12)]
        if patterns:
            rows = [
                (p["pattern"], p["count"], _pct(p["fraction"]), _pct(p["lower"]), _pct(p["upper"]))
                for p in patterns
            ]
            lines += [format_table(["pattern", "nuclei", "fraction", "95% low", "95% high"], rows), ""]
        for kind, est in entry["mosaicism"].items():
            lines.append(f"Mosaicism, {kind} ({est['interval']}):")
            lines.append("")
            rows = [(lv["karyotype"], lv["count"], _interval(lv)) for lv in [*est["levels"], est["other"]]]
            lines += [format_table(["karyotype", "pattern count", "level [interval]"], rows), ""]
    timing = report["timing"]
    total = max(float(timing["total_s"]), 1e-12)
    rows = [(k, v, v / total) for k, v in timing["stages_s"].items()]
    rows.append(("total", timing["total_s"], 1.0))
    lines += ["## Timing", "", format_table(["stage", "seconds", "share"], rows, digits=3), ""]
    lines.append(f"Throughput: {timing['images_per_s']:.3f} images/s.")
    settings = report.get("settings", {})
    if settings:
        lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()]
    return "\n".join(lines) + "\n"
