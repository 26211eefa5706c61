"""Image formation of the brightfield simulator: cell phase, phase contrast, two focal planes, noise.

Every cell is a thin transparent object described by its phase (optical thickness, radians) ``phi``
(:func:`cell_phase`): a cytoplasm plateau that rises over ``edge_ramp_px`` from the outline (the thin
lamella of an adherent cell), a granular texture, and a denser nucleus dome on top. The phases of all
cells and of unannotated debris are summed into one map (:func:`phase_map`); the modalities are then
rendered from that map (noise-free, unit illumination):

* **Phase contrast** (:func:`render_phase_contrast`) is *linear* in the phase,
  ``I = b + g ((1 - w) phi + w G_s * phi)``: part ``w`` of the signal is spread by a Gaussian of width
  ``s`` into a bright halo around every cell. Being linear, overlapping cells add exactly (before
  noise and 8-bit clipping), the property the thesis' Copy-Paste module relies on (Sec. 4.4).
* **Brightfield** (:func:`render_brightfield_planes`): a defocused cell acts as a weak lens; by the
  transport-of-intensity equation the intensity change is proportional to the Laplacian of the phase,
  with opposite signs on the two sides of focus. Stacked cells do not add: the phase first saturates,
  ``psi = S (1 - exp(-phi / S))``, the lens response ``D = s^2 laplacian(G_s * psi)`` (scale-normalised,
  per plane) then saturates through ``tanh``, and the cells absorb weakly:
  ``I_lower = b (1 + c tanh(k D_lower)) exp(-a psi)``, ``I_upper = b (1 - c tanh(k D_upper)) exp(-a psi)``.
  A cell's rim (where the phase rises, ``D < 0`` just inside the outline) is dark in the lower plane and
  bright in the upper one.

:func:`acquire` adds what a camera adds: a smooth uneven illumination field and Poisson shot noise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cytobench.simulate.brightfield_params import BrightfieldParams, Optics, uniform
from cytobench.simulate.brightfield_shapes import CellRaster

__all__ = [
    "acquire",
    "cell_phase",
    "debris_phase",
    "illumination_field",
    "phase_map",
    "render_brightfield_planes",
    "render_phase_contrast",
]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with mirrored borders (float32)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _inside_distance(mask: np.ndarray) -> np.ndarray:
    """(h, w) float32 distance of every mask pixel to the nearest pixel outside it (0 outside)."""
    return cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


def cell_phase(rng: np.random.Generator, cell: CellRaster, params: BrightfieldParams) -> np.ndarray:
    """(h, w) float32 phase of one cell on its crop (module docstring); 0 outside the cell.

    Draws the cell's plateau height, nucleus height, edge ramp and texture from ``rng``.
    """
    plateau = uniform(rng, params.cell_height)
    ramp = uniform(rng, params.edge_ramp_px)
    rise = 1.0 - np.exp(-_inside_distance(cell.cell) / ramp)  # 0 at the outline, 1 in the body
    grain = _blur(rng.standard_normal(cell.cell.shape).astype(np.float32), 1.5)
    grain /= max(float(grain.std()), 1e-6)
    phase = plateau * rise * (1.0 + params.texture * grain)
    depth = _inside_distance(cell.nucleus)
    radius = max(float(depth.max()), 1.0)
    # a dome with a steep edge, like a flattened ellipsoid: height h sqrt(1 - (1 - d / R)^2)
    dome = np.sqrt(np.clip(1.0 - (1.0 - depth / radius) ** 2, 0.0, 1.0))
    phase += uniform(rng, params.nucleus_height) * dome * cell.nucleus
    return np.where(cell.cell, np.maximum(phase, 0.0), 0.0).astype(np.float32)


def phase_map(width: int, height: int, cells: list[CellRaster], phases: list[np.ndarray]) -> np.ndarray:
    """(H, W) float32 sum of the cells' crop phases (``phases[i]`` on ``cells[i]``'s crop)."""
    total = np.zeros((height, width), dtype=np.float32)
    for cell, phase in zip(cells, phases):
        total[cell.window] += phase
    return total


def debris_phase(rng: np.random.Generator, width: int, height: int, params: BrightfieldParams) -> np.ndarray:
    """(H, W) float32 phase of small unannotated debris blobs (Gaussian bumps anywhere in the image)."""
    total = np.zeros((height, width), dtype=np.float32)
    count = int(rng.poisson(params.debris_per_mpx * width * height / 1e6))
    for _ in range(count):
        radius = uniform(rng, params.debris_radius_px)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        reach = math.ceil(3 * radius)
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, width)
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, height)
        ys, xs = np.ogrid[y0:y1, x0:x1]
        bump = np.exp(-((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2) / (2 * radius**2))
        total[y0:y1, x0:x1] += (uniform(rng, params.debris_height) * bump).astype(np.float32)
    return total


def render_phase_contrast(phase: np.ndarray, optics: Optics) -> np.ndarray:
    """Noise-free phase-contrast image (H, W) float32, linear in ``phase`` (module docstring)."""
    phase = np.asarray(phase, dtype=np.float32)
    signal = (1.0 - optics.halo_weight) * phase + optics.halo_weight * _blur(phase, optics.halo_sigma_px)
    return (optics.phase_background + optics.phase_gain * signal).astype(np.float32)


def render_brightfield_planes(phase: np.ndarray, optics: Optics) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free ``(lower, upper)`` brightfield focal planes, each (H, W) float32 (module docstring)."""
    limit = optics.thickness_saturation
    psi = (limit * (1.0 - np.exp(-np.asarray(phase, dtype=np.float32) / limit))).astype(np.float32)
    transmitted = optics.bf_background * np.exp(-optics.absorption * psi)
    planes = []
    for sign, sigma in zip((1.0, -1.0), optics.defocus_sigma_px):
        lens = sigma**2 * cv2.Laplacian(_blur(psi, sigma), cv2.CV_32F, ksize=1)
        planes.append(transmitted * (1.0 + sign * optics.rim_contrast * np.tanh(optics.rim_gain * lens)))
    return planes[0].astype(np.float32), planes[1].astype(np.float32)


def illumination_field(rng: np.random.Generator, width: int, height: int, amplitude: float) -> np.ndarray:
    """(H, W) float32 smooth field around 1: a 3 x 3 grid of normal draws, upsampled bicubically,
    scaled to sd ``amplitude`` (a lamp that lights one side of the field more)."""
    coarse = rng.standard_normal((3, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    field *= amplitude / max(float(field.std()), 1e-6)
    return 1.0 + field


def acquire(
    rng: np.random.Generator, image: np.ndarray, illumination: np.ndarray, photons: float
) -> np.ndarray:
    """Camera image as uint8: ``image * illumination`` with Poisson shot noise at ``photons`` per unit
    intensity, clipped to [0, 1] and quantised to 8 bits."""
    expected = np.multiply(image, illumination, dtype=np.float64)
    np.clip(expected, 0.0, None, out=expected)
    expected *= photons
    scaled = rng.poisson(expected).astype(np.float32)
    scaled *= 255.0 / photons
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)
