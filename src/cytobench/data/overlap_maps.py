"""Overlap-aware probability ("attention") maps of SEU-Net (thesis Sec. 4.3, Sec. 5.4, Fig. 5.2 a-e, Table 5.3).

A map ``P`` (H, W) float32 reweights the overlap loss (:mod:`cytobench.ops.focal`): it is high where
overlapping cells are likely. Every variant first computes a score ``q`` in [0, 1] and returns
``P = background + (1 - background) * q``, so ``P`` lies in ``[background, 1]`` and every pixel without
evidence (``q = 0``, e.g. the background region) is exactly ``background`` (0.1 in the thesis).

Inputs: the cells' amodal masks ``(N, H, W)`` (whole cells, hidden parts included), optionally the nucleus
masks ``(M, H, W)`` and an annotated overlap map ``(H, W)``. Cells with empty masks are ignored.

Variants (Table 5.3; how each is read from the text is in its function's docstring):

========  =================================  ==========================================================
variant   function                           in short
========  =================================  ==========================================================
``v0``    :func:`cell_bounded_nucleus_map`    distance from the nucleus centre, inside its own cell
``v1``    :func:`nucleus_reach_map`           the same without the cell bound (a disk), max over centres
``v2``    :func:`relaxed_overlap_map`         1 on annotated overlaps, relaxed around them
``v3``    :func:`nucleus_overlap_map`         ``max(v1, v2)``
``v4``    :func:`border_proximity_map`        Sec. 4.3: distance to the nearest *other* cell, log-scaled
========  =================================  ==========================================================

Shared definitions:

* **nucleus centre** of a cell (:func:`nucleus_centres`): each nucleus belongs to the cell it overlaps
  most; a cell's centre is the centroid of its own nucleus (the one overlapping it most if it has
  several), else, with no nucleus or no nucleus masks given, the cell's own centroid.
* **reach** (v2, v4): the length over which a probability fades, in pixels. Default
  (:func:`default_reach`): the median equivalent radius ``sqrt(area / pi)`` of the cells, so the maps do
  not depend on the image scale (the thesis gives no number).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "CELL_CATEGORY",
    "DISTANCE_METHODS",
    "NUCLEUS_CATEGORY",
    "VARIANTS",
    "attention_map",
    "attention_map_of_objects",
    "border_proximity_map",
    "cell_bounded_nucleus_map",
    "default_reach",
    "nucleus_centres",
    "nucleus_overlap_map",
    "nucleus_reach_map",
    "relaxed_overlap_map",
    "second_nearest_cell_distance",
]

VARIANTS = ("v0", "v1", "v2", "v3", "v4")
CELL_CATEGORY = "cell"
NUCLEUS_CATEGORY = "nucleus"


# ----------------------------------------------------------------------------------------- input checks


def _cells(amodal_masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool without empty masks; a clear error for anything but a 3-D stack."""
    masks = np.asarray(amodal_masks)
    if masks.ndim != 3:
        raise ValueError(f"amodal_masks must be an (N, H, W) stack of masks, got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    keep = masks.any(axis=(1, 2))
    return masks if keep.all() else masks[keep]


def _nuclei(nucleus_masks: np.ndarray | None, size: tuple[int, ...]) -> np.ndarray | None:
    if nucleus_masks is None:
        return None
    masks = np.asarray(nucleus_masks)
    if masks.ndim != 3 or masks.shape[1:] != size:
        raise ValueError(f"nucleus_masks must be (M, {size[0]}, {size[1]}) masks, got shape {masks.shape}")
    return masks.astype(bool, copy=False)


def _overlap(overlap: np.ndarray | None, size: tuple[int, ...]) -> np.ndarray | None:
    if overlap is None:
        return None
    array = np.asarray(overlap)
    if array.shape != size:
        raise ValueError(f"overlap must be an ({size[0]}, {size[1]}) map, got shape {array.shape}")
    return array > 0


def _check_background(background: float) -> float:
    if not 0.0 <= float(background) <= 1.0:
        raise ValueError(f"background must be in [0, 1], got {background}")
    return float(background)


def _reach(reach: float | None, cells: np.ndarray) -> float:
    if reach is None:
        return default_reach(cells)
    if not (math.isfinite(reach) and reach > 0):
        raise ValueError(f"reach must be a positive number of pixels, got {reach}")
    return float(reach)


def _probability(score: np.ndarray, background: float) -> np.ndarray:
    """``P = background + (1 - background) * q`` as float32 in ``[background, 1]``."""
    p = background + (1.0 - background) * score
    return np.clip(p, background, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ shared geometry


def default_reach(amodal_masks: np.ndarray) -> float:
    """Median equivalent radius ``sqrt(area / pi)`` of the cells in pixels (at least 1; 1 with no cells)."""
    cells = _cells(amodal_masks)
    if len(cells) == 0:
        return 1.0
    radii = np.sqrt(cells.sum(axis=(1, 2)) / math.pi)
    return max(float(np.median(radii)), 1.0)


def _boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` int64 half-open boxes ``(r0, r1, c0, c1)`` of non-empty ``(N, H, W)`` masks."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    r0, c0 = rows.argmax(axis=1), cols.argmax(axis=1)
    r1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    c1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([r0, r1, c0, c1], axis=1).astype(np.int64)


def _centroids(masks: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float64 (row, col) centroids of non-empty ``(N, H, W)`` masks."""
    area = masks.sum(axis=(1, 2)).astype(np.float64)
    rows = masks.sum(axis=2) @ np.arange(masks.shape[1], dtype=np.float64)
    cols = masks.sum(axis=1) @ np.arange(masks.shape[2], dtype=np.float64)
    return np.stack([rows / area, cols / area], axis=1)


def nucleus_centres(amodal_masks: np.ndarray, nucleus_masks: np.ndarray | None = None) -> np.ndarray:
    """The nucleus centre of every non-empty cell, ``(N, 2)`` float64 (row, col).

    Each nucleus belongs to the cell it overlaps most (no cell if it overlaps none); each cell takes the
    nucleus of its own that overlaps it most. A cell without a nucleus gets its own centroid, so every
    variant works on data sets without nuclei too.
    """
    cells = _cells(amodal_masks)
    centres = _centroids(cells) if len(cells) else np.zeros((0, 2))
    nuclei = _nuclei(nucleus_masks, cells.shape[1:])
    if nuclei is None or len(cells) == 0:
        return centres
    nuclei = nuclei[nuclei.any(axis=(1, 2))]
    if len(nuclei) == 0:
        return centres
    # pixel counts of every (nucleus, cell) intersection in one product (float32: exact up to 2**24 px)
    shared = nuclei.reshape(len(nuclei), -1).astype(np.float32) @ cells.reshape(len(cells), -1).T.astype(
        np.float32
    )
    owner = shared.argmax(axis=1)
    own = np.zeros_like(shared)
    index = np.arange(len(nuclei))
    own[index, owner] = shared[index, owner]  # a nucleus counts only for the cell it overlaps most
    has_nucleus = own.max(axis=0) > 0
    centres[has_nucleus] = _centroids(nuclei)[own.argmax(axis=0)[has_nucleus]]
    return centres


def _nucleus_ramps(cells: np.ndarray, centres: np.ndarray, *, bounded: bool) -> np.ndarray:
    """Score ``max_j |x - c_j| / R_j`` over the cells j that reach pixel x.

    ``R_j`` is the largest distance from the centre ``c_j`` to a pixel of cell j (at least 1 px), so the
    ramp is 0 at the centre and 1 at the cell's farthest pixel. ``bounded``: cell j reaches its own mask
    only (v0); otherwise the disk ``|x - c_j| <= R_j`` (v1). One vectorised crop per cell.
    """
    height, width = cells.shape[1:]
    score = np.zeros((height, width))
    rows, cols = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    for mask, (r0, r1, c0, c1), (cr, cc) in zip(cells, _boxes(cells), centres):
        inside = mask[r0:r1, c0:c1]
        dist = np.hypot(rows[r0:r1, None] - cr, cols[None, c0:c1] - cc)
        radius = max(float(dist[inside].max()), 1.0)
        if not bounded:  # the disk's box, clipped to the image
            r0, r1 = max(math.floor(cr - radius), 0), min(math.ceil(cr + radius) + 1, height)
            c0, c1 = max(math.floor(cc - radius), 0), min(math.ceil(cc + radius) + 1, width)
            dist = np.hypot(rows[r0:r1, None] - cr, cols[None, c0:c1] - cc)
            inside = dist <= radius
        window = score[r0:r1, c0:c1]
        np.maximum(window, np.where(inside, dist / radius, 0.0), out=window)
    return np.minimum(score, 1.0)


# --------------------------------------------------------------------------------------------- v0 / v1


def cell_bounded_nucleus_map(
    amodal_masks: np.ndarray, *, nucleus_masks: np.ndarray | None = None, background: float = 0.1
) -> np.ndarray:
    """v0 (Fig. 5.2a): distance from the nucleus centre, bounded inside its own cell.

    Read from Sec. 5.4: "the distance map within the bounded space of one cell to indicate the low
    probability of other cells overlapping the area of the nucleus ... set the probability value to be
    very low for the [nucleus] pixels and the background area". So, per cell, the distance from its
    nucleus centre normalised by the cell's largest such distance (0 at the centre, 1 at the farthest
    pixel of the cell: the periphery is where neighbours overlap), only on the cell's own amodal mask;
    cells sharing a pixel are merged by max (as in Eq. 4.4); nucleus pixels (of any nucleus) and the
    background get ``background``.

    Args:
        amodal_masks: ``(N, H, W)`` cells' amodal masks.
        nucleus_masks: ``(M, H, W)`` nucleus masks, or None (centres = cell centroids, no nucleus pixels).
        background: the lowest probability (0.1 in the thesis).

    Returns:
        ``(H, W)`` float32 in ``[background, 1]``.
    """
    return _nucleus_variant(amodal_masks, nucleus_masks, background, bounded=True)


def nucleus_reach_map(
    amodal_masks: np.ndarray, *, nucleus_masks: np.ndarray | None = None, background: float = 0.1
) -> np.ndarray:
    """v1 (Fig. 5.2b): v0 without the cell bound, merged over all nucleus centres by max.

    Read from Sec. 5.4: "we removed the boundary limit and extended the influence of cells to one
    another. The computed distance maps to every sample point from all nucleus centers were merged using
    the overall maximum". Each centre's ramp ``|x - c_j| / R_j`` of v0 now covers the whole disk of
    radius ``R_j`` around the centre instead of the cell's mask, so it reaches into neighbouring cells and
    the background between them; disks are merged by max. The disk keeps the max-merge meaningful: an
    unbounded, growing ramp would make the max over centres ~1 everywhere. Nucleus pixels stay at
    ``background`` as in v0; pixels no disk reaches are ``background``.

    Args / Returns: as :func:`cell_bounded_nucleus_map`.
    """
    return _nucleus_variant(amodal_masks, nucleus_masks, background, bounded=False)


def _nucleus_variant(
    amodal_masks: np.ndarray, nucleus_masks: np.ndarray | None, background: float, *, bounded: bool
) -> np.ndarray:
    return _probability(
        _nucleus_score(amodal_masks, nucleus_masks, bounded=bounded), _check_background(background)
    )


def _nucleus_score(
    amodal_masks: np.ndarray, nucleus_masks: np.ndarray | None, *, bounded: bool
) -> np.ndarray:
    cells = _cells(amodal_masks)
    nuclei = _nuclei(nucleus_masks, cells.shape[1:])
    score = _nucleus_ramps(cells, nucleus_centres(cells, nuclei), bounded=bounded)
    if nuclei is not None and len(nuclei):
        score[nuclei.any(axis=0)] = 0.0
    return score


# --------------------------------------------------------------------------------------------- v2 / v3


def relaxed_overlap_map(
    amodal_masks: np.ndarray,
    *,
    overlap: np.ndarray | None = None,
    background: float = 0.1,
    reach: float | None = None,
) -> np.ndarray:
    """v2 (Fig. 5.2c): probability 1 on the annotated overlaps, relaxed around them.

    Read from Sec. 5.4: "extending probabilities near the annotated overlap regions to introduce
    relaxation constraints over the loss function, considering weak overlap annotations". The score is
    ``max(0, 1 - d / reach)`` with ``d`` the Euclidean distance to the nearest overlap pixel (one EDT):
    1 on the overlap, fading linearly to 0 at ``reach`` pixels, so pixels just outside a weak (too small)
    overlap label are not treated as sure negatives. It is kept inside the cells (and the overlap itself):
    an overlap needs two cells, so background pixels stay at ``background``, as in Sec. 4.3.

    Args:
        amodal_masks: ``(N, H, W)`` cells' amodal masks.
        overlap: ``(H, W)`` annotated overlap (nonzero = overlap); None = computed, pixels covered by two
            or more amodal masks.
        background: the lowest probability.
        reach: relaxation length in pixels; None = :func:`default_reach`.

    Returns:
        ``(H, W)`` float32 in ``[background, 1]``.
    """
    background = _check_background(background)
    return _probability(_overlap_score(_cells(amodal_masks), overlap, reach), background)


def _overlap_score(cells: np.ndarray, overlap: np.ndarray | None, reach: float | None) -> np.ndarray:
    size = cells.shape[1:]
    annotated = _overlap(overlap, size)
    overlapping = annotated if annotated is not None else cells.sum(axis=0) >= 2
    score = np.zeros(size)
    if not overlapping.any():
        return score
    distance = ndimage.distance_transform_edt(~overlapping)
    score = np.clip(1.0 - distance / _reach(reach, cells), 0.0, 1.0)
    score[~(cells.any(axis=0) | overlapping)] = 0.0
    return score


def nucleus_overlap_map(
    amodal_masks: np.ndarray,
    *,
    nucleus_masks: np.ndarray | None = None,
    overlap: np.ndarray | None = None,
    background: float = 0.1,
    reach: float | None = None,
) -> np.ndarray:
    """v3 (Fig. 5.2d): the nuclei-based map merged with the overlap-aware one, ``max(v1, v2)``.

    Read from Sec. 5.4: "we merge the nuclei-based with the overlap-aware distance map approaches". The
    nuclei-based map is the later of the two (v1); they are merged by max like every other merge in the
    thesis (Eq. 4.4), so an overlap over a nucleus keeps its high value.

    Args: as :func:`nucleus_reach_map` and :func:`relaxed_overlap_map`.

    Returns:
        ``(H, W)`` float32 in ``[background, 1]``.
    """
    background = _check_background(background)
    cells = _cells(amodal_masks)
    nuclear = _nucleus_score(cells, nucleus_masks, bounded=False)
    return _probability(np.maximum(nuclear, _overlap_score(cells, overlap, reach)), background)


# ------------------------------------------------------------------------------------------------- v4


DISTANCE_METHODS = ("crops", "stacked", "full")


def _grown_boxes(cells: np.ndarray, reach: float) -> np.ndarray:
    """``(N, 4)`` boxes ``(r0, r1, c0, c1)`` grown by ``ceil(reach)`` and clipped to the image.

    Every pixel within ``reach`` of a cell lies in its grown box, and so does the cell pixel nearest to it:
    an EDT of the crop is exact there.
    """
    grow = math.ceil(reach)
    height, width = cells.shape[1:]
    r0, r1, c0, c1 = _boxes(cells).T
    return np.stack(
        [
            np.maximum(r0 - grow, 0),
            np.minimum(r1 + grow, height),
            np.maximum(c0 - grow, 0),
            np.minimum(c1 + grow, width),
        ],
        axis=1,
    )


def _keep_two_smallest(smallest: np.ndarray, second: np.ndarray, distance: np.ndarray) -> None:
    """Fold one distance map into the running smallest / second-smallest maps, in place."""
    np.minimum(second, np.maximum(smallest, distance), out=second)
    np.minimum(smallest, distance, out=smallest)


def second_nearest_cell_distance(
    amodal_masks: np.ndarray, reach: float, *, method: str = "crops"
) -> np.ndarray:
    """Distance from every pixel to its second-nearest cell, where that is at most ``reach``.

    Distance to a cell = Euclidean distance to its nearest pixel (0 inside it), i.e. the EDT from its
    border (Eq. 4.3). Inside exactly one cell this is the distance to the nearest *other* cell; inside two
    or more cells (an amodal overlap) it is 0. Beyond ``reach`` a cell does not count, so each cell's EDT
    is needed only in its box grown by ``reach``. All methods give the same array bit for bit:

    * ``"crops"`` (default, the fastest measured: ``bench/bench_overlap_maps.py``): one EDT per cell on
      its grown box, folded into the image;
    * ``"stacked"``: the grown boxes padded to one size and stacked, one EDT call for all of them (a huge
      spacing along the stack axis keeps the crops apart);
    * ``"full"``: the plain reference, one full-image EDT per cell.

    Returns:
        ``(H, W)`` float64; ``inf`` where fewer than two cells lie within ``reach``.
    """
    if method not in DISTANCE_METHODS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(DISTANCE_METHODS)})")
    cells = _cells(amodal_masks)
    smallest, second = np.full(cells.shape[1:], np.inf), np.full(cells.shape[1:], np.inf)
    if method == "full":
        for mask in cells:
            _keep_two_smallest(smallest, second, ndimage.distance_transform_edt(~mask))
    elif len(cells):
        boxes = _grown_boxes(cells, reach)
        crops = _crop_distances(cells, boxes) if method == "crops" else _stacked_crop_distances(cells, boxes)
        for (r0, r1, c0, c1), distance in zip(boxes, crops):
            _keep_two_smallest(smallest[r0:r1, c0:c1], second[r0:r1, c0:c1], distance)
    second[second > reach] = np.inf
    return second


def _crop_distances(cells: np.ndarray, boxes: np.ndarray) -> Iterator[np.ndarray]:
    """EDT to each cell within its box, one call per cell."""
    for mask, (r0, r1, c0, c1) in zip(cells, boxes):
        yield ndimage.distance_transform_edt(~mask[r0:r1, c0:c1])


def _stacked_crop_distances(cells: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """EDT to each cell within its box, all crops in one EDT call."""
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    stack = np.ones((len(cells), heights.max(), widths.max()), dtype=bool)  # padding holds no cell pixel
    for k, (mask, (r0, r1, c0, c1)) in enumerate(zip(cells, boxes)):
        stack[k, : r1 - r0, : c1 - c0] = ~mask[r0:r1, c0:c1]
    # a pixel's nearest cell pixel in its own crop is closer than any pixel of another crop
    apart = float(heights.max() + widths.max())
    distance = ndimage.distance_transform_edt(stack, sampling=(apart, 1.0, 1.0))
    return [distance[k, :h, :w] for k, (h, w) in enumerate(zip(heights, widths))]


def _log_proximity(distance: np.ndarray, reach: float) -> np.ndarray:
    """``1 - log(1 + d) / log(1 + reach)`` for ``d <= reach``, else 0: 1 at contact, steepest near it."""
    score = np.zeros(distance.shape)
    near = distance <= reach
    score[near] = 1.0 - np.log1p(distance[near]) / math.log1p(reach)
    return score


def border_proximity_map(
    amodal_masks: np.ndarray,
    *,
    overlap: np.ndarray | None = None,
    background: float = 0.1,
    reach: float | None = None,
    method: str = "crops",
) -> np.ndarray:
    """v4 (Fig. 5.2e, Sec. 4.3, Eq. 4.3-4.4): how close the nearest other cell is, log-scaled.

    Read from Sec. 4.3: each cell's Euclidean distance transform from its border (Eq. 4.3) gives its
    "contribution to every other pixel"; the contributions are max-reduced (Eq. 4.4), log-scaled "to
    create a more steep descent" so that "probability values are much higher in regions where cells are
    closer", and the background is set to 0.1. Here:

    * cell i contributes ``g(d_i(x))`` to pixel x, ``d_i`` its EDT (0 inside it) and ``g`` the log-scaled
      decay ``1 - log(1 + d) / log(1 + reach)`` (0 beyond ``reach``): 1 at the cell, falling fastest right
      next to it;
    * the max-reduction runs over the cells *other than* the pixel's own: every cell would otherwise give
      its own pixels 1 and P would not see neighbours at all. With ``g`` decreasing, that is ``g`` of the
      distance to the second-nearest cell (:func:`second_nearest_cell_distance`), so pixels inside two
      amodal masks (overlaps: "including overlap awareness", Sec. 5.4) get 1, pixels facing a close
      neighbour get nearly 1 and a cell with no neighbour within ``reach`` stays at ``background``;
    * pixels outside every cell are ``background``; an annotated ``overlap`` (weak labels; optional) is
      raised to 1 as well.

    Args:
        amodal_masks: ``(N, H, W)`` cells' amodal masks.
        overlap: ``(H, W)`` annotated overlap (nonzero = overlap), or None.
        background: the background probability (0.1 in the thesis).
        reach: distance in pixels at which a neighbour stops counting; None = :func:`default_reach`.
        method: how the per-cell EDTs are computed (same result): see :func:`second_nearest_cell_distance`.

    Returns:
        ``(H, W)`` float32 in ``[background, 1]``.
    """
    background = _check_background(background)
    cells = _cells(amodal_masks)
    reach = _reach(reach, cells)
    score = _log_proximity(second_nearest_cell_distance(cells, reach, method=method), reach)
    score[~cells.any(axis=0)] = 0.0
    annotated = _overlap(overlap, cells.shape[1:])
    if annotated is not None:
        score[annotated] = 1.0
    return _probability(score, background)


# ----------------------------------------------------------------------------------------- dispatch


def attention_map(
    amodal_masks: np.ndarray,
    *,
    variant: str = "v4",
    nucleus_masks: np.ndarray | None = None,
    overlap: np.ndarray | None = None,
    background: float = 0.1,
    reach: float | None = None,
) -> np.ndarray:
    """The attention map ``variant`` (one of :data:`VARIANTS`) of the cells ``amodal_masks`` (N, H, W).

    Each variant uses the inputs it needs and ignores the others (v0 / v1: nuclei; v2: overlap, reach;
    v3: all; v4: overlap, reach). See the variant functions for the definitions.

    Returns:
        ``(H, W)`` float32 in ``[background, 1]``.
    """
    if variant == "v0":
        return cell_bounded_nucleus_map(amodal_masks, nucleus_masks=nucleus_masks, background=background)
    if variant == "v1":
        return nucleus_reach_map(amodal_masks, nucleus_masks=nucleus_masks, background=background)
    if variant == "v2":
        return relaxed_overlap_map(amodal_masks, overlap=overlap, background=background, reach=reach)
    if variant == "v3":
        return nucleus_overlap_map(
            amodal_masks, nucleus_masks=nucleus_masks, overlap=overlap, background=background, reach=reach
        )
    if variant == "v4":
        return border_proximity_map(amodal_masks, overlap=overlap, background=background, reach=reach)
    raise ValueError(f"unknown attention map variant '{variant}' (known: {', '.join(VARIANTS)})")


def attention_map_of_objects(
    masks: np.ndarray,
    labels: np.ndarray,
    category_names: Sequence[str],
    *,
    variant: str = "v4",
    overlap: np.ndarray | None = None,
    background: float = 0.1,
) -> np.ndarray:
    """:func:`attention_map` of one image's objects, as a data set holds them.

    Args:
        masks: ``(N, H, W)`` amodal masks of all objects.
        labels: ``(N,)`` labels 1..K; ``category_names[label - 1]`` names each.
        category_names: the data set's category names in label order. Cells are the objects of category
            ``cell``, nuclei those of ``nucleus`` (the brightfield data contract); nuclei are optional.
        variant / overlap / background: as :func:`attention_map`.

    Raises:
        ValueError: no category is named ``cell``.
    """
    names = list(category_names)
    if CELL_CATEGORY not in names:
        raise ValueError(f"attention maps need a category named '{CELL_CATEGORY}' (categories: {names})")
    masks = np.asarray(masks)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    cells = masks[labels == names.index(CELL_CATEGORY) + 1]
    nuclei = masks[labels == names.index(NUCLEUS_CATEGORY) + 1] if NUCLEUS_CATEGORY in names else None
    return attention_map(cells, variant=variant, nucleus_masks=nuclei, overlap=overlap, background=background)
