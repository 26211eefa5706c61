"""Evaluator contract (detectron2 style): ``reset() / process(targets, predictions) / compute()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from cytobench.types import Prediction, Target


def to_numpy(value: Any) -> np.ndarray:
    """Convert a torch tensor, list or array to a NumPy array (on CPU, detached)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def non_crowd(target: Target) -> np.ndarray:
    """(N,) bool: the annotations that count as objects (``iscrowd`` regions are not objects to find)."""
    n = len(to_numpy(target["boxes"]).reshape(-1, 4))
    if target.get("iscrowd") is None:
        return np.ones(n, dtype=bool)
    return to_numpy(target["iscrowd"]).reshape(-1) == 0


class Evaluator(ABC):
    """Accumulates per-image ground truth and predictions, then computes metrics.

    Metric keys are namespaced (``enum/wcr``, ``coco/bbox_AP50``, ``loc/auc@eps2``) so that
    several evaluators can report into one flat dict. Values are plain floats;
    fractions are in [0, 1].
    """

    prefix: str = ""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    @abstractmethod
    def process(self, targets: Sequence[Target], predictions: Sequence[Prediction]) -> None:
        """Add a batch: ``targets[i]`` and ``predictions[i]`` belong to the same image."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Return the metrics over everything processed since the last reset."""


class EvaluatorList(Evaluator):
    """Runs several evaluators on the same stream and merges their metric dicts."""

    def __init__(self, evaluators: Sequence[Evaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, targets: Sequence[Target], predictions: Sequence[Prediction]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(targets, predictions)

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            metrics.update(evaluator.compute())
        return metrics
