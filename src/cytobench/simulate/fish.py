"""Interphase-FISH images of blood-cell nuclei with known truth (FISH paper, Secs. 2-3).

Each image is an 8-bit RGB PNG like the paper's (Fig. 1): **blue** = DAPI-stained nuclei, **red** = the
chromosome-21 probe, **green** = the X-chromosome probe. Default size 512 x 512 (the paper's usual size);
any size from 64 px up to the paper's largest, 2873 x 2873, works.

Model (:mod:`cytobench.simulate.fish_render` draws it; every knob is a field of
:class:`~cytobench.simulate.fish_render.FishParams`):

* **Scale.** Pixel size ``pixel_size_um`` (default 0.15 um; a ``(lo, hi)`` range draws one per image, the
  paper's span is 0.12-0.69 um) and nucleus diameter ``nucleus_diameter_um`` (10 um, so 67 px at the
  default) set every length: nuclei are the same physical size at every image size, and a larger image
  holds more of them (the nucleus count follows a covered-area fraction, 8-22 %).
* **Nuclei.** Whole nuclei are rounded outlines (radius with low harmonics, aspect 0.8-1, size +-15 %)
  with chromatin texture and a brighter core; destroyed nuclei (probability 10-30 % per image) are
  clusters of 8-30 small fragments. About 30 % of nuclei are placed touching a neighbour, overlapping by
  up to 15 % of their radii; the others keep apart. Nuclei lie fully inside the image.
* **Signals.** Each whole nucleus draws a karyotype from its sample's mix; the karyotype's copy numbers
  (:data:`KARYOTYPES`: normal female 2 red / 2 green, trisomy 21 3/2, monosomy X 2/1, ...) give its probe
  dots (dot sigma 0.25 um, about 1.7 px), placed uniformly inside the nucleus at least ``0.08 D`` from its
  border and away from other nuclei; copies of one probe are at least 1 um apart, so copies that fall
  close by chance can merge for a detector, as overlapping signals do in real preparations. The paper
  notes that a chromosome "can look like single dots or double dots": 25 % of copies are drawn as a
  **close doublet** (two sister-chromatid dots 1.8-2.8 dot sigmas apart). Following the usual FISH
  scoring rule (a split signal closer than about one signal diameter is one signal), **a doublet counts
  as one copy**; its truth point is the doublet's midpoint. Copy brightness varies x0.5-1.2, so a few dim
  copies fall below a detector's threshold.
* **Confounders.** Stray probe dots on half of the destroyed nuclei (recorded, not countable), faint
  speckles outside nuclei, non-specific probe haze inside nuclei, background autofluorescence with a
  smooth gradient, per-image and per-nucleus brightness.
* **Optics and noise.** Gaussian PSF (0.08-0.15 um), Poisson shot noise (200-500 photons at full scale)
  and Gaussian read noise. Most probe dots peak at 100-255 of 255 and the nuclear haze stays near 10-30,
  so the paper's binarisation threshold T = 80 separates them as on its 8-bit images.

Truth (COCO, polygons in pixel coordinates, pixel centres at ``j + 0.5``): categories 1 ``"whole"`` and 2
``"destroyed"`` (supercategory ``"nucleus"``); each nucleus has ``segmentation`` (one polygon), ``bbox``,
``area`` (polygon area), ``iscrowd`` 0, ``signals`` (``[{"channel": "red" | "green", "x", "y",
"doublet": bool}]``, one entry per drawn copy), ``n_red``, ``n_green`` (drawn copies) and ``karyotype``
(destroyed: no signals, ``karyotype`` null, and ``stray_signals`` with any dots drawn on it). Images carry
``sample``, ``karyotype_mix``, ``pixel_size_um``, ``n_whole`` and ``n_destroyed``; ``info.karyotypes`` holds
the copy-number table used.

Several samples: ``samples={"A": mix_a, "B": mix_b}`` assigns image ``i`` to sample ``i % len(samples)``
(so a train/val split holds every sample). Randomness comes only from
``numpy.random.default_rng([seed, image_index])``: image ``i`` is the same for a seed whatever
``n_images`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.io.images import write_image
from cytobench.simulate.common import (
    check_n_images,
    check_out_dir,
    check_seed,
    check_size,
    check_val_fraction,
    save_simulated_coco,
)
from cytobench.simulate.fish_render import FishParams, NucleusDraw, render_fish
from cytobench.simulate.fish_truth import FishImageTruth, NucleusTruth, load_fish_truth, signal_points

__all__ = [
    "CATEGORIES",
    "DEFAULT_MIX",
    "KARYOTYPES",
    "FishImageTruth",
    "FishParams",
    "NucleusTruth",
    "load_fish_truth",
    "parse_mix",
    "signal_points",
    "simulate_fish",
]

#: Karyotype name -> (chr21 / red copies, X / green copies) per interphase nucleus.
KARYOTYPES: dict[str, tuple[int, int]] = {
    "normal": (2, 2),  # 46,XX
    "trisomy21": (3, 2),  # 47,XX,+21
    "monosomy21": (1, 2),  # 45,XX,-21
    "monosomyX": (2, 1),  # 45,X (also the pattern of a normal male, 46,XY)
    "trisomyX": (2, 3),  # 47,XXX
    "tetraploid": (4, 4),  # 92,XXXX
}
#: Default sample: a mosaic with 8 % trisomy-21 and 5 % X-monosomy cells.
DEFAULT_MIX: dict[str, float] = {"normal": 0.87, "trisomy21": 0.08, "monosomyX": 0.05}
CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "whole", "supercategory": "nucleus"},
    {"id": 2, "name": "destroyed", "supercategory": "nucleus"},
]
_MIN_SIDE = 64
_MAX_SIDE = 8192


def simulate_fish(
    n_images: int,
    out_dir: str | Path,
    size: int | Sequence[int] = 512,
    seed: int = 0,
    val_fraction: float | None = None,
    karyotype_mix: Mapping[str, float] | None = None,
    *,
    samples: Mapping[str, Mapping[str, float]] | None = None,
    karyotypes: Mapping[str, Sequence[int]] | None = None,
    params: FishParams | None = None,
    pixel_size_um: float | Sequence[float] | None = None,
    nucleus_diameter_um: float | None = None,
) -> Path:
    """Simulate ``n_images`` labelled interphase-FISH images (see the module docstring).

    Args:
        n_images: number of images (>= 1).
        out_dir: output folder; images go to ``out_dir/images/fish_00000.png`` ...
        size: image size, an int for a square or ``(W, H)`` (as ``cytobench simulate fish --size W H``);
            each side in [64, 8192].
        seed: random seed (>= 0).
        val_fraction: None writes ``annotations.json``; a fraction in (0, 1) writes ``train.json`` and
            ``val.json`` (the last ``round(n * val_fraction)`` images, at least one, form ``val``).
        karyotype_mix: ``{karyotype: probability}`` of the single sample ``"S1"`` (default
            :data:`DEFAULT_MIX`); probabilities are normalised. Not with ``samples``.
        samples: ``{sample name: mix}``; image ``i`` belongs to sample ``i % len(samples)``.
        karyotypes: extra or replacement ``{name: (red copies, green copies)}`` entries for
            :data:`KARYOTYPES`.
        params: simulator knobs (:class:`FishParams`).
        pixel_size_um: shortcut overriding ``params.pixel_size_um`` (a value or a ``(lo, hi)`` range).
        nucleus_diameter_um: shortcut overriding ``params.nucleus_diameter_um``.

    Returns:
        Path of ``annotations.json``, or of ``train.json`` (``val.json`` lies beside it) when splitting.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    width, height = check_size(size, min_side=_MIN_SIDE, max_side=_MAX_SIDE)
    n_images = check_n_images(n_images)
    seed = check_seed(seed)
    check_val_fraction(val_fraction, n_images)
    table = _check_table(karyotypes)
    if samples is not None and karyotype_mix is not None:
        raise ValueError("give karyotype_mix (one sample) or samples, not both")
    raw = dict(samples) if samples is not None else {"S1": karyotype_mix or DEFAULT_MIX}
    if not raw:
        raise ValueError("samples must name at least one sample")
    mixes = {str(name): _check_mix(mix, table, str(name)) for name, mix in raw.items()}
    params = _with_overrides(params or FishParams(), pixel_size_um, nucleus_diameter_um)
    out_dir = check_out_dir(out_dir)
    names = list(mixes)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        sample = names[index % len(names)]
        drawn = render_fish(rng, width, height, table, mixes[sample], params)
        file_name = f"fish_{index:05d}.png"
        write_image(out_dir / "images" / file_name, drawn.image)
        n_whole = sum(n.whole for n in drawn.nuclei)
        images.append(
            {
                "id": index + 1,
                "file_name": file_name,
                "height": height,
                "width": width,
                "sample": sample,
                "karyotype_mix": mixes[sample],
                "pixel_size_um": round(drawn.pixel_size_um, 6),
                "n_whole": n_whole,
                "n_destroyed": len(drawn.nuclei) - n_whole,
            }
        )
        for nucleus in drawn.nuclei:
            ann = _annotation(nucleus, width, height)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
    info = {
        "description": "cytobench interphase-FISH simulator (R = chr21 probe, G = X probe, B = DAPI)",
        "version": "1",
        "karyotypes": {k: list(v) for k, v in table.items()},
    }
    return save_simulated_coco(out_dir, _dataset(info, images, annotations), val_fraction)


