"""Classical FISH signal ("chromosome") detector inside segmented nuclei (FISH paper, Sec. 3.3).

The paper's recipe (``method="paper"``), per probe channel, on the 8-bit intensity scale:

1. unsharp masking: ``u = I + amount * (I - G_sigma * I)``;
2. candidates: (a) binarise ``u > T`` (T = 80), (b) 3 x 3 morphological gradient, (c) connected
   components. The gradient's outline of each blob is one pixel wider than the blob, so blobs less than
   ``gradient_size - 1`` px apart (the two dots of a split / doublet signal) join into **one** candidate,
   which matches the scoring rule that a doublet is one copy. Components are labelled on
   ``binary | gradient`` (the outline plus the blob it encloses), and a candidate's centre is the
   ``(u - T)``-weighted centroid of its above-threshold pixels, its ``area`` their number and its
   ``score`` the peak of ``u``;
3. filtering: (a) the candidate's centre pixel must lie inside a nucleus mask (in the overlap of several
   nuclei it goes to the one it lies deepest in), (b) candidates within ``C`` px of that nucleus' border
   are dropped: the centre pixel's Euclidean distance to the nearest pixel outside the mask (1 for the
   mask's outermost pixels) must exceed ``C`` (C = 1 rejects only the outermost ring, as in the paper).

``method="log"`` replaces step 2 by scale-normalised Laplacian-of-Gaussian peaks (max over
``log_sigmas``) above ``log_threshold``, with peaks closer than ``merge_distance`` px merged into one
(their response-weighted mean), so a doublet again counts once; step 3 is the same.

Input scaling: uint8 is used as is; uint16 (and other integers) are scaled by their real range
(:func:`cytobench.io.images.scale_to_unit`: the smallest standard bit depth holding the maximum, or
``bit_depth``) to 0-255; floats are taken as [0, 1] (min-max normalised otherwise) and times 255.
Positions are COCO pixel coordinates (pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

from cytobench.io.images import scale_to_unit

__all__ = [
    "NucleusCrop",
    "SpotDetectorParams",
    "Spots",
    "count_per_nucleus",
    "detect_image_spots",
    "detect_spots",
    "score_spot_detector",
    "to_8bit_scale",
]

PROBE_CHANNELS: dict[str, int] = {"red": 0, "green": 1}  # RGB index of each probe (DAPI is 2)


@dataclass(frozen=True)
class SpotDetectorParams:
    """Parameters of :func:`detect_spots` (defaults: the paper's T = 80, C = 1, 3 x 3 gradient).

    Attributes:
        method: ``"paper"`` (threshold + gradient + components) or ``"log"`` (LoG peaks).
        unsharp_sigma: Gaussian sigma (px) of the unsharp mask.
        unsharp_amount: unsharp gain (0 disables it).
        threshold: binarisation threshold T on the 8-bit scale (applied to the unsharp image).
        gradient_size: side of the square morphological-gradient kernel (odd, >= 1; 1 = no gradient).
        min_area: fewest above-threshold pixels of a kept candidate.
        max_area: most above-threshold pixels of a kept candidate (None: no limit).
        border_margin: C, px; candidates whose centre is at most C px inside the nucleus border are dropped.
        log_sigmas: LoG scales (px) for ``method="log"``.
        log_threshold: least scale-normalised LoG response (8-bit units) of a peak.
        merge_distance: ``method="log"``: peaks closer than this (px) are one signal.
        bit_depth: force the significant bits of integer input (None: inferred).
    """

    method: Literal["paper", "log"] = "paper"
    unsharp_sigma: float = 2.0
    unsharp_amount: float = 1.0
    threshold: float = 80.0
    gradient_size: int = 3
    min_area: int = 4
    max_area: int | None = 400
    border_margin: float = 1.0
    log_sigmas: tuple[float, ...] = (1.5, 2.0, 2.5)
    log_threshold: float = 20.0
    merge_distance: float = 5.0
    bit_depth: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("paper", "log"):
            raise ValueError(f"method must be 'paper' or 'log', got {self.method!r}")
        if self.gradient_size < 1 or self.gradient_size % 2 == 0:
            raise ValueError(f"gradient_size must be an odd integer >= 1, got {self.gradient_size!r}")
        if self.unsharp_sigma <= 0 or self.unsharp_amount < 0 or self.border_margin < 0:
            raise ValueError("unsharp_sigma must be > 0, unsharp_amount and border_margin >= 0")
        if self.max_area is not None and self.max_area < self.min_area:
            raise ValueError(f"max_area {self.max_area} is below min_area {self.min_area}")
        if not self.log_sigmas or min(self.log_sigmas) <= 0:
            raise ValueError(f"log_sigmas must be positive scales, got {self.log_sigmas!r}")


@dataclass(frozen=True)
class NucleusCrop:
    """A nucleus mask stored as a crop: ``mask`` (h, w) bool whose pixel (0, 0) is image pixel (y0, x0)."""

    x0: int
    y0: int
    mask: np.ndarray


@dataclass
class Spots:
    """Detected signals of one channel.

    Attributes:
        xy: (M, 2) float64 centres (x, y), COCO pixel coordinates.
        nucleus: (M,) int64 index into the ``nuclei`` stack the detector was given.
        area: (M,) int64 above-threshold pixels (``"log"``: pixels of the thresholded LoG blob).
        score: (M,) float64 peak of the unsharp-masked intensity (``"log"``: peak LoG response), 8-bit units.
    """

    xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    nucleus: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.xy)


def to_8bit_scale(channel: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """(H, W) float32 copy of ``channel`` on the 0-255 scale (see the module docstring for the rule)."""
    data = np.asarray(channel)
    if data.dtype == np.uint8:
        return data.astype(np.float32)
    unit, _ = scale_to_unit(data, bit_depth)
    return unit.astype(np.float32) * np.float32(255.0)


def detect_spots(
    channel: np.ndarray,
    nuclei: np.ndarray | Sequence[NucleusCrop],
    params: SpotDetectorParams | None = None,
) -> Spots:
    """Detect probe signals of one channel inside nuclei.

    Args:
        channel: (H, W) intensities of one probe channel (uint8, uint16 or float in [0, 1]).
        nuclei: (N, H, W) bool masks (N may be 0; overlapping masks are allowed), or N
            :class:`NucleusCrop` (the same masks stored as crops, for large images with many nuclei).
        params: detector parameters (default :class:`SpotDetectorParams`).

    Returns:
        The kept spots, sorted by nucleus then by decreasing score.

    Raises:
        ValueError: ``channel`` is not 2-D or ``nuclei`` does not match its shape.
    """
    params = params or SpotDetectorParams()
    image = np.asarray(channel)
    if image.ndim != 2:
        raise ValueError(f"channel must be (H, W), got shape {image.shape}")
    x8 = to_8bit_scale(image, params.bit_depth)
    if params.method == "paper":
        xy, area, score = _paper_candidates(x8, params)
    else:
        xy, area, score = _log_candidates(x8, params)
    keep_area = area >= params.min_area
    if params.max_area is not None:
        keep_area &= area <= params.max_area
    xy, area, score = xy[keep_area], area[keep_area], score[keep_area]
    owner = _assign(xy, _as_crops(nuclei, image.shape, xy), params.border_margin)
    keep = owner >= 0
    order = np.lexsort((-score[keep], owner[keep]))
    return Spots(
        xy=xy[keep][order],
        nucleus=owner[keep][order].astype(np.int64),
        area=area[keep][order].astype(np.int64),
        score=score[keep][order].astype(np.float64),
    )


def count_per_nucleus(spots: Spots, n_nuclei: int) -> np.ndarray:
    """(N,) int64 number of spots assigned to each of ``n_nuclei`` nuclei."""
    idx = np.asarray(spots.nucleus, dtype=np.int64)
    return np.bincount(idx[idx >= 0], minlength=n_nuclei)[:n_nuclei].astype(np.int64)


def detect_image_spots(
    image: np.ndarray,
    nuclei: np.ndarray | Sequence[NucleusCrop],
    params: SpotDetectorParams | None = None,
    channels: Mapping[str, int] = PROBE_CHANNELS,
) -> dict[str, Spots]:
    """Run :func:`detect_spots` on each probe channel of an (H, W, C) image; ``{channel name: Spots}``."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    return {name: detect_spots(image[:, :, index], nuclei, params) for name, index in channels.items()}


def _paper_candidates(
    x8: np.ndarray, params: SpotDetectorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-2 of the paper: ``(xy (K, 2), area (K,), score (K,))`` of every component."""
    u = x8
    if params.unsharp_amount > 0:
        blur = cv2.GaussianBlur(x8, (0, 0), params.unsharp_sigma)
        u = x8 + np.float32(params.unsharp_amount) * (x8 - blur)
    binary = (u > params.threshold).astype(np.uint8)
    if not binary.any():
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64), np.zeros(0)
    kernel = np.ones((params.gradient_size, params.gradient_size), dtype=np.uint8)
    gradient = cv2.morphologyEx(binary, cv2.MORPH_GRADIENT, kernel)
    n, labels = cv2.connectedComponents(binary | gradient, connectivity=8)
    rows, cols = np.nonzero(binary)
    lab = labels[rows, cols]
    weight = (u[rows, cols] - params.threshold).astype(np.float64)
    total = np.bincount(lab, weight, minlength=n)[1:]
    x = np.bincount(lab, weight * (cols + 0.5), minlength=n)[1:] / total
    y = np.bincount(lab, weight * (rows + 0.5), minlength=n)[1:] / total
    area = np.bincount(lab, minlength=n)[1:].astype(np.int64)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, lab, u[rows, cols].astype(np.float64))
    return np.stack([x, y], axis=1), area, peak[1:]


def _log_candidates(x8: np.ndarray, params: SpotDetectorParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale-normalised LoG peaks, merged within ``merge_distance``: ``(xy, area, score)``.

    A merged group's centre is the response-weighted centroid of the thresholded LoG blobs holding its
    peaks (the whole blob of a doublet, not one of its dots), unless a blob is shared with another group;
    then the response-weighted mean of its peaks.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    response = np.max([-(s**2) * ndimage.gaussian_laplace(x8, s) for s in params.log_sigmas], axis=0)
    response = response.astype(np.float32)
    above = response > params.log_threshold
    rows, cols = np.nonzero(above & (response >= ndimage.maximum_filter(response, size=3)))
    if rows.size == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64), np.zeros(0)
    blobs, n_blobs = ndimage.label(above, structure=np.ones((3, 3)))
    peak_xy = np.stack([cols + 0.5, rows + 0.5], axis=1)
    score = response[rows, cols].astype(np.float64)
    pairs = cKDTree(peak_xy).query_pairs(params.merge_distance, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(rows),) * 2)
    n, group = connected_components(graph, directed=False)
    # blob statistics: response-weighted sums over above-threshold pixels
    by, bx = np.nonzero(above)
    lab = blobs[by, bx]
    weight = (response[by, bx] - params.log_threshold).astype(np.float64)
    b_w = np.bincount(lab, weight, minlength=n_blobs + 1)
    b_x = np.bincount(lab, weight * (bx + 0.5), minlength=n_blobs + 1)
    b_y = np.bincount(lab, weight * (by + 0.5), minlength=n_blobs + 1)
    b_area = np.bincount(lab, minlength=n_blobs + 1)
    peak_blob = blobs[rows, cols]
    groups_per_blob = np.bincount(
        np.unique(np.stack([peak_blob, group], 1), axis=0)[:, 0], minlength=n_blobs + 1
    )
    xy = np.zeros((n, 2))
    area = np.zeros(n, dtype=np.int64)
    best = np.full(n, -np.inf)
    np.maximum.at(best, group, score)
    for g in range(n):
        members = np.flatnonzero(group == g)
        own = np.unique(peak_blob[members])
        area[g] = int(b_area[own].sum())
        if (groups_per_blob[own] == 1).all():
            xy[g] = b_x[own].sum() / b_w[own].sum(), b_y[own].sum() / b_w[own].sum()
        else:
            xy[g] = (score[members, None] * peak_xy[members]).sum(0) / score[members].sum()
    return xy, area, best


def _as_crops(
    nuclei: np.ndarray | Sequence[NucleusCrop], shape: tuple[int, ...], xy: np.ndarray
) -> list[NucleusCrop | None]:
    """Nuclei as crops; from an (N, H, W) stack only those holding a candidate centre are cropped."""
    if not isinstance(nuclei, np.ndarray):
        crops = list(nuclei)
        if not all(isinstance(c, NucleusCrop) for c in crops):
            raise ValueError("nuclei must be an (N, H, W) bool array or a sequence of NucleusCrop")
        return list(crops)
    masks = nuclei.astype(bool, copy=False)
    if masks.ndim != 3 or masks.shape[1:] != tuple(shape):
        raise ValueError(
            f"nuclei must be (N, H, W) masks matching the channel {tuple(shape)}, got {masks.shape}"
        )
    out: list[NucleusCrop | None] = [None] * len(masks)
    if len(xy) == 0:
        return out
    rows, cols = _pixel(xy, shape)
    for n in np.flatnonzero(masks[:, rows, cols].any(axis=1)):
        ys, xs = np.nonzero(masks[n])
        y0, x0 = int(ys.min()), int(xs.min())
        out[n] = NucleusCrop(x0, y0, masks[n, y0 : ys.max() + 1, x0 : xs.max() + 1])
    return out


def _pixel(xy: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixel holding each COCO point (clipped to the image)."""
    rows = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, shape[1] - 1)
    return rows, cols


def _assign(xy: np.ndarray, crops: list[NucleusCrop | None], margin: float) -> np.ndarray:
    """(K,) index of the nucleus holding each centre at more than ``margin`` px from its border, or -1.

    A centre's depth in a nucleus is the Euclidean distance from its pixel to the nearest pixel outside
    the mask; in overlapping nuclei the deepest one wins.
    """
    owner = np.full(len(xy), -1, dtype=np.int64)
    deepest = np.zeros(len(xy))
    if len(xy) == 0:
        return owner
    rows, cols = np.floor(xy[:, 1]).astype(np.int64), np.floor(xy[:, 0]).astype(np.int64)
    for n, crop in enumerate(crops):
        if crop is None:
            continue
        h, w = crop.mask.shape
        r, c = rows - crop.y0, cols - crop.x0
        hit = np.flatnonzero((r >= 0) & (r < h) & (c >= 0) & (c < w))
        hit = hit[crop.mask[r[hit], c[hit]]] if hit.size else hit
        if hit.size == 0:
            continue
        dist = ndimage.distance_transform_edt(np.pad(crop.mask, 1))
        depth = dist[r[hit] + 1, c[hit] + 1]
        better = depth > deepest[hit]
        owner[hit[better]], deepest[hit[better]] = n, depth[better]
    owner[deepest <= margin] = -1
    return owner


def score_spot_detector(
    ann_file: str | Path,
    images_dir: str | Path,
    params: SpotDetectorParams | None = None,
    eps: Sequence[float] = (1, 2, 3),
) -> dict[str, float]:
    """Score the detector on a simulated FISH set, given the ground-truth masks of the whole nuclei.

    Per channel: localisation precision / recall / F1 / AUC at each ``eps`` (px; greedy score-ordered
    matching of :mod:`cytobench.evaluation.localization` against the copy centres of the whole nuclei),
    and count accuracy (fraction of whole nuclei whose detected count equals the truth) and mean absolute
    count error. ``spots/pattern_acc``: fraction of whole nuclei with both counts right.

    Args:
        ann_file: COCO json of :func:`cytobench.simulate.fish.simulate_fish`.
        images_dir: folder holding its images.
        params: detector parameters.
        eps: matching tolerances in px.

    Returns:
        Keys ``spots/{red,green}/{precision,recall,f1,auc}@{eps:g}``, ``spots/{red,green}/count_acc``,
        ``spots/{red,green}/count_mae``, ``spots/pattern_acc``, ``spots/n_nuclei``.
    """
    from cytobench.evaluation.localization import localization_metrics
    from cytobench.io.images import read_image
    from cytobench.simulate.fish import load_fish_truth

    truth = load_fish_truth(ann_file)
    gt: dict[str, list[np.ndarray]] = {c: [] for c in PROBE_CHANNELS}
    det: dict[str, list[np.ndarray]] = {c: [] for c in PROBE_CHANNELS}
    scores: dict[str, list[np.ndarray]] = {c: [] for c in PROBE_CHANNELS}
    right: dict[str, list[np.ndarray]] = {c: [] for c in PROBE_CHANNELS}
    error: dict[str, list[np.ndarray]] = {c: [] for c in PROBE_CHANNELS}
    for item in truth:
        array = read_image(Path(images_dir) / item.file_name).array
        whole = item.whole()
        crops = [NucleusCrop(x0, y0, m) for x0, y0, m in item.mask_crops("whole")]
        spots = detect_image_spots(array, crops, params)
        for c in PROBE_CHANNELS:
            gt[c].append(np.concatenate([n.signals[c] for n in whole]) if whole else np.zeros((0, 2)))
            det[c].append(spots[c].xy)
            scores[c].append(spots[c].score)
            true_counts = np.array([n.n_red if c == "red" else n.n_green for n in whole], dtype=np.int64)
            found = count_per_nucleus(spots[c], len(whole))
            right[c].append(found == true_counts)
            error[c].append(np.abs(found - true_counts))
    out: dict[str, float] = {}
    for c in PROBE_CHANNELS:
        for e in eps:
            m = localization_metrics(gt[c], det[c], scores[c], float(e))
            p, r = m["precision"], m["recall"]
            f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
            for key, value in (("precision", p), ("recall", r), ("f1", f1), ("auc", m["auc"])):
                out[f"spots/{c}/{key}@{float(e):g}"] = float(value)
        out[f"spots/{c}/count_acc"] = float(np.concatenate(right[c]).mean()) if right[c] else float("nan")
        out[f"spots/{c}/count_mae"] = float(np.concatenate(error[c]).mean()) if error[c] else float("nan")
    both = np.concatenate(right["red"]) & np.concatenate(right["green"])
    out["spots/pattern_acc"] = float(both.mean()) if both.size else float("nan")
    out["spots/n_nuclei"] = float(both.size)
    return out
