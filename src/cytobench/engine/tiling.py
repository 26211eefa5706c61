"""Tiled inference for any model of the contract: windows, overlap and an inference scale.

:class:`TiledPredictor` wraps ``model(images) -> list[Prediction]`` so that an image larger than the
training images, or at another pixel size, is predicted the way the model was trained: the image is
resized by ``scale`` (e.g. training pixel size / image pixel size), cut into overlapping windows of the
training size, each window predicted, and the windows' objects merged back in the image's own pixels.
Merging keeps an object only in the window whose *core* holds its centre (mask centroid, else box
centre); cores tile the image exactly, ending halfway through each overlap, so an object cut by one
window's edge is kept whole from its neighbour and no object is counted twice, without NMS across
windows. Dense ``semantic`` probabilities and per-head ``maps`` are pasted core by core.

Used by :func:`cytobench.engine.inference.inference_on_dataset` (its ``predict`` argument),
``cytobench predict`` and ``cytobench fish analyze``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["TiledPredictor", "tile_windows", "training_image_size"]

Window = tuple[tuple[int, int, int, int], tuple[float, float, float, float]]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[Window]:
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


def training_image_size(data_config: Mapping[str, Any] | None, default: int = 512) -> int:
    """Longer side of a run's training images from its data config (``size``: int or [W, H]), else ``default``."""
    size = (data_config or {}).get("size")
    if isinstance(size, int | float) and size > 0:
        return int(size)
    if isinstance(size, list | tuple) and size and all(isinstance(v, int | float) for v in size):
        return int(max(size))
    return default


class TiledPredictor:
    """``model(images)`` on windows of each image, merged back (see the module docstring).

    Args:
        model: any callable of the model contract (eval mode): ``list[Tensor (C, H, W)] -> list[Prediction]``.
            A model with a ``detector`` and ``classify(images, detections)`` has only its detector tiled;
            ``classify`` then runs once on the whole (unresized) image and its merged detections.
        window: window side in px of the resized image; 0 never tiles.
        overlap: overlap of neighbouring windows in px (default ``window // 4``).
        scale: the image is resized by this factor before inference (bilinear); predictions come back in
            the original pixels (boxes and keypoints divided by it, masks resized with nearest neighbour).
        min_ratio: images whose longer (resized) side is at most ``min_ratio * window`` are predicted whole.
        batch_size: windows per forward pass.
    """

    def __init__(
        self,
        model: Callable[[list[torch.Tensor]], list[dict[str, Any]]],
        window: int,
        overlap: int | None = None,
        scale: float = 1.0,
        min_ratio: float = 1.5,
        batch_size: int = 4,
    ) -> None:
        if window < 0 or scale <= 0 or (overlap is not None and not 0 <= overlap < max(window, 1)):
            raise ValueError(f"bad tiling: window {window}, overlap {overlap}, scale {scale}")
        # a detect-then-classify model (``detector`` + ``classify(images, detections)``: the two-stage
        # karyotyper) is tiled around its detector only, so its classifier sees each image whole, as one
        # cell (crops' lengths relative to the whole cell's, the pair prior over all its chromosomes)
        self.classify = getattr(model, "classify", None) if hasattr(model, "detector") else None
        self.model = model.detector if self.classify is not None else model
        self.window = int(window)
        self.overlap = self.window // 4 if overlap is None else int(overlap)
        self.scale, self.min_ratio, self.batch_size = float(scale), float(min_ratio), int(batch_size)

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        return [self.predict_one(image) for image in images]

    def predict_one(self, image: torch.Tensor) -> dict[str, Any]:
        """One (C, H, W) image -> one prediction in its own pixels."""
        height, width = (int(v) for v in image.shape[-2:])
        resized = image
        if self.scale != 1.0:
            resized = F.interpolate(
                image[None], scale_factor=self.scale, mode="bilinear", align_corners=False
            )[0]
        h, w = (int(v) for v in resized.shape[-2:])
        if self.window <= 0 or max(h, w) <= self.min_ratio * self.window:
            pred = dict(self.model([resized])[0])
        else:
            pred = self._tiled(resized, tile_windows(h, w, self.window, self.overlap))
        if self.scale != 1.0:
            pred = _rescale(pred, self.scale, (height, width))
        return pred if self.classify is None else self.classify([image], [pred])[0]

    def _tiled(self, image: torch.Tensor, windows: list[Window]) -> dict[str, Any]:
        h, w = (int(v) for v in image.shape[-2:])
        crops = [image[:, y0:y1, x0:x1] for (y0, y1, x0, x1), _ in windows]
        preds: list[dict[str, Any]] = []
        for start in range(0, len(crops), self.batch_size):
            preds += self.model(crops[start : start + self.batch_size])
        parts: dict[str, list[torch.Tensor]] = {}
        semantic = None
        maps: dict[str, torch.Tensor] = {}
        for ((y0, y1, x0, x1), core), pred in zip(windows, preds):
            keep = _in_core(pred, core, (y0, x0))
            for key, value in pred.items():
                if key == "semantic":
                    semantic = _paste_core(semantic, value, (y0, x0), core, (h, w))
                elif key == "maps":  # per-head (h, w) probability maps: pasted like the semantic classes
                    for head, prob in value.items():
                        maps[head] = _paste_core(maps.get(head), prob[None], (y0, x0), core, (h, w))
                elif isinstance(value, torch.Tensor) and value.ndim >= 1 and len(value) == len(keep):
                    parts.setdefault(key, []).append(_shift(key, value[keep], (y0, y1, x0, x1), (h, w)))
        if not parts:  # no window had objects: an empty prediction of the first window's shape
            parts = {
                k: [_shift(k, v[:0], windows[0][0], (h, w))]
                for k, v in preds[0].items()
                if k not in ("semantic", "maps")
            }
        out: dict[str, Any] = {key: torch.cat(values) for key, values in parts.items()}
        if semantic is not None:
            out["semantic"] = semantic
        if maps:
            out["maps"] = {head: canvas[0] for head, canvas in maps.items()}
        return out


