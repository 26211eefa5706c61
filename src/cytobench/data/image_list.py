"""A dataset over image files with optional per-image ground truth, for prediction and test sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cytobench.errors import BadInputError

__all__ = ["ImageListDataset"]


class ImageListDataset(Dataset):
    """``(image, target)`` per file: image (C, H, W) float in [0, 1] read by :func:`read_image_tensor`.

    Args:
        paths: image files (any format cytobench reads).
        image_ids: COCO image ids (default 1..N in order).
        targets: optional ground truth per image (e.g. :func:`cytobench.io.coco_convert.coco_to_targets`);
            without it a target holds only ``image_id`` and ``meta`` (file name, original size).
        plane_suffixes: multi-plane samples stored as one file per plane (e.g. ``["_bf_lower", "_bf_upper"]``
            for two focal planes): each path is the first plane, its stem ending in the first suffix; the
            other planes are the files whose stem ends in the other suffixes instead, stacked as channels
            in this order. None: each file is one sample.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        image_ids: Sequence[int] | None = None,
        targets: Sequence[Mapping[str, Any]] | None = None,
        plane_suffixes: Sequence[str] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.plane_suffixes = list(plane_suffixes) if plane_suffixes else None
        if self.plane_suffixes is not None:
            for path in self.paths:
                if not path.stem.endswith(self.plane_suffixes[0]):
                    raise BadInputError(
                        path, f"the name does not end in the first plane's suffix {self.plane_suffixes[0]!r}"
                    )
        self.image_ids = list(image_ids) if image_ids is not None else list(range(1, len(self.paths) + 1))
        if len(self.image_ids) != len(self.paths) or (
            targets is not None and len(targets) != len(self.paths)
        ):
            raise ValueError("paths, image_ids and targets must have one entry per image")
        self.targets = list(targets) if targets is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from cytobench.io.images import read_image_tensor

        image = read_image_tensor(self.paths[index])
        if self.plane_suffixes is not None:
            image = torch.cat(
                [image, *(self._other_plane(index, suffix, image) for suffix in self.plane_suffixes[1:])]
            )
        h, w = (int(v) for v in image.shape[-2:])
        target: dict[str, Any] = dict(self.targets[index]) if self.targets is not None else {}
        target["image_id"] = self.image_ids[index]
        meta = dict(target.get("meta") or {})
        meta.setdefault("file_name", self.paths[index].name)
        meta.setdefault("orig_size", (h, w))
        target["meta"] = meta
        if self.targets is None:
            target.update(
                boxes=torch.zeros((0, 4)), labels=torch.zeros(0, dtype=torch.int64)
            )  # no ground truth: an empty target keeps evaluators' contract
        return image, target

    def _other_plane(self, index: int, suffix: str, first: torch.Tensor) -> torch.Tensor:
        from cytobench.io.images import read_image_tensor

        path = self.paths[index]
        other = path.with_name(path.stem[: -len(self.plane_suffixes[0])] + suffix + path.suffix)
        if not other.is_file():
            raise BadInputError(other, f"plane {suffix!r} of {path.name} not found")
        plane = read_image_tensor(other)
        if plane.shape[-2:] != first.shape[-2:]:
            raise BadInputError(
                other, f"size {tuple(plane.shape[-2:])} differs from {tuple(first.shape[-2:])} of {path.name}"
            )
        return plane
