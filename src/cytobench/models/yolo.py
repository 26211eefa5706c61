"""YOLO (detect / segment) through ultralytics behind cytobench's model contract (:class:`YoloModel`).

Training runs through ultralytics' own trainer (:mod:`cytobench.engine.ultralytics_run`); this module
holds what training, prediction and the paper tables share.

Offline set-up: :mod:`cytobench.models.yolo_offline`; checkpoints (a safe format with cytobench metadata):
:mod:`cytobench.models.yolo_checkpoint`. Both modules' public names are re-exported here.

Labels: YOLO class ``c`` is label ``c + 1`` and COCO category ``categories[c]`` (1-based labels as in
every cytobench model; 0 is background).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.models.yolo_checkpoint import (
    CKPT_KEY,
    TASKS,
    YOLO_FORMAT,
    build_yolo_model,
    is_yolo_checkpoint,
    load_yolo_file,
    read_yolo_metadata,
    save_yolo_checkpoint,
    yolo_checkpoint_state,
)
from cytobench.models.yolo_offline import setup_ultralytics_offline, ultralytics_device

__all__ = [
    "CKPT_KEY",
    "TASKS",
    "YOLO_FORMAT",
    "YoloModel",
    "build_yolo",
    "build_yolo_detector",
    "build_yolo_model",
    "is_yolo_checkpoint",
    "load_yolo_model",
    "read_yolo_metadata",
    "save_yolo_checkpoint",
    "setup_ultralytics_offline",
    "to_uint8_rgb",
    "ultralytics_device",
    "yolo_checkpoint_state",
]


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a cytobench image: ``(H, W[, C])`` float in [0, 1] or uint8.

    One channel is repeated three times; a fourth (alpha) channel is dropped; two channels get an
    empty third one. Float images are scaled by 255 and rounded, so 8-bit files round-trip exactly.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 2:
        arr = np.concatenate([arr, np.zeros_like(arr[:, :, :1])], axis=2)
    elif channels > 3:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


class YoloModel(torch.nn.Module):
    """An ultralytics YOLO (``detect`` or ``segment``) behind cytobench's model contract.

    In eval mode ``model(images)`` takes ``list[Tensor]`` (C x H x W in [0, 1], as every dataset gives)
    and returns ``list[Prediction]``: ``boxes`` (N, 4) float32 xyxy pixels of the input image,
    ``scores`` (N,), ``labels`` (N,) int64 in 1..K (``categories[label - 1]``), for ``detect``
    ``class_scores`` (N, K): the head's score of every class for each kept box (column ``label - 1`` is
    ``scores``, except under ``pair_prior``), and, for ``segment``, ``masks`` (N, H, W) uint8 at the
    input size. So ``cytobench predict``, the evaluators, ``fish
    analyze`` and the reproduce modules run it like any torch model. Training runs through ultralytics'
    own trainer (:mod:`cytobench.engine.ultralytics_run`), chosen by this class as the model config's
    ``_target_`` (:func:`build_yolo`); ``model(images, targets)`` in train mode is an error.

    Images are converted as ultralytics' own reader would see the file: 1 channel repeated, 2 channels
    padded, more than 3 cut to 3 (:func:`to_uint8_rgb`), in BGR order.

    Args:
        yolo: an ``ultralytics.YOLO``; kept outside the module tree, since ultralytics' ``Model.train``
            means "fit" and ``nn.Module.eval()`` would call it.
        categories: COCO category dicts in label order.
        task: ``"detect"`` or ``"segment"``.
        imgsz: inference (letterbox) size.
        conf: lowest score kept (~0.001 for AP, where the whole precision-recall curve counts).
        iou: NMS IoU threshold (class-wise, as ultralytics).
        max_det: most detections per image (dense images: raise it, e.g. 2000).
        pair_prior: karyotyping (``detect`` on the 24 chromosome classes): each image is one cell, and
            each chromosome has one class. A box's *existence* is the sum of its per-class scores (at most
            1: a chromosome torn between 4 and 5, 0.4 each, is still there); a class-agnostic NMS at
            ``cell_nms_iou`` keeps one box per chromosome (the stock NMS is per class, so such a chromosome
            may come as a 4 and a 5) and merges into it the boxes it overlaps: existence
            ``1 - prod(1 - e_j)``, class scores summed (``class_scores`` then holds the sums). The kept boxes
            with existence >= ``cell_score_thr`` are labelled jointly under the pair prior
            (:func:`~cytobench.models.karyotype_classifier.cell_labels`, the two-stage model's), the others
            by their likeliest class; ``scores`` are the existences. Measured on simulated karyograms
            (experiments/karyotype/README.md).
        cell_score_thr: boxes with at least this existence form the cell (pair prior).
        cell_nms_iou: IoU above which the class-agnostic NMS drops the less likely of two boxes.
        train_settings: what :mod:`cytobench.engine.ultralytics_run` needs to train it (model config).
    """

    def __init__(
        self,
        yolo: Any,
        categories: Sequence[Mapping[str, Any]],
        task: str = "segment",
        imgsz: int = 640,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        pair_prior: bool = False,
        cell_score_thr: float = 0.5,
        cell_nms_iou: float = 0.5,
        train_settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise BadInputError("model.task", f"{task!r} is not one of {TASKS}")
        if pair_prior and task != "detect":
            raise BadInputError(
                "model.eval.pair_prior", "the pair prior relabels karyotype detections (task detect)"
            )
        object.__setattr__(self, "yolo", yolo)  # not a submodule (see Args)
        self.categories = [dict(c) for c in categories]
        self.task, self.imgsz = task, int(imgsz)
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.pair_prior, self.cell_score_thr = bool(pair_prior), float(cell_score_thr)
        self.cell_nms_iou = float(cell_nms_iou)
        self.train_settings = dict(train_settings or {})
        self.eval_batch_size = int(self.train_settings.get("eval_batch_size", 8))
        self.metadata: dict[str, Any] = {}

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        """``{label: COCO category id}``."""
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}

    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        if targets is not None:
            raise RuntimeError(
                "YOLO trains through ultralytics' trainer (python train.py model=yolov8_...), not model(images, targets)"
            )
        if not images:
            return []
        device = images[0].device
        arrays = [to_uint8_rgb(img.detach().cpu().permute(1, 2, 0).numpy()) for img in images]
        results = self.yolo.predict(
            source=[np.ascontiguousarray(a[:, :, ::-1]) for a in arrays],  # ultralytics takes numpy as BGR
            predictor=_class_scores_predictor() if self.task == "detect" else None,
            imgsz=self.imgsz,
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            retina_masks=True,  # masks at the input resolution
            device=ultralytics_device(device),
            verbose=False,
            save=False,
        )
        out = []
        for result, array in zip(results, arrays):
            pred = _result_to_prediction(result, array.shape[:2], self.task == "segment")
            tensors = {k: torch.from_numpy(v).to(device) for k, v in pred.items()}
            out.append(self.cell_step(tensors) if self.pair_prior else tensors)
        return out

    def cell_step(self, pred: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One image's detections (with ``class_scores``) as one cell of chromosomes (Args: ``pair_prior``).

        ``model(images)`` runs it when ``pair_prior`` is on; a caller that tiles a large image turns that off
        and runs it once on the merged detections, so that the whole image is the cell.
        """
        from cytobench.models.karyotype_cell import pair_prior_cell

        if "class_scores" not in pred:
            raise BadInputError(
                "model.eval.pair_prior", "this YOLO gives no per-class scores (an end-to-end head, no NMS)"
            )
        columns = torch.as_tensor(self._chromosome_columns(), device=pred["boxes"].device)
        return pair_prior_cell(pred, columns, self.cell_nms_iou, self.cell_score_thr)

    def _chromosome_columns(self) -> list[int]:
        """The YOLO class (column) of each chromosome class 1-22, X, Y, found by category name."""
        from cytobench.models.karyotype_cell import chromosome_columns

        return chromosome_columns([str(c.get("name")) for c in self.categories])


def build_yolo(
    num_classes: int | None = None,
    *,
    task: str = "segment",
    arch: str = "yolov8s-seg.yaml",
    weights_path: str | Path | None = None,
    imgsz: int = 640,
    train_args: Mapping[str, Any] | None = None,
    eval: Mapping[str, Any] | None = None,  # noqa: A002 - the config key users write
    extra_train: Sequence[Mapping[str, Any]] = (),
    trust_weights: bool = False,
) -> YoloModel:
    """The model config's ``_target_`` for YOLO runs: an untrained :class:`YoloModel` with its training settings.

    ``python train.py model=yolov8_seg`` (or ``yolov8_det``) sees a :class:`YoloModel` and hands it to
    ultralytics' trainer (:func:`cytobench.engine.ultralytics_run.train_yolo`); the weights are built
    there, from ``arch`` (random init) or ``weights_path`` (a local ``.pt``).

    Args:
        num_classes: K foreground classes + background, as every cytobench builder (ultralytics takes
            the class names from the exported data).
        task: ``"detect"`` or ``"segment"``.
        arch: ultralytics model yaml (``yolov8s-seg.yaml``, ``yolov8n.yaml``, ...); never a bare ``.pt`` name.
        weights_path: local ``.pt`` to start from: a cytobench YOLO checkpoint, or with ``trust_weights`` a
            pickled ultralytics ``.pt`` (e.g. COCO-pretrained).
        imgsz: training and inference size.
        train_args: arguments of ``YOLO.train`` (epochs, batch, lr0, augmentation, ...).
        eval: how the val split is predicted for scoring: ``imgsz``, ``conf``, ``iou``, ``max_det``, ``batch_size``,
            ``pair_prior``, ``cell_score_thr``, ``cell_nms_iou`` (:class:`YoloModel`).
        extra_train: more COCO sets for training only: ``[{images, ann_file, prepare (optional)}]``.
        trust_weights: load a pickled ultralytics ``weights_path``; unpickling runs whatever code the file
            names, so only for files whose source you trust (``model.trust_weights=true``).
    """
    ev = dict(eval or {})
    settings = {
        "arch": arch,
        "weights_path": weights_path,
        "trust_weights": bool(trust_weights),
        "imgsz": int(imgsz),
        "train_args": dict(train_args or {}),
        "extra_train": [dict(item) for item in extra_train],
        "num_classes": num_classes,
        "eval_batch_size": int(ev.get("batch_size", 8)),
    }
    return YoloModel(
        None,
        [],
        task=task,
        imgsz=int(ev.get("imgsz") or imgsz),
        conf=float(ev.get("conf", 0.001)),
        iou=float(ev.get("iou", 0.7)),
        max_det=int(ev.get("max_det", 300)),
        pair_prior=bool(ev.get("pair_prior", False)),
        cell_score_thr=float(ev.get("cell_score_thr", 0.5)),
        cell_nms_iou=float(ev.get("cell_nms_iou", 0.5)),
        train_settings=settings,
    )


@functools.cache
def _class_scores_predictor() -> Any:
    """ultralytics' ``DetectionPredictor`` whose results also carry ``class_scores`` (every class's score of
    each kept box); the boxes, scores and labels are the stock predictor's: the same NMS call, which also
    returns the kept boxes' indices into the head's output."""
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms

    class ClassScoresPredictor(DetectionPredictor):
        def postprocess(self, preds: Any, img: Any, orig_imgs: Any, **kwargs: Any) -> Any:
            raw = preds[0] if isinstance(preds, (list, tuple)) else preds
            if getattr(self.model, "end2end", False) or raw.ndim != 3:  # no per-class rows: the stock path
                return super().postprocess(preds, img, orig_imgs, **kwargs)
            kept, index = nms.non_max_suppression(
                raw,
                self.args.conf,
                kwargs.pop("iou", self.args.iou),
                self.args.classes,
                self.args.agnostic_nms,
                max_det=self.args.max_det,
                nc=0,
                return_idxs=True,
            )
            if not isinstance(orig_imgs, list):
                from ultralytics.utils import ops

                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            results = self.construct_results(kept, img, orig_imgs, **kwargs)
            n_classes = len(self.model.names)
            for result, head, idx in zip(results, raw, index):  # head: (4 + classes, anchors)
                result.class_scores = head[4 : 4 + n_classes, idx.long().view(-1)].T
            return results

    return ClassScoresPredictor


def _result_to_prediction(result: Any, shape: tuple[int, int], with_masks: bool) -> dict[str, np.ndarray]:
    """One ultralytics ``Results`` as NumPy arrays (see :class:`YoloModel`)."""
    height, width = shape
    boxes = result.boxes
    n = 0 if boxes is None else len(boxes)
    pred = {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
    }
    if n:
        pred = {
            "boxes": boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
            "scores": boxes.conf.cpu().numpy().astype(np.float32).reshape(-1),
            "labels": boxes.cls.cpu().numpy().astype(np.int64).reshape(-1) + 1,
        }
    class_scores = getattr(result, "class_scores", None)
    if class_scores is not None:
        n_classes = len(result.names)
        pred["class_scores"] = class_scores.float().cpu().numpy().reshape(n, n_classes)
    if not with_masks:
        return pred
    masks = np.zeros((n, height, width), np.uint8)
    if n and result.masks is not None:
        data = result.masks.data
        masks = (data > 0.5).to(torch.uint8).cpu().numpy() if data.is_floating_point() else data.cpu().numpy()
        masks = masks.astype(np.uint8, copy=False)
        if masks.shape[1:] != (height, width):
            import cv2

            masks = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])
    pred["masks"] = masks
    return pred


