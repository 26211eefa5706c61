"""What every training run shares, whichever trainer runs it: the run folder, data, loaders, logger.

:mod:`cytobench.train` (the shared trainer) and :mod:`cytobench.engine.ultralytics_run` (YOLO through
ultralytics' trainer) both build on this module, so neither imports the other.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import torchvision
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from cytobench.data.collate import detection_collate, seed_worker
from cytobench.engine.distributed import barrier, get_rank, get_world_size, is_main_process
from cytobench.engine.inference import ShardSampler
from cytobench.engine.loggers import Logger

__all__ = [
    "build_loader",
    "build_logger",
    "hydra_mode",
    "prepare_data",
    "run_environment",
    "write_run_config",
]


def build_loader(dataset: Any, *, batch_size: int, num_workers: int, train: bool, seed: int) -> DataLoader:
    """Training loaders shuffle by (seed, epoch) through a DistributedSampler, also on one process,
    so resumed runs see the same order; evaluation loaders shard without padding."""
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=True, seed=seed
        )
    else:
        sampler = ShardSampler(len(dataset))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=detection_collate,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=False,
    )


def prepare_data(data_cfg: DictConfig) -> None:
    """Simulate the dataset (rank 0 only) when the data config has a ``prepare`` node, then run its
    ``derive`` node if any (files made from the prepared data, e.g. one-class annotations)."""
    if is_main_process():
        for key in ("prepare", "derive"):
            if data_cfg.get(key) is not None:
                instantiate(data_cfg[key])
    barrier()


def hydra_mode() -> RunMode | None:
    """Hydra's run mode (RUN / MULTIRUN), None outside a Hydra app."""
    return HydraConfig.get().mode if HydraConfig.initialized() else None


def build_logger(logger_cfg: DictConfig | None, run_dir: Path) -> Logger:
    """The configured logger (CSV / W&B / none); a sweep's W&B runs share one group."""
    if logger_cfg is None or logger_cfg.get("_target_") is None:
        return Logger()
    kwargs: dict[str, Any] = {"run_dir": run_dir}
    if "group" in logger_cfg and logger_cfg.group is None and hydra_mode() == RunMode.MULTIRUN:
        kwargs["group"] = Path(HydraConfig.get().sweep.dir).name  # one W&B group per sweep
    return instantiate(logger_cfg, **kwargs)


def write_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """``run_dir/config.yaml``: the resolved config (rank 0)."""
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_environment() -> dict[str, Any]:
    """What can change a run's numbers besides its config and seed, for its ``status.json``.

    The thread count is among them: the same seed trained with 1 and 2 CPU threads sums floats in a
    different order, and a long from-scratch run can end elsewhere (experiments/brightfield/README.md).
    """
    import cytobench

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cytobench": cytobench.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    commit = _git_commit(Path(cytobench.__file__).resolve().parent)
    if commit:
        env["git_commit"] = commit
    return env


def _git_commit(source_dir: Path) -> str | None:
    """The commit of the checkout cytobench runs from (``+dirty`` with local changes); None for an installed
    copy, also one inside some other repository's ignored folder (``git ls-files`` must track this file)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=source_dir, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head
