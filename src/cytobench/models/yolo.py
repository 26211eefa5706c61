"""YOLO (detect / segment) through ultralytics: offline set-up, safe checkpoints with cytobench metadata, the model.

Training runs through ultralytics' own trainer (:mod:`cytobench.engine.ultralytics_run`); this module
holds what training, prediction and the paper tables share.

Offline: :func:`setup_ultralytics_offline` sets ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=0`` (and
``YOLO_CONFIG_DIR``, to the run folder or a private temp folder removed at exit, when ultralytics is not
imported yet and the variable is unset), copies matplotlib's
``DejaVuSans.ttf`` to ``<config dir>/Arial.ttf`` and ``Arial.Unicode.ttf`` (every training run asks for
them and would download them otherwise) and turns off ultralytics' telemetry and its third-party logger
integrations (cytobench logs to CSV / W&B itself). Models are built from a model ``.yaml`` or a local
``.pt`` path, never from a bare ``.pt`` name (that downloads).

Checkpoint format: ``run_dir/checkpoints/{best,last}.pt`` hold tensors and plain data only, so they load
with ``torch.load(weights_only=True)`` and nothing in them runs (ultralytics' own ``.pt`` pickles its model
object, whose loading can run any code the file names)::

    {"format": "cytobench-yolo", "format_version": 1, "task": "segment",
     "yaml": {...},                  # the model's architecture (ultralytics model yaml as a dict, with nc)
     "names": {0: "whole", ...},     # class names
     "state_dict": {name: tensor},   # weights (fp16 where that is exact, as ultralytics saves them)
     "module_attributes": {module name: {attribute: plain value or tensor}},  # e.g. the head's max_det
     "train_args": {...},            # ultralytics' training arguments
     "ultralytics_version": str,
     "cytobench": {"backend": "ultralytics", "task": "segment", "categories": [COCO category dicts,
                   label order], "label_to_cat_id": {label: category_id}, "imgsz": int, "epoch": int,
                   "model_config": {...}, "data_config": {...}, "ultralytics_version": str}}

Loading rebuilds ultralytics' ``DetectionModel`` / ``SegmentationModel`` from ``yaml`` (after checking that
it names only torch / ultralytics layers and a literal activation: ultralytics ``eval``s that string) and
loads the weights into it, so the model predicts exactly as ultralytics' own loading of the same weights.
A foreign ultralytics ``.pt`` (or a cytobench YOLO checkpoint written before this format) is a pickle: it
is loaded by ultralytics only with ``trust=True`` (``--trust-checkpoint``, ``model.trust_weights=true``).

Labels: YOLO class ``c`` is label ``c + 1`` and COCO category ``categories[c]`` (1-based labels as in
every cytobench model; 0 is background).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.io.checkpoint import TRUST_HINT, UnsafeCheckpointError, load_checkpoint
from cytobench.io.files import save_atomic

CKPT_KEY = "cytobench"
YOLO_FORMAT = "cytobench-yolo"
YOLO_FORMAT_VERSION = 1
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
# ``nn.SiLU()``, ``torch.nn.LeakyReLU(0.1, inplace=True)``: a torch.nn layer called with literal arguments
# (no nested call, no attribute access), the only activation a checkpoint's yaml may name.
_ACTIVATION = re.compile(r"(?:torch\.)?nn\.[A-Za-z_]\w*\((?:[\w\s,=+-]|(?<=\d)\.(?=\d))*\)")
# root-module attributes stored apart (or rebuilt) rather than in ``module_attributes``
_ROOT_ATTRIBUTES_APART = {"yaml", "args", "pt_path", "names", "training"}

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


def setup_ultralytics_offline(config_dir: str | Path | None = None) -> Path:
    """Prepare ultralytics to run without network; returns its settings folder (``USER_CONFIG_DIR``).

    Args:
        config_dir: value for ``YOLO_CONFIG_DIR`` when ultralytics is not imported yet and the variable
            is unset (ultralytics reads it once, at import), e.g. inside a run folder; matplotlib's folder
            (``MPLCONFIGDIR``, read when ultralytics imports it) then goes there too, when unset. None: a
            private temp folder removed when the process exits
            (:func:`cytobench.tool_dirs.private_temp_dir`), so that the user's own ultralytics settings
            (``~/.config/Ultralytics``) are never read or changed and no shared folder is written.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if "ultralytics" not in sys.modules:
        if "YOLO_CONFIG_DIR" not in os.environ:
            if config_dir:
                folder = Path(config_dir).resolve()
            else:
                from cytobench.tool_dirs import private_temp_dir

                folder = private_temp_dir("ultralytics")
            os.environ["YOLO_CONFIG_DIR"] = str(folder)
        if config_dir and "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
            os.environ["MPLCONFIGDIR"] = str(Path(config_dir).resolve() / "matplotlib")
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