def load_yolo_model(
    checkpoint: str | Path, device: str = "cpu", trust: bool = False, **overrides: Any
) -> YoloModel:
    """Load a YOLO checkpoint written by a cytobench run (or a plain ultralytics ``.pt``) as a :class:`YoloModel`.

    Prediction settings (``imgsz``, ``conf``, ``iou``, ``max_det``, the pair prior's) are the run's own (its model config's
    ``eval`` node), so ``cytobench predict`` predicts as the run scored its val split; ``overrides``
    replace them.

    Args:
        checkpoint: ``run_dir/checkpoints/best.pt`` or ``last.pt`` (or, with ``trust``, any local ultralytics
            detect / segment weights; their categories are then ``[{"id": c + 1, "name": names[c]}]``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (where ultralytics' model is moved).
        trust: load a pickled ultralytics ``.pt`` (see :func:`build_yolo_model`).

    Raises:
        BadInputError: missing or unreadable file, or a model of another task (pose, classify, ...).
        UnsafeCheckpointError: a pickled checkpoint without ``trust`` (nothing of it ran).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise BadInputError(path, "checkpoint file not found")
    yolo, metadata = load_yolo_file(path, trust)
    task = getattr(yolo, "task", None)
    if task not in TASKS:
        raise BadInputError(path, f"an ultralytics {task or '?'} model, not one of {TASKS}")
    names = yolo.names
    categories = metadata.get("categories") or [{"id": c + 1, "name": str(names[c])} for c in sorted(names)]
    if len(categories) != len(names):
        raise BadInputError(
            path, f"{len(categories)} categories in the metadata but {len(names)} model classes"
        )
    mcfg = metadata.get("model_config") or {}
    ev = dict(mcfg.get("eval") or {})
    imgsz = int(metadata.get("imgsz") or (yolo.ckpt or {}).get("train_args", {}).get("imgsz") or 640)
    settings = {
        "imgsz": int(ev.get("imgsz") or imgsz),
        "conf": float(ev.get("conf", 0.001)),
        "iou": float(ev.get("iou", 0.7)),
        "max_det": int(ev.get("max_det", 300)),
        "pair_prior": bool(ev.get("pair_prior", False)),
        "cell_score_thr": float(ev.get("cell_score_thr", 0.5)),
        "cell_nms_iou": float(ev.get("cell_nms_iou", 0.5)),
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    model = YoloModel(yolo, categories, task=task, **settings)
    model.metadata = metadata
    if device != "cpu":
        yolo.to(torch.device("cuda" if ultralytics_device(device) != "cpu" else "cpu"))
    return model


def build_yolo_detector(
    num_classes: int = 2, *, checkpoint: str | Path | None = None, trust: bool = False, **overrides: Any
) -> YoloModel:
    """A trained one-class YOLO as another model's detector: the two-stage karyotyper's enumerator
    (``model.detector`` of experiment=karyotype_two_stage_yolo), frozen.

    Its weights stay in ``checkpoint`` (they are not parameters of the module that holds it: the holder's
    checkpoints name this file through their model config, so keep it where it is).

    Args:
        num_classes: 2 (one class + background), as the two-stage model builds every detector.
        checkpoint: ``best.pt`` of a one-class YOLO run (experiment=karyotype_enumerator_yolo).
        trust: see :func:`load_yolo_model`.
        overrides: prediction settings (``conf``, ``iou``, ``max_det``, ``imgsz``), else the run's own.

    Raises:
        BadInputError: no checkpoint given, or a YOLO of more than one class.
    """
    if int(num_classes) != 2:
        raise BadInputError(
            "model.detector", f"an enumeration detector has one class: num_classes 2, got {num_classes}"
        )
    if not checkpoint:
        raise BadInputError(
            "model.detector.checkpoint",
            "no value given: the best.pt of a one-class YOLO run (python train.py experiment=karyotype_enumerator_yolo)",
        )
    if not Path(checkpoint).is_file():
        raise BadInputError(
            checkpoint,
            "the enumerator's checkpoint (model.detector.checkpoint) is not there: a two-stage model with a "
            "YOLO enumerator reads stage 1 from that file, so keep the enumerator's run folder where it was trained",
        )
    model = load_yolo_model(str(checkpoint), trust=trust, pair_prior=False, **overrides)
    if len(model.categories) != 1:
        raise BadInputError(
            checkpoint,
            f"a YOLO of {len(model.categories)} classes; the enumerator finds one (train it with "
            "experiment=karyotype_enumerator_yolo)",
        )
    return model
