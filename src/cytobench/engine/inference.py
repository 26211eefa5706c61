"""Batched inference over a loader, sharded across DDP ranks and gathered for evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from cytobench.engine.distributed import all_gather_objects, broadcast_object, get_rank, get_world_size
from cytobench.evaluation.base import Evaluator


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


def _to_cpu(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in item.items()}


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``model`` in eval mode over ``loader``; returns this rank's (targets, predictions) on CPU."""
    was_training = model.training
    model.eval()
    all_targets: list[dict[str, Any]] = []
    all_predictions: list[dict[str, Any]] = []
    use_amp = amp and device.type == "cuda"
    for images, targets in loader:
        images, _ = to_device(images, [], device)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            predictions = model(images)
        all_targets.extend(_to_cpu(t) for t in targets)
        all_predictions.extend(_to_cpu(p) for p in predictions)
    model.train(was_training)
    return all_targets, all_predictions


def evaluate(
    model: torch.nn.Module, loader: DataLoader, evaluator: Evaluator, device: torch.device, amp: bool = False
) -> dict[str, float]:
    """Predict on every rank's shard, score everything on rank 0, and share the metrics with all ranks."""
    targets, predictions = predict_loader(model, loader, device, amp)
    gathered = all_gather_objects((targets, predictions))
    metrics: dict[str, float] = {}
    if get_rank() == 0:
        evaluator.reset()
        for rank_targets, rank_predictions in gathered:
            evaluator.process(rank_targets, rank_predictions)
        metrics = evaluator.compute()
    return broadcast_object(metrics)
