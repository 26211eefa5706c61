"""Nucleus segmenters for ``fish analyze``: YOLOv8-seg (trained) and a classical Otsu + watershed fallback.

A segmenter has ``name`` and ``segment(image: FishImage) -> Nuclei``, with masks at the image's full
resolution. Categories follow the simulator and the paper: 1 = whole nucleus, 2 = destroyed nucleus.

Large images are **tiled** for YOLO, so that nuclei reach the network at the scale it was trained at: an
image whose longer side exceeds 1.5 tiles is cut into ``tile`` x ``tile`` windows (default: the training
images' size from the checkpoint's data config, else 512, the paper's usual size) overlapping by
``tile // 4`` px (128 px at 512, more than the 67-px default nucleus diameter); each window is letterboxed to
the checkpoint's ``imgsz`` as in training, and a nucleus is kept from the window whose *core* (the window
minus half of each overlap with a neighbour) holds its mask centroid, so a nucleus cut by one window's edge
is taken whole from its neighbour and never twice. Masks are pasted back at full resolution. Images up to
1.5 tiles go whole (letterboxed). The Otsu segmenter always runs on the whole image at full resolution,
with sizes derived from the nucleus diameter (measured per image unless given). Spot detection always uses
the full-resolution planes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cytobench.errors import BadInputError, CytobenchError
from cytobench.fish.channels import FishImage

__all__ = ["CATEGORIES", "Nuclei", "Segmenter", "YoloSegmenterAdapter", "build_segmenter", "tile_windows"]

CATEGORIES = [
    {"id": 1, "name": "whole", "supercategory": "nucleus"},
    {"id": 2, "name": "destroyed", "supercategory": "nucleus"},
]
WHOLE, DESTROYED = 1, 2


@dataclass
class Nuclei:
    """Segmented nuclei of one image.

    Attributes:
        masks: ``(N, H, W)`` bool, full resolution (masks may overlap).
        labels: ``(N,)`` int64, 1 = whole, 2 = destroyed.
        scores: ``(N,)`` float32 confidence (YOLO) or solidity (Otsu).
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Nuclei:
        return cls(np.zeros((0, *shape), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))


class Segmenter(Protocol):
    name: str

    def segment(self, image: FishImage) -> Nuclei: ...


