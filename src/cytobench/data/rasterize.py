"""Dense truth from COCO annotations: semantic class maps, amodal masks and named per-pixel maps.

Rules (used by :class:`~cytobench.data.coco_dataset.CocoDetectionDataset`):

* **Semantic map** (:func:`semantic_map`): an ``(H, W)`` int64 map, 0 = background, ``k`` = category
  label ``k`` (1..K), painted from the objects' visible masks. Where masks of different categories
  overlap, the category painted last wins: categories are painted in ``order`` (by default label order,
  so a later category in the json's ``categories`` lies on top, e.g. ``nucleus`` listed after ``cell``).
  An optional **border** class (label ``K + 1``) is painted on top of everything: the inner boundary,
  ``border_width`` pixels wide (4-connected erosion), of every object of the border categories. The image
  edge is not a border: a cell cut by the edge has no border pixels there.
* **Amodal masks** (:func:`amodal_mask`): the whole object including occluded parts, decoded from an
  annotation field (``amodal_segmentation`` by default: polygons or RLE, as in the KINS / COCOA amodal
  datasets); an annotation without that field falls back to its visible mask.
* **Computed maps** (:data:`COMPUTED_MAPS`): ``overlap`` (uint8) is 1 where two or more amodal masks
  *of one category* cover a pixel (cells overlapping cells; a nucleus inside its cell is no overlap),
  0 elsewhere. ``overlap_attention_v0`` ... ``overlap_attention_v4`` (float32, ``overlap_attention`` =
  v4) are SEU-Net's overlap probability maps (:mod:`cytobench.data.overlap_maps`) of the objects of
  category ``cell`` (nuclei: category ``nucleus``; annotated overlap: the image's ``overlap`` map file,
  else the cells' amodal overlap).
* **Map files** (:func:`read_map`): a per-pixel map stored as a file is read *raw*, without the
  intensity scaling of images: a PNG / TIFF label image keeps its integer labels, a float TIFF or
  ``.npy`` keeps its values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cytobench.data.overlap_maps import VARIANTS as ATTENTION_VARIANTS
from cytobench.data.overlap_maps import attention_map_of_objects
from cytobench.errors import CorruptAnnotation, UnreadableImage
from cytobench.io.coco_convert import annotation_to_mask

__all__ = [
    "COMPUTED_MAPS",
    "MapContext",
    "amodal_mask",
    "compute_map",
    "decode_segmentation",
    "inner_border",
    "overlap_map",
    "read_map",
    "semantic_map",
    "stack_masks",
]

_CROSS = ndimage.generate_binary_structure(2, 1)


def decode_segmentation(
    segm: Any, height: int, width: int, *, path: str | Path, item: str, field: str = "segmentation"
) -> np.ndarray:
    """Rasterise one COCO segmentation value (polygons, uncompressed or compressed RLE).

    Args:
        segm: the value of the annotation field.
        height: image height H.
        width: image width W.
        path / item / field: named in the error (the json, e.g. ``"annotation 7"``, the field).

    Returns:
        ``(H, W)`` uint8 mask in {0, 1}.

    Raises:
        CorruptAnnotation: an RLE of another size, or a value that is neither polygons nor RLE.
    """
    if isinstance(segm, dict):
        size = segm.get("size")
        if size is None or "counts" not in segm:
            raise CorruptAnnotation(path, f"{field} is a dict without RLE 'size' and 'counts'", item)
        if [int(s) for s in size] != [height, width]:
            raise CorruptAnnotation(
                path, f"{field} RLE size {list(size)} differs from image size {[height, width]}", item
            )
    elif not isinstance(segm, list) or not all(isinstance(p, list) for p in segm):
        raise CorruptAnnotation(path, f"{field} must be a list of polygons or an RLE dict", item)
    try:
        return annotation_to_mask({"segmentation": segm}, height, width)
    except Exception as err:  # pycocotools raises bare exceptions on malformed input
        raise CorruptAnnotation(path, f"cannot decode {field} ({type(err).__name__}: {err})", item) from None


def amodal_mask(
    ann: dict[str, Any],
    visible: np.ndarray,
    height: int,
    width: int,
    *,
    field: str = "amodal_segmentation",
    path: str | Path = "",
) -> np.ndarray:
    """The whole-object mask of an annotation: its ``field`` if present, else its visible mask.

    Args:
        ann: the COCO annotation.
        visible: its ``(H, W)`` uint8 visible mask (the fallback).
        height / width: image size.
        field: annotation key of the amodal segmentation.
        path: the json (named in errors).

    Returns:
        ``(H, W)`` uint8 in {0, 1}.
    """
    segm = ann.get(field)
    if not segm:
        return visible
    return decode_segmentation(
        segm, height, width, path=path, item=f"annotation {ann.get('id')}", field=field
    )


def inner_border(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` (4-connected) steps of its outside; the image edge is not outside.

    Args:
        mask: ``(H, W)`` binary mask.
        width: border width in pixels (>= 1).

    Returns:
        ``(H, W)`` bool.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=bool)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return out
    pad = width + 1  # the crop keeps enough outside pixels for the erosion to see them
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])
    crop = mask[r0:r1, c0:c1]
    eroded = ndimage.binary_erosion(crop, structure=_CROSS, iterations=width, border_value=1)
    out[r0:r1, c0:c1] = crop & ~eroded
    return out


def semantic_map(
    masks: np.ndarray,
    labels: np.ndarray,
    height: int,
    width: int,
    *,
    order: Sequence[int] | None = None,
    border_label: int | None = None,
    border_width: int = 1,
    border_classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Paint an ``(H, W)`` int64 class map from instance masks (rule in the module docstring).

    Args:
        masks: ``(N, H, W)`` binary visible masks.
        labels: ``(N,)`` class labels (>= 1).
        height / width: map size (used when N = 0).
        order: labels in painting order, the last on top; labels not listed are painted first, in
            increasing order. None: increasing label order.
        border_label: class of the border pixels, or None for no border class.
        border_width: border width in pixels.
        border_classes: labels whose objects get a border; None = all.

    Returns:
        ``(H, W)`` int64.
    """
    masks = np.asarray(masks).astype(bool, copy=False).reshape(-1, height, width)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    out = np.zeros((height, width), dtype=np.int64)
    listed = [int(k) for k in order] if order is not None else []
    present = sorted(set(labels.tolist()))
    for label in [k for k in present if k not in listed] + [k for k in listed if k in present]:
        out[masks[labels == label].any(axis=0)] = label
    if border_label is not None:
        chosen = (
            np.ones(len(labels), bool) if border_classes is None else np.isin(labels, list(border_classes))
        )
        for mask in masks[chosen]:
            out[inner_border(mask, border_width)] = border_label
    return out


