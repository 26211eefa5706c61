"""Train the Cellpose baseline through Cellpose's own loop under cytobench's run-folder contract.

``python train.py experiment=cellpose_brightfield`` (any model config whose ``_target_`` is
:func:`cytobench.models.cellpose_baseline.build_cellpose`) comes here from :func:`cytobench.train.run`:

1. the data is simulated if its config has a ``prepare`` node; the train split is read as the val split is
   (``data.val`` with ``ann_file=data.train_ann``: no cytobench transforms, Cellpose augments itself) and
   turned into Cellpose's images and label images;
2. Cellpose's ``train_seg`` trains the CPnet from random init for ``trainer.max_epochs`` epochs (Cellpose's
   own optimizer, learning rate schedule and augmentation; its settings are the model config's);
3. ``run_dir/checkpoints/last.pt`` and ``best.pt`` (the same file: Cellpose keeps its last weights) are
   cytobench checkpoints (model config, data config, categories, the CPnet's tensors), which
   ``cytobench predict`` and ``cytobench reproduce brightfield/table5_7 --checkpoint`` load weights-only;
   Cellpose's own copy, for its GUI, is ``run_dir/cellpose/models/cellpose_cytobench``;
4. the val split is predicted through the same streaming loop as every model and scored by the configured
   evaluator (``coco/segm_AP``...); ``metrics.json`` has the same schema as the shared trainer's, with
   Cellpose's training loss per epoch as its history.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cytobench.engine.checkpoint import seed_everything
from cytobench.engine.distributed import local_device
from cytobench.engine.inference import inference_on_dataset
from cytobench.engine.run_setup import build_loader, build_logger, prepare_data, write_run_config
from cytobench.errors import BadInputError
from cytobench.io.files import atomic_file, save_atomic, write_json_atomic
from cytobench.reporting.tables import format_metrics

__all__ = ["run_cellpose"]


def run_cellpose(cfg: DictConfig, run_dir: Path) -> float | None:
    """``python train.py`` for the Cellpose baseline (module docstring); returns the monitored metric."""
    from hydra.utils import instantiate

    from cytobench.models.cellpose_baseline import dataset_for_cellpose, import_cellpose

    import_cellpose()  # the optional extra: refused before anything is simulated or written
    tcfg = cfg.trainer
    if tcfg.get("resume"):
        raise BadInputError(str(tcfg.resume), "trainer.resume is not supported for Cellpose runs")
    device = local_device(tcfg.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    write_run_config(run_dir, cfg)
    seed_everything(cfg.seed, deterministic=tcfg.deterministic)
    prepare_data(cfg.data)
    train_set = instantiate(cfg.data.val, ann_file=cfg.data.train_ann)  # untransformed: Cellpose augments
    val_set = instantiate(cfg.data.val)
    model = instantiate(cfg.model, num_classes=train_set.num_classes).to(device)
    logger = build_logger(cfg.get("logger"), run_dir)
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        model.settings["n_epochs"] = int(tcfg.max_epochs)
        images, labels = dataset_for_cellpose(train_set)
        losses = model.fit(images, labels, run_dir / "cellpose", seed=int(cfg.seed))
        history = []
        for epoch, loss in enumerate(losses, start=1):
            logger.log_metrics({"epoch": epoch, "train/loss": loss}, epoch)
            history.append({"epoch": epoch, "train/loss": loss})
        checkpoint = _save_checkpoints(model, cfg, train_set, run_dir / "checkpoints")
        timing = {
            "time/train_s": time.perf_counter() - start,
            "time/train_cpu_s": time.process_time() - start_cpu,
        }
        loader = build_loader(
            val_set,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            train=False,
            seed=cfg.seed,
        )
        metrics = inference_on_dataset(model, loader, instantiate(cfg.evaluator), device)
        timing["time/eval_s"] = time.perf_counter() - start - timing["time/train_s"]
        latest = {**metrics, **timing}
        epochs = int(tcfg.max_epochs)
        logger.log_metrics({"epoch": epochs, **latest}, epochs)
    finally:
        logger.finish()
    monitor = tcfg.get("monitor")
    value = latest.get(monitor) if monitor else None
    summary = {
        "epoch": epochs,
        "step": epochs,
        "latest": latest,
        "history": history,
        "stopped_early": None,
        "monitor": monitor,
        "best": {"value": value, "epoch": epochs, "checkpoint": str(checkpoint)},
        "run_dir": str(run_dir),
    }
    write_json_atomic(run_dir / "metrics.json", summary, indent=2)
    print(f"\nmetrics of {checkpoint.name} after {epochs} Cellpose epochs ({run_dir}):")
    print(format_metrics(latest))
    return value


def _save_checkpoints(model: torch.nn.Module, cfg: DictConfig, train_set: Any, folder: Path) -> Path:
    """``last.pt`` and ``best.pt``: what ``cytobench predict`` rebuilds the model from, tensors and plain data."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "data_config": OmegaConf.to_container(cfg.data, resolve=True),
        "num_classes": int(train_set.num_classes),
        "label_to_cat_id": {
            int(k): int(v) for k, v in (getattr(train_set, "label_to_cat_id", {}) or {}).items()
        },
        "categories": list(getattr(train_set, "categories", []) or []),
        "epoch": int(cfg.trainer.max_epochs),
        "seed": int(cfg.seed),
    }
    best = save_atomic(state, folder / "best.pt")
    with atomic_file(folder / "last.pt", "wb") as out, best.open("rb") as src:  # one training, one state
        shutil.copyfileobj(src, out)
    return best