class YoloSegmenterAdapter:
    """YOLOv8-seg checkpoint (a :class:`cytobench.models.yolo.YoloModel`) as a :class:`Segmenter`.

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` of a ``fish_*`` run.
        imgsz: inference (letterbox) size; None: the checkpoint's training ``imgsz``.
        conf: confidence threshold.
        iou: NMS IoU threshold.
        device: ``"cpu"``, ``"cuda"``, ...
        tile: window size for large images; None: the training image size (or 512); 0: never tile.

    Raises:
        BadInputError: the checkpoint is missing or its categories are not ``whole`` / ``destroyed``.
    """

    name = "yolo"

    def __init__(
        self,
        checkpoint: str | Path,
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        device: str = "cpu",
        tile: int | None = None,
    ) -> None:
        from cytobench.models.yolo import load_yolo_model

        path = Path(checkpoint)
        if not path.is_file():
            raise BadInputError(path, "checkpoint not found")
        self.model = load_yolo_model(path, device=device, imgsz=imgsz, conf=conf, iou=iou).eval()
        if self.model.task != "segment":
            raise BadInputError(
                path, f"a YOLO {self.model.task} model; fish analyze needs a segmentation model"
            )
        names = [str(c.get("name", "")).lower() for c in self.model.categories]
        known = {"whole": WHOLE, "destroyed": DESTROYED}
        if not set(names) <= set(known):
            raise BadInputError(path, f"categories {names} are not whole / destroyed nuclei")
        self._label_map = np.array([0] + [known[n] for n in names], np.int64)
        self.imgsz, self.conf, self.iou = imgsz, conf, iou
        self.tile = _training_size(getattr(self.model, "metadata", {})) if tile is None else int(tile)

    def segment(self, image: FishImage) -> Nuclei:
        rgb = image.rgb8()
        h, w = image.shape
        if self.tile <= 0 or max(h, w) <= 1.5 * self.tile:
            return self._to_nuclei(self._predict([rgb])[0], image.shape)
        windows = tile_windows(h, w, self.tile, self.tile // 4)
        preds = self._predict([rgb[y0:y1, x0:x1] for (y0, y1, x0, x1), _core in windows])
        masks, labels, scores = [], [], []
        for ((y0, y1, x0, x1), (cy0, cy1, cx0, cx1)), pred in zip(windows, preds):
            for mask, label, score in zip(pred["masks"], pred["labels"], pred["scores"]):
                ys, xs = np.nonzero(mask)
                if ys.size == 0:
                    continue
                my, mx = ys.mean() + y0, xs.mean() + x0
                if not (cy0 <= my < cy1 and cx0 <= mx < cx1):
                    continue
                full = np.zeros((h, w), bool)
                full[y0:y1, x0:x1] = mask
                masks.append(full)
                labels.append(label)
                scores.append(score)
        if not masks:
            return Nuclei.empty(image.shape)
        pred = {"masks": np.stack(masks), "labels": np.asarray(labels), "scores": np.asarray(scores)}
        return self._to_nuclei(pred, image.shape)

    def _predict(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """YOLO on uint8 RGB crops, through the model contract (tensors in [0, 1] in, predictions out)."""
        tensors = [
            torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0 for img in images
        ]
        with torch.no_grad():
            preds = self.model(tensors)
        return [{k: v.numpy() for k, v in pred.items()} for pred in preds]

    def _to_nuclei(self, pred: dict[str, np.ndarray], shape: tuple[int, int]) -> Nuclei:
        masks = np.asarray(pred["masks"], dtype=bool).reshape(-1, *shape)
        labels = self._label_map[np.asarray(pred["labels"], np.int64)]
        return Nuclei(masks, labels, np.asarray(pred["scores"], np.float32))


def _training_size(metadata: dict) -> int:
    """Longer side of the training images from a checkpoint's ``data_config`` (``size``), else 512."""
    size = (metadata or {}).get("data_config", {}).get("size") if isinstance(metadata, dict) else None
    if isinstance(size, int | float) and size > 0:
        return int(size)
    if isinstance(size, list | tuple) and size and all(isinstance(v, int | float) for v in size):
        return int(max(size))
    return 512


def tile_windows(
    height: int, width: int, tile: int, overlap: int
) -> list[tuple[tuple[int, int, int, int], tuple[float, float, float, float]]]:
    """Overlapping windows covering an image and the core of each (cores tile the image exactly).

    Args:
        height: H.
        width: W.
        tile: window side (clipped to the image).
        overlap: overlap of neighbouring windows in px.

    Returns:
        ``[((y0, y1, x0, x1), (core_y0, core_y1, core_x0, core_x1)), ...]``: window slices and its core
        bounds in pixel coordinates; a core ends halfway through the overlap with the next window. Windows
        are spread evenly, so neighbours overlap by at least ``overlap`` px.
    """

    def starts_and_cuts(n: int) -> tuple[list[int], list[float]]:
        size = min(tile, n)
        count = 1 if size >= n else int(np.ceil((n - overlap) / max(size - overlap, 1)))
        starts = [int(round(v)) for v in np.linspace(0, n - size, count)]  # even overlaps >= ``overlap``
        cuts = [0.0] + [(b + a + size) / 2.0 for a, b in zip(starts[:-1], starts[1:])] + [float(n)]
        return starts, cuts

    ys, ycuts = starts_and_cuts(height)
    xs, xcuts = starts_and_cuts(width)
    th, tw = min(tile, height), min(tile, width)
    return [
        ((y0, y0 + th, x0, x0 + tw), (ycuts[i], ycuts[i + 1], xcuts[j], xcuts[j + 1]))
        for i, y0 in enumerate(ys)
        for j, x0 in enumerate(xs)
    ]


def build_segmenter(
    kind: str,
    checkpoint: str | Path | None = None,
    *,
    imgsz: int | None = None,
    conf: float = 0.25,
    device: str = "cpu",
    nucleus_diameter_px: float | None = None,
    tile: int | None = None,
) -> Segmenter:
    """Segmenter by name: ``"yolo"`` (needs ``checkpoint``) or ``"otsu"``."""
    if kind == "otsu":
        from cytobench.fish.otsu import OtsuSegmenter

        return OtsuSegmenter(nucleus_diameter_px=nucleus_diameter_px)
    if kind == "yolo":
        if checkpoint is None:
            raise CytobenchError(
                "fish analyze: --segmenter yolo needs --checkpoint CKPT (or use --segmenter otsu)"
            )
        return YoloSegmenterAdapter(checkpoint, imgsz=imgsz, conf=conf, device=device, tile=tile)
    raise ValueError(f"unknown segmenter {kind!r} (yolo, otsu)")
