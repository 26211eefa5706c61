"""Experiment loggers behind one small interface: W&B (offline by default), CSV, or none; and the pieces
of Python logging that put a run's messages in its ``train.log`` (``conf/hydra/job_logging/cytobench.yaml``).

cytobench's own messages go through the ``cytobench`` logger: the console shows them as plain lines
(INFO on stdout, notes and errors on stderr), exactly as ``print`` would; ``train.log`` gets them with
times, plus records marked :data:`FILE_ONLY` (per-step and per-epoch progress, tracebacks) that the
console leaves out.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytobench.errors import CytobenchError

# ``extra=FILE_ONLY`` marks a log record for train.log only (the console filters leave it out).
FILE_ONLY: dict[str, Any] = {"console": False}


class ConsoleFilter(logging.Filter):
    """Passes records meant for the console: not marked :data:`FILE_ONLY`, at or below ``max_level``.

    Args:
        max_level: the highest level passed (name or number), e.g. ``INFO`` for the stdout handler, so
            that notes and errors (WARNING and above) go to stderr only; None: no upper bound.
    """

    def __init__(self, max_level: str | int | None = None) -> None:
        super().__init__()
        level = logging.getLevelName(max_level) if isinstance(max_level, str) else max_level
        self.max_level = level if isinstance(level, int) else None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        return self.max_level is None or record.levelno <= self.max_level


class PlainFormatter(logging.Formatter):
    """The message alone, never a traceback: what ``print(message)`` shows."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def ensure_console_logging(name: str = "cytobench") -> None:
    """Show the ``name`` logger's messages on the console when nothing configured logging.

    ``python train.py`` configures logging through Hydra (console + ``train.log``); a run started
    in-process without any handler (a notebook calling :func:`cytobench.train.run`) would otherwise
    lose its INFO messages, so it gets the same plain stdout / stderr handlers.
    """
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logger.hasHandlers():
        return
    for stream, filt in ((sys.stdout, ConsoleFilter("INFO")), (sys.stderr, ConsoleFilter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter())
        handler.addFilter(filt)
        if stream is sys.stderr:
            handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


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
