"""Knobs of the brightfield / phase-contrast cell simulator and their per-image draw.

:class:`BrightfieldParams` holds every knob as a value or a ``(lo, hi)`` range; ranges are drawn uniformly
per image (:func:`draw_optics`) or per cell (the shape knobs, in
:mod:`cytobench.simulate.brightfield_shapes`). Lengths are in pixels of the thesis' x63 images (1080 x
1080, Sec. 4.1); thickness is optical path difference in radians of phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = ["BrightfieldParams", "Optics", "draw_optics", "uniform"]

Span = tuple[float, float]


def uniform(rng: np.random.Generator, span: Span) -> float:
    """One draw from ``U(span[0], span[1])`` (a degenerate span returns its value)."""
    return float(rng.uniform(span[0], span[1]))


@dataclass(frozen=True)
class BrightfieldParams:
    """Shape, layout, optics and noise knobs (per-image or per-cell ranges are ``(lo, hi)``).

    Attributes:
        cell_radius_px: equivalent radius ``sqrt(area / pi)`` of a cell, per cell.
        elongation: major / minor axis ratio of a cell, per cell (adherent cells are elongated).
        roughness: amplitude of the random low harmonics of the cell outline (0 = an ellipse).
        nucleus_scale: nucleus radius as a fraction of the cell's smallest centre-to-outline distance.
        coverage: summed cell area over image area, per image; sets the number of cells.
        overlap_share: area two overlapping cells share, as a fraction of the smaller cell.
        cell_height: phase plateau of the cytoplasm (radians), per cell.
        nucleus_height: extra phase of the nucleus on top of the cytoplasm (denser), per cell.
        edge_ramp_px: distance over which the cytoplasm thickens from the outline (thin lamella), per cell.
        texture: sd of the cytoplasm's granular texture as a fraction of ``cell_height``.
        phase_background: phase-contrast background level (0-1 scale of the 8-bit image), per image.
        phase_gain: phase-contrast intensity per radian of phase.
        halo_weight: share of the phase signal spread into the halo (bright ring outside the cells).
        halo_sigma_px: width of the halo.
        bf_background: brightfield background level, per image.
        rim_contrast: largest relative intensity change of the defocus (lens) response.
        rim_gain: slope of that response per unit of the scale-normalised Laplacian of the phase.
        defocus_sigma_px: blur scale of the (lower, upper) focal plane's defocus response.
        thickness_saturation: phase at which stacked cells stop adding to the brightfield lens (radians).
        absorption: brightfield attenuation per radian of (saturated) phase.
        illumination: amplitude of the smooth uneven illumination (relative), per image.
        bf_photons: photons per pixel at the brightfield background (shot noise), per image.
        phase_photons: photons per pixel at full scale of the phase-contrast image, per image.
        debris_per_mpx: unannotated debris blobs per megapixel (Poisson mean).
        debris_radius_px: radius of a debris blob, per blob.
        debris_height: phase of a debris blob, per blob.
        placement_tries: random positions tried per cell before it is dropped.
    """

    cell_radius_px: Span = (40.0, 60.0)
    elongation: Span = (1.2, 2.6)
    roughness: float = 0.12
    nucleus_scale: Span = (0.45, 0.6)
    coverage: Span = (0.40, 0.55)
    overlap_share: Span = (0.04, 0.25)
    cell_height: Span = (0.5, 0.8)
    nucleus_height: Span = (0.3, 0.5)
    edge_ramp_px: Span = (2.0, 5.0)
    texture: float = 0.05
    phase_background: Span = (0.06, 0.12)
    phase_gain: float = 0.45
    halo_weight: float = 0.5
    halo_sigma_px: float = 6.0
    bf_background: Span = (0.45, 0.6)
    rim_contrast: float = 0.4
    rim_gain: float = 8.0
    defocus_sigma_px: tuple[float, float] = (2.0, 3.0)
    thickness_saturation: float = 1.0
    absorption: float = 0.03
    illumination: Span = (0.02, 0.06)
    bf_photons: Span = (150.0, 400.0)
    phase_photons: Span = (800.0, 2000.0)
    debris_per_mpx: float = 40.0
    debris_radius_px: Span = (1.5, 5.0)
    debris_height: Span = (0.3, 1.0)
    placement_tries: int = 60

    def scaled(self, factor: float) -> BrightfieldParams:
        """The same cells and optics at ``factor`` times the magnification (0.5: half as many px per um).

        Every length in pixels (the ``*_px`` knobs) is multiplied by ``factor`` and the debris density
        per megapixel divided by ``factor**2``, so cells, halos, blur and debris keep their proportions.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"pixel scale must be a positive number, got {factor!r}")
        changes: dict[str, object] = {"debris_per_mpx": self.debris_per_mpx / factor**2}
        for field in fields(self):
            if field.name.endswith("_px"):
                value = getattr(self, field.name)
                changes[field.name] = (
                    tuple(v * factor for v in value) if isinstance(value, tuple) else value * factor
                )
        return replace(self, **changes)

    @property
    def mean_cell_area(self) -> float:
        """Mean area of one cell in px^2 (a disc of the mean equivalent radius)."""
        return math.pi * (0.5 * (self.cell_radius_px[0] + self.cell_radius_px[1])) ** 2


@dataclass(frozen=True)
class Optics:
    """The optics of one image (drawn by :func:`draw_optics`; the defaults are a typical image).

    The noise-free renderers of :mod:`cytobench.simulate.brightfield_render` read only this.
    """

    phase_background: float = 0.09
    phase_gain: float = 0.45
    halo_weight: float = 0.5
    halo_sigma_px: float = 6.0
    bf_background: float = 0.52
    rim_contrast: float = 0.4
    rim_gain: float = 8.0
    defocus_sigma_px: tuple[float, float] = (2.0, 3.0)
    thickness_saturation: float = 1.0
    absorption: float = 0.03


def draw_optics(rng: np.random.Generator, params: BrightfieldParams) -> Optics:
    """The optics of one image: its background levels drawn, the other knobs copied from ``params``."""
    return Optics(
        phase_background=uniform(rng, params.phase_background),
        phase_gain=params.phase_gain,
        halo_weight=params.halo_weight,
        halo_sigma_px=params.halo_sigma_px,
        bf_background=uniform(rng, params.bf_background),
        rim_contrast=params.rim_contrast,
        rim_gain=params.rim_gain,
        defocus_sigma_px=params.defocus_sigma_px,
        thickness_saturation=params.thickness_saturation,
        absorption=params.absorption,
    )
