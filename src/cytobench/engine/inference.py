"""The one streaming inference-and-evaluation loop (detectron2's ``inference_on_dataset``).

The trainer's evaluation, ``cytobench predict`` and every ``reproduce`` module run models through
:func:`inference_on_dataset`: each batch goes to ``Evaluator.process`` as it comes, evaluators keep
compact state (COCO results with RLE masks, boxes, counts), so no split's predictions or masks are
held whole. Under DDP each rank runs its shard (:class:`ShardSampler`) and rank 0 gathers every
evaluator's compact state, not tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from cytobench.engine.distributed import all_gather_objects, broadcast_object, get_rank, get_world_size
from cytobench.evaluation.base import Evaluator

__all__ = ["PredictionRecorder", "ShardSampler", "gather_and_compute", "inference_on_dataset", "to_device"]


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: no padding, so no image is scored twice."""

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.n = n
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def to_device(images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]], device: torch.device):
    """Move images and the tensor fields of targets (not ``meta``) to ``device``."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _to_cpu(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in item.items()}


class PredictionRecorder(Evaluator):
    """Keeps each image's predictions as NumPy arrays (for figures and per-image analyses of small sets).

    Args:
        keys: prediction fields to keep (masks are left out by default: they are image-sized).
    """

    state_fields = ("predictions",)

    def __init__(
        self, keys: Sequence[str] = ("boxes", "scores", "labels", "embeddings", "keypoints")
    ) -> None:
        self.keys = tuple(keys)
        self.reset()

    def reset(self) -> None:
        self.predictions: list[dict[str, Any]] = []

    def process_image(self, target: Mapping[str, Any], prediction: Mapping[str, Any]) -> None:
        kept = {k: np.asarray(_to_cpu({k: v})[k]) for k, v in prediction.items() if k in self.keys}
        self.predictions.append({**kept, "image_id": target.get("image_id")})

    def compute(self) -> dict[str, float]:
        return {}


def gather_and_compute(evaluator: Evaluator) -> dict[str, float]:
    """``evaluator.compute()`` over every rank's processed images; the metrics are shared with all ranks."""
    if get_world_size() == 1:
        return evaluator.compute()
    states = all_gather_objects(evaluator.state())
    metrics: dict[str, float] = {}
    if get_rank() == 0:
        evaluator.load_states(states)
        metrics = evaluator.compute()
    return broadcast_object(metrics)


@torch.no_grad()
def inference_on_dataset(
    model: torch.nn.Module,
    loader: DataLoader | Sequence[tuple[Sequence[torch.Tensor], Sequence[dict[str, Any]]]],
    evaluator: Evaluator | Mapping[str, Evaluator],
    device: torch.device | str = "cpu",
    *,
    amp: bool = False,
    predict: Callable[[list[torch.Tensor]], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Run ``model`` in eval mode over ``loader`` and score every batch as it comes.

    Args:
        model: any model of the cytobench contract: ``model(images)`` -> ``list[Prediction]`` in eval mode.
        loader: batches of ``(images, targets)``: images (C, H, W) float in [0, 1]; targets with at least
            ``image_id`` (and the ground truth the evaluator needs).
        evaluator: one evaluator; or ``{mode: evaluator}`` for a model with ``predict_modes(images, modes)``
            (e.g. DeepACEv2's NMS / SOFT / EG post-processings on one backbone pass).
        device: where the model runs.
        amp: autocast on CUDA.
        predict: called instead of ``model(images)`` (same contract), e.g. a tiled predictor.
        progress: called as ``progress(batches_done, batches_total)`` after each batch.

    Returns:
        The metrics dict (``{mode: metrics}`` for a mapping of evaluators), equal on every rank.
    """
    device = torch.device(device)
    evaluators = dict(evaluator) if isinstance(evaluator, Mapping) else {"": evaluator}
    modes = list(evaluators) if isinstance(evaluator, Mapping) else None
    for item in evaluators.values():
        item.reset()
    was_training = model.training
    model.eval()
    use_amp = amp and device.type == "cuda"
    total = len(loader) if hasattr(loader, "__len__") else 0
    try:
        for done, (images, targets) in enumerate(loader, start=1):
            images = [img.to(device, non_blocking=True) for img in images]
            with torch.autocast(device_type=device.type, enabled=use_amp):
                if modes is not None:
                    by_mode = model.predict_modes(images, modes)  # type: ignore[operator]
                elif predict is not None:
                    by_mode = {"": predict(images)}
                else:
                    by_mode = {"": model(images)}
            cpu_targets = [_to_cpu(t) for t in targets]
            for mode, predictions in by_mode.items():
                evaluators[mode].process(cpu_targets, [_to_cpu(p) for p in predictions])
            if progress is not None:
                progress(done, total)
    finally:
        model.train(was_training)
    metrics = {mode: gather_and_compute(item) for mode, item in evaluators.items()}
    return metrics if modes is not None else metrics[""]
