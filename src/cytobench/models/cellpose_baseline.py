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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.ops.instances import labels_to_instances

__all__ = [
    "CellposeSettings",
    "cellpose_predictions",
    "dataset_for_cellpose",
    "import_cellpose",
    "predict_cellpose",
    "run_cellpose_baseline",
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


def train_cellpose(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    save_dir: str | Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    settings: CellposeSettings | None = None,
) -> Any:
    """Train Cellpose's CPnet from random init on ``images`` / ``labels``; returns the ``CellposeModel``.

    Args:
        images / labels: from :func:`dataset_for_cellpose` (2-channel images, ``channel_axis=0``).
        save_dir: Cellpose writes its weights to ``save_dir/models/cellpose_cytobench``.
        seed: seeds torch and NumPy's global generator (Cellpose's augmentation draws from it).
        device: ``"cpu"`` or a CUDA device.
        settings: :class:`CellposeSettings`.
    """
    import_cellpose()
    from cellpose import models, train

    settings = settings or CellposeSettings()
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - Cellpose's augmentation uses the global generator
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    gpu = device != "cpu" and torch.cuda.is_available()
    model = models.CellposeModel(
        gpu=gpu, pretrained_model=False, model_type=None, device=torch.device(device) if gpu else None
    )
    train.train_seg(
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
    return model


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


def run_cellpose_baseline(
    train_set: Any,
    val_set: Any,
    evaluator: Any,
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    **settings: Any,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Train Cellpose on ``train_set``, predict ``val_set``, score it: ``(metrics, predictions)``.

    Args:
        train_set / val_set: cytobench data sets yielding ``masks`` (``brightfield_instance_dataset``); the
            train split built without transforms (Cellpose augments itself).
        evaluator: a cytobench evaluator (the same as the other baselines').
        out_dir: Cellpose's weights folder.
        settings: :class:`CellposeSettings` values.
    """
    config = CellposeSettings(**settings)
    os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(Path(out_dir) / "cellpose_models"))
    images, labels = dataset_for_cellpose(train_set)
    model = train_cellpose(images, labels, out_dir, seed=seed, device=device, settings=config)
    val = [(image, target) for image, target in val_set]
    predictions = predict_cellpose(model, [np.asarray(image, dtype=np.float32) for image, _ in val], config)
    metrics = score_predictions(evaluator, [target for _, target in val], predictions)
    return metrics, predictions
