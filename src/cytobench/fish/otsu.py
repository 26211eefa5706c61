"""Classical nucleus segmenter: Otsu on DAPI, distance-transform watershed, fragment grouping (SciPy + OpenCV).

Useful without a trained checkpoint (``fish analyze --segmenter otsu``) and for fast tests. Every size
scales with the typical nucleus diameter ``d`` in pixels, taken in this order from

1. ``nucleus_diameter_px`` when given (``--nucleus-diameter PX``);
2. ``nucleus_diameter_um`` (default :data:`DEFAULT_NUCLEUS_DIAMETER_UM`, ``--nucleus-diameter-um``) divided
   by the image's pixel size, from ``--pixel-size`` or the file (TIFF / ImageJ / OME / CZI metadata): the
   size thresholds are then physical (at the defaults a whole nucleus covers 39.3 to 314 um^2, i.e. at least
   half and at most four times a 10 um disc);
3. otherwise (no pixel size known, e.g. PNG / JPEG / BMP) measured per image, in pixels.

Each result records in ``Nuclei.notes`` the diameter used and the foreground area rejected as too small
(fragments and pieces under ``min_whole_area``) or too large (over ``max_whole_area``), so that a run whose
nuclei were nearly all rejected for their size can say so (:mod:`cytobench.fish.checks`).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from cytobench.fish import DEFAULT_NUCLEUS_DIAMETER_UM
from cytobench.fish.channels import FishImage
from cytobench.fish.segmenters import DESTROYED, WHOLE, Nuclei

__all__ = ["DEFAULT_NUCLEUS_DIAMETER_UM", "OtsuSegmenter", "otsu_threshold"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut maximising the between-class variance.

    Returns:
        The threshold; pixels ``> threshold`` are foreground. The lowest value for constant input.
    """
    flat = np.asarray(values, np.float64).ravel()
    lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(flat, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def _empty_arrays(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks, labels, scores)`` of no nuclei."""
    empty = Nuclei.empty(shape)
    return empty.masks, empty.labels, empty.scores


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)).astype(bool)


def _hull_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of the pixels of a ``(H, W)`` bool mask (pixel-centre polygon, inclusive)."""
    ys, xs = np.nonzero(mask)
    out = np.zeros(mask.shape, np.uint8)
    if ys.size:
        hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
        cv2.fillPoly(out, [hull], 1)
    return out.astype(bool) | mask


class OtsuSegmenter:
    """Otsu on smoothed DAPI, distance-transform watershed, fragment grouping.

    Steps: Gaussian smoothing (sigma ``max(1, 0.04 d)``), Otsu threshold, hole filling; components smaller
    than ``fragment_area`` of a disc of diameter ``d`` are *fragments*. The others are split into touching
    nuclei at their necks: centres are maxima of the distance transform (``d / 4`` apart, deeper than
    ``d / 10``) separated from every higher centre by a neck shallower than ``saddle_ratio`` of their height,
    and each pixel goes to the centre minimising ``distance - inscribed radius`` (a watershed on the distance
    transform that needs no flooding).
    A piece is *whole* when its solidity (pixels / pixels of its convex hull) is at least ``min_solidity`` and
    its area between ``min_whole_area`` and ``max_whole_area`` of the ``d`` disc;
    the other pieces and the fragments are debris, and debris closer than ``0.4 d`` is grouped into one
    destroyed nucleus whose mask is the convex hull of the group (the contour an annotator draws around a
    cluster).

    Args:
        nucleus_diameter_px: typical whole-nucleus diameter ``d`` in px, overriding the physical one; None
            uses ``nucleus_diameter_um`` and the image's pixel size, or measures ``d`` per image when the
            pixel size is unknown (twice the median inscribed radius of the foreground components at least
            half as deep as the deepest).
        fragment_area: area fraction of the ``d`` disc below which a component is a fragment.
        min_solidity: solidity of a whole nucleus.
        saddle_ratio: neck depth (fraction of the lower centre's inscribed radius) separating two nuclei.
        min_whole_area: smallest whole nucleus, as a fraction of the ``d`` disc (smaller solid pieces are
            chunks of destroyed nuclei).
        nucleus_diameter_um: typical whole-nucleus diameter in micrometres (used with a known pixel size).
        max_whole_area: largest whole nucleus, as a multiple of the ``d`` disc (larger pieces are clumps
            that could not be split, or nuclei at another scale than assumed; they are not counted).
    """

    name = "otsu"

    def __init__(
        self,
        nucleus_diameter_px: float | None = None,
        fragment_area: float = 0.2,
        min_solidity: float = 0.9,
        saddle_ratio: float = 0.75,
        min_whole_area: float = 0.5,
        nucleus_diameter_um: float = DEFAULT_NUCLEUS_DIAMETER_UM,
        max_whole_area: float = 4.0,
    ) -> None:
        self.min_whole_area = min_whole_area
        self.max_whole_area = max_whole_area
        self.nucleus_diameter_um = nucleus_diameter_um
        self.nucleus_diameter_px = nucleus_diameter_px
        self.saddle_ratio = saddle_ratio
        self.fragment_area = fragment_area
        self.min_solidity = min_solidity

    def diameter_px(self, image: FishImage, measured: float) -> tuple[float, str]:
        """Nucleus diameter ``d`` in px for ``image`` and where it came from (``"given"``, ``"pixel size"``,
        ``"measured"``); ``measured`` is the diameter measured in the image."""
        if self.nucleus_diameter_px:
            return float(self.nucleus_diameter_px), "given"
        if image.pixel_size_um is not None:
            dy, dx = image.pixel_size_um
            return float(self.nucleus_diameter_um / np.sqrt(dy * dx)), "pixel size"
        return measured, "measured"

    def segment(self, image: FishImage) -> Nuclei:
        """Nuclei of ``image`` (``(N, H, W)`` bool masks at full resolution, labels 1 whole / 2 destroyed).

        ``notes`` holds ``diameter_px``, ``diameter_source``, ``measured_px`` (the diameter measured in the
        image, also when another one is used), ``pixel_size_um``, the whole-nucleus area limits
        ``min_whole_px`` / ``max_whole_px``, and ``foreground_px`` with its parts rejected as
        ``too_small_px`` (fragments, small pieces) and ``too_large_px``.
        """
        dapi = image.dapi.astype(np.float32)
        if float(dapi.max() - dapi.min()) < 1e-6:
            return Nuclei.empty(image.shape)
        rough = ndi.gaussian_filter(dapi, 1.0)
        measured = _measure_diameter(rough > otsu_threshold(rough))
        d, source = self.diameter_px(image, measured)
        smooth = ndi.gaussian_filter(dapi, max(1.0, 0.04 * d))
        foreground = ndi.binary_fill_holes(smooth > otsu_threshold(smooth))
        labels, n = ndi.label(foreground)
        disc = np.pi * d * d / 4.0
        notes: dict[str, Any] = {
            "diameter_px": float(d),
            "diameter_source": source,
            "measured_px": float(measured),
            "pixel_size_um": image.pixel_size_um,
            "min_whole_px": self.min_whole_area * disc,
            "max_whole_px": self.max_whole_area * disc,
            "foreground_px": int(np.count_nonzero(labels)),
            "too_small_px": 0,
            "too_large_px": 0,
        }
        if n == 0:
            return Nuclei(*_empty_arrays(image.shape), notes=notes)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        big = areas >= self.fragment_area * disc
        big[0] = False
        masks, scores, debris = self._split(np.where(big[labels], labels, 0), d, disc, notes)
        notes["too_small_px"] += int(areas[1:][~big[1:]].sum())
        cats = [WHOLE] * len(masks)
        groups = _group_fragments(debris | ((labels > 0) & ~big[labels]), d)
        masks += groups
        cats += [DESTROYED] * len(groups)
        scores += [0.5] * len(groups)
        if not masks:
            return Nuclei(*_empty_arrays(image.shape), notes=notes)
        return Nuclei(np.stack(masks), np.asarray(cats, np.int64), np.asarray(scores, np.float32), notes)

    def _split(
        self, labels: np.ndarray, d: float, disc: float, notes: dict[str, Any]
    ) -> tuple[list[np.ndarray], list[float], np.ndarray]:
        """Split the large components into nuclei; solid pieces of a nucleus' size are whole, the rest is debris.

        Adds the area of pieces rejected for their size to ``notes["too_small_px"]`` / ``["too_large_px"]``.

        Returns:
            ``(whole masks, their solidities, (H, W) bool debris mask)``.
        """
        fg = labels > 0
        debris = np.zeros(labels.shape, bool)
        if not fg.any():
            return [], [], debris
        dist = ndi.distance_transform_edt(fg)
        size = max(3, int(d / 4) | 1)
        peaks = (dist == ndi.maximum_filter(dist, size=size)) & (dist > d / 10.0) & fg
        masks, scores = [], []
        for k, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == k
            sub = np.where(comp, dist[sl], 0.0)
            centres = _centres(np.argwhere(peaks[sl] & comp), sub, self.saddle_ratio)
            for piece in _assign_pieces(comp, sub, centres):
                area = int(piece.sum())
                small, large = area < self.min_whole_area * disc, area > self.max_whole_area * disc
                notes["too_small_px"] += area if small else 0
                notes["too_large_px"] += area if large else 0
                solidity = 0.0 if small or large else area / max(int(_hull_mask(piece).sum()), 1)
                if small or large or solidity < self.min_solidity:
                    debris[sl] |= piece
                    continue
                mask = np.zeros(labels.shape, bool)
                mask[sl] = piece
                masks.append(mask)
                scores.append(float(solidity))
        return masks, scores, debris


def _centres(candidates: np.ndarray, dist: np.ndarray, saddle_ratio: float) -> np.ndarray:
    """Nucleus centres among distance-transform maxima: a lower maximum is dropped when the straight path to
    an accepted higher one never dips below ``saddle_ratio`` of its height (no neck, so the same nucleus).

    Args:
        candidates: ``(M, 2)`` (row, col) maxima.
        dist: distance transform of the component's crop.
        saddle_ratio: depth of the neck, as a fraction of the lower maximum, that separates two nuclei.

    Returns:
        ``(K, 2)`` (row, col) centres, K >= 1 when ``dist`` has any foreground.
    """
    if len(candidates) == 0:
        return np.argwhere(dist == dist.max())[:1]
    order = np.argsort(-dist[candidates[:, 0], candidates[:, 1]], kind="stable")
    kept: list[np.ndarray] = []
    for c in candidates[order]:
        height = dist[c[0], c[1]]
        same = False
        for a in kept:
            n = int(np.hypot(*(a - c))) + 2
            rows = np.rint(np.linspace(a[0], c[0], n)).astype(int)
            cols = np.rint(np.linspace(a[1], c[1], n)).astype(int)
            if dist[rows, cols].min() >= saddle_ratio * height:
                same = True
                break
        if not same:
            kept.append(c)
    return np.asarray(kept)


def _assign_pieces(comp: np.ndarray, dist: np.ndarray, centres: np.ndarray) -> list[np.ndarray]:
    """Split a component among centres by the additively weighted Voronoi rule.

    A pixel goes to the centre minimising ``|pixel - centre| - r`` with ``r`` the centre's inscribed radius,
    which cuts two touching discs of any sizes at their neck.
    """
    if len(centres) <= 1:
        return [comp]
    ys, xs = np.nonzero(comp)
    radius = dist[centres[:, 0], centres[:, 1]]
    cost = np.hypot(ys[None, :] - centres[:, :1], xs[None, :] - centres[:, 1:]) - radius[:, None]
    owner = np.argmin(cost, axis=0)
    pieces = []
    for j in range(len(centres)):
        piece = np.zeros(comp.shape, bool)
        piece[ys[owner == j], xs[owner == j]] = True
        pieces.append(piece)
    return pieces


def _measure_diameter(foreground: np.ndarray) -> float:
    """Typical nucleus diameter in px: twice the median inscribed radius of the deeper components."""
    labels, n = ndi.label(foreground)
    if n == 0:
        return 20.0
    radii = np.asarray(ndi.maximum(ndi.distance_transform_edt(foreground), labels, np.arange(1, n + 1)))
    deep = radii[radii >= 0.5 * radii.max()]
    return float(max(8.0, 2.0 * np.median(deep)))


def _group_fragments(fragments: np.ndarray, d: float) -> list[np.ndarray]:
    """Group fragments closer than ``0.4 d`` into destroyed-nucleus masks (each group's convex hull)."""
    if not fragments.any():
        return []
    radius = max(1, int(round(d / 5.0)))
    groups, n = ndi.label(ndi.binary_dilation(fragments, structure=_disk(radius)))
    out = []
    for k, sl in enumerate(ndi.find_objects(groups), start=1):
        if sl is None:
            continue
        members = fragments[sl] & (groups[sl] == k)
        if members.sum() < 4:
            continue
        mask = np.zeros(fragments.shape, bool)
        mask[sl] = _hull_mask(members)
        out.append(mask)
    return out