def build_yolo_model(arch: str, weights_path: str | Path | None = None, trust: bool = False) -> Any:
    """An ``ultralytics.YOLO`` from a model yaml (random init) or from local weights.

    Args:
        arch: ultralytics model yaml, e.g. ``"yolov8s-seg.yaml"`` (the scale letter picks the size).
        weights_path: local ``.pt``: a cytobench YOLO checkpoint (safe format, see the module docstring) or,
            with ``trust``, a pickled ultralytics checkpoint (e.g. COCO-pretrained); when given, the
            architecture comes from this file and ``arch`` is ignored.
        trust: load a pickled ultralytics ``.pt`` with ultralytics' own loader, which runs whatever code
            the file names (``model.trust_weights=true``, ``--trust-checkpoint``): only for files whose
            source you trust.

    Raises:
        BadInputError: ``arch`` is a bare ``.pt`` name, or ``weights_path`` does not exist / is unreadable.
        UnsafeCheckpointError: ``weights_path`` is a pickle and ``trust`` is False (nothing of it ran).
    """
    setup_ultralytics_offline()
    from ultralytics import YOLO

    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise BadInputError(path, "weights file not found (model.weights_path)")
        return _load_yolo(path, trust)[0]
    if not str(arch).endswith((".yaml", ".yml")):
        raise BadInputError(
            "model.arch", f"{arch!r} is not a model yaml; give local weights as model.weights_path instead"
        )
    return YOLO(str(arch))


def is_yolo_checkpoint(state: Any) -> bool:
    """Whether a loaded checkpoint is a cytobench YOLO checkpoint (the safe format of this module)."""
    return isinstance(state, Mapping) and state.get("format") == YOLO_FORMAT


def read_yolo_metadata(checkpoint: str | Path, trust: bool = False) -> dict[str, Any]:
    """The ``"cytobench"`` entry of a YOLO checkpoint (empty for a plain ultralytics file).

    Args:
        checkpoint: a cytobench YOLO checkpoint, or with ``trust`` a pickled ultralytics one.
        trust: see :func:`build_yolo_model`.
    """
    path = Path(checkpoint)
    try:
        state = load_checkpoint(path)
    except UnsafeCheckpointError as err:
        if not (trust and err.is_ultralytics):
            raise
        setup_ultralytics_offline()
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
        except Exception as exc:
            raise BadInputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
        if not isinstance(state, dict):
            raise BadInputError(path, "not an ultralytics checkpoint (no dict inside)") from None
        return dict(state.get(CKPT_KEY) or {})
    if not is_yolo_checkpoint(state):
        raise BadInputError(path, "not a YOLO checkpoint (no cytobench-yolo format marker)")
    return dict(state.get(CKPT_KEY) or {})


