"""Checkpoint files: loading with one-line errors, and model weights from local files.

Below both ``models/`` (pretrained weights) and ``engine/`` (resume, predict); writing is
:func:`cytobench.io.files.save_atomic`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from cytobench.errors import BadInputError
from cytobench.io.files import save_atomic

__all__ = ["load_checkpoint", "load_model_weights", "save_atomic"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`, with a one-line error when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for truncated / foreign files
        raise BadInputError(path, f"not a readable checkpoint ({type(err).__name__})") from None


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
