"""Train a YOLO model through ultralytics' own trainer under cytobench's run-folder contract.

``python train.py model=yolov8_seg ...`` (any model config whose ``_target_`` is
:func:`cytobench.models.yolo.build_yolo`) comes here from :func:`cytobench.train.run`. Steps:

1. simulate the data if the data config has a ``prepare`` node; export its COCO train / val splits (and
   any ``model.extra_train`` sets) to the YOLO layout in ``run_dir/yolo_data`` with
   :func:`cytobench.io.yolo.export_yolo`; images that ultralytics' OpenCV reader would misread (16-bit,
   CZI, multi-channel TIFF, ...) are written as 8-bit PNG scaled by their real range, like cytobench's reader;
2. ``ultralytics.YOLO(model.arch or model.weights_path).train(**model.train_args)`` with the project in
   ``run_dir/ultralytics``; a callback sends each epoch's losses, ultralytics' val metrics (``yolo/...``)
   and learning rate to the cytobench logger (CSV / W&B) and keeps ``metrics.json`` current;
3. ``run_dir/checkpoints/best.pt`` and ``last.pt``: the ultralytics weights with cytobench metadata, in
   the safe format that loads with ``torch.load(weights_only=True)`` (see :mod:`cytobench.models.yolo`);
   ultralytics picks best.pt by its fitness (box + mask mAP50-95 on val);
4. best.pt, loaded as a :class:`~cytobench.models.yolo.YoloModel`, predicts the val split through the same
   streaming loop as every model and the configured evaluator scores it (``coco/segm_AP``, ...); the
   final ``latest`` metrics hold these beside ultralytics' own validation of best.pt (``yolo/mask_mAP50``...).

Epochs are counted from 1; ``step`` counts training batches (ultralytics accumulates gradients to a
nominal batch of 64, so optimizer steps are fewer).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cytobench.engine.checkpoint import seed_everything
from cytobench.engine.inference import inference_on_dataset
from cytobench.engine.loggers import Logger
from cytobench.engine.run_setup import build_logger, prepare_data, write_run_config
from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.evaluation.base import Evaluator
from cytobench.io.coco import load_coco
from cytobench.io.files import write_json_atomic
from cytobench.models.yolo import (
    YoloModel,
    build_yolo_model,
    load_yolo_model,
    save_yolo_checkpoint,
    setup_ultralytics_offline,
    to_uint8_rgb,
    ultralytics_device,
)

YOLO_READABLE = {".png", ".jpg", ".jpeg", ".bmp"}
# ultralytics metric names -> cytobench keys ((B) box, (M) mask)
_METRIC_NAMES = {"precision": "P", "recall": "R", "mAP50": "mAP50", "mAP50-95": "mAP50-95"}
_FORCED_ARGS = ("data", "project", "name", "exist_ok", "device", "amp", "resume")


def yolo_metric_key(name: str) -> str:
    """``metrics/mAP50-95(M)`` -> ``yolo/mask_mAP50-95``; other names (``val/seg_loss``) unchanged."""
    if name.startswith("metrics/") and name.endswith(")"):
        stat, kind = name[len("metrics/") : -1].split("(")
        prefix = {"B": "box", "M": "mask", "P": "pose"}.get(kind, kind)
        return f"yolo/{prefix}_{_METRIC_NAMES.get(stat, stat)}"
    return name


def coco_splits(data_cfg: Mapping[str, Any]) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images_dir, ann_file), "val": (...)}`` of a data config.

    Reads ``images`` / ``train_ann`` / ``val_ann`` when present (simulated sets), else the ``train`` /
    ``val`` dataset nodes' ``root`` and ``ann_file`` (any COCO data config).
    """
    out = {}
    for split in ("train", "val"):
        node = data_cfg.get(split) or {}
        ann = data_cfg.get(f"{split}_ann") or node.get("ann_file")
        images = data_cfg.get("images") or node.get("root") or (data_cfg.get("train") or {}).get("root")
        if not ann or not images:
            raise BadInputError("data config", f"no {split} annotation file / images folder")
        out[split] = (Path(images), Path(ann))
    return out


