"""The shared trainer on a tiny model: exact resume, divergence, accumulation, clipping, early stop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cytobench.engine.checkpoint import seed_everything
from cytobench.engine.hooks import CheckpointHook, EarlyStopping, EvalHook, Hook
from cytobench.engine.schedule import build_optimizer, build_scheduler
from cytobench.engine.trainer import Trainer
from cytobench.errors import TrainingDiverged
from cytobench.evaluation.base import Evaluator
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import save_atomic


class NoisyData(Dataset):
    """Random inputs whose 'augmentation' noise depends on (seed, epoch, index) only."""

    def __init__(self, n: int = 12, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 4)).astype(np.float32)
        self.y = (self.x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32))[:, None]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        jitter = np.random.default_rng([self.seed, self.epoch, i]).normal(scale=0.05, size=4)
        return torch.from_numpy(self.x[i] + jitter.astype(np.float32)), {"y": torch.from_numpy(self.y[i])}


class TinyModel(nn.Module):
    """Follows the model contract: loss dict in train mode, predictions in eval mode."""

    def __init__(self, blow_up_at_call: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.calls = 0
        self.blow_up_at_call = blow_up_at_call

    def forward(self, images, targets=None):
        x = torch.stack(images)
        pred = self.lin(x) + 0.01 * torch.randn(len(images), 1)  # uses the global RNG like RPN samplers do
        if not self.training:
            return [{"value": p} for p in pred]
        self.calls += 1
        loss = ((pred - torch.stack([t["y"] for t in targets])) ** 2).mean()
        if self.calls == self.blow_up_at_call:
            loss = loss * float("nan")
        return {"loss_mse": loss}


class MeanValue(Evaluator):
    """Scores predictions by minus their mean squared error."""

    def __init__(self, constant: float | None = None) -> None:
        self.constant = constant
        self.reset()

    def reset(self) -> None:
        self.errors: list[float] = []

    def process(self, targets, predictions) -> None:
        self.errors += [float((p["value"] - t["y"]) ** 2) for t, p in zip(targets, predictions)]

    def compute(self) -> dict[str, float]:
        return {"toy/score": self.constant if self.constant is not None else -float(np.mean(self.errors))}


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


class Interrupt(Exception):
    pass


class InterruptAfter(Hook):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise Interrupt


def make_trainer(
    tmp: Path,
    *,
    max_epochs: int = 4,
    batch_size: int = 3,
    accum: int = 1,
    clip: float | None = None,
    extra_hooks: tuple[Hook, ...] = (),
    model: TinyModel | None = None,
    evaluator=None,
    schedule: str = "cosine",
) -> Trainer:
    seed_everything(0)
    data = NoisyData()
    loader = DataLoader(
        data,
        batch_size=batch_size,
        collate_fn=collate,
        sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0),
    )
    val_loader = DataLoader(NoisyData(6, seed=1), batch_size=3, collate_fn=collate)
    model = model or TinyModel()
    opt = build_optimizer(model.parameters(), name="sgd", lr=0.05, momentum=0.9)
    steps = math.ceil(len(loader) / accum)
    sched = build_scheduler(opt, steps_per_epoch=steps, max_epochs=max_epochs, name=schedule, warmup_steps=3)
    ckpt = CheckpointHook(tmp / "ckpt", monitor="toy/score")
    hooks = [EvalHook(evaluator or MeanValue(), val_loader), *extra_hooks, ckpt]
    return Trainer(
        model,
        loader,
        opt,
        sched,
        max_epochs=max_epochs,
        device=torch.device("cpu"),
        hooks=hooks,
        grad_accum_steps=accum,
        clip_grad_norm=clip,
        progress=False,
        checkpoint_hint=ckpt.last_path,
    )


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_training_reduces_loss(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=6)
    trainer.train()
    scores = [h["toy/score"] for h in trainer.history]
    assert len(scores) == 6 and scores[-1] > scores[0]


def test_resume_is_exact(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full")
    full.train()

    interrupted = make_trainer(tmp_path / "part", extra_hooks=(InterruptAfter(2),))
    with pytest.raises(Interrupt):
        interrupted.train()
    # the interrupting hook ran before the checkpoint hook: the last checkpoint is from epoch 1
    assert load_checkpoint(tmp_path / "part" / "ckpt" / "last.pt")["epoch"] == 1

    torch.manual_seed(1234)  # whatever the global RNG holds now must not matter after resume
    resumed = make_trainer(tmp_path / "part")
    resumed.resume(tmp_path / "part" / "ckpt" / "last.pt")
    assert resumed.epoch == 1
    resumed.train()
    for a, b in zip(params(full), params(resumed)):
        assert torch.equal(a, b)
    assert [h["toy/score"] for h in full.history] == [h["toy/score"] for h in resumed.history]
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path: Path) -> None:
    # 12 samples / batch 3 = 4 steps per epoch: call 6 is in epoch 2
    trainer = make_trainer(tmp_path, model=TinyModel(blow_up_at_call=6))
    with pytest.raises(TrainingDiverged) as err:
        trainer.train()
    message = str(err.value)
    assert "epoch 2" in message and "loss_mse=nan" in message and "last.pt" in message
    kept = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_gradient_accumulation_matches_big_batch(tmp_path: Path) -> None:
    # Equal micro-batches: mean of two half-batch means == the full-batch mean.
    big = make_trainer(tmp_path / "a", max_epochs=1, batch_size=4, accum=1, schedule="constant")
    big.train()
    small = make_trainer(tmp_path / "b", max_epochs=1, batch_size=2, accum=2, schedule="constant")
    small.train()
    assert big.step == small.step == 3
    for a, b in zip(params(big), params(small)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_first_update(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=1, clip=1e-3, schedule="constant", batch_size=12)
    before = params(trainer)
    trainer.train()
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(params(trainer), before)))
    # one SGD step (lr 0.05 x warm-up factor <= 1) with gradient norm clipped to 1e-3
    assert 0 < change <= 0.05 * 1e-3 + 1e-9


def test_early_stopping_on_flat_metric(tmp_path: Path) -> None:
    stopper = EarlyStopping("toy/score", mode="max", patience=2)
    trainer = make_trainer(tmp_path, max_epochs=10, evaluator=MeanValue(constant=0.5), extra_hooks=(stopper,))
    trainer.train()
    assert trainer.epoch == 3  # epoch 1 sets the best, epochs 2 and 3 do not improve
    assert "early stopping" in trainer.stop_reason
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["epoch"] == 3


def test_resume_into_a_new_folder_carries_the_best_checkpoint(tmp_path: Path) -> None:
    """A run resumed into another folder used to record a best.pt that did not exist there until the metric
    improved again (metrics.json and `reproduce --runs` pointed at nothing)."""
    source = tmp_path / "first" / "checkpoints"
    save_atomic({"epoch": 75, "model": {"w": torch.ones(2)}}, source / "best.pt")
    save_atomic({"epoch": 85, "model": {"w": torch.zeros(2)}}, source / "last.pt")

    def resumed_hook(folder: Path, best_epoch: int | None = 75) -> CheckpointHook:
        hook = CheckpointHook(folder, monitor="toy/score")
        hook.load_state_dict({"best": None if best_epoch is None else 0.33, "best_epoch": best_epoch})
        return hook

    hook = resumed_hook(tmp_path / "second" / "checkpoints")
    assert hook.adopt_best(source / "last.pt") is None
    assert hook.best_path.read_bytes() == (source / "best.pt").read_bytes()
    assert hook.adopt_best(source / "last.pt") is None  # already there: left as it is

    stale = resumed_hook(tmp_path / "third", best_epoch=80)  # resumed from a last.pt older than best.pt
    assert (
        stale.adopt_best(source / "last.pt") == f"{source / 'best.pt'} is of epoch 75, not the best epoch 80"
    )
    assert not stale.best_path.exists()
    missing = resumed_hook(tmp_path / "fourth")
    assert (
        missing.adopt_best(tmp_path / "elsewhere" / "last.pt")
        == f"{tmp_path / 'elsewhere' / 'best.pt'} does not exist"
    )
    nothing_yet = resumed_hook(tmp_path / "fifth", best_epoch=None)
    assert nothing_yet.adopt_best(source / "last.pt") is None and not nothing_yet.best_path.exists()
