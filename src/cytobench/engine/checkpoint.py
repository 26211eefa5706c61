"""Random-number state for exact resume and seeding, and plain checkpoint data (files: :mod:`cytobench.io.checkpoint`)."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import PurePath
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states, as data ``torch.load(weights_only=True)`` reads.

    Python's state is a list ``[version, [625 ints], gauss_next]``, NumPy's legacy MT19937 state a dict
    with its 624 key words as a list of ints, torch's ByteTensors as they are; so a checkpoint holds no
    NumPy array (see :mod:`cytobench.io.checkpoint`). :func:`restore_rng_state` takes this form and the
    older one (the tuples ``random.getstate()`` / ``np.random.get_state()`` return).
    """
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002 - third-party code may draw from it
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss_next],
        "numpy": {
            "bit_generator": str(name),
            "key": [int(v) for v in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (also takes the tuple form of older checkpoints)."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["key"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_data(value: Any) -> Any:
    """``value`` with NumPy scalars / arrays as Python numbers / lists and paths as strings, recursively.

    What a checkpoint stores besides tensors must be plain data for ``torch.load(weights_only=True)``
    (e.g. a metric an evaluator returned as ``np.float64``); tensors and other objects are kept as they are.
    """
    if isinstance(value, dict):
        items = ((plain_data(k), plain_data(v)) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    return value


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every global generator and, optionally, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party users of the global state
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
