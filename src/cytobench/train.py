"""Hydra entry point: build data, model, evaluator and logger from the config and run the trainer.

This is the only module that reads the whole config; everything it builds takes explicit arguments.
``python train.py`` stops on bad input with one line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1``
shows the traceback); every job records its outcome in ``status.json`` (:mod:`cytobench.engine.sweep`)
and a sweep with a failed job exits 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cytobench.engine.checkpoint import seed_everything
from cytobench.engine.distributed import (
    cleanup_distributed,
    init_distributed,
    is_main_process,
    local_device,
)
from cytobench.engine.hooks import CheckpointHook, EarlyStopping, EvalHook, Hook, MetricsFile, StepLogger
from cytobench.engine.loggers import FILE_ONLY, Logger, ensure_console_logging
from cytobench.engine.run_checks import (
    check_config,
    check_resume_config,
    check_resume_data,
    check_trainer_checkpoint,
    train_config_state,
)
from cytobench.engine.run_setup import (
    build_loader,
    build_logger,
    hydra_mode,
    prepare_data,
    run_environment,
    write_run_config,
)
from cytobench.engine.schedule import build_optimizer, build_scheduler
from cytobench.engine.sweep import annotate_metrics, exit_code_of_last_sweep, write_status
from cytobench.engine.trainer import Trainer
from cytobench.errors import BadInputError, CytobenchError
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import write_json_atomic
from cytobench.reporting.tables import format_metrics

CONF_DIR = os.environ.get("CYTOBENCH_CONF_DIR", str(Path(__file__).resolve().parents[2] / "conf"))
log = logging.getLogger(__name__)


class ProgressLog(Hook):
    """Writes training progress to ``train.log`` only (the console keeps its progress bar).

    Every ``every`` optimizer steps: the losses and learning rate; after every epoch: its duration and,
    when it was evaluated, the metrics (the monitored one first).
    """

    def __init__(self, every: int = 10, monitor: str | None = None) -> None:
        self.every = max(1, every)
        self.monitor = monitor

    def after_step(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if trainer.step % self.every == 0 and is_main_process():
            parts = ", ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "loss")
            lr = trainer.optimizer.param_groups[0]["lr"]
            log.info(
                "epoch %d/%d step %d: loss %.4g (%s), lr %.4g",
                trainer.epoch + 1,
                trainer.max_epochs,
                trainer.step,
                losses.get("loss", float("nan")),
                parts,
                lr,
                extra=FILE_ONLY,
            )

    def after_epoch(self, trainer: Trainer) -> None:
        if not is_main_process():
            return
        seconds = getattr(trainer, "epoch_seconds", float("nan"))
        log.info(
            "epoch %d/%d trained in %.1f s (step %d)",
            trainer.epoch,
            trainer.max_epochs,
            seconds,
            trainer.step,
            extra=FILE_ONLY,
        )
        if trainer.metrics_epoch == trainer.epoch:
            metrics = dict(trainer.latest_metrics)
            first = [self.monitor] if self.monitor in metrics else []
            keys = first + sorted(k for k in metrics if k != self.monitor)
            text = ", ".join(f"{k} {metrics[k]:.4g}" for k in keys)
            log.info("epoch %d evaluation: %s", trainer.epoch, text, extra=FILE_ONLY)


def run(cfg: DictConfig) -> float | None:
    """Train and evaluate one configuration; returns the monitored metric (for Hydra sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.run_dir)
    ensure_console_logging()
    check_config(cfg)
    external = external_runner(cfg.model)
    if external is not None:  # YOLO, Cellpose: their own training loops, the same run folder and evaluators
        return external(cfg, run_dir)
    init_distributed()
    tcfg = cfg.trainer
    seed_everything(cfg.seed, deterministic=tcfg.deterministic)
    device = local_device(tcfg.device)
    if device.type == "cpu" and cfg.get("cpu_note") and is_main_process():
        log.warning("note: training on CPU. %s", cfg.cpu_note)
    from_scratch = not (cfg.model.get("weights_path") or cfg.model.get("backbone_weights_path"))
    if from_scratch and cfg.get("from_scratch_note") and is_main_process():
        log.warning("note: no pretrained weights. %s", cfg.from_scratch_note)
    resume_state = None
    if tcfg.resume:  # refuse before anything is written: config.yaml records what is actually used
        resume_state = load_checkpoint(tcfg.resume, map_location="cpu")
        check_trainer_checkpoint(resume_state, tcfg.resume)
        check_resume_config(resume_state, tcfg.resume, cfg)
    write_run_config(run_dir, cfg)

    prepare_data(cfg.data)
    train_set = instantiate(cfg.data.train)
    val_set = instantiate(cfg.data.val)
    train_loader = build_loader(
        train_set, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, train=True, seed=cfg.seed
    )
    val_loader = build_loader(
        val_set, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, train=False, seed=cfg.seed
    )

    if resume_state is not None:
        categories = list(getattr(train_set, "categories", []) or [])
        check_resume_data(resume_state, tcfg.resume, train_set.num_classes, categories)
        del resume_state  # Trainer.resume loads it onto the device

    model = instantiate(cfg.model, num_classes=train_set.num_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, **tcfg.optimizer)
    steps_per_epoch = math.ceil(len(train_loader) / max(1, tcfg.grad_accum_steps))
    scheduler = build_scheduler(
        optimizer, steps_per_epoch=steps_per_epoch, max_epochs=tcfg.max_epochs, **tcfg.scheduler
    )
    evaluator = instantiate(cfg.evaluator)
    logger = build_logger(cfg.get("logger"), run_dir) if is_main_process() else Logger()
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))

    checkpoints = CheckpointHook(
        run_dir / "checkpoints", tcfg.checkpoint_period, tcfg.monitor, tcfg.monitor_mode
    )
    hooks: list[Hook] = [EvalHook(evaluator, val_loader, tcfg.eval_period)]
    if tcfg.early_stopping.patience:
        es = tcfg.early_stopping
        hooks.append(
            EarlyStopping(es.metric or tcfg.monitor, es.mode or tcfg.monitor_mode, es.patience, es.min_delta)
        )
    hooks += [checkpoints, MetricsFile(run_dir / "metrics.json"), StepLogger(tcfg.log_every)]
    hooks.append(ProgressLog(tcfg.log_every, tcfg.monitor))  # last: indices of checkpointed hooks unchanged

    trainer = Trainer(
        model,
        train_loader,
        optimizer,
        scheduler,
        max_epochs=tcfg.max_epochs,
        device=device,
        hooks=hooks,
        logger=logger,
        grad_accum_steps=tcfg.grad_accum_steps,
        clip_grad_norm=tcfg.clip_grad_norm,
        amp=tcfg.amp,
        progress=tcfg.progress,
        find_unused_parameters=tcfg.find_unused_parameters,
        checkpoint_hint=checkpoints.last_path,
        extra_state={  # what `cytobench predict` needs to rebuild the model from the checkpoint alone
            "model_config": OmegaConf.to_container(cfg.model, resolve=True),
            "data_config": OmegaConf.to_container(cfg.data, resolve=True),
            "num_classes": train_set.num_classes,
            "label_to_cat_id": dict(getattr(train_set, "label_to_cat_id", {}) or {}),
            "categories": list(getattr(train_set, "categories", []) or []),
            # what a resume is checked against (cytobench.engine.run_checks)
            **train_config_state(cfg.seed, OmegaConf.to_container(tcfg, resolve=True)),
        },
    )
    if tcfg.resume:
        trainer.resume(tcfg.resume)
        log.info(
            "resumed from %s at epoch %d (step %d)", tcfg.resume, trainer.epoch, trainer.step, extra=FILE_ONLY
        )
        unadopted = checkpoints.adopt_best(tcfg.resume)
        if unadopted:
            log.warning(
                "the best epoch so far (%s, %s %s) has no checkpoint in this run: %s; best.pt is written "
                "when %s improves on it",
                checkpoints.best_epoch,
                tcfg.monitor,
                checkpoints.best,
                unadopted,
                tcfg.monitor,
            )
    try:
        trainer.train()
    finally:
        logger.finish()
    if trainer.stop_reason and is_main_process():
        log.info("%s", trainer.stop_reason, extra=FILE_ONLY)  # the trainer printed it

    summary = {
        **trainer.summary(),
        "monitor": tcfg.monitor,
        "best": {
            "value": checkpoints.best,
            "epoch": checkpoints.best_epoch,
            "checkpoint": str(checkpoints.best_path) if checkpoints.best_path.exists() else None,
        },
        "run_dir": str(run_dir),
        "status": "done",
    }
    if is_main_process():
        write_json_atomic(run_dir / "metrics.json", summary, indent=2)
        log.info("\nmetrics after epoch %d (%s):", trainer.epoch, run_dir)
        log.info("%s", format_metrics(trainer.latest_metrics))
        log.info("best %s = %s at epoch %s", tcfg.monitor, checkpoints.best, checkpoints.best_epoch)
    cleanup_distributed()
    return trainer.latest_metrics.get(tcfg.monitor) if tcfg.monitor else None


