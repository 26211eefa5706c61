"""The shared training loop: one trainer for every torch model, extended through hooks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cytobench.engine.checkpoint import capture_rng_state, plain_data, restore_rng_state
from cytobench.engine.distributed import get_world_size, is_distributed, is_main_process
from cytobench.engine.hooks import CHECKPOINT_NAMES, STALE_TEMP_AGE_S, Hook
from cytobench.engine.inference import to_device
from cytobench.engine.loggers import Logger
from cytobench.errors import BadInputError, TrainingDiverged
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import remove_stale_temp_files


class Trainer:
    """Epoch loop with gradient accumulation, clipping, AMP (CUDA), DDP and exact resume.

    The model follows the cytobench contract: ``model(images, targets)`` returns a dict of
    ``loss_*`` tensors in train mode. Samplers and datasets exposing ``set_epoch`` are told the
    epoch before it starts, so data order and augmentation depend only on (seed, epoch).

    Args:
        model: the model, already on ``device``.
        train_loader: yields ``(list[image CxHxW], list[target])``.
        optimizer / scheduler: the scheduler is stepped once per optimizer step.
        max_epochs: epochs to train in total (a resumed run continues up to it).
        hooks: run after each step / epoch in order (see :mod:`cytobench.engine.hooks`).
        grad_accum_steps: micro-batches per optimizer step.
        clip_grad_norm: max global L2 norm of gradients, or None.
        amp: mixed precision, used only on CUDA.
        checkpoint_hint: where the last good checkpoint lives (named when training diverges).
        extra_state: saved in every checkpoint as plain data (e.g. the model config and category map that
            ``cytobench predict`` needs to rebuild the model).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        max_epochs: int,
        device: torch.device,
        hooks: Sequence[Hook] = (),
        logger: Logger | None = None,
        grad_accum_steps: int = 1,
        clip_grad_norm: float | None = None,
        amp: bool = False,
        progress: bool = True,
        find_unused_parameters: bool = False,
        checkpoint_hint: str | Path | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.model: torch.nn.Module = model
        if is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=find_unused_parameters
            )
        self.train_loader = train_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.max_epochs = max_epochs
        self.hooks = list(hooks)
        self.logger = logger or Logger()
        self.grad_accum_steps = max(1, grad_accum_steps)
        self.clip_grad_norm = clip_grad_norm
        self.progress = progress
        self.checkpoint_hint = checkpoint_hint
        self.extra_state = dict(extra_state or {})

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.latest_metrics: dict[str, float] = {}
        self.metrics_epoch = -1  # the epoch at which latest_metrics were computed
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.stop_reason = ""

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    # ----------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Train from the current epoch up to ``max_epochs`` or until a hook asks to stop."""
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while self.epoch < self.max_epochs and not self.should_stop:
                self.train_one_epoch()
                self.epoch += 1
                for hook in self.hooks:
                    hook.after_epoch(self)
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        if self.stop_reason and is_main_process():
            print(self.stop_reason)

    def _set_epoch(self) -> None:
        for obj in (getattr(self.train_loader, "sampler", None), getattr(self.train_loader, "dataset", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(self.epoch)

    def train_one_epoch(self) -> None:
        self._set_epoch()
        self.model.train()
        n_batches = len(self.train_loader)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {self.epoch + 1}/{self.max_epochs}",
            disable=not (self.progress and is_main_process()),
            dynamic_ncols=True,
            leave=False,
        )
        start = time.perf_counter()
        running: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for index, (images, targets) in enumerate(self.train_loader):
            images, targets = to_device(images, targets, self.device)
            is_step = (index + 1) % self.grad_accum_steps == 0 or index + 1 == n_batches
            losses = self._forward_backward(images, targets, sync=is_step)
            running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in losses.items()}
            if is_step:
                self._optimizer_step()
                for hook in self.hooks:
                    hook.after_step(self, losses)
            bar.update(1)
            rate = len(images) * get_world_size() * (index + 1) / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{running['loss']:.3f}", img_s=f"{rate:.1f}", refresh=False)
        bar.close()
        self.epoch_seconds = time.perf_counter() - start

    def _forward_backward(
        self, images: list[torch.Tensor], targets: list[dict], sync: bool
    ) -> dict[str, float]:
        no_sync = self.model.no_sync() if (is_distributed() and not sync) else nullcontext()
        with no_sync:
            with torch.autocast(device_type=self.device.type, enabled=self.amp):
                loss_dict = self.model(images, targets)
            loss = sum(loss_dict.values())
            self._check_finite(loss, loss_dict)
            self.scaler.scale(loss / self.grad_accum_steps).backward()
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = float(loss.detach())
        return values

    def _check_finite(self, loss: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if is_distributed():  # every rank must stop together, or the others hang in all-reduce
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 1.0:
            return
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())
        kept = f"; last good checkpoint: {self.checkpoint_hint}" if self.checkpoint_hint else ""
        if self.checkpoint_hint and not Path(self.checkpoint_hint).exists():
            kept = "; no checkpoint was written yet"
        raise TrainingDiverged(
            f"TrainingDiverged: loss became non-finite at epoch {self.epoch + 1}, step {self.step + 1} "
            f"({parts}){kept}. Lower the learning rate or enable trainer.clip_grad_norm."
        )

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    # -------------------------------------------------------------------------------- metrics
    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Called by the evaluation hook: keep, log and remember the metrics of this epoch."""
        self.latest_metrics = dict(metrics)
        self.metrics_epoch = self.epoch
        self.history.append({"epoch": self.epoch, "step": self.step, **metrics})
        if is_main_process():
            self.logger.log_metrics({"epoch": self.epoch, **metrics}, self.step)

    def request_stop(self, reason: str) -> None:
        self.should_stop = True
        self.stop_reason = reason

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: latest metrics, best by each hook's monitor, full history."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "latest": self.latest_metrics,
            "history": self.history,
            "stopped_early": self.stop_reason or None,
        }

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs, as tensors and plain data (``torch.load(weights_only=True)`` reads it)."""
        return {
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": plain_data(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "latest_metrics": plain_data(self.latest_metrics),
            "metrics_epoch": self.metrics_epoch,
            "history": plain_data(self.history),
            "stop_reason": self.stop_reason,
            "hooks": plain_data(
                {f"{i}:{type(h).__name__}": h.state_dict() for i, h in enumerate(self.hooks)}
            ),
            "rng": capture_rng_state(),
            **plain_data(self.extra_state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unwrapped_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.latest_metrics, self.metrics_epoch = state["latest_metrics"], state["metrics_epoch"]
        self.history = state["history"]
        self.should_stop, self.stop_reason = bool(state["stop_reason"]), state["stop_reason"]
        for i, hook in enumerate(self.hooks):
            key = f"{i}:{type(hook).__name__}"
            if key in state["hooks"]:
                hook.load_state_dict(state["hooks"][key])
        restore_rng_state(state["rng"])

    def resume(self, path: str | Path) -> None:
        """Continue exactly where the checkpoint at ``path`` left off (weights, optimizer, RNG, hooks).

        The file is read as weights only (:func:`cytobench.io.checkpoint.load_checkpoint`: nothing in it is
        run). Temp files that an interrupted write left beside it (``.last.pt.XXXXXXXX.tmp``) are removed
        once untouched for ``STALE_TEMP_AGE_S`` (a run still writing there keeps its own).

        Raises:
            BadInputError: unreadable, refused (it names Python objects beyond plain data) or not a
                checkpoint of this trainer.
        """
        state = load_checkpoint(path, map_location=self.device)
        keys = ("model", "optimizer", "scheduler", "rng", "hooks")
        missing = [key for key in keys if key not in state] if isinstance(state, dict) else list(keys)
        if missing:
            raise BadInputError(
                path, f"not a checkpoint of the shared trainer ({', '.join(missing)} missing)"
            )
        self.load_state_dict(state)
        if is_main_process():  # the interrupted run is over (this one continues it): its orphans can go
            remove_stale_temp_files(Path(path).parent, CHECKPOINT_NAMES, min_age_s=STALE_TEMP_AGE_S)
            print(f"resumed from {path} at epoch {self.epoch} (step {self.step})")
