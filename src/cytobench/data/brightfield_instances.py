"""Brightfield cells as instances (thesis Sec. 5.7): the data path of the instance-segmentation baselines.

The brightfield simulator (:mod:`cytobench.simulate.brightfield`) writes one COCO json per split with two
categories, ``cell`` and ``nucleus``, because SEU-Net's semantic heads need both. An instance model must
see cells only: a nucleus is part of its cell, not an object beside it, and scoring it as one would double
the ground truth. :func:`ensure_brightfield_instances` therefore derives, once per simulated set, a
cells-only copy of each split json in ``instances_dir`` (inside the simulated folder by default):

* categories: ``[{"id": 1, "name": "cell"}]``; annotations: the cells, unchanged (visible ``segmentation``,
  ``amodal_segmentation``, box and area of the visible mask);
* ``planes``: the selected planes only (``data.planes``, e.g. the lower and upper brightfield plane), so a
  reader that takes every plane of the json (:func:`cytobench.engine.ultralytics_run.score_checkpoint`)
  sees the same channels as the training set; ``maps`` (semantic, overlap) kept, so SEU-Net's heads can
  train on the same json;
* ``file_name``: a composite 8-bit RGB PNG of those planes (``<stem>_planes.png`` beside the jsons). It is what
  YOLO trains on (ultralytics reads ``file_name``): channel ``c`` = plane ``c``, an empty channel where there
  are fewer than three planes. That is exactly :func:`cytobench.models.yolo.to_uint8_rgb` of the stacked
  planes, which is what :class:`~cytobench.models.yolo.YoloModel` feeds the network at evaluation, so
  YOLO sees the same pixels in training and scoring.

Plane and map paths are relative to ``instances_dir`` (``../images/...``): the derived folder holds only
the json files and composites. It is written like a simulation (:func:`cytobench.data.prepare.ensure_simulated`:
once, atomically, keyed by its arguments): a folder derived with another plane selection is an error
naming it; choose another ``data.instances_dir``.

:func:`brightfield_instance_dataset` reads such a json with ``masks`` and ``amodal_masks``, plus the
SEU-Net maps when ``heads`` are given (the SEU-Net + watershed baseline trains its heads and is scored on
instances from the same set). After augmentation each object's box is the box of its visible mask and
objects whose visible mask left the crop are dropped: the shared transforms clip a box to the crop, which
for a non-convex mask (an overlapped cell's visible part) can leave a box with no mask pixel in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.data.brightfield_sets import _model_maps, check_brightfield_contract
from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.data.prepare import ensure_simulated
from cytobench.errors import BadInputError
from cytobench.io.files import write_json_atomic
from cytobench.io.images import read_image, write_image
from cytobench.ops.instances import mask_boxes
from cytobench.types import PER_OBJECT_KEYS

__all__ = [
    "BrightfieldInstances",
    "brightfield_instance_dataset",
    "brightfield_instance_training_set",
    "cells_only_coco",
    "derive_brightfield_instances",
    "ensure_brightfield_instances",
]

SPLITS = ("train.json", "val.json")
CELL = "cell"


def cells_only_coco(
    coco: Mapping[str, Any], planes: Sequence[int], composite_name: Any, prefix: str = "../images"
) -> dict[str, Any]:
    """The cells-only copy of a brightfield COCO dict (module docstring).

    Args:
        coco: a split json of ``cytobench simulate brightfield``.
        planes: indices into each image's ``planes`` list.
        composite_name: ``image dict -> file name`` of its composite, relative to the derived folder.
        prefix: the source images folder relative to the derived folder.

    Raises:
        BadInputError: no ``cell`` category, or an image with fewer planes than selected.
    """
    cells = [c for c in coco.get("categories", []) if c.get("name") == CELL]
    if not cells:
        names = [c.get("name") for c in coco.get("categories", [])]
        raise BadInputError("brightfield json", f"has no '{CELL}' category (categories: {names})")
    cell_id = int(cells[0]["id"])
    images = []
    for info in coco["images"]:
        files = info.get("planes") or [info["file_name"]]
        if any(not -len(files) <= int(i) < len(files) for i in planes):
            raise BadInputError(
                "brightfield json",
                f"image {info['id']} has {len(files)} plane(s), planes {list(planes)} selected",
            )
        image = {k: v for k, v in info.items() if k not in ("file_name", "planes", "maps")}
        image["file_name"] = composite_name(info)
        image["planes"] = [f"{prefix}/{files[int(i)]}" for i in planes]
        image["maps"] = {name: f"{prefix}/{path}" for name, path in (info.get("maps") or {}).items()}
        images.append(image)
    annotations = [
        {**ann, "category_id": 1} for ann in coco["annotations"] if int(ann["category_id"]) == cell_id
    ]
    return {
        **{k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CELL}],
    }


def derive_brightfield_instances(
    out_dir: str | Path, planes: Sequence[int], splits: Sequence[str] = SPLITS
) -> Path:
    """Write the cells-only split jsons and plane composites of the simulated set ``out_dir`` lies in.

    ``out_dir`` is a direct child of the simulated folder (paths in the jsons are ``../images/...``);
    ``splits`` are the source jsons (a held-out test set has one, ``annotations.json``).
    """
    out_dir = Path(out_dir)
    source_dir = out_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)  # so that ``out_dir/../images`` resolves while writing
    planes = [int(i) for i in planes]
    if not 1 <= len(planes) <= 3:
        raise BadInputError("data.planes", f"YOLO composites take 1 to 3 planes, got {planes}")
    for split in splits:
        coco = json.loads((source_dir / split).read_text(encoding="utf-8"))

        def composite_name(info: Mapping[str, Any]) -> str:
            return f"{Path(info['file_name']).stem}_planes.png"  # no "images/" folder: ultralytics maps the
            # last "/images/" of a path to "/labels/" to find an image's labels

        derived = cells_only_coco(coco, planes, composite_name)
        for info in derived["images"]:
            stack = [read_image(out_dir / p).array for p in info["planes"]]
            write_image(out_dir / info["file_name"], _composite(np.concatenate(stack, axis=2)))
        write_json_atomic(out_dir / split, derived)
    return out_dir


def _composite(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an (H, W, C <= 3) float image: what ``to_uint8_rgb`` gives (empty third channel)."""
    from cytobench.models.yolo import to_uint8_rgb

    return to_uint8_rgb(image)