def external_runner(model_cfg: DictConfig) -> Callable[[DictConfig, Path], float | None] | None:
    """The runner of a model that trains through its own loop (YOLO: ultralytics' trainer; Cellpose:
    its ``train_seg``), by the model config's ``_target_``; None for models of the shared trainer."""
    from hydra.utils import get_object

    target = model_cfg.get("_target_")
    if target is None:
        return None
    built = get_object(str(target))
    from cytobench.models.cellpose_baseline import CellposeInstanceModel, build_cellpose
    from cytobench.models.yolo import YoloModel, build_yolo

    if built in (build_yolo, YoloModel):
        from cytobench.engine.ultralytics_run import run_yolo

        return run_yolo
    if built in (build_cellpose, CellposeInstanceModel):
        from cytobench.engine.cellpose_run import run_cellpose

        return run_cellpose
    return None


def user_error(err: BaseException) -> CytobenchError | None:
    """The one-line error behind ``err`` when the user's input or config caused it, else None.

    A :class:`CytobenchError` may arrive wrapped by Hydra's ``instantiate`` (the dataset or model
    constructor raised it); an OmegaConf error is a fault of the config (a value that does not resolve).
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:  # `raise ... from err` chains, e.g. instantiate's
        if isinstance(cause, CytobenchError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    if isinstance(err, OmegaConfBaseException):
        message = " ".join(str(err).split()) or type(err).__name__
        return BadInputError(getattr(err, "full_key", None) or "config", message)
    if isinstance(err, InstantiationException) and str(err).startswith("Error locating target"):
        return BadInputError("config", " ".join(str(err).split()))
    return None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _job_info() -> dict[str, Any]:
    """The Hydra job's number (sweeps) and command-line overrides, for its status file."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    info: dict[str, Any] = {"overrides": list(hydra_cfg.overrides.task)}
    num = OmegaConf.select(hydra_cfg, "job.num", default=None, throw_on_missing=False)
    if hydra_cfg.mode == RunMode.MULTIRUN and isinstance(num, int):
        info["job"] = num
    return info


