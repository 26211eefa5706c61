"""Run a trained checkpoint on image files and return COCO results (the ``cytobench predict`` command).

Any checkpoint a run wrote (the shared trainer's, or a YOLO run's) is rebuilt as a model of the one
contract (``model(images) -> list[Prediction]``) and run through the streaming loop
(:func:`cytobench.engine.inference.inference_on_dataset`) with a :class:`CocoResultsWriter`, so its
results are converted exactly as the evaluators convert them (:mod:`cytobench.io.coco_convert`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from cytobench.data.collate import detection_collate
from cytobench.data.image_list import ImageListDataset
from cytobench.engine.distributed import local_device
from cytobench.engine.inference import inference_on_dataset
from cytobench.engine.predict_maps import DenseMapWriter
from cytobench.errors import BadInputError, CytobenchError
from cytobench.evaluation.base import Evaluator, EvaluatorList
from cytobench.io.checkpoint import UnsafeCheckpointError, load_checkpoint
from cytobench.io.coco_convert import image_size, prediction_to_coco, to_numpy
from cytobench.io.files import write_json_atomic
from cytobench.models.yolo import is_yolo_checkpoint

__all__ = ["CocoResultsWriter", "load_model_from_checkpoint", "predict_images"]


def load_model_from_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", trust: bool = False
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a training run saved (its config travels inside the checkpoint).

    The file is read as weights only (:func:`cytobench.io.checkpoint.load_checkpoint`): a torch run's
    checkpoint or a YOLO run's (its ``"format"`` marker says which; ultralytics is imported only then).
    A pickled ultralytics ``.pt`` is loaded only with ``trust``.

    Args:
        path: ``run_dir/checkpoints/best.pt`` or ``last.pt``.
        device: where the model goes.
        trust: load a pickled ultralytics ``.pt`` (``--trust-checkpoint``): unpickling runs whatever code
            the file names, so only for files whose source you trust.

    Returns:
        ``(eval-mode model on device, info)``; ``info`` holds at least ``label_to_cat_id``, ``categories``,
        ``model_config`` and ``data_config`` (a torch checkpoint's whole content, a YOLO run's metadata).

    Raises:
        UnsafeCheckpointError: the file names Python objects beyond tensors and plain data (and is not a
            trusted ultralytics checkpoint); nothing of it ran.
        BadInputError: missing, unreadable or not a training checkpoint.
    """
    device = torch.device(device)
    try:
        ckpt: dict[str, Any] | None = load_checkpoint(path, map_location="cpu")
    except UnsafeCheckpointError as err:
        if not (trust and err.is_ultralytics):
            raise
        ckpt = None  # a pickled ultralytics checkpoint the user trusts: ultralytics loads it
    if ckpt is None or is_yolo_checkpoint(ckpt):
        from cytobench.models.yolo import load_yolo_model

        model = load_yolo_model(path, device=str(device), trust=trust)
        info = {**model.metadata, "label_to_cat_id": model.label_to_cat_id, "categories": model.categories}
        return model.eval(), info
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise BadInputError(path, "not a cytobench training checkpoint (no model_config)")
    try:
        model = instantiate(ckpt["model_config"], num_classes=ckpt["num_classes"])
    except (
        InstantiationException
    ) as err:  # the model's own refusal (e.g. an optional extra missing), unwrapped
        if isinstance(err.__cause__, CytobenchError):
            raise err.__cause__ from None
        raise
    model.load_state_dict(ckpt["model"])
    ckpt["label_to_cat_id"] = {int(k): int(v) for k, v in (ckpt.get("label_to_cat_id") or {}).items()}
    ckpt.setdefault("categories", [])
    return model.to(device).eval(), ckpt