def export_yolo_dataset(
    splits: Mapping[str, tuple[Path, Path]],
    out_dir: Path,
    extra_train: list[tuple[Path, Path]] | None = None,
    task: str = "segment",
) -> tuple[Path, list[dict[str, Any]]]:
    """Export COCO splits to the YOLO layout (``detect``: boxes, ``segment``: polygons from polygons / RLE);
    returns ``(data.yaml, categories)``.

    ``extra_train`` sets go to their own folders (``images/extra0``, ...) listed under ``train``.

    Raises:
        CorruptAnnotation: a split's categories differ from the train split's (same ids, names, order).
    """
    from cytobench.io.yolo import export_yolo

    train_ann = splits["train"][1]
    categories = list(load_coco(train_ann)["categories"])
    mapping = {int(c["id"]): i for i, c in enumerate(categories)}
    named = dict(splits)
    for k, pair in enumerate(extra_train or []):
        named[f"extra{k}"] = pair
    for split, (images, ann) in named.items():
        if split != "train":
            other = [(int(c["id"]), c["name"]) for c in load_coco(ann)["categories"]]
            if other != [(int(c["id"]), c["name"]) for c in categories]:
                raise CorruptAnnotation(ann, f"categories {other} differ from those of {train_ann.name}")
        export_yolo(ann, images, out_dir, split=split, task=task, category_map=mapping)
        _make_yolo_readable(out_dir / "images" / split)
    train = ["images/train", *[f"images/{s}" for s in named if s.startswith("extra")]]
    lines = [f"path: {json.dumps(str(out_dir.resolve()))}", f"train: [{', '.join(train)}]", "val: images/val"]
    lines += ["names:", *[f"  {i}: {json.dumps(c['name'])}" for i, c in enumerate(categories)]]
    (out_dir / "data.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir / "data.yaml", categories


def _make_yolo_readable(folder: Path) -> None:
    """Replace exported images that OpenCV would read differently from cytobench by 8-bit RGB PNGs.

    PNG / JPEG / BMP files in 8-bit grey, RGB or RGBA (checked from the header, without decoding) are
    read alike by both; anything else (16-bit, palette, TIFF, CZI, ...) is converted with cytobench's
    reader, i.e. scaled by its real range.
    """
    from PIL import Image

    from cytobench.io.images import read_image, write_image
    from cytobench.io.intensity import DEFAULT_RANGE_PERCENTILE

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in YOLO_READABLE:
            try:
                with Image.open(path) as im:
                    if im.mode in ("L", "RGB", "RGBA"):
                        continue
            except OSError:
                pass  # let cytobench's reader report the fault
        png = path.with_suffix(".png")
        if png != path and png.exists():
            raise BadInputError(path, f"{png.name} also exists; cannot convert to an 8-bit PNG for YOLO")
        data = read_image(path, range_percentile=DEFAULT_RANGE_PERCENTILE)  # as fish analyze scales it
        path.unlink()
        write_image(png, to_uint8_rgb(data.array))


class EpochRecorder:
    """ultralytics ``on_fit_epoch_end`` callback: history, logger and ``metrics.json`` of a YOLO run.

    ultralytics calls the event once per epoch and once more after training for its validation of
    best.pt (``final_eval``); that last call is kept apart as :attr:`final`.
    """

    def __init__(self, logger: Logger, metrics_path: Path, run_dir: Path) -> None:
        self.logger, self.metrics_path, self.run_dir = logger, metrics_path, run_dir
        self.history: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}
        self.final: dict[str, float] | None = None
        self.epoch = 0
        self.step = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._loop_done = False

    def __call__(self, trainer: Any) -> None:
        metrics = {yolo_metric_key(k): float(v) for k, v in (trainer.metrics or {}).items()}
        if self._loop_done:  # final_eval: ultralytics' validation of best.pt
            self.final = {k: v for k, v in metrics.items() if k.startswith("yolo/")}
            return
        self.epoch = int(trainer.epoch) + 1
        self.step = self.epoch * len(trainer.train_loader)
        fitness = float("nan") if trainer.fitness is None else float(trainer.fitness)
        losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        lr = next(iter((trainer.lr or {}).values()), float("nan"))
        self.latest = {**losses, **metrics, "yolo/fitness": fitness, "train/lr": float(lr)}
        self.history.append({"epoch": self.epoch, "step": self.step, **self.latest})
        self.logger.log_metrics({"epoch": self.epoch, **self.latest}, self.step)
        if not math.isnan(fitness) and (self.best_value is None or fitness >= self.best_value):
            self.best_value, self.best_epoch = fitness, self.epoch  # ultralytics saves best.pt on ties too
        write_json_atomic(self.metrics_path, self.summary(self.latest), indent=2)
        self._loop_done = bool(trainer.stop)

    def summary(self, latest: Mapping[str, float], stopped_early: str | None = None) -> dict[str, Any]:
        """``metrics.json`` content (same schema as torch runs)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "latest": dict(latest),
            "history": self.history,
            "stopped_early": stopped_early,
            "monitor": "yolo/fitness",
            "best": {
                "value": self.best_value,
                "epoch": self.best_epoch,
                "checkpoint": str(self.run_dir / "checkpoints" / "best.pt"),
            },
            "run_dir": str(self.run_dir),
        }


def train_arguments(
    train_args: Mapping[str, Any], *, imgsz: int, data_yaml: Path, project: Path, device: str
) -> dict[str, Any]:
    """Arguments of ``YOLO.train``: the model config's ``train_args`` plus the run's own settings.

    ``amp`` is off: ultralytics' AMP check downloads weights.
    """
    clash = sorted(set(train_args) & set(_FORCED_ARGS))
    if clash:
        raise BadInputError("model.train_args", f"{clash} are set by cytobench (data, folders, device, amp)")
    return {
        **dict(train_args),
        "imgsz": int(imgsz),
        "data": str(data_yaml),
        "project": str(project),
        "name": "ultralytics",
        "exist_ok": True,
        "device": device,
        "amp": False,
        "resume": False,
    }


def run_yolo(cfg: DictConfig, run_dir: Path) -> float | None:
    """``python train.py`` for a model config whose ``_target_`` is :func:`cytobench.models.yolo.build_yolo`.

    Reads the config once and hands explicit arguments to :func:`train_yolo`.
    """
    from hydra.utils import instantiate

    tcfg = cfg.trainer
    if tcfg.get("resume"):
        raise BadInputError(str(tcfg.resume), "trainer.resume is not supported for ultralytics runs")
    write_run_config(run_dir, cfg)
    setup_ultralytics_offline(run_dir / ".ultralytics")
    seed_everything(cfg.seed, deterministic=tcfg.deterministic)
    model = instantiate(cfg.model)
    logger = build_logger(cfg.get("logger"), run_dir)
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    try:
        latest = train_yolo(
            model,
            run_dir=run_dir,
            data_cfg=cfg.data,
            evaluator=instantiate(cfg.evaluator),
            logger=logger,
            device=ultralytics_device(tcfg.device),
            model_config=OmegaConf.to_container(cfg.model, resolve=True),
            data_config=OmegaConf.to_container(cfg.data, resolve=True),
        )
    finally:
        logger.finish()
    return latest.get(tcfg.monitor) if tcfg.get("monitor") else None


def train_yolo(
    model: YoloModel,
    *,
    run_dir: Path,
    data_cfg: DictConfig,
    evaluator: Evaluator,
    logger: Logger,
    device: str,
    model_config: Mapping[str, Any],
    data_config: Mapping[str, Any],
) -> dict[str, float]:
    """Train, checkpoint and score one YOLO model; writes ``metrics.json`` and returns its ``latest``.

    Args:
        model: an untrained :class:`YoloModel` from :func:`build_yolo` (its ``train_settings``).
        run_dir: the run folder (``checkpoints/``, ``metrics.json``, ``yolo_data/``, ``ultralytics/``).
        data_cfg: the data config (``prepare`` node, COCO splits).
        evaluator: scores the val split after training (e.g. ``coco/segm_AP``).
        logger: receives each epoch's losses and ultralytics' val metrics.
        device: ultralytics' device string.
        model_config / data_config: stored in the checkpoints (what ``cytobench predict`` rebuilds from).
    """
    from hydra.utils import instantiate

    from cytobench.reporting.tables import format_metrics

    settings = model.train_settings
    start, start_cpu = time.perf_counter(), time.process_time()
    prepare_data(data_cfg)
    extra = []
    for item in settings.get("extra_train") or []:
        if item.get("prepare") is not None:
            instantiate(item["prepare"])
        extra.append((Path(item["images"]), Path(item["ann_file"])))
    splits = coco_splits(data_cfg)
    data_yaml, categories = export_yolo_dataset(splits, run_dir / "yolo_data", extra, task=model.task)

    recorder = EpochRecorder(logger, run_dir / "metrics.json", run_dir)
    yolo = build_yolo_model(
        settings["arch"], settings.get("weights_path"), trust=bool(settings.get("trust_weights"))
    )
    if getattr(yolo, "task", model.task) != model.task:
        raise BadInputError(
            "model.arch", f"is an ultralytics {yolo.task} model but model.task is {model.task}"
        )
    yolo.add_callback("on_fit_epoch_end", recorder)
    args = train_arguments(
        settings["train_args"], imgsz=settings["imgsz"], data_yaml=data_yaml, project=run_dir, device=device
    )
    yolo.train(**args)
    trainer = yolo.trainer
    metadata = {
        "backend": "ultralytics",
        "task": model.task,
        "categories": categories,
        "label_to_cat_id": {i + 1: int(c["id"]) for i, c in enumerate(categories)},
        "imgsz": int(settings["imgsz"]),
        "model_config": dict(model_config),
        "data_config": dict(data_config),
        "ultralytics_version": _ultralytics_version(),
    }
    ckpt_dir = run_dir / "checkpoints"
    for name, source in (("last", trainer.last), ("best", trainer.best)):
        if Path(source).is_file():
            epoch = recorder.best_epoch if name == "best" else recorder.epoch
            save_yolo_checkpoint(source, ckpt_dir / f"{name}.pt", {**metadata, "epoch": epoch})
    shutil.rmtree(Path(trainer.wdir), ignore_errors=True)  # ultralytics' pickled copies of the files above

    best = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").is_file() else ckpt_dir / "last.pt"
    # wall and process-CPU seconds of data, export, training and checkpoints, then of the scoring
    timing = {
        "time/train_s": time.perf_counter() - start,
        "time/train_cpu_s": time.process_time() - start_cpu,
    }
    coco = score_checkpoint(best, splits["val"], evaluator, device=device, batch_size=model.eval_batch_size)
    timing["time/eval_s"] = time.perf_counter() - start - timing["time/train_s"]
    latest = {**(recorder.final or {}), **coco, **timing}
    logger.log_metrics({"epoch": recorder.epoch, **latest}, recorder.step)
    max_epochs = int(settings["train_args"].get("epochs", recorder.epoch))
    stopped = (
        f"early stopping (ultralytics patience {settings['train_args'].get('patience')}) after epoch {recorder.epoch}"
        if recorder.epoch < max_epochs
        else None
    )
    summary = recorder.summary(latest, stopped)
    summary["final"] = {"checkpoint": str(best), "epoch": recorder.best_epoch}
    write_json_atomic(run_dir / "metrics.json", summary, indent=2)
    print(
        f"\nmetrics of {best.name} (epoch {recorder.best_epoch}) after {recorder.epoch} epochs ({run_dir}):"
    )
    print(format_metrics(latest))
    return latest


def score_checkpoint(
    checkpoint: Path,
    split: tuple[Path, Path],
    evaluator: Evaluator,
    *,
    device: str = "cpu",
    batch_size: int = 8,
) -> dict[str, float]:
    """Predict a COCO split with a YOLO checkpoint and score it with a cytobench evaluator.

    The checkpoint predicts as its run configured (``model.eval``: imgsz, conf, iou, max_det), through
    the same streaming loop as every model (:func:`cytobench.engine.inference.inference_on_dataset`).

    Args:
        checkpoint: YOLO weights of a cytobench run (see :func:`~cytobench.models.yolo.load_yolo_model`).
        split: ``(images_dir, ann_file)``; its categories must be the checkpoint's, in the same order.
        evaluator: e.g. ``CocoEvaluator(iou_types=("bbox", "segm"))``.
        device: ultralytics' device string.
        batch_size: images per forward pass.
    """
    from torch.utils.data import DataLoader

    from cytobench.data.coco_dataset import CocoDetectionDataset
    from cytobench.data.collate import detection_collate

    model = load_yolo_model(checkpoint, device=device)
    dataset = CocoDetectionDataset(split[0], split[1], with_masks=model.task == "segment")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    torch_device = "cpu" if device == "cpu" else f"cuda:{device.split(',')[0]}"
    return inference_on_dataset(model, loader, evaluator, torch_device)


def _ultralytics_version() -> str:
    import ultralytics

    return str(ultralytics.__version__)
