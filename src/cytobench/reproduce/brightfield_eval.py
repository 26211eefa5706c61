"""Scoring SEU-Net checkpoints for the brightfield tables: the trained models to score, a held-out simulated
test set, per-head metrics with a cache, and predictions for the figures.

A :class:`TrainedModel` is one checkpoint with its model and data configs, from a run folder
(``checkpoints/best.pt`` + ``config.yaml``, :func:`models_from_runs`) or a checkpoint file
(:func:`models_from_checkpoints`). Every model of a table is scored on the same test set: simulated once
(cached) with the first model's simulator settings and another seed
(:func:`cytobench.reproduce.base.held_out_test_set`), like the thesis' 5 held-out test images. Each model
reads it through its own data config (planes, resize), as its validation set was read, and is scored by
:class:`~cytobench.evaluation.head_pixel.HeadPixelEvaluator` in the one streaming loop
(:func:`~cytobench.engine.inference.inference_on_dataset`). Metrics are cached in ``<out>/eval_cache.json``
keyed by checkpoint file (path, size, mtime), test set and thresholds, so the six tables share one pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.io.files import read_json, write_json_atomic
from cytobench.reproduce.base import TestSet, checkpoint_configs, held_out_test_set, simulator_settings

__all__ = [
    "DEFAULT_SIMULATOR",
    "TEST_IMAGES",
    "TrainedModel",
    "check_seunet",
    "evaluate_models",
    "models_from_checkpoints",
    "models_from_runs",
    "Scorer",
    "held_out_dataset",
    "pixel_scorer",
    "predict_images",
    "shared_test_set",
]

DEFAULT_SIMULATOR = "cytobench.simulate.brightfield.simulate_brightfield"
TEST_IMAGES = {"smoke": 2, "cpu": 10, "paper": 5}  # the thesis held out 5 of its 28 images (Sec. 5.3)
CACHE_FILE = "eval_cache.json"


@dataclass(frozen=True)
class TrainedModel:
    """One trained SEU-Net to score.

    Attributes:
        checkpoint: its weights (``best.pt``).
        model_config / data_config: the resolved ``model`` and ``data`` nodes it was trained with.
        source: the run folder or checkpoint named on the command line (shown in the json).
        trainer_config: the run's ``trainer`` node when known (from a run folder), for the scale line.
    """

    checkpoint: Path
    model_config: dict[str, Any]
    data_config: dict[str, Any]
    source: str
    trainer_config: dict[str, Any] | None = None

    @property
    def heads(self) -> list[str]:
        return [str(h) for h in self.model_config.get("heads") or []]


def models_from_runs(roots: Sequence[str | Path]) -> list[TrainedModel]:
    """The finished runs below ``roots`` (:func:`cytobench.reproduce.runs.collect_runs`) with a ``best.pt``.

    Runs without one are left out and said so on stderr.
    """
    from cytobench.reproduce.runs import runs_with_checkpoint

    models = []
    for checkpoint, run in runs_with_checkpoint(roots):
        config = run.config
        models.append(
            TrainedModel(
                checkpoint,
                dict(config.get("model") or {}),
                dict(config.get("data") or {}),
                str(run.path),
                dict(config.get("trainer") or {}),
            )
        )
    return models


def models_from_checkpoints(paths: Sequence[str | Path]) -> list[TrainedModel]:
    """One :class:`TrainedModel` per training checkpoint (configs read from the file)."""
    out = []
    for path in paths:
        model_config, data_config = checkpoint_configs(path)
        out.append(TrainedModel(Path(path), model_config, data_config, str(path)))
    return out


def check_seunet(models: Sequence[TrainedModel]) -> None:
    """Refuse checkpoints that are not SEU-Net's (the tables score its heads).

    Raises:
        BadInputError: names the first checkpoint whose model has no SEU-Net heads.
    """
    for model in models:
        target = str(model.model_config.get("_target_", ""))
        if "seunet" not in target or not model.heads:
            raise BadInputError(
                model.checkpoint,
                f"not an SEU-Net checkpoint (model {target or '?'}); the brightfield tables score SEU-Net "
                "heads",
            )


def shared_test_set(
    models: Sequence[TrainedModel], n_images: int, seed: int | None, cache_dir: str | Path | None
) -> tuple[TestSet, dict[str, Any], list[str]]:
    """The held-out test set of the first model's simulator settings; notes on models trained otherwise.

    Returns:
        ``(test set, simulator settings, notes)``.
    """
    first = models[0].data_config
    settings = simulator_settings(first, DEFAULT_SIMULATOR)[1]
    others = sum(simulator_settings(m.data_config, DEFAULT_SIMULATOR)[1] != settings for m in models)
    notes = []
    if others:
        notes.append(
            f"{others} of {len(models)} models were trained on data simulated with other settings than the "
            f"test set's ({settings}, those of the first model)"
        )
    test_set = held_out_test_set(first, n_images, seed, cache_dir, default_simulator=DEFAULT_SIMULATOR)
    return test_set, settings, notes


def held_out_dataset(test_set: TestSet, data_config: Mapping[str, Any]) -> Any:
    """The test set as the model's validation set was read: its planes, its eval resize, every map file."""
    from cytobench.data.brightfield_sets import brightfield_dataset
    from cytobench.data.transforms import build_transforms

    resize = data_config.get("resize")
    transforms = build_transforms(train=False, resize=int(resize)) if resize else None
    return brightfield_dataset(
        test_set.images_dir,
        test_set.ann_file,
        planes=data_config.get("planes", (0, 1)),
        transforms=transforms,
    )


