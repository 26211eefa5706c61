"""Files written atomically (a temp file in the same folder, then ``os.replace``).

A crash mid-write leaves the previous file intact; every json, checkpoint and table cytobench writes
goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_file", "json_default", "save_atomic", "write_json_atomic"]


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit it is synced and renamed over ``path``.

    Args:
        path: the final file (its folder is created).
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_default(value: Any) -> Any:
    """``json.dump`` fallback for NumPy scalars and arrays, bytes and paths."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d torch tensors
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to json")


def write_json_atomic(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write ``data`` as json atomically (NumPy values and 0-d tensors become numbers)."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=indent, default=json_default)
    return Path(path)


def save_atomic(obj: Any, path: str | Path, save: Callable[[Any, IO[bytes]], None] | None = None) -> Path:
    """Write ``obj`` with ``torch.save`` (or ``save(obj, handle)``) atomically; returns ``path``."""
    if save is None:
        import torch

        save = torch.save
    with atomic_file(path, "wb") as handle:
        save(obj, handle)
    return Path(path)
