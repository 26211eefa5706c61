"""YOLOv8-seg through ultralytics: offline set-up, checkpoints with cytobench metadata, the predictor.

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

from cytobench.engine.checkpoint import save_atomic
from cytobench.errors import BadInputError

CKPT_KEY = "cytobench"
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
    "YoloSegmenter",
    "build_yolo_model",
    "load_yolo_segmenter",
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


class YoloSegmenter:
    """A trained YOLO-seg model behind cytobench's prediction contract.

    Attributes:
        categories: COCO category dicts in label order (``categories[label - 1]``).
        imgsz: inference size used when ``predict`` gets none (the training ``imgsz``).
        metadata: the checkpoint's ``"cytobench"`` entry (empty for a plain ultralytics file).
    """

    def __init__(self, model: Any, categories: Sequence[Mapping[str, Any]], imgsz: int, device: str = "cpu"):
        self.model = model
        self.categories = [dict(c) for c in categories]
        self.imgsz = int(imgsz)
        self.device = ultralytics_device(device)
        self.metadata: dict[str, Any] = {}

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        """``{label: COCO category id}``."""
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}

    def predict(
        self,
        images: Sequence[np.ndarray],
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        batch_size: int = 8,
    ) -> list[dict[str, np.ndarray]]:
        """Segment nuclei in RGB images.

        Args:
            images: ``(H, W, 3)`` uint8 RGB arrays (``(H, W)`` grey is accepted too); sizes may differ.
            imgsz: letterbox size (None: the training size).
            conf: lowest score kept (use ~0.001 for AP, where the whole PR curve matters).
            iou: NMS IoU threshold (class-wise, as in ultralytics).
            max_det: most detections per image.
            batch_size: images per forward pass.

        Returns:
            One dict per image: ``boxes`` (N, 4) float32 xyxy absolute pixels of the original image,
            ``scores`` (N,) float32, ``labels`` (N,) int64 in 1..K (``categories[label - 1]``),
            ``masks`` (N, H, W) bool at the original image size.
        """
        arrays = [_check_rgb(img, i) for i, img in enumerate(images)]
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, len(arrays), max(1, batch_size)):
            chunk = arrays[start : start + max(1, batch_size)]
            bgr = [np.ascontiguousarray(a[:, :, ::-1]) for a in chunk]  # ultralytics takes numpy as BGR
            results = self.model.predict(
                source=bgr,
                imgsz=int(imgsz or self.imgsz),
                conf=conf,
                iou=iou,
                max_det=max_det,
                retina_masks=True,  # masks at the original resolution
                device=self.device,
                verbose=False,
                save=False,
            )
            out += [_result_to_prediction(r, a.shape[:2]) for r, a in zip(results, chunk)]
        return out


def _check_rgb(image: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 RGB, got dtype {arr.dtype} (see to_uint8_rgb)")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        return to_uint8_rgb(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image {index}: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    return arr


def _result_to_prediction(result: Any, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """One ultralytics ``Results`` as numpy arrays (see :meth:`YoloSegmenter.predict`)."""
    height, width = shape
    boxes = result.boxes
    n = 0 if boxes is None else len(boxes)
    if n == 0:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64),
            "masks": np.zeros((0, height, width), bool),
        }
    masks = None
    if result.masks is not None:
        data = result.masks.data
        # ultralytics' native-size masks are uint8 0/1: viewing them as bool costs no copy
        masks = data.cpu().numpy().view(bool) if data.dtype == torch.uint8 else (data > 0.5).cpu().numpy()
    if masks is None or masks.shape[1:] != (height, width):
        import cv2

        src = masks if masks is not None else np.zeros((n, 1, 1), bool)
        masks = np.stack(
            [
                cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                for m in src
            ]
        )
    return {
        "boxes": boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
        "scores": boxes.conf.cpu().numpy().astype(np.float32).reshape(-1),
        "labels": boxes.cls.cpu().numpy().astype(np.int64).reshape(-1) + 1,
        "masks": masks,
    }


def load_yolo_segmenter(checkpoint: str | Path, device: str = "cpu") -> YoloSegmenter:
    """Load a YOLO-seg checkpoint written by a cytobench run (or a plain ultralytics ``.pt``).

    Args:
        checkpoint: ``run_dir/checkpoints/best.pt`` or ``last.pt`` (or any local ultralytics seg weights;
            their categories are then ``[{"id": c + 1, "name": names[c]}]``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Raises:
        BadInputError: missing or unreadable file, or a model of another task (detect, pose, ...).
    """
    path = Path(checkpoint)
    metadata = read_yolo_metadata(path)
    model = build_yolo_model("", weights_path=path)
    if getattr(model, "task", None) != "segment":
        raise BadInputError(
            path, f"an ultralytics {getattr(model, 'task', '?')} model, not a segmentation model"
        )
    names = model.names
    categories = metadata.get("categories") or [{"id": c + 1, "name": str(names[c])} for c in sorted(names)]
    if len(categories) != len(names):
        raise BadInputError(
            path, f"{len(categories)} categories in the metadata but {len(names)} model classes"
        )
    imgsz = int(metadata.get("imgsz") or (model.ckpt or {}).get("train_args", {}).get("imgsz") or 640)
    segmenter = YoloSegmenter(model, categories, imgsz, device)
    segmenter.metadata = metadata
    return segmenter
