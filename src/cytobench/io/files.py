"""Files written atomically (a temp file in the same folder, then ``os.replace``).

A crash mid-write leaves the previous file intact; every json, checkpoint and table cytobench writes
goes through here.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_file",
    "dumps_json",
    "json_default",
    "nan_for_null",
    "read_json",
    "refuse_existing",
    "remove_stale_temp_files",
    "save_atomic",
    "standard_json",
    "write_json_atomic",
]


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(value: Any) -> Any:
    """``json.dump`` fallback for NumPy scalars and arrays, bytes and paths."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return standard_json(value.tolist())
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d torch tensors
        return standard_json(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to json")


def refuse_existing(paths: str | Path | Sequence[str | Path], overwrite: bool = False) -> None:
    """The one check before writing user-named outputs: nothing the user has is replaced silently.

    Args:
        paths: the files (or folders) a command is about to write.
        overwrite: the command's ``--overwrite`` flag; True lets it replace them.

    Raises:
        BadInputError: one of ``paths`` exists and ``overwrite`` is False (names the path and the flag).
    """
    from cytobench.errors import BadInputError

    items = [paths] if isinstance(paths, str | Path) else list(paths)
    existing = [Path(p) for p in items if Path(p).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise BadInputError(existing[0], f"exists{more}; pass --overwrite to replace it")


def standard_json(data: Any) -> Any:
    """``data`` with every NaN / infinite float (Python or NumPy) replaced by None.

    Standard JSON has no NaN: Python writes a bare ``NaN`` that other languages' parsers reject, so
    undefined metrics are written as ``null`` (and read back as NaN by :func:`nan_for_null`).
    """
    if isinstance(data, float | np.floating):
        return float(data) if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: standard_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [standard_json(value) for value in data]
    return data


def nan_for_null(data: Any) -> Any:
    """Metric dicts read from json with ``null`` back as NaN (inside Python, an undefined metric is NaN).

    A metric dict is a dict whose values are all numbers or None; other dicts and lists are searched
    for them, and their own ``null`` values (e.g. ``"stopped_early": null``) stay None.
    """
    if isinstance(data, list):
        return [nan_for_null(value) for value in data]
    if not isinstance(data, Mapping):
        return data
    values = list(data.values())
    if values and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        return {key: float("nan") if value is None else value for key, value in data.items()}
    return {key: nan_for_null(value) for key, value in data.items()}


def read_json(path: str | Path) -> Any:
    """A json file written by :func:`write_json_atomic`, with metric ``null`` values back as NaN."""
    return nan_for_null(json.loads(Path(path).read_text(encoding="utf-8")))


def dumps_json(data: Any, indent: int | None = None) -> str:
    """Standard JSON text of ``data`` (``null`` for NaN, NumPy values and 0-d tensors as numbers)."""
    return json.dumps(standard_json(data), indent=indent, default=json_default, allow_nan=False)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write ``data`` as standard JSON atomically (see :func:`dumps_json`)."""
    text = dumps_json(data, indent)
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def save_atomic(obj: Any, path: str | Path, save: Callable[[Any, IO[bytes]], None] | None = None) -> Path:
    """Write ``obj`` with ``torch.save`` (or ``save(obj, handle)``) atomically; returns ``path``."""
    if save is None:
        import torch

        save = torch.save
    with atomic_file(path, "wb") as handle:
        save(obj, handle)
    return Path(path)


def remove_stale_temp_files(folder: str | Path, names: Sequence[str], min_age_s: float = 0.0) -> list[Path]:
    """Remove the temp files that interrupted atomic writes of ``names`` left in ``folder``.

    :func:`atomic_file` writes ``path`` through ``.<name>.XXXXXXXX.tmp`` beside it and removes that file
    on any error, but a process killed mid-write (``kill -9``, power loss) leaves it behind, as large as
    the file it was writing. Only files of exactly that pattern are removed; nothing else in ``folder``.

    Args:
        folder: where the files are written (e.g. a run's ``checkpoints/``); a missing folder is fine.
        names: the final file names, e.g. ``("last.pt", "best.pt")``.
        min_age_s: keep temp files modified less than this many seconds ago (another process may be
            writing them right now; 0: remove all, for a folder only this process writes to).

    Returns:
        The removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # tempfile.mkstemp's random part: 8 characters of [a-z0-9_]
    patterns = [re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp") for name in names]
    now = time.time()
    removed = []
    for path in folder.iterdir():
        if not any(p.fullmatch(path.name) for p in patterns):
            continue
        try:
            if not path.is_file() or now - path.stat().st_mtime < min_age_s:
                continue
            path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        removed.append(path)
    return removed