class CocoResultsWriter(Evaluator):
    """Collects predictions as COCO results (RLE masks) and the images as a COCO dataset dict.

    Args:
        label_to_cat_id: model label -> dataset category id (a run's checkpoint stores it).
        categories: COCO categories of the written dataset dict.
    """

    state_fields = ("results", "images")

    def __init__(
        self, label_to_cat_id: Mapping[int, int] | None = None, categories: Sequence[Any] = ()
    ) -> None:
        self.label_to_cat_id = dict(label_to_cat_id or {})
        self.categories = list(categories)
        self.reset()

    def reset(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []

    def process_image(self, target: Mapping[str, Any], prediction: Mapping[str, Any]) -> None:
        image_id = int(to_numpy(target["image_id"]).reshape(-1)[0])
        height, width = image_size(target, prediction)  # type: ignore[arg-type]
        name = (target.get("meta") or {}).get("file_name")
        self.images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        self.results += prediction_to_coco(prediction, image_id, label_to_cat_id=self.label_to_cat_id)  # type: ignore[arg-type]

    def compute(self) -> dict[str, float]:
        return {"n_images": float(len(self.images)), "n_results": float(len(self.results))}

    def dataset(self) -> dict[str, Any]:
        """The images as a COCO dataset dict (no annotations), with the checkpoint's categories."""
        return {"images": self.images, "annotations": [], "categories": self.categories}


def predict_images(
    checkpoint: str | Path,
    images: Sequence[Path],
    *,
    device: str = "auto",
    batch_size: int = 2,
    image_ids: Sequence[int] | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    scale: float = 1.0,
    trust: bool = False,
    maps_folder: str | Path | None = None,
    plane_suffixes: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict on ``images``; returns (COCO results, COCO dataset dict listing the images and categories).

    Works for checkpoints of the shared trainer and for YOLO runs; predicted masks become RLE
    ``segmentation`` entries. Images are numbered 1..N in the given order unless ``image_ids`` (e.g. a
    ground truth's ids) are given. An image larger than the run's training images is predicted in
    windows of the training size (:class:`~cytobench.engine.tiling.TiledPredictor`), as ``fish analyze``
    does.

    Args:
        tile: window side in px; None: the training images' longer side (from the checkpoint's data
            config), used for images over 1.5 times it; 0: never tile.
        tile_overlap: overlap of neighbouring windows (default ``tile // 4``).
        scale: resize factor applied before inference, e.g. training pixel size / these images' pixel
            size (results are in the images' own pixels).
        trust: load a pickled ultralytics ``.pt`` (see :func:`load_model_from_checkpoint`).
        maps_folder: where dense predictions (``maps`` / ``semantic``) go: PNGs and ``maps.json`` with
            an RLE mask per image and head (:class:`~cytobench.engine.predict_maps.DenseMapWriter`);
            None: not written.
        plane_suffixes: samples stored as one file per plane (see
            :class:`~cytobench.data.image_list.ImageListDataset`); ``images`` are then the first planes.

    A model that slides its own windows (``model.tiles_itself``, e.g. SEU-Net) is not tiled around;
    ``tile`` / ``tile_overlap`` then set its own window and overlap.
    """
    from cytobench.engine.tiling import TiledPredictor, training_image_size

    dev = local_device(device)
    model, info = load_model_from_checkpoint(checkpoint, dev, trust=trust)
    window = training_image_size(info.get("data_config")) if tile is None else int(tile)
    if getattr(model, "tiles_itself", False):
        if tile is not None:
            model.window = int(tile) or None
            model.window_overlap = int(tile) // 2 if tile_overlap is None else int(tile_overlap)
        window = 0
    try:
        tiler = TiledPredictor(model, window, tile_overlap, scale)
    except ValueError as err:
        raise BadInputError("predict", f"{err} (the overlap must be smaller than the window)") from None
    dataset = ImageListDataset(images, image_ids, plane_suffixes=plane_suffixes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    writer = CocoResultsWriter(info["label_to_cat_id"], info["categories"])
    evaluators: list[Evaluator] = [writer]
    if maps_folder is not None:
        evaluators.append(DenseMapWriter(maps_folder, getattr(model, "map_thresholds", None)))
    inference_on_dataset(model, loader, EvaluatorList(evaluators), dev, predict=tiler)
    if maps_folder is not None and evaluators[1].records:
        write_json_atomic(Path(maps_folder) / "maps.json", evaluators[1].records)
    return writer.results, writer.dataset()
