"""Cellpose (3.1.x) from random init as a baseline on cytobench's splits, scored by cytobench's evaluators.

Cellpose trains through its own loop (``cellpose.train.train_seg``: flows computed from label images,
its augmentation, rescaling to its mean diameter), so it is not a ``model(images, targets)`` module of the
shared trainer; this module adapts the data both ways:

* in: a cytobench data set (e.g. ``data=brightfield_instances``'s train split) -> Cellpose's lists of
  ``(C, H, W)`` images (``channel_axis=0``; Cellpose uses 2 channels, so the two brightfield planes go in
  as they are) and ``(H, W)`` label images (:func:`target_label_image`: object ``i`` is label ``i + 1``;
  the brightfield truth's visible masks never overlap);
* out: each predicted label image -> one prediction in cytobench's contract (:mod:`cytobench.types`):
  an instance per label, its mask, the box of its mask, label 1 and as score the mean of Cellpose's cell
  probability (sigmoid of its ``cellprob`` output) over its pixels (:func:`cellpose_predictions`), so the
  instances can be ranked for COCO AP. Cellpose's own "AP" (``cellpose.metrics.average_precision``) is
  TP / (TP + FP + FN) at one IoU, not COCO AP: only cytobench's evaluator scores these predictions.

The network is Cellpose's CPnet built with ``CellposeModel(pretrained_model=False, model_type=None)``: no
weights are downloaded (cellpose 4.x only trains from its SAM weights, hence ``cellpose>=3.1,<4``).
Cellpose pins ``numpy<2.1``, hence an optional extra: ``pip install -e ".[cellpose]"`` (it may move NumPy
back to 2.0.x; cytobench runs on it). Without it, :func:`import_cellpose` raises a one-line error.

:class:`CellposeInstanceModel` (:func:`build_cellpose`, ``conf/model/cellpose.yaml``) puts the CPnet behind
cytobench's model contract: ``python train.py experiment=cellpose_brightfield`` trains it through
:mod:`cytobench.engine.cellpose_run` (Cellpose's loop, cytobench's run folder, evaluator and checkpoint), and
``cytobench predict`` / ``reproduce brightfield/table5_7`` load its checkpoint as any other (weights only:
the CPnet's tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.ops.instances import labels_to_instances

__all__ = [
    "CellposeInstanceModel",
    "CellposeSettings",
    "build_cellpose",
    "cellpose_predictions",
    "dataset_for_cellpose",
    "fit_cellpose",
    "import_cellpose",
    "mean_label_diameter",
    "new_cellpose_model",
    "predict_cellpose",
    "score_predictions",
    "target_label_image",
    "train_cellpose",
]

INSTALL_HINT = 'pip install -e ".[cellpose]"  (cellpose>=3.1,<4; 4.x cannot train from scratch)'


def import_cellpose() -> Any:
    """The ``cellpose`` package (3.x), or a :class:`BadInputError` saying how to install it."""
    try:
        import cellpose
        from cellpose import models, train  # noqa: F401
    except ImportError:
        raise BadInputError("cellpose", f"is not installed: {INSTALL_HINT}") from None
    version = str(getattr(cellpose, "version", "") or getattr(cellpose, "__version__", ""))
    if version.startswith("4"):
        raise BadInputError(
            "cellpose", f"{version} needs its SAM weights and cannot train from scratch: {INSTALL_HINT}"
        )
    return cellpose


def target_label_image(masks: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
    """``(H, W)`` int32 label image of ``(N, H, W)`` instance masks: object ``i`` is label ``i + 1``
    (a pixel of two masks takes the later one); ``height`` / ``width`` size an empty stack."""
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks).astype(bool, copy=False)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    shape = masks.shape[1:] if len(masks) or height is None else (int(height), int(width or 0))
    labels = np.zeros(shape, dtype=np.int32)
    for i, mask in enumerate(masks):
        labels[mask] = i + 1
    return labels


def dataset_for_cellpose(
    dataset: Iterable[tuple[Any, dict[str, Any]]],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cellpose's training lists from a cytobench data set: ``(C, H, W)`` float32 images, label images."""
    images, labels = [], []
    for image, target in dataset:
        array = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
        images.append(array)
        labels.append(target_label_image(target["masks"], *array.shape[-2:]))
    return images, labels