def save_yolo_checkpoint(source: Any, dest: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write a YOLO model to ``dest`` (atomically) in the safe format, with ``metadata`` under ``"cytobench"``.

    Args:
        source: an ``ultralytics.YOLO``, its ``DetectionModel`` / ``SegmentationModel``, or the path of an
            ultralytics checkpoint that ultralytics' trainer of *this* run has just written into the run
            folder (``trainer.last`` / ``trainer.best``): that file is a pickle, read here as ultralytics
            itself reads it at the end of ``train()``; never pass a file from elsewhere.
        dest: e.g. ``run_dir/checkpoints/best.pt``.
        metadata: the ``"cytobench"`` entry (plain data).
    """
    train_args: Mapping[str, Any] | None = None
    if isinstance(source, str | Path):
        setup_ultralytics_offline()
        import ultralytics.nn.tasks  # noqa: F401 - the classes the pickle names

        ckpt = torch.load(Path(source), map_location="cpu", weights_only=False)  # this run's own file
        net = ckpt.get("ema") or ckpt.get("model")
        train_args = ckpt.get("train_args")
    else:
        net, train_args = _ultralytics_net(source)
    return save_atomic(yolo_checkpoint_state(net, metadata, train_args), dest)


def yolo_checkpoint_state(
    net: Any, metadata: Mapping[str, Any], train_args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The safe checkpoint of an ultralytics ``DetectionModel`` / ``SegmentationModel`` (module docstring).

    Raises:
        ValueError: ``net`` is not a detection / segmentation model.
    """
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    if not isinstance(net, DetectionModel | SegmentationModel):
        raise ValueError(f"expected an ultralytics detection / segmentation model, got {type(net).__name__}")
    task = "segment" if isinstance(net, SegmentationModel) else "detect"
    attributes = {}
    for name, module in net.named_modules():
        kept = {}
        for key, value in vars(module).items():
            if key.startswith("_") or (not name and key in _ROOT_ATTRIBUTES_APART) or key == "training":
                continue
            ok, plain = _plain(value)
            if ok:
                kept[key] = plain
        if kept:
            attributes[name] = kept
    return {
        "format": YOLO_FORMAT,
        "format_version": YOLO_FORMAT_VERSION,
        "task": task,
        "yaml": _plain_strict(net.yaml, "model yaml"),
        "names": {int(k): str(v) for k, v in dict(net.names).items()},
        "state_dict": {k: _compact(v) for k, v in net.state_dict().items()},
        "module_attributes": attributes,
        "train_args": _plain_arguments(train_args),
        "ultralytics_version": _ultralytics_version(),
        CKPT_KEY: _plain_strict(dict(metadata), "cytobench metadata"),
    }


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
        import torchvision

        from cytobench.models.karyotype_classifier import cell_labels

        columns = torch.as_tensor(self._chromosome_columns(), device=pred["boxes"].device)
        if "class_scores" not in pred:
            raise BadInputError(
                "model.eval.pair_prior", "this YOLO gives no per-class scores (an end-to-end head, no NMS)"
            )
        if len(pred["boxes"]) == 0:  # nothing found: nothing to merge or label
            return dict(pred)
        class_scores = pred["class_scores"][:, columns].double()  # class order 1-22, X, Y
        existence = class_scores.sum(dim=1).clamp(max=1.0)
        boxes = pred["boxes"].double()
        keep = torchvision.ops.nms(boxes, existence, self.cell_nms_iou)
        # every box joins the kept box it overlaps most (a suppressed one overlaps one by more than the IoU)
        owner = torchvision.ops.box_iou(boxes, boxes[keep]).argmax(dim=1)
        owner[keep] = torch.arange(len(keep), device=owner.device)
        # a chromosome seen by several boxes: P(there) = 1 - prod(1 - e_j); class evidence summed
        log_absent = torch.log1p(-existence.clamp(max=1 - 1e-12))
        merged_existence = -boxes.new_zeros(len(keep)).index_add_(0, owner, log_absent).expm1()
        merged_scores = boxes.new_zeros(len(keep), class_scores.shape[1])
        merged_scores.index_add_(0, owner, class_scores)
        classes = cell_labels(merged_scores.clamp(min=1e-12).log(), merged_existence >= self.cell_score_thr)
        out = {k: v[keep] for k, v in pred.items()}
        out["labels"] = (columns[classes - 1] + 1).to(torch.int64)
        out["scores"] = merged_existence.to(pred["scores"].dtype)
        out["class_scores"][:, columns] = merged_scores.to(out["class_scores"].dtype)
        return out

    def _chromosome_columns(self) -> list[int]:
        """The YOLO class (column) of each chromosome class 1-22, X, Y, found by category name."""
        from cytobench.simulate.chromosomes import CLASS_NAMES

        names = [str(c.get("name")) for c in self.categories]
        if sorted(names) != sorted(CLASS_NAMES):
            raise BadInputError(
                "model.eval.pair_prior",
                f"the pair prior needs the 24 chromosome classes 1..22, X, Y; the model has {len(names)} classes",
            )
        return [names.index(name) for name in CLASS_NAMES]


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
    yolo, metadata = _load_yolo(path, trust)
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
    model = load_yolo_model(str(checkpoint), trust=trust, pair_prior=False, **overrides)
    if len(model.categories) != 1:
        raise BadInputError(
            checkpoint,
            f"a YOLO of {len(model.categories)} classes; the enumerator finds one (train it with "
            "experiment=karyotype_enumerator_yolo)",
        )
    return model


def _plain(value: Any) -> tuple[bool, Any]:
    """``(True, value)`` as tensors and plain data (what ``weights_only`` loads), or ``(False, None)``."""
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, np.generic):
        return True, value.item()
    if isinstance(value, torch.Tensor):
        return True, value.detach().cpu()
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        if all(ok for ok, _ in items):
            plain = [v for _, v in items]
            return True, plain if isinstance(value, list) else tuple(plain)
    elif isinstance(value, Mapping) and all(isinstance(k, str | int) for k in value):
        entries = {k: _plain(v) for k, v in value.items()}
        if all(ok for ok, _ in entries.values()):
            return True, {k: v for k, (_, v) in entries.items()}
    return False, None


