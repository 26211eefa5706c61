"""Checkpoint files: atomic writes and the random-number state needed for exact resume."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temp file in the same folder, then rename it over ``path``.

    A crash mid-write leaves the previous checkpoint intact: the rename is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`, with a one-line error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise BadInputError(path, f"not a readable checkpoint ({type(err).__name__})") from None


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - third-party code may draw from it
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every global generator and, optionally, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party users of the global state
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# Prefixes that wrappers and other codebases put before the names a module's own state dict uses:
# DDP (``module.``), a whole detector's backbone saved for its body (``backbone.body.``), Lightning.
_KEY_PREFIXES = ("", "module.", "model.", "backbone.body.", "backbone.", "body.", "module.backbone.body.")


def _matching_state(own: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that fit ``own`` by name and shape, under the best-fitting key prefix."""
    best: dict[str, torch.Tensor] = {}
    for prefix in _KEY_PREFIXES:
        renamed = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        usable = {
            k: v for k, v in renamed.items() if k in own and torch.is_tensor(v) and own[k].shape == v.shape
        }
        if len(usable) > len(best):
            best = usable
    return best


def load_model_weights(model: torch.nn.Module, path: str | Path, strict: bool = False) -> list[str]:
    """Load weights from a local file: a cytobench checkpoint (``model`` key) or a plain state dict.

    Keys may carry a wrapper's prefix (``module.``, ``backbone.body.`` ...). Shape-mismatched entries
    (e.g. a COCO-trained box predictor on a 2-class task) are skipped, and said so on stderr; a file of
    which nothing fits the model is an error rather than a silent start from random weights.

    Returns:
        The names of model parameters that were not loaded.
    """
    blob = load_checkpoint(path)
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise BadInputError(path, "does not contain a state dict")
    own = model.state_dict()
    usable = _matching_state(own, state)
    missing = sorted(set(own) - set(usable))
    if not usable:
        raise BadInputError(
            path,
            f"none of its {len(state)} tensors fits the model by name and shape (file: "
            f"{next(iter(state), '-')!r}, model: {next(iter(own), '-')!r}); is it weights for this architecture?",
        )
    if strict and missing:
        raise BadInputError(path, f"{len(missing)} model tensors missing or mis-shaped, e.g. {missing[0]}")
    model.load_state_dict(usable, strict=False)
    if missing:
        print(
            f"{path}: loaded {len(usable)} of {len(own)} tensors; {len(missing)} keep their initial values "
            f"(e.g. {missing[0]})",
            file=sys.stderr,
        )
    return missing
