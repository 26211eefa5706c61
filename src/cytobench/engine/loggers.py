"""Experiment loggers behind one small interface: W&B (offline by default), CSV, or none."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytobench.errors import CytobenchError


class Logger:
    """Does nothing; subclasses record scalars and the run's config."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the resolved run configuration."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalars at optimizer step ``step``."""

    def finish(self) -> None:
        """Flush and close."""


NullLogger = Logger


class CSVLogger(Logger):
    """Appends ``step,key,value`` rows to ``<run_dir>/metrics.csv`` (long format: new keys never break it)."""

    def __init__(self, run_dir: str | Path, filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "key", "value"])

    def log_config(self, config: Mapping[str, Any]) -> None:
        (self.path.parent / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.writerow([step, key, value])
        self._file.flush()

    def finish(self) -> None:
        self._file.close()


class WandbLogger(Logger):
    """Weights & Biases, offline unless ``mode="online"`` or ``WANDB_MODE`` says otherwise.

    Files stay inside the run directory (``WANDB_DIR`` etc. default there); an offline run can be
    uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``. Runs of one sweep share ``group``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "cytobench",
        mode: str = "offline",
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        entity: str | None = None,
    ) -> None:
        try:
            import wandb  # optional dependency: imported only when this logger is chosen
        except ImportError:
            raise CytobenchError(
                "logger=wandb needs the wandb package: pip install 'cytobench[wandb]', or choose logger=csv"
            ) from None

        run_dir = Path(run_dir)
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            os.environ.setdefault(var, str(run_dir / "wandb"))
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=os.environ.get("WANDB_MODE", mode),
            group=group,
            name=name,
            tags=list(tags or []),
            dir=str(run_dir),
            reinit="finish_previous",
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        finite = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        self.run.log(finite, step=step)

    def finish(self) -> None:
        self.run.finish()