def _plain_strict(value: Any, what: str) -> Any:
    ok, plain = _plain(value)
    if not ok:
        raise ValueError(f"{what} holds values other than tensors and plain data")
    return plain


def _plain_arguments(args: Any) -> dict[str, Any]:
    """ultralytics' training arguments as plain data (paths and other objects as strings)."""
    if args is None:
        return {}
    items = args.items() if isinstance(args, Mapping) else vars(args).items()
    out = {}
    for key, value in items:
        ok, plain = _plain(value)
        out[str(key)] = plain if ok else str(value)
    return out


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 weights as fp16 where that loses nothing (ultralytics saves its weights in fp16)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.float32 and torch.equal(tensor.half().float(), tensor):
        return tensor.half()
    return tensor


def _ultralytics_net(source: Any) -> tuple[Any, Any]:
    """``(DetectionModel / SegmentationModel, training arguments)`` of an ``ultralytics.YOLO`` or such a model."""
    from ultralytics.nn.tasks import BaseModel

    if isinstance(source, BaseModel):
        return source, getattr(source, "args", None)
    net = getattr(source, "model", None)
    if isinstance(net, BaseModel):
        train_args = (getattr(source, "ckpt", None) or {}).get("train_args") or getattr(net, "args", None)
        return net, train_args
    raise ValueError(f"expected an ultralytics YOLO model, got {type(source).__name__}")


def _load_yolo(path: Path, trust: bool) -> tuple[Any, dict[str, Any]]:
    """``(ultralytics.YOLO, cytobench metadata)`` of a YOLO checkpoint; pickles only with ``trust``."""
    try:
        state = load_checkpoint(path)
    except UnsafeCheckpointError as err:
        if not (trust and err.is_ultralytics):
            raise
        return _load_trusted_pickle(path)
    if not is_yolo_checkpoint(state):
        raise BadInputError(
            path,
            "not a YOLO checkpoint (a YOLO run's checkpoints/best.pt or last.pt; an ultralytics .pt: "
            f"{TRUST_HINT})",
        )
    return _yolo_from_state(state, path), dict(state.get(CKPT_KEY) or {})