def _loader(dataset: Any) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader

    from cytobench.data.collate import detection_collate

    return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=detection_collate)


def _cache_key(model: TrainedModel, test_set: TestSet, scoring: Any) -> str:
    """Checkpoint file (path, size, mtime), test set and what scores it (json-able)."""
    stat = model.checkpoint.stat()
    parts = [
        str(model.checkpoint.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        str(test_set.ann_file.resolve()),
        test_set.ann_file.stat().st_mtime_ns,
        scoring,
    ]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def evaluate_models(
    models: Sequence[TrainedModel],
    test_set: TestSet,
    device: str | torch.device,
    out_dir: str | Path,
    *,
    thresholds: Mapping[str, float] | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] = print,
    scorer: Scorer | None = None,
) -> list[dict[str, float]]:
    """Metrics of every model on the test set, in order (cached in ``<out_dir>/eval_cache.json``).

    Args:
        models: the models.
        test_set: the held-out set (:func:`shared_test_set`).
        device: where the models run.
        out_dir: folder of ``eval_cache.json``.
        thresholds: head thresholds overriding the thesis' (0.5; overlap 0.3) of the default scorer.
        use_cache: reuse cached metrics of unchanged checkpoints.
        progress: receives one line per evaluated model.
        scorer: how the models are read and scored; None: per-head pixel metrics (``pix/<head>_<metric>``,
            :class:`~cytobench.evaluation.head_pixel.HeadPixelEvaluator`) on :func:`held_out_dataset`.
    """
    from cytobench.engine.inference import inference_on_dataset
    from cytobench.engine.predict import load_model_from_checkpoint

    scorer = scorer or pixel_scorer(thresholds)
    cache_file = Path(out_dir) / CACHE_FILE
    cache = read_json(cache_file) if use_cache and cache_file.is_file() else {}
    results = []
    for k, model in enumerate(models, start=1):
        key = _cache_key(model, test_set, scorer.key)
        if key not in cache:
            progress(f"evaluating {k}/{len(models)}: {model.source}")
            network, _ = load_model_from_checkpoint(model.checkpoint, device)
            loader = _loader(scorer.dataset(test_set, model.data_config))
            cache[key] = inference_on_dataset(network, loader, scorer.evaluator(), device)
            write_json_atomic(cache_file, cache)  # after each model: an interrupted table keeps its progress
        results.append(dict(cache[key]))
    return results


@dataclass(frozen=True)
class Scorer:
    """How :func:`evaluate_models` scores a model: the evaluator, the test set as the model reads it, and
    ``key`` (json-able; names the scoring in the cache, so tables that score differently never share
    entries)."""

    key: Any
    evaluator: Callable[[], Any]
    dataset: Callable[[TestSet, Mapping[str, Any]], Any]


def pixel_scorer(thresholds: Mapping[str, float] | None = None) -> Scorer:
    """Per-head pixel metrics of Tables 5.1-5.6 on :func:`held_out_dataset`."""
    from cytobench.evaluation.head_pixel import HeadPixelEvaluator

    thresholds = dict(thresholds or {})
    return Scorer(
        sorted(thresholds.items()), lambda: HeadPixelEvaluator(thresholds=thresholds), held_out_dataset
    )


def predict_images(
    model: TrainedModel, test_set: TestSet, indices: Sequence[int], device: str | torch.device
) -> list[tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]]:
    """Per test image ``indices[i]``: ``(first plane (H, W) in [0, 1], {head: probability}, target)``."""
    from cytobench.engine.predict import load_model_from_checkpoint

    network, _ = load_model_from_checkpoint(model.checkpoint, device)
    dataset = held_out_dataset(test_set, model.data_config)
    out = []
    with torch.no_grad():
        for index in indices:
            image, target = dataset[index]
            maps = network([image.to(device)])[0]["maps"]
            out.append((image[0].numpy(), {h: p.detach().cpu().numpy() for h, p in maps.items()}, target))
    return out
