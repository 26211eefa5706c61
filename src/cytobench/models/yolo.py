"""YOLO (detect / segment) through ultralytics: offline set-up, checkpoints with cytobench metadata, the model.

Training runs through ultralytics' own trainer (:mod:`cytobench.engine.ultralytics_run`); this module
holds what training, prediction and the paper tables share.

Offline: :func:`setup_ultralytics_offline` sets ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=0`` (and
``YOLO_CONFIG_DIR``, to the run folder or a temp folder, when ultralytics is not imported yet and the
variable is unset), copies matplotlib's
``DejaVuSans.ttf`` to ``<config dir>/Arial.ttf`` and ``Arial.Unicode.ttf`` (every training run asks for
them and would download them otherwise) and turns off ultralytics' telemetry and its third-party logger
integrations (cytobench logs to CSV / W&B itself). Models are built from a model ``.yaml`` or a local
``.pt`` path, never from a bare ``.pt`` name (that downloads).

Checkpoint format: ``run_dir/checkpoints/{best,last}.pt`` are ultralytics checkpoints (loadable by
``ultralytics.YOLO(path)`` as they are) with one extra top-level key, ``"cytobench"``::

    {"backend": "ultralytics", "task": "segment", "categories": [COCO category dicts, label order],
     "label_to_cat_id": {label: category_id}, "imgsz": int, "epoch": int,
     "model_config": {...}, "data_config": {...}, "ultralytics_version": str}

Labels: YOLO class ``c`` is label ``c + 1`` and COCO category ``categories[c]`` (1-based labels as in
every cytobench model; 0 is background).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.io.files import save_atomic

CKPT_KEY = "cytobench"
TASKS = ("detect", "segment")
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "hub": False,
    "neptune": False,
    "vscode_msg": False,
}

__all__ = [
    "CKPT_KEY",
    "TASKS",
    "YoloModel",
    "build_yolo",
    "build_yolo_model",
    "load_yolo_model",
    "read_yolo_metadata",
    "save_yolo_checkpoint",
    "setup_ultralytics_offline",
    "to_uint8_rgb",
    "ultralytics_device",
]


def setup_ultralytics_offline(config_dir: str | Path | None = None) -> Path:
    """Prepare ultralytics to run without network; returns its settings folder (``USER_CONFIG_DIR``).

    Args:
        config_dir: value for ``YOLO_CONFIG_DIR`` when ultralytics is not imported yet and the variable
            is unset (ultralytics reads it once, at import); None: ``<tmp>/cytobench-ultralytics``, so
            that the user's own ultralytics settings are never changed.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if "ultralytics" not in sys.modules:
        default = Path(tempfile.gettempdir()) / "cytobench-ultralytics"  # never the user's ~/.config settings
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(config_dir or default).resolve()))
    import ultralytics.utils as ul_utils

    for name in ("ultralytics.utils", "ultralytics.utils.checks", "ultralytics.utils.events"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ONLINE", False):
            module.ONLINE = False  # imported before YOLO_OFFLINE was set
    user_dir = Path(ul_utils.USER_CONFIG_DIR)
    user_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONT_NAMES:
        if not (user_dir / name).is_file():
            shutil.copyfile(font, user_dir / name)
    settings = ul_utils.SETTINGS
    changes = {k: v for k, v in _INTEGRATIONS_OFF.items() if k in settings and settings[k] != v}
    if changes:
        settings.update(changes)
    return user_dir


def ultralytics_device(device: str | torch.device) -> str:
    """ultralytics' device string: ``"cpu"`` or a CUDA index such as ``"0"``.

    Args:
        device: ``"auto"`` (first GPU if any, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch device.
    """
    dev = str(device)
    if dev == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        return dev.split(":", 1)[1] if ":" in dev else "0"
    return dev


def build_yolo_model(arch: str, weights_path: str | Path | None = None) -> Any:
    """An ``ultralytics.YOLO`` from a model yaml (random init) or from local weights.

    Args:
        arch: ultralytics model yaml, e.g. ``"yolov8s-seg.yaml"`` (the scale letter picks the size).
        weights_path: local ``.pt`` (ultralytics checkpoint, e.g. COCO-pretrained or a previous run);
            when given, the architecture comes from this file and ``arch`` is ignored.

    Raises:
        BadInputError: ``arch`` is a bare ``.pt`` name, or ``weights_path`` does not exist / is unreadable.
    """
    setup_ultralytics_offline()
    from ultralytics import YOLO

    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise BadInputError(path, "weights file not found (model.weights_path)")
        try:
            return YOLO(str(path))
        except Exception as err:  # torch / ultralytics raise many types for foreign files
            raise BadInputError(
                path, f"not an ultralytics checkpoint ({type(err).__name__}: {err})"
            ) from None
    if not str(arch).endswith((".yaml", ".yml")):
        raise BadInputError(
            "model.arch", f"{arch!r} is not a model yaml; give local weights as model.weights_path instead"
        )
    return YOLO(str(arch))


def read_yolo_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """The ``"cytobench"`` entry of a checkpoint (empty for a plain ultralytics file)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise BadInputError(path, "checkpoint file not found")
    setup_ultralytics_offline()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise BadInputError(path, f"not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict):
        raise BadInputError(path, "not an ultralytics checkpoint (no dict inside)")
    return dict(ckpt.get(CKPT_KEY) or {})


def save_yolo_checkpoint(source: str | Path, dest: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Copy an ultralytics checkpoint to ``dest`` (atomically) with ``metadata`` under ``"cytobench"``."""
    ckpt = torch.load(Path(source), map_location="cpu", weights_only=False)
    ckpt[CKPT_KEY] = dict(metadata)
    return save_atomic(ckpt, dest)


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
    ``scores`` (N,), ``labels`` (N,) int64 in 1..K (``categories[label - 1]``) and, for ``segment``,
    ``masks`` (N, H, W) uint8 at the input size. So ``cytobench predict``, the evaluators, ``fish
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
        train_settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise BadInputError("model.task", f"{task!r} is not one of {TASKS}")
        object.__setattr__(self, "yolo", yolo)  # not a submodule (see Args)
        self.categories = [dict(c) for c in categories]
        self.task, self.imgsz = task, int(imgsz)
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
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
            out.append({k: torch.from_numpy(v).to(device) for k, v in pred.items()})
        return out


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
        weights_path: local ultralytics ``.pt`` to start from.
        imgsz: training and inference size.
        train_args: arguments of ``YOLO.train`` (epochs, batch, lr0, augmentation, ...).
        eval: how the val split is predicted for scoring: ``imgsz``, ``conf``, ``iou``, ``max_det``, ``batch_size``.
        extra_train: more COCO sets for training only: ``[{images, ann_file, prepare (optional)}]``.
    """
    ev = dict(eval or {})
    settings = {
        "arch": arch,
        "weights_path": weights_path,
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
        train_settings=settings,
    )


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


def load_yolo_model(checkpoint: str | Path, device: str = "cpu", **overrides: Any) -> YoloModel:
    """Load a YOLO checkpoint written by a cytobench run (or a plain ultralytics ``.pt``) as a :class:`YoloModel`.

    Prediction settings (``imgsz``, ``conf``, ``iou``, ``max_det``) are the run's own (its model config's
    ``eval`` node), so ``cytobench predict`` predicts as the run scored its val split; ``overrides``
    replace them.

    Args:
        checkpoint: ``run_dir/checkpoints/best.pt`` or ``last.pt`` (or any local ultralytics detect / segment
            weights; their categories are then ``[{"id": c + 1, "name": names[c]}]``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (where ultralytics' model is moved).

    Raises:
        BadInputError: missing or unreadable file, or a model of another task (pose, classify, ...).
    """
    path = Path(checkpoint)
    metadata = read_yolo_metadata(path)
    yolo = build_yolo_model("", weights_path=path)
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
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    model = YoloModel(yolo, categories, task=task, **settings)
    model.metadata = metadata
    if device != "cpu":
        yolo.to(torch.device("cuda" if ultralytics_device(device) != "cpu" else "cpu"))
    return model
