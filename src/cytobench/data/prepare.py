"""Generate a simulated dataset once and reuse it: keyed by the simulator's arguments."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = ".cytobench-complete.json"


def ensure_simulated(simulator: Callable[..., Any], out_dir: str | Path, **kwargs: Any) -> Path:
    """Run ``simulator(out_dir=..., **kwargs)`` unless ``out_dir`` already holds its output.

    The simulation is written to a temporary sibling folder and renamed into place, so a run that
    is interrupted, or several sweep jobs starting at once, never leave a half-written dataset.
    A folder made with other arguments is an error rather than being silently overwritten.
    """
    out_dir = Path(out_dir)
    spec = {"simulator": f"{simulator.__module__}.{simulator.__qualname__}", **_jsonable(kwargs)}
    marker = out_dir / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return out_dir
        raise FileExistsError(
            f"{out_dir} holds a dataset simulated with other settings ({marker}); choose another folder"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} exists and is not a cytobench-simulated dataset; choose another folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    name = getattr(simulator, "__name__", "simulator")
    print(f"{name}: writing {out_dir} (once; later runs reuse it)", file=sys.stderr, flush=True)
    try:
        simulator(out_dir=tmp, **kwargs)
        (tmp / MARKER).write_text(json.dumps(spec, indent=2))
    except BaseException:  # a bad argument or an interrupt leaves no half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out_dir.exists():
            out_dir.rmdir()  # empty folder left by a user; replaced by the finished dataset
        os.rename(tmp, out_dir)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_one_class(
    source_dir: str | Path,
    out_dir: str | Path,
    name: str = "chromosome",
    splits: tuple[str, ...] = ("train", "val"),
) -> Path:
    """``out_dir/<split>.json``: ``source_dir``'s COCO splits with every category merged into one, ``name``.

    For a detector that only finds objects (the two-stage karyotyper's enumerator) trained on the images of a
    many-class set (the 24-class spreads): the images stay where they are, the source folder is not touched,
    and a file already holding the same merge is left as it is (a sweep's jobs may start at once).
    """
    from cytobench.io.coco import load_coco
    from cytobench.io.files import write_json_atomic

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        coco = load_coco(source_dir / f"{split}.json")
        merged = {
            **coco,
            "categories": [{"id": 1, "name": str(name), "supercategory": str(name)}],
            "annotations": [{**ann, "category_id": 1} for ann in coco["annotations"]],
            "one_class_of": str(source_dir / f"{split}.json"),
        }
        dest = out_dir / f"{split}.json"
        if dest.is_file() and json.loads(dest.read_text(encoding="utf-8")) == merged:
            continue
        write_json_atomic(dest, merged)
    return out_dir


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