def _outcome_fields(run_dir: Path, value: float | None) -> dict[str, Any]:
    """The monitored metric of a finished run (from its ``metrics.json``) for its status file."""
    fields: dict[str, Any] = {"value": value}
    try:
        summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return fields
    best = summary.get("best") or {}
    fields.update(
        monitor=summary.get("monitor"),
        best=best.get("value"),
        best_epoch=best.get("epoch"),
        epoch=summary.get("epoch"),
    )
    return fields


def job(cfg: DictConfig) -> float | None:
    """One Hydra job: :func:`run`, with its outcome recorded in ``status.json`` and errors on one line.

    Bad input (a :class:`CytobenchError`, also when Hydra's ``instantiate`` wraps it, or a config value
    that does not resolve) prints one line on stderr and exits 2; other errors keep their traceback.
    In a sweep (``-m``) a failed job returns NaN so the others still run, and the sweep exits 1 at the
    end (:func:`main`). ``HYDRA_FULL_ERROR=1`` re-raises every error for Hydra's full traceback.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.run_dir)
    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        info = _job_info()
        write_status(run_dir, "running", **info, environment=run_environment())
        log.info("run %s: %s", run_dir, " ".join(info.get("overrides", [])) or "defaults", extra=FILE_ONLY)
    try:
        value = run(cfg)
    except KeyboardInterrupt:
        log.error("interrupted (KeyboardInterrupt)", extra=FILE_ONLY)
        if main_rank:
            write_status(run_dir, "killed", reason="interrupted (KeyboardInterrupt)")
            annotate_metrics(run_dir, status="killed", reason="interrupted (KeyboardInterrupt)")
        raise
    except Exception as err:
        bad_input = user_error(err)
        reason = str(bad_input) if bad_input is not None else _one_line(err)
        log.error("%s", reason, exc_info=err, extra=FILE_ONLY)  # train.log keeps the traceback
        if main_rank:
            write_status(run_dir, "failed", reason=reason)
            annotate_metrics(run_dir, status="failed", reason=reason)
        sweep = hydra_mode() == RunMode.MULTIRUN
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or (bad_input is None and not sweep):
            raise
        if bad_input is None:
            traceback.print_exception(err)
        print(reason, file=sys.stderr, flush=True)
        if sweep:
            return float("nan")  # one failed job must not end the whole sweep
        sys.exit(2)
    if main_rank:
        outcome = _outcome_fields(run_dir, value)
        write_status(run_dir, "done", **outcome)
        annotate_metrics(run_dir, status="done")  # YOLO runs: ultralytics_run writes metrics.json
        log.info(
            "done: %s = %s (best %s at epoch %s)",
            outcome.get("monitor"),
            value,
            outcome.get("best"),
            outcome.get("best_epoch"),
            extra=FILE_ONLY,
        )
    return value


_hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")(job)


def main() -> None:
    """``python train.py [overrides]`` (see ``conf/train.yaml``); a sweep with a failed job exits 1."""
    _hydra_main()
    code = exit_code_of_last_sweep()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