def _load_trusted_pickle(path: Path) -> tuple[Any, dict[str, Any]]:
    """A pickled ultralytics checkpoint through ultralytics' own loader (runs what the file names)."""
    setup_ultralytics_offline()
    from ultralytics import YOLO

    try:
        yolo = YOLO(str(path))
    except Exception as err:  # torch / ultralytics raise many types for foreign files
        first = (str(err).strip().splitlines() or [""])[0]
        raise BadInputError(path, f"not an ultralytics checkpoint ({type(err).__name__}: {first})") from None
    return yolo, dict((yolo.ckpt or {}).get(CKPT_KEY) or {})


def _check_model_yaml(yaml: Any, path: Path) -> None:
    """Refuse a model yaml that would make ultralytics' model builder run code.

    ultralytics ``eval``s the yaml's ``activation`` and calls each layer's name looked up among its
    globals; only a ``torch.nn`` layer with literal arguments, and ``torch.nn`` / ``torchvision.ops`` /
    ultralytics layer classes, are accepted.
    """
    if (
        not isinstance(yaml, dict)
        or not isinstance(yaml.get("backbone"), list)
        or not isinstance(yaml.get("head"), list)
    ):
        raise BadInputError(path, "its model yaml has no backbone / head layer lists")
    act = yaml.get("activation")
    if act is not None and not (isinstance(act, str) and _ACTIVATION.fullmatch(act.strip())):
        raise BadInputError(
            path,
            f"its model yaml's activation {act!r} is not a torch.nn layer with literal arguments; refused",
        )
    import torchvision
    import ultralytics.nn.tasks as tasks

    for layer in yaml["backbone"] + yaml["head"]:
        name = layer[2] if isinstance(layer, list | tuple) and len(layer) == 4 else None
        obj = None
        if isinstance(name, str):
            if name.startswith("nn."):
                obj = getattr(torch.nn, name[3:], None)
            elif name.startswith("torchvision.ops."):
                obj = getattr(torchvision.ops, name[len("torchvision.ops.") :], None)
            else:
                obj = vars(tasks).get(name)
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            raise BadInputError(
                path, f"its model yaml names {name!r}, not a torch / ultralytics layer; refused"
            )


def _match_class_branches(
    net: Any, model_class: Any, yaml: Mapping[str, Any], channels: int, state_dict: Mapping[str, Any]
) -> None:
    """Give the head's class branches the width the stored weights have.

    The hidden width of a Detect head's class branch follows the class count it was built for; when
    ultralytics fine-tunes a model of another class count (e.g. 80 COCO classes to 2) it keeps the
    pretrained branch at its width and replaces only its last convolution (``BaseModel.load``). The same
    is done here: the branch of a model built for that width, with the last convolution for this model's
    classes. Weights of any other shape are left for ``load_state_dict`` to refuse.
    """
    head = net.model[-1]
    index = len(net.model) - 1
    for attr in ("cv3", "one2one_cv3"):
        branches = getattr(head, attr, None)
        if not isinstance(branches, torch.nn.ModuleList) or not len(branches):
            continue
        stored = state_dict.get(f"model.{index}.{attr}.0.{len(branches[0]) - 1}.weight")
        if not isinstance(stored, torch.Tensor) or stored.ndim != 4:
            continue
        width = int(stored.shape[1])
        if width == branches[0][-1].in_channels:
            continue
        with torch.random.fork_rng(devices=[]):
            other = model_class(
                cfg={**copy.deepcopy(dict(yaml)), "nc": width}, ch=channels, nc=None, verbose=False
            )
        source = getattr(other.model[-1], attr, None)
        if not isinstance(source, torch.nn.ModuleList) or source[0][-1].in_channels != width:
            continue  # no class count gives this width: load_state_dict reports the mismatch
        for src, dst in zip(source, branches):
            if src[-1].out_channels != dst[-1].out_channels:  # this model's classes
                src[-1] = torch.nn.Conv2d(src[-1].in_channels, dst[-1].out_channels, 1)
        setattr(head, attr, source)