def parse_mix(text: str) -> tuple[str | None, dict[str, float]]:
    """Parse ``"[NAME:]karyotype=p,karyotype=p"`` (the CLI's ``--mix``) into ``(name or None, mix)``.

    Raises:
        ValueError: malformed text (the message quotes it).
    """
    name, _, body = text.rpartition(":")
    mix: dict[str, float] = {}
    for item in body.split(","):
        key, sep, value = item.partition("=")
        try:
            mix[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"mix {text!r}: expected karyotype=probability pairs, got {item!r}") from None
    return (name.strip() or None), mix


def _annotation(nucleus: NucleusDraw, width: int, height: int) -> dict[str, Any]:
    """COCO body (no ids) of one nucleus."""
    poly = nucleus.polygon
    x0, y0 = max(float(poly[:, 0].min()), 0.0), max(float(poly[:, 1].min()), 0.0)
    x1, y1 = min(float(poly[:, 0].max()), width), min(float(poly[:, 1].max()), height)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    ann: dict[str, Any] = {
        "category_id": 1 if nucleus.whole else 2,
        "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
        "segmentation": [np.round(poly, 3).ravel().tolist()],
        "area": round(area, 3),
        "iscrowd": 0,
    }
    if nucleus.whole:
        signals = [
            {"channel": c, "x": round(sx, 4), "y": round(sy, 4), "doublet": len(dots) > 1}
            for c, sx, sy, dots in nucleus.signals
        ]
        ann["signals"] = signals
        ann["n_red"] = sum(s["channel"] == "red" for s in signals)
        ann["n_green"] = sum(s["channel"] == "green" for s in signals)
        ann["karyotype"] = nucleus.karyotype
    else:
        ann.update(signals=[], n_red=0, n_green=0, karyotype=None)
        ann["stray_signals"] = [
            {"channel": c, "x": round(sx, 4), "y": round(sy, 4)} for c, sx, sy in nucleus.stray
        ]
    return ann


