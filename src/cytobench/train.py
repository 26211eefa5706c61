"""Hydra entry point: build data, model, evaluator and logger from the config and run the trainer.

This is the only module that reads the whole config; everything it builds takes explicit arguments.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cytobench.engine.checkpoint import seed_everything
from cytobench.engine.distributed import (
    cleanup_distributed,
    init_distributed,
    is_main_process,
    local_device,
)
from cytobench.engine.hooks import CheckpointHook, EarlyStopping, EvalHook, Hook, MetricsFile, StepLogger
from cytobench.engine.loggers import Logger
from cytobench.engine.run_setup import build_loader, build_logger, hydra_mode, prepare_data, write_run_config
from cytobench.engine.schedule import build_optimizer, build_scheduler
from cytobench.engine.trainer import Trainer
from cytobench.errors import CytobenchError
from cytobench.io.files import write_json_atomic
from cytobench.reporting.tables import format_metrics

CONF_DIR = os.environ.get("CYTOBENCH_CONF_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


def run(cfg: DictConfig) -> float | None:
    """Train and evaluate one configuration; returns the monitored metric (for Hydra sweepers)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.run_dir)
    if trains_externally(cfg.model):  # YOLO: ultralytics' own trainer, the same run folder and evaluators
        from cytobench.engine.ultralytics_run import run_yolo

        return run_yolo(cfg, run_dir)
    init_distributed()
    tcfg = cfg.trainer
    seed_everything(cfg.seed, deterministic=tcfg.deterministic)
    device = local_device(tcfg.device)
    if device.type == "cpu" and cfg.get("cpu_note") and is_main_process():
        print(f"note: training on CPU. {cfg.cpu_note}", file=sys.stderr, flush=True)
    from_scratch = not (cfg.model.get("weights_path") or cfg.model.get("backbone_weights_path"))
    if from_scratch and cfg.get("from_scratch_note") and is_main_process():
        print(f"note: no pretrained weights. {cfg.from_scratch_note}", file=sys.stderr, flush=True)
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
        },
    )
    if tcfg.resume:
        trainer.resume(tcfg.resume)
    try:
        trainer.train()
    finally:
        logger.finish()

    summary = {
        **trainer.summary(),
        "monitor": tcfg.monitor,
        "best": {
            "value": checkpoints.best,
            "epoch": checkpoints.best_epoch,
            "checkpoint": str(checkpoints.best_path),
        },
        "run_dir": str(run_dir),
    }
    if is_main_process():
        write_json_atomic(run_dir / "metrics.json", summary, indent=2)
        print(f"\nmetrics after epoch {trainer.epoch} ({run_dir}):")
        print(format_metrics(trainer.latest_metrics))
        print(f"best {tcfg.monitor} = {checkpoints.best} at epoch {checkpoints.best_epoch}")
    cleanup_distributed()
    return trainer.latest_metrics.get(tcfg.monitor) if tcfg.monitor else None


def trains_externally(model_cfg: DictConfig) -> bool:
    """Whether the model config's ``_target_`` is a model that trains through its own trainer (YOLO)."""
    from hydra.utils import get_object

    from cytobench.models.yolo import YoloModel, build_yolo

    target = model_cfg.get("_target_")
    return target is not None and get_object(str(target)) in (build_yolo, YoloModel)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """``python train.py [overrides]``: see ``conf/train.yaml``."""
    try:
        return run(cfg)
    except CytobenchError as err:
        print(str(err), file=sys.stderr)
        if hydra_mode() == RunMode.MULTIRUN:
            return float("nan")  # one failed job must not end the whole sweep
        sys.exit(2)


if __name__ == "__main__":
    main()