def ensure_brightfield_instances(
    instances_dir: str | Path, planes: Sequence[int], simulator: Any, out_dir: str | Path, **simulation: Any
) -> Path:
    """The data config's ``prepare``: the brightfield simulation (once), then its cells-only copy (once).

    Args:
        instances_dir: the derived folder, a direct child of ``out_dir``.
        planes: plane indices of the source images stacked as channels (``data.planes``).
        simulator / out_dir / simulation: the brightfield data config's simulation
            (:func:`cytobench.data.prepare.ensure_simulated`'s arguments).
    """
    source = ensure_simulated(simulator, out_dir, **simulation)
    instances_dir = Path(instances_dir)
    if instances_dir.parent.resolve() != Path(source).resolve():
        raise BadInputError(
            "data.instances_dir", f"must be a folder directly inside {source}, got {instances_dir}"
        )
    return ensure_simulated(derive_brightfield_instances, instances_dir, planes=[int(i) for i in planes])


class BrightfieldInstances(CocoDetectionDataset):
    """A :class:`CocoDetectionDataset` whose boxes follow the visible masks after augmentation.

    Every item's ``boxes`` are the boxes of its ``masks`` (:func:`~cytobench.ops.instances.mask_boxes`),
    and objects with fewer than ``min_mask_pixels`` visible pixels are dropped from every per-object field
    (module docstring). Needs ``with_masks=True``.
    """

    def __init__(self, *args: Any, min_mask_pixels: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.with_masks:
            raise ValueError("BrightfieldInstances needs with_masks=True")
        self.min_mask_pixels = max(int(min_mask_pixels), 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = super().__getitem__(index)
        masks = target["masks"]
        n = len(masks)
        keep = (
            masks.reshape(n, -1).sum(dim=1) >= self.min_mask_pixels if n else torch.zeros(0, dtype=torch.bool)
        )
        if not bool(keep.all()):
            for key in [*PER_OBJECT_KEYS, *(k for k in target if k.endswith("_masks"))]:
                if isinstance(target.get(key), torch.Tensor) and len(target[key]) == n:
                    target[key] = target[key][keep]
        target["boxes"] = torch.from_numpy(mask_boxes(target["masks"].numpy())).reshape(-1, 4)
        return image, target


def _instance_maps(
    heads: Sequence[str] | None,
    attention_key: str | None,
    overlap_loss: str | None,
    overlap_map: bool,
    attention_mask: bool,
) -> list[str]:
    """The maps a set yields: SEU-Net's heads' (``heads``), or an instance model's overlap head's."""
    if heads is not None:
        return _model_maps(heads, attention_key, overlap_loss)
    if overlap_map:
        return _model_maps(["overlap"], attention_key if attention_mask else None, "focal")
    return []


def brightfield_instance_dataset(
    root: str | Path,
    ann_file: str | Path,
    *,
    heads: Sequence[str] | None = None,
    attention_key: str | None = None,
    overlap_loss: str | None = None,
    planes: Sequence[int] | None = None,
    amodal: bool = True,
    transforms: Any = None,
    seed: int = 0,
    min_mask_pixels: int = 1,
    cache_computed_maps: bool = True,
    overlap_map: bool = False,
    attention_mask: bool = False,
) -> BrightfieldInstances:
    """A cells-only brightfield set with instance masks (module docstring).

    Args:
        root / ann_file: the derived folder and one of its split jsons.
        heads / attention_key / overlap_loss: SEU-Net's (``model.heads`` ...): when ``heads`` is given, the
            set also yields ``semantic`` and the maps those heads need, and is checked for them; None (an
            instance model) yields no maps.
        planes: indices into the json's ``planes`` (None: all of them, the selection it was derived with).
        amodal: also yield ``amodal_masks`` (whole cells, hidden parts included).
        transforms / seed / cache_computed_maps: as in :class:`CocoDetectionDataset`.
        min_mask_pixels: objects with fewer visible pixels after augmentation are dropped.
        overlap_map / attention_mask: an instance model's overlap head (SparseSEU-Net's ``overlap_head``):
            also yield ``overlap``, and with ``attention_mask`` the ``attention_key`` map of its focal loss.
    """
    heads = None if heads is None else [str(h) for h in heads]
    planes = None if planes is None else [int(i) for i in planes]
    dataset = BrightfieldInstances(
        root,
        ann_file,
        transforms=transforms,
        seed=seed,
        with_masks=True,
        with_amodal_masks=bool(amodal),
        with_semantic=heads is not None,
        maps=_instance_maps(heads, attention_key, overlap_loss, overlap_map, attention_mask),
        planes=planes,
        cache_computed_maps=cache_computed_maps,
        min_mask_pixels=min_mask_pixels,
    )
    names = dataset.category_names
    if names != [CELL]:
        raise BadInputError(
            ann_file, f"has categories {names}; an instance set has 'cell' only (data=brightfield_instances)"
        )
    # the nucleus category is left out by design: the nuclei head reads the semantic map file, as the others
    checked = None if heads is None else ["cytoplasm" if h == "nuclei" else h for h in heads]
    if checked is None and overlap_map:
        checked = ["overlap"]
    check_brightfield_contract(dataset.coco, ann_file, checked, planes)
    return dataset


def brightfield_instance_training_set(
    train_set: str,
    real_root: str | Path,
    real_ann_file: str | Path,
    synthetic_dir: Any = None,
    **options: Any,
) -> BrightfieldInstances:
    """The training split of ``data=brightfield_instances``: the simulated (``real``) set only.

    Takes the brightfield data config's training node as it is (``train_set``, ``synthetic_dir``), so the
    instance config inherits it; synthetic training sets (Tables 5.4-5.6) are SEU-Net's, not the baselines'.

    Raises:
        BadInputError: ``train_set`` other than ``real``.
    """
    del synthetic_dir
    if train_set != "real":
        raise BadInputError(
            "data.train_set",
            f"the instance baselines train on the simulated set only ('real'), got {train_set!r}",
        )
    return brightfield_instance_dataset(real_root, real_ann_file, **options)
