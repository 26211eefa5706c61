"""Re-evaluate trained DeepACEv2 checkpoints on a held-out simulated test set.

Post-processing does not change training, so one trained model gives the NMS, Soft-NMS and
Embedding-Guided NMS rows of the paper's tables: :func:`evaluate_checkpoint_modes` runs the
backbone and the RPN once per batch (``DeepACE.predict_modes``) and only repeats the RoI head and its
post-processing for each mode, through the one streaming loop. :func:`evaluate_checkpoint` is the
one-mode form. :func:`simulate_test_set` simulates a test set with the simulator settings a
checkpoint's training data used (image size, chromosome scale, counts ...) and another seed.

Predictions are per image dicts of NumPy arrays: ``boxes`` (M, 4) xyxy in the image's pixels,
``scores`` (M,), ``labels`` (M,), ``embeddings`` (M,) with the Template branch, and ``image_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cytobench.errors import BadInputError
from cytobench.models.deepace.roi_heads import POSTPROCESS_MODES

TEST_SEED_OFFSET = 10_000  # default test seed = training seed + this
DEFAULT_SIMULATOR = "cytobench.simulate.metaphase.simulate_metaphase"
# keys of a data config's ``prepare`` node that are not simulator settings of the images themselves
_NOT_SIMULATOR_SETTINGS = {
    "_target_",
    "_convert_",
    "simulator",
    "out_dir",
    "n_images",
    "seed",
    "val_fraction",
}


# ------------------------------------------------------------------------------------------ test set
def simulator_settings(data_config: Mapping[str, Any]) -> tuple[str, dict[str, Any], int]:
    """The simulator, its image settings and its seed from a checkpoint's ``data_config``.

    Args:
        data_config: the resolved ``data`` node saved in a training checkpoint (``prepare`` node of
            :func:`cytobench.data.prepare.ensure_simulated`, or at least ``size``).

    Returns:
        ``(simulator import path, settings such as size / scale / n_chromosomes, training seed)``.
    """
    prepare = dict(data_config.get("prepare") or {})
    simulator = (prepare.get("simulator") or {}).get("path", DEFAULT_SIMULATOR)
    settings = {k: v for k, v in prepare.items() if k not in _NOT_SIMULATOR_SETTINGS}
    if "size" not in settings:
        if "size" not in data_config:
            raise ValueError("the data config names no image size (data.size or data.prepare.size)")
        settings["size"] = data_config["size"]
    settings["size"] = [int(v) for v in settings["size"]]
    seed = int(prepare.get("seed", data_config.get("sim_seed", 0)))
    return simulator, settings, seed


def simulate_test_set(
    data_config: Mapping[str, Any], out_dir: str | Path, n_images: int, seed: int
) -> tuple[Path, Path]:
    """Simulate (once; cached) a held-out test set like a checkpoint's training data.

    The set goes to ``out_dir/test_{W}x{H}_n{n_images}_seed{seed}_{hash}`` (the hash covers every
    simulator setting), so sets for different checkpoints or sizes never collide and a second call
    reuses the first one's images.

    Args:
        data_config: the checkpoint's ``data_config`` (see :func:`simulator_settings`).
        out_dir: parent folder of the cached test sets.
        n_images: number of test images (>= 1).
        seed: simulator seed; must differ from the training data's seed (the same seed would
            reproduce the training images, which are drawn per image from ``(seed, index)``).

    Returns:
        ``(ann_file, images_dir)``: the COCO ground truth ``annotations.json`` and its image folder.
    """
    from hydra.utils import get_method

    from cytobench.data.prepare import ensure_simulated

    simulator_path, settings, train_seed = simulator_settings(data_config)
    if int(seed) == train_seed:
        raise ValueError(
            f"test seed {seed} equals the training data's seed: the test set would be training images"
        )
    if int(n_images) < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    spec = json.dumps({"simulator": simulator_path, **settings}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    width, height = settings["size"]
    folder = Path(out_dir) / f"test_{width}x{height}_n{int(n_images)}_seed{int(seed)}_{digest}"
    ensure_simulated(
        get_method(simulator_path), out_dir=folder, n_images=int(n_images), seed=int(seed), **settings
    )
    return folder / "annotations.json", folder / "images"


def held_out_test_set(
    data_config: Mapping[str, Any],
    n_images: int,
    seed: int | None = None,
    data_dir: str | Path | None = None,
) -> tuple[Path, Path, int]:
    """:func:`simulate_test_set` with the defaults every DeepACEv2 table shares: the training seed +
    ``TEST_SEED_OFFSET`` and the cache ``$CYTOBENCH_DATA_DIR/deepace_test`` (or ``data/deepace_test``).

    Returns:
        ``(ann_file, images_dir, seed)``.
    """
    seed = simulator_settings(data_config)[2] + TEST_SEED_OFFSET if seed is None else int(seed)
    data_dir = Path(data_dir or os.environ.get("CYTOBENCH_DATA_DIR", "data"))
    ann_file, images_dir = simulate_test_set(data_config, data_dir / "deepace_test", n_images, seed)
    return ann_file, images_dir, seed


# ------------------------------------------------------------------------------------------ test data
def load_test_data(ann_file: str | Path, images_dir: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """Ground truth per image (:func:`cytobench.io.coco.coco_to_targets`) and the image paths."""
    from cytobench.io.coco import load_coco
    from cytobench.io.coco_convert import coco_to_targets

    gt = load_coco(ann_file)
    targets = coco_to_targets(gt)
    paths = [Path(images_dir) / img["file_name"] for img in gt["images"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BadInputError(
            ann_file, f"{len(missing)} images not found in {images_dir}, e.g. {missing[0].name}"
        )
    return targets, paths


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
    from torch.utils.data import DataLoader

    from cytobench.data.collate import detection_collate
    from cytobench.data.image_list import ImageListDataset
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
    targets, paths = load_test_data(ann_file, images_dir)
    dataset = ImageListDataset(paths, [t["image_id"] for t in targets], targets)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
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
        ann_file / images_dir: the test set (e.g. from :func:`simulate_test_set`).
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
    "check_modes",
    "evaluate_checkpoint",
    "evaluate_checkpoint_modes",
    "load_test_data",
    "score_predictions",
    "simulate_test_set",
    "simulator_settings",
]
