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
1.5 tiles go whole (letterboxed). YOLO takes the (red, green, DAPI) planes as float RGB (zeros for the probes
of a nuclei-only image) and quantises them to 8 bits as its training images are. The Otsu segmenter always
runs on the whole image at full resolution, with sizes derived from the nucleus diameter (in micrometres
through the pixel size, else measured per image; :mod:`cytobench.fish.otsu`). Spot detection always uses
the full-resolution planes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cytobench.engine.tiling import TiledPredictor, training_image_size
from cytobench.errors import BadInputError, CytobenchError
from cytobench.fish.channels import FishImage

__all__ = ["CATEGORIES", "Nuclei", "Segmenter", "YoloSegmenterAdapter", "build_segmenter"]

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
        notes: what the segmenter measured on the way (the Otsu segmenter: nucleus diameter used and its
            source, foreground area rejected as too small / too large; see
            :meth:`cytobench.fish.otsu.OtsuSegmenter.segment`); empty when it records nothing.
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)

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
        trust: load a pickled ultralytics ``.pt`` (``--trust-checkpoint``; see
            :func:`cytobench.models.yolo.build_yolo_model`).

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
        trust: bool = False,
    ) -> None:
        from cytobench.models.yolo import load_yolo_model

        path = Path(checkpoint)
        if not path.is_file():
            raise BadInputError(path, "checkpoint not found")
        self.model = load_yolo_model(path, device=device, trust=trust, imgsz=imgsz, conf=conf, iou=iou).eval()
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
        self.tile = training_image_size(self.model.metadata.get("data_config")) if tile is None else int(tile)

    def segment(self, image: FishImage) -> Nuclei:
        """Nuclei of one image; images over 1.5 windows are predicted in windows of ``tile`` px."""
        rgb = torch.from_numpy(np.ascontiguousarray(image.rgb())).permute(2, 0, 1)
        with torch.no_grad():
            pred = TiledPredictor(self.model, max(self.tile, 0), max(self.tile, 0) // 4).predict_one(rgb)
        pred = {k: v.cpu().numpy() for k, v in pred.items()}
        if not len(pred["scores"]):
            return Nuclei.empty(image.shape)
        return self._to_nuclei(pred, image.shape)

    def _to_nuclei(self, pred: dict[str, np.ndarray], shape: tuple[int, int]) -> Nuclei:
        masks = np.asarray(pred["masks"], dtype=bool).reshape(-1, *shape)
        labels = self._label_map[np.asarray(pred["labels"], np.int64)]
        return Nuclei(masks, labels, np.asarray(pred["scores"], np.float32))


def build_segmenter(
    kind: str,
    checkpoint: str | Path | None = None,
    *,
    imgsz: int | None = None,
    conf: float = 0.25,
    device: str = "cpu",
    nucleus_diameter_px: float | None = None,
    tile: int | None = None,
    nucleus_diameter_um: float | None = None,
    trust: bool = False,
) -> Segmenter:
    """Segmenter by name: ``"yolo"`` (needs ``checkpoint``) or ``"otsu"``.

    ``nucleus_diameter_px`` / ``nucleus_diameter_um`` set the Otsu segmenter's nucleus size (None: its
    defaults, :class:`cytobench.fish.otsu.OtsuSegmenter`).
    """
    if kind == "otsu":
        from cytobench.fish.otsu import DEFAULT_NUCLEUS_DIAMETER_UM, OtsuSegmenter

        return OtsuSegmenter(
            nucleus_diameter_px=nucleus_diameter_px,
            nucleus_diameter_um=nucleus_diameter_um or DEFAULT_NUCLEUS_DIAMETER_UM,
        )
    if kind == "yolo":
        if checkpoint is None:
            raise CytobenchError(
                "fish analyze: --segmenter yolo needs --checkpoint CKPT (or use --segmenter otsu)"
            )
        return YoloSegmenterAdapter(checkpoint, imgsz=imgsz, conf=conf, device=device, tile=tile, trust=trust)
    raise ValueError(f"unknown segmenter {kind!r} (yolo, otsu)")
