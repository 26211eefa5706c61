"""YOLO checkpoints that load without running code: the format, writing, safe loading.

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

Models are built from a model ``.yaml`` or a local ``.pt`` path, never from a bare ``.pt`` name (that downloads).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.io.checkpoint import TRUST_HINT, UnsafeCheckpointError, load_checkpoint
from cytobench.io.files import save_atomic
from cytobench.models.yolo_offline import setup_ultralytics_offline

__all__ = [
    "CKPT_KEY",
    "TASKS",
    "YOLO_FORMAT",
    "build_yolo_model",
    "is_yolo_checkpoint",
    "load_yolo_file",
    "read_yolo_metadata",
    "save_yolo_checkpoint",
    "yolo_checkpoint_state",
]

CKPT_KEY = "cytobench"
YOLO_FORMAT = "cytobench-yolo"
YOLO_FORMAT_VERSION = 1
TASKS = ("detect", "segment")
# ``nn.SiLU()``, ``torch.nn.LeakyReLU(0.1, inplace=True)``: a torch.nn layer called with literal arguments
# (no nested call, no attribute access), the only activation a checkpoint's yaml may name.
_ACTIVATION = re.compile(r"(?:torch\.)?nn\.[A-Za-z_]\w*\((?:[\w\s,=+-]|(?<=\d)\.(?=\d))*\)")
# root-module attributes stored apart (or rebuilt) rather than in ``module_attributes``
_ROOT_ATTRIBUTES_APART = {"yaml", "args", "pt_path", "names", "training"}


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
        return load_yolo_file(path, trust)[0]
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


def load_yolo_file(path: Path, trust: bool) -> tuple[Any, dict[str, Any]]:
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