def _centres(pred: Mapping[str, Any]) -> torch.Tensor:
    """(N, 2) object centres (x, y) in window pixels: mask centroids, else box centres.

    An object with an empty mask and no box gets a centre outside every core (it is dropped).
    """
    masks = pred.get("masks")
    n = len(pred["scores"])
    centres = torch.full((n, 2), -1.0)
    if pred.get("boxes") is not None:
        boxes = pred["boxes"].float().reshape(-1, 4).cpu()
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if masks is not None and len(masks):
        m = (masks[:, 0] > 0.5 if masks.ndim == 4 else masks != 0).float().cpu()
        area = m.sum(dim=(1, 2))
        cy = (m.sum(dim=2) * torch.arange(m.shape[1])).sum(dim=1) / area.clamp(min=1)
        cx = (m.sum(dim=1) * torch.arange(m.shape[2])).sum(dim=1) / area.clamp(min=1)
        has = area > 0
        centres[has] = torch.stack([cx, cy], dim=1)[has]
    return centres


def _in_core(
    pred: Mapping[str, Any], core: tuple[float, float, float, float], origin: tuple[int, int]
) -> torch.Tensor:
    """(N,) bool: objects whose centre (in image pixels) lies in the window's core."""
    cy0, cy1, cx0, cx1 = core
    centres = _centres(pred)
    x = centres[:, 0] + origin[1]
    y = centres[:, 1] + origin[0]
    keep = (x >= cx0) & (x < cx1) & (y >= cy0) & (y < cy1)
    return keep.to(pred["scores"].device)


def _shift(
    key: str, value: torch.Tensor, window: tuple[int, int, int, int], size: tuple[int, int]
) -> torch.Tensor:
    """A window's per-object field in image pixels (boxes / keypoints moved, masks pasted at full size)."""
    y0, y1, x0, x1 = window
    if key == "boxes":
        return value + value.new_tensor([x0, y0, x0, y0])
    if key == "keypoints":
        value = value.clone()
        value[..., 0] += x0
        value[..., 1] += y0
        return value
    if key == "masks":
        canvas = value.new_zeros((*value.shape[:-2], *size))
        canvas[..., y0:y1, x0:x1] = value
        return canvas
    return value


def _paste_core(
    canvas: torch.Tensor | None,
    value: torch.Tensor,
    origin: tuple[int, int],
    core: tuple[float, float, float, float],
    size: tuple[int, int],
) -> torch.Tensor:
    """Paste the core of a window's (C, h, w) semantic probabilities into the image's (C, H, W) canvas."""
    if canvas is None:
        canvas = value.new_zeros((value.shape[0], *size))
    y0, x0 = origin
    cy0, cy1, cx0, cx1 = (int(round(v)) for v in core)
    canvas[:, cy0:cy1, cx0:cx1] = value[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return canvas


def _rescale(pred: dict[str, Any], scale: float, size: tuple[int, int]) -> dict[str, Any]:
    """Predictions on an image resized by ``scale`` back in the original (H, W) pixels."""
    out = dict(pred)
    if "boxes" in out:
        out["boxes"] = out["boxes"] / scale
    if "keypoints" in out:
        kps = out["keypoints"].clone()
        kps[..., :2] /= scale
        out["keypoints"] = kps
    if "masks" in out:
        masks = out["masks"]
        flat = masks if masks.ndim == 4 else masks[:, None]
        resized = (
            F.interpolate(flat.float(), size=size, mode="nearest")
            if len(flat)
            else flat.new_zeros((0, 1, *size))
        )
        out["masks"] = resized.to(masks.dtype) if masks.ndim == 4 else resized[:, 0].to(masks.dtype)
    if "semantic" in out:
        out["semantic"] = F.interpolate(
            out["semantic"][None].float(), size=size, mode="bilinear", align_corners=False
        )[0]
    if "maps" in out:
        out["maps"] = {
            head: F.interpolate(prob[None, None].float(), size=size, mode="bilinear", align_corners=False)[
                0, 0
            ]
            for head, prob in out["maps"].items()
        }
    return out
