"""Trainer hooks (detectron2 style): evaluation, early stopping, checkpoints, step logging.

Hooks run in list order after every epoch; the trainer's default order is evaluation, early
stopping, checkpointing, so that a checkpoint holds the newest metrics and stopping state.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from cytobench.engine.distributed import is_main_process
from cytobench.engine.inference import inference_on_dataset
from cytobench.evaluation.base import Evaluator
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import atomic_file, remove_stale_temp_files, save_atomic, write_json_atomic

if TYPE_CHECKING:
    from cytobench.engine.trainer import Trainer

#: the files :class:`CheckpointHook` writes (atomically, through ``.<name>.XXXXXXXX.tmp`` beside them)
CHECKPOINT_NAMES = ("last.pt", "best.pt")
#: temp files beside a checkpoint being resumed are removed once untouched this long (its run may still write)
STALE_TEMP_AGE_S = 60.0


class Hook:
    """Base hook: override any of the callbacks; ``state_dict`` is saved in checkpoints."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer, losses: dict[str, float]) -> None: ...

    def after_epoch(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` (``mode`` max or min); NaN never improves."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EvalHook(Hook):
    """Scores the model on ``loader`` every ``period`` epochs and after the last one."""

    def __init__(self, evaluator: Evaluator, loader: DataLoader, period: int = 1) -> None:
        self.evaluator = evaluator
        self.loader = loader
        self.period = max(1, period)

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.epoch % self.period and trainer.epoch < trainer.max_epochs and not trainer.should_stop:
            return
        metrics = inference_on_dataset(
            trainer.unwrapped_model, self.loader, self.evaluator, trainer.device, amp=trainer.amp
        )
        trainer.record_metrics(metrics)


class EarlyStopping(Hook):
    """Stops training when ``metric`` has not improved for ``patience`` evaluations."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 5, min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"early stopping mode must be 'max' or 'min', not {mode!r}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0
        self._seen_epoch = -1

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.metrics_epoch != trainer.epoch or trainer.metrics_epoch == self._seen_epoch:
            return
        self._seen_epoch = trainer.epoch
        value = trainer.latest_metrics.get(self.metric)
        if value is None:
            raise KeyError(
                f"early stopping metric {self.metric!r} not among {sorted(trainer.latest_metrics)}"
            )
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.request_stop(
                f"early stopping: {self.metric} has not improved on {self.best:.4g} for {self.patience} evaluations"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals, "seen_epoch": self._seen_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals, self._seen_epoch = state["best"], state["bad_evals"], state["seen_epoch"]


class CheckpointHook(Hook):
    """Writes ``last.pt`` every ``period`` epochs and ``best.pt`` when ``monitor`` improves (atomically).

    A write interrupted by a kill leaves the previous file intact and a temp file beside it
    (``.last.pt.XXXXXXXX.tmp``); those of this folder are removed when training starts and after each
    save (:func:`cytobench.io.files.remove_stale_temp_files`), so none outlives the next run or save.
    """

    def __init__(self, directory: str | Path, period: int = 1, monitor: str | None = None, mode: str = "max"):
        self.directory = Path(directory)
        self.period = max(1, period)
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def before_train(self, trainer: Trainer) -> None:
        if is_main_process():
            self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove temp files of interrupted checkpoint writes in :attr:`directory`; returns them."""
        return remove_stale_temp_files(self.directory, CHECKPOINT_NAMES)

    def after_epoch(self, trainer: Trainer) -> None:
        improved = False
        if self.monitor and trainer.metrics_epoch == trainer.epoch:
            value = trainer.latest_metrics.get(self.monitor)
            if value is None:
                raise KeyError(
                    f"checkpoint monitor {self.monitor!r} not among {sorted(trainer.latest_metrics)}"
                )
            improved = is_better(value, self.best, self.mode)
            if improved:
                self.best, self.best_epoch = value, trainer.epoch
        due = trainer.epoch % self.period == 0 or trainer.epoch >= trainer.max_epochs or trainer.should_stop
        if not (due or improved) or not is_main_process():
            return
        state = trainer.state_dict()  # captured after this hook's own update, so resume sees it
        save_atomic(state, self.last_path)
        if improved:
            save_atomic(state, self.best_path)
        self.remove_stale_temp_files()

    def adopt_best(self, resumed_from: str | Path) -> str | None:
        """After a resume into another folder, copy the resumed run's ``best.pt`` here, so that this run's
        ``best.pt`` (what ``metrics.json``, ``cytobench predict`` and ``reproduce --runs`` read) holds its best
        epoch so far rather than nothing until the metric improves again.

        Returns None when done or not needed (no best yet, or resumed in place), else why the best epoch has no
        file in this run: the resumed run's ``best.pt`` is missing or is of another epoch than the one the
        checkpoint records as best (a copy resumed out of its folder, or an older ``last.pt``).
        """
        if self.best is None or self.best_path.exists() or not is_main_process():
            return None
        source = Path(resumed_from).parent / "best.pt"
        if not source.is_file():
            return f"{source} does not exist"
        epoch = load_checkpoint(source).get("epoch")
        if epoch != self.best_epoch:
            return f"{source} is of epoch {epoch}, not the best epoch {self.best_epoch}"
        with source.open("rb") as src, atomic_file(self.best_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class StepLogger(Hook):
    """Sends the running losses and learning rate to the trainer's logger every ``every`` steps."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)

    def after_step(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if trainer.step % self.every == 0 and is_main_process():
            lr = trainer.optimizer.param_groups[0]["lr"]
            trainer.logger.log_metrics(
                {**{f"train/{k}": v for k, v in losses.items()}, "train/lr": lr}, trainer.step
            )


class MetricsFile(Hook):
    """Keeps ``metrics.json`` (latest, best and history of evaluations) current after every evaluation."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.metrics_epoch == trainer.epoch and is_main_process():
            write_json_atomic(self.path, trainer.summary(), indent=2)
