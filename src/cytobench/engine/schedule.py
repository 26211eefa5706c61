"""Learning-rate schedules stepped once per optimizer step, with milestones given in epochs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def lr_factor(
    step: int,
    *,
    name: str,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    step_size: float = 1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``.

    Args:
        name: ``constant``, ``step`` (x gamma every ``step_size`` epochs), ``multistep``
            (x gamma at each epoch in ``milestones``) or ``cosine`` (to ``min_factor`` at the end).
        total_steps: optimizer steps in the whole run (for cosine).
        steps_per_epoch: optimizer steps per epoch (converts epoch milestones to steps).
        warmup_steps: linear warm-up from ``warmup_factor`` to 1 over the first steps.
    """
    if name == "constant":
        factor = 1.0
    elif name == "step":
        factor = gamma ** math.floor(step / max(1, round(step_size * steps_per_epoch)))
    elif name == "multistep":
        factor = gamma ** sum(step >= round(m * steps_per_epoch) for m in milestones)
    elif name == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        factor = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr schedule {name!r}: use constant, step, multistep or cosine")
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    max_epochs: int,
    name: str = "multistep",
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    step_size: float = 1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`; its state (the step count) is checkpointed for resume."""
    total = steps_per_epoch * max_epochs
    warmup_steps = min(warmup_steps, total)

    def factor(step: int) -> float:
        return lr_factor(
            step,
            name=name,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            milestones=milestones,
            gamma=gamma,
            step_size=step_size,
            warmup_steps=warmup_steps,
            warmup_factor=warmup_factor,
            min_factor=min_factor,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(
    params: Callable | object,
    *,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    betas: Sequence[float] = (0.9, 0.999),
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use sgd or adamw")