def overlap_map(amodal_masks: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint8: 1 where two or more of the ``(N, H, W)`` amodal masks of one label cover the pixel."""
    masks = np.asarray(amodal_masks).astype(bool, copy=False).reshape(-1, height, width)
    labels = np.asarray(labels).reshape(-1)
    out = np.zeros((height, width), dtype=bool)
    for label in np.unique(labels):
        out |= masks[labels == label].sum(axis=0, dtype=np.int64) >= 2
    return out.astype(np.uint8)


@dataclass(frozen=True)
class MapContext:
    """What a computed map may use besides the objects' masks and labels (most maps ignore it).

    Attributes:
        category_names: the data set's category names in label order (``category_names[label - 1]``).
        read_file: ``name -> (H, W) array or None``: the image's own map file ``name`` read raw, None when
            the image names none (e.g. an annotated ``overlap`` map).
    """

    category_names: tuple[str, ...] = ()
    read_file: Callable[[str], np.ndarray | None] = lambda name: None


ComputedMap = Callable[[np.ndarray, np.ndarray, int, int, MapContext], np.ndarray]


def _attention(variant: str) -> ComputedMap:
    """The computed map of attention ``variant``: cells / nuclei picked by category name."""

    def compute(
        masks: np.ndarray, labels: np.ndarray, height: int, width: int, context: MapContext
    ) -> np.ndarray:
        overlap = context.read_file("overlap") if variant in ("v2", "v3", "v4") else None
        masks = masks.reshape(-1, height, width)
        return attention_map_of_objects(
            masks, labels, context.category_names, variant=variant, overlap=overlap
        )

    return compute


COMPUTED_MAPS: dict[str, ComputedMap] = {
    "overlap": lambda masks, labels, height, width, context: overlap_map(masks, labels, height, width),
    # SEU-Net overlap attention maps (issue 14); "overlap_attention" is the thesis' final map (v4)
    "overlap_attention": _attention("v4"),
    **{f"overlap_attention_{variant}": _attention(variant) for variant in ATTENTION_VARIANTS},
}
"""Maps computable from the objects: ``name -> f(amodal_masks (N, H, W), labels (N,), H, W, context) -> (H, W)``."""


def compute_map(
    name: str,
    amodal_masks: np.ndarray | None,
    labels: np.ndarray,
    height: int,
    width: int,
    *,
    path: str | Path,
    item: str,
    context: MapContext | None = None,
) -> np.ndarray:
    """Map ``name`` of :data:`COMPUTED_MAPS` from ``(N, H, W)`` amodal masks and ``(N,)`` labels.

    Raises:
        CorruptAnnotation: ``name`` is not computable (the image ``item`` of ``path`` had to name a file),
            or the data cannot give it (e.g. an attention map without a ``cell`` category).
    """
    if name not in COMPUTED_MAPS:
        raise CorruptAnnotation(
            path,
            f"has no '{name}' file in its 'maps' and '{name}' cannot be computed "
            f"(computable: {', '.join(sorted(COMPUTED_MAPS))})",
            item,
        )
    masks = amodal_masks if amodal_masks is not None else stack_masks([], height, width)
    try:
        return COMPUTED_MAPS[name](masks, labels, height, width, context or MapContext())
    except ValueError as err:  # the map's own check of what the data holds
        raise CorruptAnnotation(path, f"cannot compute map '{name}': {err}", item) from None


def stack_masks(masks: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` uint8 stack of ``(H, W)`` masks (``(0, H, W)`` for none)."""
    return np.stack(masks) if len(masks) else np.zeros((0, height, width), dtype=np.uint8)


def read_map(path: str | Path, *, labels: bool = False) -> np.ndarray:
    """Read a single-channel per-pixel map file raw (no intensity scaling).

    Args:
        path: ``.npy``, ``.tif`` / ``.tiff`` or any image format OpenCV reads (PNG 8 / 16 bit, ...).
        labels: the map is a class map: its values must be integers.

    Returns:
        The ``(H, W)`` array with the stored dtype and values.

    Raises:
        UnreadableImage: the file is missing, cannot be decoded, is not single-channel, or (``labels``) does
            not hold integers.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(path, "file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            import cv2

            data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if data is None:
                raise ValueError("OpenCV cannot decode it")
    except Exception as err:
        raise UnreadableImage(path, f"cannot read map ({type(err).__name__}: {err})") from None
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise UnreadableImage(path, f"a per-pixel map must be single-channel (H, W), got shape {data.shape}")
    if labels and not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise UnreadableImage(path, f"a class map must hold integer classes, got {data.dtype} values")
    return data
