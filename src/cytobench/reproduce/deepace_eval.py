"""Re-evaluate trained DeepACEv2 checkpoints on a held-out simulated test set.

Post-processing does not change training, so one trained model gives the NMS, Soft-NMS and
Embedding-Guided NMS rows of the paper's tables: :func:`evaluate_checkpoint_modes` runs the
backbone and the RPN once per batch (``DeepACE.predict_modes``) and only repeats the RoI head and its
post-processing for each mode, through the one streaming loop. :func:`evaluate_checkpoint` is the
one-mode form. :func:`held_out_test_set` is :func:`cytobench.reproduce.base.held_out_test_set` (a test
set simulated with the settings of a checkpoint's training data and another seed) with the DeepACEv2
tables' cache folder and default seed.

Predictions are per image dicts of NumPy arrays: ``boxes`` (M, 4) xyxy in the image's pixels,
``scores`` (M,), ``labels`` (M,), ``embeddings`` (M,) with the Template branch, and ``image_id``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cytobench.errors import BadInputError
from cytobench.models.deepace.roi_heads import POSTPROCESS_MODES
from cytobench.reproduce.base import TEST_SEED_OFFSET, TestSet, coco_loader, load_test_data
from cytobench.reproduce.base import held_out_test_set as _held_out_test_set

DEFAULT_SIMULATOR = "cytobench.simulate.metaphase.simulate_metaphase"


# ------------------------------------------------------------------------------------------ test set
def held_out_test_set(
    data_config: Mapping[str, Any],
    n_images: int,
    seed: int | None = None,
    data_dir: str | Path | None = None,
) -> TestSet:
    """:func:`cytobench.reproduce.base.held_out_test_set` with the defaults every DeepACEv2 table shares:
    the seed is the training seed + ``TEST_SEED_OFFSET`` and the cache ``<data_dir>/deepace_test``
    (``data_dir`` default ``$CYTOBENCH_DATA_DIR``, else ``data``); configs without a simulator use the
    metaphase simulator.

    Returns:
        The :class:`~cytobench.reproduce.base.TestSet` (unpacks as ``ann_file, images_dir, seed``).
    """
    data_dir = Path(data_dir or os.environ.get("CYTOBENCH_DATA_DIR", "data"))
    return _held_out_test_set(
        data_config, n_images, seed, data_dir / "deepace_test", default_simulator=DEFAULT_SIMULATOR
    )


# ------------------------------------------------------------------------------------------ inference
def check_modes(model: torch.nn.Module, modes: Sequence[str], source: str | Path = "model") -> None:
    """Raise a one-line error for unknown modes or EG-NMS on a model without the Template branch."""
    for mode in modes:
        if mode not in POSTPROCESS_MODES:
            raise BadInputError(source, f"unknown post-processing {mode!r}; use one of {POSTPROCESS_MODES}")
    if not hasattr(model, "predict_modes"):
        raise BadInputError(source, "not a DeepACEv2 model (it has no post-processing modes)")
    if "eg" in modes and getattr(model.roi_heads, "template", None) is None:
        raise BadInputError(source, "postprocess 'eg' needs the Template branch, which this model lacks")


def score_predictions(
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    evaluator_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """``enum/*`` metrics of predictions against targets (:class:`EnumerationEvaluator`)."""
    from cytobench.evaluation.enumeration import EnumerationEvaluator

    evaluator = EnumerationEvaluator(**dict(evaluator_kwargs or {}))
    evaluator.process(list(targets), list(predictions))
    return evaluator.compute()


def evaluate_checkpoint_modes(
    checkpoint: str | Path,
    ann_file: str | Path,
    images_dir: str | Path,
    modes: Sequence[str | None] = (None,),
    device: str = "cpu",
    evaluator_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 4,
) -> dict[str, tuple[dict[str, float], list[dict[str, Any]]]]:
    """Evaluate one checkpoint under several post-processings with one backbone pass per batch.

    Runs the streaming loop (:func:`~cytobench.engine.inference.inference_on_dataset`) with the model's
    own ``predict_modes``: per mode an :class:`EnumerationEvaluator` and a recorder of the per-image
    predictions (boxes, scores, embeddings: small, for figures and per-spread analyses).

    Args:
        checkpoint: a training checkpoint (``checkpoints/best.pt``) of a DeepACEv2 model.
        ann_file: COCO ground truth of the test set.
        images_dir: folder of its images.
        modes: post-processings; None stands for the checkpoint's own.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        evaluator_kwargs: :class:`EnumerationEvaluator` arguments (score_thr, iou_thr, overlap_tau).
        batch_size: images per forward pass.

    Returns:
        ``{mode: (metrics with enum/* keys, predictions per image)}`` keyed by the resolved mode names.
    """
    from cytobench.engine.distributed import local_device
    from cytobench.engine.inference import PredictionRecorder, inference_on_dataset
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.evaluation.base import EvaluatorList
    from cytobench.evaluation.enumeration import EnumerationEvaluator

    dev = local_device(device)
    model, _ = load_model_from_checkpoint(checkpoint, dev)
    own = getattr(getattr(model, "roi_heads", None), "postprocess", None)
    resolved = list(dict.fromkeys(own if m is None else m for m in modes))
    check_modes(model, resolved, checkpoint)
    loader = coco_loader(ann_file, images_dir, batch_size)
    recorders = {mode: PredictionRecorder() for mode in resolved}
    evaluators = {
        mode: EvaluatorList([EnumerationEvaluator(**dict(evaluator_kwargs or {})), recorders[mode]])
        for mode in resolved
    }
    metrics = inference_on_dataset(model, loader, evaluators, dev)
    return {mode: (metrics[mode], recorders[mode].predictions) for mode in resolved}


def evaluate_checkpoint(
    checkpoint: str | Path,
    ann_file: str | Path,
    images_dir: str | Path,
    postprocess: str | None = None,
    device: str = "cpu",
    evaluator_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Re-evaluate one trained model with any post-processing.

    Args:
        checkpoint: a DeepACEv2 training checkpoint.
        ann_file / images_dir: the test set (e.g. from :func:`held_out_test_set`).
        postprocess: ``"nms"``, ``"soft"``, ``"eg"`` or None for the checkpoint's own.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        evaluator_kwargs: :class:`EnumerationEvaluator` arguments.

    Returns:
        ``(metrics with enum/* keys, predictions per image)``.
    """
    result = evaluate_checkpoint_modes(
        checkpoint, ann_file, images_dir, [postprocess], device, evaluator_kwargs
    )
    return next(iter(result.values()))


__all__ = [
    "POSTPROCESS_MODES",
    "TEST_SEED_OFFSET",
    "check_modes",
    "evaluate_checkpoint",
    "evaluate_checkpoint_modes",
    "held_out_test_set",
    "load_test_data",
    "score_predictions",
]