def _restore_attributes(net: torch.nn.Module, attributes: Mapping[str, Any]) -> None:
    """Set the stored plain attributes (e.g. the head's ``max_det``) on the rebuilt modules."""
    modules = dict(net.named_modules())
    for name, values in attributes.items():
        module = modules.get(name)
        if module is None or not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            if not isinstance(key, str) or key.startswith("_") or key == "training":
                continue
            if key in module._modules or key in module._parameters or key in module._buffers:
                continue
            if hasattr(getattr(type(module), key, None), "__get__"):  # a method or property: not data
                continue
            setattr(module, key, value)


def _yolo_from_state(state: Mapping[str, Any], path: Path) -> Any:
    """An ``ultralytics.YOLO`` rebuilt from a safe checkpoint as ultralytics' loader would leave it."""
    setup_ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel
    from ultralytics.utils import DEFAULT_CFG_DICT

    classes = {"detect": DetectionModel, "segment": SegmentationModel}
    task = state.get("task")
    if task not in classes:
        raise BadInputError(path, f"YOLO task {task!r} is not one of {TASKS}")
    yaml = copy.deepcopy(state.get("yaml"))
    _check_model_yaml(yaml, path)
    try:
        channels = int(yaml.get("channels", 3))
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the global generator
            net = classes[task](cfg=copy.deepcopy(yaml), ch=channels, nc=None, verbose=False)
        _match_class_branches(net, classes[task], yaml, channels, state["state_dict"])
        net.load_state_dict(state["state_dict"])
    except Exception as err:  # a yaml / weights mismatch surfaces as many types
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadInputError(
            path, f"its weights do not fit the model its yaml describes ({type(err).__name__}: {first})"
        ) from None
    _restore_attributes(net, state.get("module_attributes") or {})
    train_args = dict(state.get("train_args") or {})
    net.names = {int(k): str(v) for k, v in dict(state.get("names") or {}).items()}
    net.args = {
        **DEFAULT_CFG_DICT,
        **train_args,
    }  # replaced by the YOLO's overrides below, as ultralytics does
    net.pt_path = str(path)
    net.task = task
    net = net.float().eval()
    for module in net.modules():  # as ultralytics' loader (inplace=True)
        if hasattr(module, "inplace"):
            module.inplace = True
    return _wrap_in_yolo(net, task, train_args, path)


def _wrap_in_yolo(net: Any, task: str, train_args: Mapping[str, Any], path: Path) -> Any:
    """An ``ultralytics.YOLO`` around ``net``, with the state ``YOLO(checkpoint.pt)`` would give it.

    ``ckpt`` is set so that ultralytics' ``train()`` starts from these weights; ``overrides["model"]``
    names the architecture yaml, never this file (ultralytics would unpickle it).
    """
    from ultralytics import YOLO
    from ultralytics.engine.model import Model
    from ultralytics.utils import callbacks

    yolo = YOLO.__new__(YOLO)
    torch.nn.Module.__init__(yolo)
    yolo.callbacks = callbacks.get_default_callbacks()
    yolo.predictor = None
    yolo.model = net
    yolo.trainer = None
    yolo.ckpt = {"model": net, "train_args": dict(train_args)}
    yolo.cfg = None
    yolo.ckpt_path = None
    yolo.overrides = net.args = Model._reset_ckpt_args(net.args)  # one dict, as in ultralytics' Model._load
    yolo.overrides["model"] = str(net.yaml.get("yaml_file") or f"{task}.yaml")
    yolo.overrides["task"] = task
    yolo.metrics = None
    yolo.task = task
    yolo.model_name = str(path)
    del yolo.training  # as ultralytics.Model: `training` is the model's
    return yolo


def _ultralytics_version() -> str:
    import ultralytics

    return str(ultralytics.__version__)
