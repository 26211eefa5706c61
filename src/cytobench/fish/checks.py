"""What ``fish analyze`` says about its inputs instead of answering wrongly in silence.

Per image, :func:`image_summary` records the scale and intensity facts the numbers depend on (pixel size and
its source, the nucleus diameter used and the one measured, probe channels, pixels clipped by the robust
intensity range, the foreground the Otsu segmenter rejected for its size); :func:`run_warnings` turns them
into one line per problem for stderr and the report:

* **intensity range**: some images had a few pixels far above the range of the rest (hot pixels); they were
  clipped so that they do not set the scale (:mod:`cytobench.io.intensity`);
* **nuclei only**: some images have no probe channels; their nuclei are counted, their signals are not;
* **rejected for size** (Otsu): at least :data:`NEARLY_ALL` of the run's nucleus foreground was rejected as
  smaller than a whole nucleus (under half the disc of the nucleus diameter) or larger than one (over four
  times). Simulated preparations at the right scale reject 2-48% per image (fragments of destroyed nuclei);
  nuclei smaller than assumed are all rejected;
* **scale** (Otsu, when the diameter comes from the pixel size or ``--nucleus-diameter``; said only when the
  previous check passes): the diameter measured in the images differs from the one used by more than
  :data:`SCALE_RATIO` times (median over the images; on simulated preparations measured / true is
  0.8-1.0). Nuclei larger than assumed are not all rejected (the watershed cuts them into pieces of the
  assumed size, counted as whole nuclei), so this is the check that catches them.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from cytobench.fish.channels import FishImage
from cytobench.fish.segmenters import Nuclei

__all__ = ["NEARLY_ALL", "SCALE_RATIO", "image_summary", "run_warnings"]

#: Share of a run's nucleus foreground rejected for its size from which the run is said to hold (nearly) no
#: nuclei of the expected size.
NEARLY_ALL = 0.8
#: Ratio between the measured and the assumed nucleus diameter beyond which the scale is said to be wrong.
SCALE_RATIO = 1.6


def image_summary(image: FishImage, nuclei: Nuclei) -> dict[str, Any]:
    """Json-ready facts about one analysed image (see the module docstring)."""
    size = image.pixel_size_um
    out: dict[str, Any] = {
        "pixel_size_um": [round(float(v), 6) for v in size] if size is not None else None,
        "pixel_size_source": image.pixel_size_source,
        "probe_channels": image.has_probes,
        "bit_depth": int(image.bit_depth),
        "clipped": [
            {"channel": role, "pixels": c.n_pixels, "max": c.raw_max, "range_max": c.range_max}
            for role, c in image.clipped
        ],
    }
    notes = nuclei.notes
    if "diameter_px" in notes:
        out.update(
            {
                "nucleus_diameter_px": round(float(notes["diameter_px"]), 2),
                "nucleus_diameter_source": notes["diameter_source"],
                "measured_diameter_px": round(float(notes["measured_px"]), 2),
                "whole_area_px": [round(notes["min_whole_px"], 1), round(notes["max_whole_px"], 1)],
                "foreground_px": max(int(notes["foreground_px"]), 0),
                "too_small_px": int(notes["too_small_px"]),
                "too_large_px": int(notes["too_large_px"]),
            }
        )
    return out


def run_warnings(
    summaries: Mapping[str, Mapping[str, Any]],
    range_percentile: float,
    nucleus_diameter_um: float | None = None,
) -> list[str]:
    """One line per problem of a run (each starts with ``fish analyze:``).

    Args:
        summaries: :func:`image_summary` per image name, in the run's order.
        range_percentile: the percentile that set the intensity ranges (named in the message).
        nucleus_diameter_um: the Otsu segmenter's physical nucleus diameter (named in the messages).
    """
    out = []
    n = len(summaries)
    clipped = {name: s["clipped"] for name, s in summaries.items() if s["clipped"]}
    if clipped:
        name, first = next(iter(clipped.items()))
        c = first[0]
        out.append(
            f"fish analyze: {len(clipped)} of {n} images have a few pixels far above the intensity range of the "
            f"rest (e.g. {name}: {c['pixels']} {c['channel']} pixel{'s' if c['pixels'] != 1 else ''} up to "
            f"{c['max']:g}, range 0-{c['range_max']:g}); they were clipped so that they do not set the scale "
            f"(--range-percentile {range_percentile:g})"
        )
    nuclei_only = [name for name, s in summaries.items() if not s["probe_channels"]]
    if nuclei_only:
        out.append(
            f"fish analyze: {len(nuclei_only)} of {n} images have no probe channels (DAPI only, e.g. "
            f"{nuclei_only[0]}): their nuclei are segmented and counted, no signals are counted and they enter "
            "no pattern or mosaicism estimate"
        )
    measured = {k: s for k, s in summaries.items() if s.get("foreground_px")}
    size = _rejected_warning(measured, nucleus_diameter_um) or _scale_warning(measured, nucleus_diameter_um)
    return [*out, size] if size else out


def _rejected_warning(measured: Mapping[str, Mapping[str, Any]], diameter_um: float | None) -> str | None:
    """Nearly all of the foreground rejected as too small / too large (None when the check passes)."""
    fg = sum(s["foreground_px"] for s in measured.values())
    small = sum(s["too_small_px"] for s in measured.values())
    large = sum(s["too_large_px"] for s in measured.values())
    if fg == 0 or small + large < NEARLY_ALL * fg:
        return None
    too_small = small >= large
    key = "too_small_px" if too_small else "too_large_px"
    name = max(measured, key=lambda k: measured[k][key] / measured[k]["foreground_px"])
    s = measured[name]
    lo, hi = (_area_text(s, a) for a in s["whole_area_px"])
    parts = [f"{100 * small / fg:.0f}% lies in objects under {lo}"] if small else []
    parts += [f"{100 * large / fg:.0f}% in objects over {hi}"] if large else []
    scale, hint = _assumption(s, diameter_um)
    return (
        f"fish analyze: nearly all nuclei were rejected as too {'small' if too_small else 'large'}: of the "
        f"nucleus foreground of {_images(len(measured))} {' and '.join(parts)} (whole nuclei cover half to four "
        f"times the disc of {scale}; e.g. {name}), so the whole-nucleus counts are not trustworthy; {hint}"
    )


def _scale_warning(measured: Mapping[str, Mapping[str, Any]], diameter_um: float | None) -> str | None:
    """The nuclei measure far larger / smaller than the assumed diameter (None when the check passes)."""
    assumed = {k: s for k, s in measured.items() if s["nucleus_diameter_source"] != "measured"}
    if not assumed:
        return None
    ratios = {k: s["measured_diameter_px"] / s["nucleus_diameter_px"] for k, s in assumed.items()}
    ratio = statistics.median(ratios.values())
    if 1 / SCALE_RATIO <= ratio <= SCALE_RATIO:
        return None
    name = max(ratios, key=lambda k: abs(ratios[k] - 1.0)) if ratio > 1 else min(ratios, key=ratios.get)
    s = assumed[name]
    scale, hint = _assumption(s, diameter_um)
    size = s["pixel_size_um"]
    across = f"{s['measured_diameter_px']:.0f} px"
    if size is not None:
        across += f" ({s['measured_diameter_px'] * (size[0] * size[1]) ** 0.5:.3g} um)"
    bigger = ratio > 1
    return (
        f"fish analyze: the nuclei look {ratio if bigger else 1 / ratio:.1f} times {'larger' if bigger else 'smaller'} "
        f"than assumed: in {_images(len(assumed))} they measure {across} across against {scale} (median ratio; "
        f"e.g. {name}), so {'nuclei are cut into pieces counted as whole nuclei' if bigger else 'most nuclei are rejected as too small'}; "
        f"{hint}"
    )


def _assumption(summary: Mapping[str, Any], diameter_um: float | None) -> tuple[str, str]:
    """``(the nucleus size the thresholds assumed, what to check)`` for one image's summary."""
    d = summary["nucleus_diameter_px"]
    if summary["nucleus_diameter_source"] == "pixel size" and summary["pixel_size_um"] is not None:
        px = (summary["pixel_size_um"][0] * summary["pixel_size_um"][1]) ** 0.5
        where = "the file" if summary["pixel_size_source"] == "file" else "--pixel-size"
        return (
            f"a {diameter_um or d * px:g} um nucleus at {px:.4g} um/px from {where}",
            "check the pixel size (--pixel-size UM) and the nucleus size (--nucleus-diameter-um UM)",
        )
    if summary["nucleus_diameter_source"] == "given":
        return f"a nucleus of --nucleus-diameter {d:g} px", "check --nucleus-diameter"
    return (
        f"a nucleus of the {d:g} px diameter measured in the image; no pixel size is known",
        "give --pixel-size UM (or --nucleus-diameter PX)",
    )


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def _area_text(summary: Mapping[str, Any], area_px: float) -> str:
    """An area limit in um^2 when the image's pixel size is known, else in px."""
    size = summary["pixel_size_um"]
    return f"{area_px * size[0] * size[1]:.3g} um^2" if size is not None else f"{area_px:.0f} px"