class CellposeSettings(dict):
    """Training and inference settings of :func:`train_cellpose` / :func:`predict_cellpose` (a dict with
    defaults: Cellpose's own, except ``n_epochs``, and ``bsize`` 224 as Cellpose)."""

    DEFAULTS: dict[str, Any] = {
        "n_epochs": 100,
        "learning_rate": 0.005,
        "weight_decay": 1.0e-5,
        "batch_size": 8,
        "bsize": 224,
        "min_train_masks": 1,
        "flow_threshold": 0.4,
        "cellprob_threshold": 0.0,
        "min_size": 15,
    }

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.DEFAULTS))
        if unknown:
            raise BadInputError("cellpose settings", f"unknown {unknown}; known: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **values})


def new_cellpose_model(device: str = "cpu", nchan: int = 2, diam_mean: float = 30.0) -> Any:
    """An untrained ``CellposeModel`` (random CPnet, nothing downloaded) on ``device``; ``diam_mean``: the
    diameter (px) cells are rescaled to in training and inference (Cellpose's 30)."""
    import_cellpose()
    from cellpose import models

    gpu = device != "cpu" and torch.cuda.is_available()
    return models.CellposeModel(
        gpu=gpu,
        pretrained_model=False,
        model_type=None,
        nchan=int(nchan),
        diam_mean=float(diam_mean),
        device=torch.device(device) if gpu else None,
    )


def mean_label_diameter(labels: Sequence[np.ndarray]) -> float:
    """The mean over images (with cells) of each label image's median cell diameter, as Cellpose's
    ``train_seg`` measures its training set (``diam_labels``)."""
    from cellpose import utils

    diameters = [float(utils.diameters(np.asarray(lbl))[0]) for lbl in labels if np.asarray(lbl).max() > 0]
    if not diameters:
        raise BadInputError("cellpose training set", "has no cells to measure a diameter on")
    return float(np.mean(diameters))


def fit_cellpose(
    model: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    save_dir: str | Path,
    *,
    seed: int = 0,
    settings: CellposeSettings | None = None,
) -> list[float]:
    """Train ``model.net`` in place with Cellpose's ``train_seg``; returns the mean training loss per epoch.

    Args:
        model: a ``CellposeModel`` (:func:`new_cellpose_model`).
        images / labels: from :func:`dataset_for_cellpose` (2-channel images, ``channel_axis=0``).
        save_dir: Cellpose writes its own copy of the weights to ``save_dir/models/cellpose_cytobench``
            (Cellpose's format: its GUI and CLI open it).
        seed: seeds torch and NumPy's global generator (Cellpose's augmentation draws from it).
        settings: :class:`CellposeSettings`.
    """
    from cellpose import train

    settings = settings or CellposeSettings()
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - Cellpose's augmentation uses the global generator
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    _, losses, _ = train.train_seg(
        model.net,
        train_data=list(images),
        train_labels=list(labels),
        channels=None,
        channel_axis=0,
        n_epochs=int(settings["n_epochs"]),
        learning_rate=float(settings["learning_rate"]),
        weight_decay=float(settings["weight_decay"]),
        batch_size=int(settings["batch_size"]),
        bsize=int(settings["bsize"]),
        min_train_masks=int(settings["min_train_masks"]),
        save_path=str(save_dir),
        model_name="cellpose_cytobench",
    )
    return [float(x) for x in np.asarray(losses, dtype=np.float64).reshape(-1)]


def train_cellpose(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    save_dir: str | Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    settings: CellposeSettings | None = None,
) -> Any:
    """Train Cellpose's CPnet from random init on ``images`` / ``labels``; returns the ``CellposeModel``
    (:func:`new_cellpose_model` then :func:`fit_cellpose`)."""
    model = new_cellpose_model(device, nchan=int(np.asarray(images[0]).shape[0]) if len(images) else 2)
    fit_cellpose(model, images, labels, save_dir, seed=seed, settings=settings)
    return model


class CellposeInstanceModel(torch.nn.Module):
    """Cellpose's CPnet behind cytobench's model contract (module docstring).

    In eval mode ``model(images)`` returns cytobench predictions (:func:`predict_cellpose`); training is
    :meth:`fit` (Cellpose's own loop), which ``python train.py`` reaches through
    :mod:`cytobench.engine.cellpose_run`, never the shared trainer's ``model(images, targets)``. The state dict
    is the CPnet's (``net.*``, its ``diam_mean`` / ``diam_labels`` included): a cytobench checkpoint of it
    loads with ``torch.load(weights_only=True)``.

    Args:
        nchan: image channels (the brightfield data's two planes).
        diam_mean: the diameter (px) cells are rescaled to, in training and inference. Cellpose's 30 suits its
            fields of many small cells; ``"auto"``: the training labels' own mean (:func:`mean_label_diameter`,
            set by :meth:`fit`), so images keep their size. (Four ~95 px cells of a 256 px image rescaled to
            30 px fill ~5% of Cellpose's 224 px training crops, and it learns to call everything background.)
        settings: :class:`CellposeSettings` values (training and inference).
    """

    def __init__(self, nchan: int = 2, diam_mean: float | str = 30.0, **settings: Any) -> None:
        super().__init__()
        if diam_mean != "auto" and not (isinstance(diam_mean, int | float) and diam_mean > 0):
            raise BadInputError(
                "model.diam_mean", f"must be a diameter in px > 0 or 'auto', got {diam_mean!r}"
            )
        self.settings = CellposeSettings(**settings)
        self.diam_mean = diam_mean
        start = 30.0 if diam_mean == "auto" else float(diam_mean)
        self.cellpose = new_cellpose_model("cpu", nchan=nchan, diam_mean=start)
        # a registered submodule: .to(), state_dict() and load_state_dict() reach the CPnet
        self.net = self.cellpose.net
        self.nchan = int(nchan)

    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        save_dir: str | Path,
        *,
        seed: int = 0,
    ) -> list[float]:
        """Train with Cellpose's ``train_seg`` (:func:`fit_cellpose`); returns the loss per epoch."""
        if self.diam_mean == "auto":
            self.net.diam_mean.data.fill_(mean_label_diameter(labels))
        self._sync()
        return fit_cellpose(self.cellpose, images, labels, save_dir, seed=seed, settings=self.settings)

    def _sync(self) -> None:
        # CellposeModel keeps its own device (inputs, mask dynamics) and rescaling diameter: follow the
        # CPnet's (moved by .to(); diameters set by fit or restored by load_state_dict)
        device = self.net.diam_labels.device
        self.cellpose.device = device
        self.cellpose.gpu = device.type != "cpu"
        self.cellpose.diam_mean = float(self.net.diam_mean.item())

    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        if targets is not None:
            raise BadInputError(
                "model",
                "Cellpose trains through its own loop, not the shared trainer: "
                "python train.py experiment=cellpose_brightfield",
            )
        images = list(images)
        for image in images:
            if image.ndim != 3 or image.shape[0] != self.nchan:
                raise BadInputError(
                    "images",
                    f"Cellpose was built for {self.nchan} channels, got an image of shape {tuple(image.shape)}",
                )
        if not images:
            return []
        self._sync()
        arrays = [np.asarray(image.detach().float().cpu()) for image in images]
        predictions = predict_cellpose(self.cellpose, arrays, self.settings)
        device = images[0].device
        return [{key: value.to(device) for key, value in p.items()} for p in predictions]


