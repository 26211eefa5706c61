"""Evaluator contract (detectron2 style): ``reset() / process(targets, predictions) / compute()``.

Evaluators keep compact state (COCO results with RLE masks, boxes, counts), never whole images, so
the streaming loop (:func:`cytobench.engine.inference.inference_on_dataset`) can score any split
batch by batch. Under DDP every rank processes its shard; rank 0 gathers each rank's :meth:`state`
and :meth:`load_states` them before :meth:`compute`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from cytobench.io.coco_convert import to_numpy
from cytobench.types import Prediction, Target

__all__ = ["Evaluator", "EvaluatorList", "check_one_score_each", "non_crowd", "to_numpy"]


def non_crowd(target: Target) -> np.ndarray:
    """(N,) bool: the annotations that count as objects (``iscrowd`` regions are not objects to find)."""
    n = len(to_numpy(target["boxes"]).reshape(-1, 4))
    if target.get("iscrowd") is None:
        return np.ones(n, dtype=bool)
    return to_numpy(target["iscrowd"]).reshape(-1) == 0


def check_one_score_each(target: Target, n_detections: int, n_scores: int) -> None:
    """A prediction has one score per detection.

    Raises:
        ValueError: the counts differ (names the image), instead of a shape error deep in the metrics.
    """
    if n_detections != n_scores:
        image = target.get("image_id")
        raise ValueError(f"prediction of image {image}: {n_detections} detections but {n_scores} scores")


class Evaluator(ABC):
    """Accumulates per-image ground truth and predictions, then computes metrics.

    Metric keys are namespaced (``enum/wcr``, ``coco/bbox_AP50``, ``loc/auc@eps2``) so that
    several evaluators can report into one flat dict. Values are plain floats;
    fractions are in [0, 1].

    Subclasses implement :meth:`reset`, :meth:`process_image` and :meth:`compute`, and name their
    accumulated attributes in ``state_fields`` (lists are concatenated across ranks, arrays summed);
    an evaluator whose state needs more than that overrides :meth:`load_states`.
    """

    prefix: str = ""
    state_fields: tuple[str, ...] = ()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, targets: Sequence[Target], predictions: Sequence[Prediction]) -> None:
        """Add a batch: ``targets[i]`` and ``predictions[i]`` belong to the same image."""
        if len(targets) != len(predictions):
            raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")
        for target, prediction in zip(targets, predictions):
            self.process_image(target, prediction)

    def process_image(self, target: Target, prediction: Prediction) -> None:
        """Add one image (called by :meth:`process`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_image")

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Return the metrics over everything processed since the last reset."""

    def state(self) -> dict[str, Any]:
        """The compact accumulated state (picklable; what DDP gathers)."""
        return {name: getattr(self, name) for name in self.state_fields}

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Replace this evaluator's state by the union of ``states`` (e.g. one per rank, in rank order)."""
        self.reset()
        for name in self.state_fields:
            parts = [state[name] for state in states]
            if isinstance(getattr(self, name), list):
                setattr(self, name, [item for part in parts for item in part])
            else:
                setattr(self, name, sum(parts[1:], parts[0]) if parts else getattr(self, name))


class EvaluatorList(Evaluator):
    """Runs several evaluators on the same stream and merges their metric dicts.

    Raises:
        ValueError: two evaluators report the same metric key (give one another ``prefix``).
    """

    def __init__(self, evaluators: Sequence[Evaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, targets: Sequence[Target], predictions: Sequence[Prediction]) -> None:
        if len(targets) != len(predictions):
            raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")
        for evaluator in self.evaluators:
            evaluator.process(targets, predictions)

    def compute(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            part = evaluator.compute()
            clash = sorted(set(part) & set(metrics))
            if clash:
                raise ValueError(
                    f"{type(evaluator).__name__} reports {clash[:3]} already reported by another evaluator; "
                    "give one of them another prefix"
                )
            metrics.update(part)
        return metrics

    def state(self) -> dict[str, Any]:
        return {"evaluators": [evaluator.state() for evaluator in self.evaluators]}

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        for i, evaluator in enumerate(self.evaluators):
            evaluator.load_states([state["evaluators"][i] for state in states])