def _dataset(
    info: dict[str, Any], images: list[dict[str, Any]], annotations: list[dict[str, Any]]
) -> dict[str, Any]:
    return {"info": info, "images": images, "annotations": annotations, "categories": CATEGORIES}


def _check_table(extra: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, int]]:
    table = dict(KARYOTYPES)
    for name, copies in (extra or {}).items():
        values = list(copies) if isinstance(copies, Sequence) else []
        if len(values) != 2 or not all(isinstance(v, int | np.integer) and 0 <= v <= 8 for v in values):
            raise ValueError(
                f"karyotype {name!r}: copies must be (red, green) integers in [0, 8], got {copies!r}"
            )
        table[str(name)] = (int(values[0]), int(values[1]))
    return table


def _check_mix(
    mix: Mapping[str, float], table: Mapping[str, tuple[int, int]], sample: str
) -> dict[str, float]:
    """Normalised copy of ``mix`` (known karyotypes, finite probabilities >= 0, positive total)."""
    if not isinstance(mix, Mapping) or not mix:
        raise ValueError(f"sample {sample!r}: the karyotype mix must be a non-empty {{karyotype: p}} mapping")
    for name, p in mix.items():
        if name not in table:
            raise ValueError(f"sample {sample!r}: unknown karyotype {name!r} (known: {', '.join(table)})")
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p < 0:
            raise ValueError(f"sample {sample!r}: probability of {name!r} must be a number >= 0, got {p!r}")
    total = float(sum(mix.values()))
    if total <= 0:
        raise ValueError(f"sample {sample!r}: the karyotype probabilities must not all be zero")
    return {str(k): float(v) / total for k, v in mix.items()}


def _with_overrides(
    params: FishParams, pixel_size_um: float | Sequence[float] | None, nucleus_diameter_um: float | None
) -> FishParams:
    from dataclasses import replace

    if pixel_size_um is not None:
        params = replace(
            params,
            pixel_size_um=float(pixel_size_um)
            if isinstance(pixel_size_um, int | float)
            else (float(pixel_size_um[0]), float(pixel_size_um[1])),
        )
    if nucleus_diameter_um is not None:
        params = replace(params, nucleus_diameter_um=float(nucleus_diameter_um))
    px = params.pixel_size_um
    lo, hi = (px, px) if isinstance(px, int | float) else (px[0], px[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"pixel_size_um must be > 0 (or a range 0 < lo <= hi), got {px!r}")
    diameter = params.nucleus_diameter_um
    if not (math.isfinite(diameter) and diameter > 0 and 8 <= diameter / hi):
        raise ValueError(
            f"nucleus_diameter_um {diameter!r} at pixel size {hi!r} um gives nuclei under 8 px across"
        )
    return params