def build_cellpose(
    num_classes: int = 2, *, nchan: int = 2, diam_mean: float | str = 30.0, **settings: Any
) -> CellposeInstanceModel:
    """The Cellpose baseline of ``conf/model/cellpose.yaml`` (one class: cells).

    Raises:
        BadInputError: more than one object class, an unknown setting, or cellpose not installed.
    """
    if int(num_classes) != 2:
        raise BadInputError("model", f"Cellpose segments one class (cells): num_classes 2, got {num_classes}")
    return CellposeInstanceModel(nchan=nchan, diam_mean=diam_mean, **settings)


def cellpose_predictions(
    label_images: Sequence[np.ndarray], cellprobs: Sequence[np.ndarray] | None = None, min_area: int = 1
) -> list[dict[str, torch.Tensor]]:
    """cytobench predictions from Cellpose's label images (module docstring).

    Args:
        label_images: ``(H, W)`` label images (Cellpose's ``masks``).
        cellprobs: the matching ``(H, W)`` cell-probability logits (Cellpose's ``flows[i][2]``); None:
            every instance scores 1.0.
        min_area: smallest instance kept, in pixels.
    """
    out = []
    for k, labels in enumerate(label_images):
        prob = None
        if cellprobs is not None:
            prob = 1.0 / (1.0 + np.exp(-np.asarray(cellprobs[k], dtype=np.float64)))
        out.append(labels_to_instances(np.asarray(labels), probability=prob, min_area=min_area))
    return out


def predict_cellpose(
    model: Any, images: Sequence[np.ndarray], settings: CellposeSettings | None = None
) -> list[dict]:
    """Segment ``(C, H, W)`` images with a trained ``CellposeModel``; predictions in cytobench's contract.

    The diameter is the training labels' mean, which ``train_seg`` stores in the network (``diam_labels``).
    """
    settings = settings or CellposeSettings()
    diameter = float(model.net.diam_labels.item())
    masks, flows, _ = model.eval(
        [np.asarray(image, dtype=np.float32) for image in images],
        channels=None,
        channel_axis=0,
        diameter=diameter if diameter > 0 else None,
        flow_threshold=float(settings["flow_threshold"]),
        cellprob_threshold=float(settings["cellprob_threshold"]),
        min_size=int(settings["min_size"]),
        bsize=int(settings["bsize"]),
    )
    return cellpose_predictions(masks, [flow[2] for flow in flows])


def score_predictions(
    evaluator: Any, targets: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Score predictions with a cytobench evaluator (e.g. ``conf/evaluator/livecell_segm.yaml``'s)."""
    evaluator.reset()
    for target, prediction in zip(targets, predictions):
        evaluator.process_image(target, prediction)
    return evaluator.compute()
