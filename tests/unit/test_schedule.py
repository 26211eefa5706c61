"""Learning-rate factors worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cytobench.engine.schedule import build_optimizer, build_scheduler, lr_factor


def factor(step: int, **kw) -> float:
    base = {"total_steps": 100, "steps_per_epoch": 10}
    return lr_factor(step, **{**base, **kw})


def test_multistep_milestones_in_epochs() -> None:
    kw = {"name": "multistep", "milestones": [3, 7], "gamma": 0.1}
    assert factor(29, **kw) == 1.0
    assert factor(30, **kw) == pytest.approx(0.1)
    assert factor(70, **kw) == pytest.approx(0.01)


def test_step_schedule() -> None:
    assert factor(19, name="step", step_size=2, gamma=0.5) == 1.0
    assert factor(20, name="step", step_size=2, gamma=0.5) == 0.5
    assert factor(45, name="step", step_size=2, gamma=0.5) == 0.25


def test_cosine_ends_at_min_factor() -> None:
    assert factor(0, name="cosine") == 1.0
    assert factor(50, name="cosine") == pytest.approx(0.5)
    assert factor(100, name="cosine", min_factor=0.01) == pytest.approx(0.01)


def test_linear_warmup() -> None:
    kw = {"name": "constant", "warmup_steps": 10, "warmup_factor": 0.001}
    assert factor(0, **kw) == pytest.approx(0.001)
    assert factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert factor(10, **kw) == 1.0


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule"):
        factor(0, name="poly")
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer([torch.zeros(1, requires_grad=True)], name="lamb")


def test_scheduler_steps_optimizer_lr() -> None:
    opt = build_optimizer([torch.zeros(1, requires_grad=True)], name="adamw", lr=1.0)
    sched = build_scheduler(opt, steps_per_epoch=4, max_epochs=2, name="cosine")
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert lrs == pytest.approx(expected)
