"""Reading the truth of simulated interphase-FISH sets (:mod:`cytobench.simulate.fish`) for evaluators.

Polygons and signal positions are COCO pixel coordinates (pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask

__all__ = ["FishImageTruth", "NucleusTruth", "load_fish_truth", "signal_points"]


@dataclass
class NucleusTruth:
    """One annotated nucleus.

    Attributes:
        ann_id: COCO annotation id.
        category: ``"whole"`` or ``"destroyed"``.
        polygon: (P, 2) float64 outline (x, y), COCO pixel coordinates.
        bbox: ``[x, y, w, h]``.
        karyotype: karyotype name, None for destroyed nuclei.
        n_red: drawn chr21 copies (0 for destroyed nuclei).
        n_green: drawn X copies.
        signals: ``{"red": (n_red, 2), "green": (n_green, 2)}`` float64 copy centres (x, y).
    """

    ann_id: int
    category: str
    polygon: np.ndarray
    bbox: list[float]
    karyotype: str | None
    n_red: int
    n_green: int
    signals: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FishImageTruth:
    """Truth of one image: ``nuclei`` in annotation order and the image's sample and mix."""

    image_id: int
    file_name: str
    width: int
    height: int
    sample: str | None
    karyotype_mix: dict[str, float] | None
    nuclei: list[NucleusTruth]

    def masks(self, category: str | None = "whole") -> np.ndarray:
        """(N, H, W) bool masks of the nuclei of ``category`` (None: all), in ``nuclei`` order."""
        chosen = [n for n in self.nuclei if category is None or n.category == category]
        out = np.zeros((len(chosen), self.height, self.width), dtype=bool)
        for k, nuc in enumerate(chosen):
            ann = {"segmentation": [nuc.polygon.ravel().tolist()]}
            out[k] = annotation_to_mask(ann, self.height, self.width).astype(bool)
        return out

    def mask_crops(self, category: str | None = "whole") -> list[tuple[int, int, np.ndarray]]:
        """The same masks as crops ``(x0, y0, (h, w) bool)`` (pixel (0, 0) = image pixel (y0, x0)).

        Cheap for large images with hundreds of nuclei, where :meth:`masks` would need N x H x W.
        """
        out = []
        for nuc in self.nuclei:
            if category is not None and nuc.category != category:
                continue
            x0 = max(int(math.floor(nuc.polygon[:, 0].min())) - 1, 0)
            y0 = max(int(math.floor(nuc.polygon[:, 1].min())) - 1, 0)
            w = min(int(math.ceil(nuc.polygon[:, 0].max())) + 1, self.width) - x0
            h = min(int(math.ceil(nuc.polygon[:, 1].max())) + 1, self.height) - y0
            ann = {"segmentation": [(nuc.polygon - [x0, y0]).ravel().tolist()]}
            out.append((x0, y0, annotation_to_mask(ann, h, w).astype(bool)))
        return out

    def whole(self) -> list[NucleusTruth]:
        """The whole nuclei (the ones whose signals count), in ``nuclei`` order."""
        return [n for n in self.nuclei if n.category == "whole"]


def load_fish_truth(ann_file: str | Path) -> list[FishImageTruth]:
    """Read a simulated (or similarly annotated) FISH COCO file into per-image truth.

    Args:
        ann_file: COCO json written by :func:`simulate_fish` (validated by :func:`load_coco`).

    Returns:
        One :class:`FishImageTruth` per image, in the file's image order.

    Raises:
        CorruptAnnotation: the json is invalid, or a nucleus has no polygon.
    """
    from cytobench.errors import CorruptAnnotation

    data = load_coco(ann_file)
    cat_names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[Any, list[NucleusTruth]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        segm = ann.get("segmentation")
        if not isinstance(segm, list) or not segm or len(segm[0]) < 6:
            raise CorruptAnnotation(ann_file, "needs a polygon segmentation", f"annotation {ann['id']}")
        signals = {c: signal_points([ann], c) for c in ("red", "green")}
        by_image[ann["image_id"]].append(
            NucleusTruth(
                ann_id=ann["id"],
                category=cat_names[ann["category_id"]],
                polygon=np.asarray(segm[0], dtype=np.float64).reshape(-1, 2),
                bbox=[float(v) for v in ann["bbox"]],
                karyotype=ann.get("karyotype"),
                n_red=int(ann.get("n_red", len(signals["red"]))),
                n_green=int(ann.get("n_green", len(signals["green"]))),
                signals=signals,
            )
        )
    return [
        FishImageTruth(
            image_id=img["id"],
            file_name=img["file_name"],
            width=int(img["width"]),
            height=int(img["height"]),
            sample=img.get("sample"),
            karyotype_mix=img.get("karyotype_mix"),
            nuclei=by_image[img["id"]],
        )
        for img in data["images"]
    ]


def signal_points(annotations: Sequence[Mapping[str, Any]], channel: str) -> np.ndarray:
    """(M, 2) float64 ``(x, y)`` of the countable signals of ``channel`` in ``annotations``, in order.

    Args:
        annotations: COCO nucleus annotations (entries without ``signals`` contribute nothing).
        channel: ``"red"`` or ``"green"``.
    """
    if channel not in ("red", "green"):
        raise ValueError(f"channel must be 'red' or 'green', got {channel!r}")
    pts = [
        (s["x"], s["y"]) for ann in annotations for s in ann.get("signals") or [] if s["channel"] == channel
    ]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)
