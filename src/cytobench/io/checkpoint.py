"""Checkpoint files: safe loading with one-line errors, and model weights from local files.

Below both ``models/`` (pretrained weights) and ``engine/`` (resume, predict); writing is
:func:`cytobench.io.files.save_atomic`.

Loading never runs code from the file: every checkpoint is read with ``torch.load(weights_only=True)``,
which rebuilds tensors and plain Python data (dict, list, tuple, str, numbers, None) and refuses any
other object a pickle could name (a pickle may name any function, e.g. ``os.system``, to be called while
it is read). cytobench's checkpoints hold only such data (the config, category map and RNG state are
plain). Allowed besides: NumPy arrays of numbers (``numpy.ndarray`` / ``dtype`` / ``_reconstruct``, the
RNG state of checkpoints written before it was stored as plain lists); they carry data, never code.
A file that names anything else is refused with :class:`UnsafeCheckpointError`, naming what it asks
for. The one exception is a foreign (pickled) ultralytics ``.pt``, loaded by ultralytics itself and
only behind an explicit trust flag (``--trust-checkpoint``, ``model.trust_weights=true``; see
:mod:`cytobench.models.yolo`).
"""

from __future__ import annotations

import contextlib
import pickletools
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from cytobench.errors import BadInputError
from cytobench.io.files import save_atomic

__all__ = ["UnsafeCheckpointError", "load_checkpoint", "load_model_weights", "pickled_globals", "save_atomic"]

TRUST_HINT = "pass --trust-checkpoint (model.trust_weights=true in a config) only if you trust its source"


class UnsafeCheckpointError(BadInputError):
    """A checkpoint whose pickle names Python objects beyond tensors and plain data; it was not loaded.

    Args:
        path: the file.
        names: the globals it names (``module.name``), as far as they could be read without running it.
        hint: what the user may do (appended to the line).

    Attributes:
        names: as above.
        is_ultralytics: whether it names ultralytics' classes (a pickled ultralytics checkpoint).
    """

    def __init__(self, path: str | Path, names: list[str], hint: str | None = None) -> None:
        self.names = list(names)
        self.is_ultralytics = any(name.startswith("ultralytics.") for name in self.names)
        shown = ", ".join(self.names[:3]) + (
            f" and {len(self.names) - 3} more" if len(self.names) > 3 else ""
        )
        what = f"names Python objects ({shown})" if self.names else "holds pickled Python objects"
        fault = f"{what} that loading would run as code; refused (checkpoints load as weights only)"
        if self.is_ultralytics:
            fault = (
                f"a pickled ultralytics checkpoint: loading it runs code from the file; {hint or TRUST_HINT}"
            )
        elif hint:
            fault += f"; {hint}"
        super().__init__(path, fault)


def _numpy_array_globals() -> list[Any]:
    """What NumPy arrays of numbers need under ``weights_only`` (older checkpoints' NumPy RNG state)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct]
    if _reconstruct.__module__ != "numpy.core.multiarray":  # a file written under NumPy 1 names this one
        allowed.append((_reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


def pickled_globals(path: str | Path) -> list[str]:
    """The globals (``module.name``) a checkpoint's pickle names beyond what ``weights_only`` allows.

    Read without running anything: torch's scan of a zip checkpoint, else the pickle's opcodes
    (:mod:`pickletools`). Best effort: an empty list when neither can read the file.
    """
    allowed = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in _numpy_array_globals()
    }
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            return sorted(set(scan(str(path))) - allowed)
        except Exception:  # not a zip checkpoint: read the opcodes below
            pass
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    strings.append(arg)
    except Exception:  # truncated or not a pickle: what was read so far
        pass
    return sorted(set(names) - allowed)


def _is_pickle(path: str | Path) -> bool:
    """Whether ``path`` is a zip (torch's format) or starts with a whole pickle (read, never run)."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):  # raises on bytes that are no pickle, or one cut short
                pass
    except Exception:
        return False
    return True


def _allow_numpy_arrays() -> Any:
    """Context allowing :func:`_numpy_array_globals` (a no-op on torch without ``safe_globals``)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_numpy_array_globals()) if safe_globals is not None else contextlib.nullcontext()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``, with a one-line error when it is unusable.

    Raises:
        UnsafeCheckpointError: the file names Python objects other than tensors and plain data (nothing
            of it was run).
        BadInputError: missing, truncated or not a torch checkpoint, or mapped to CUDA without CUDA.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "checkpoint file not found")
    try:
        with warnings.catch_warnings(), _allow_numpy_arrays():
            warnings.simplefilter("ignore")  # e.g. torch's note on a pickle protocol: one line, not three
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated / foreign files
        message = str(err)
        if "Weights only load failed" in message or "WeightsUnpickler" in message:
            names = pickled_globals(path) or re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
            if names or _is_pickle(path):
                raise UnsafeCheckpointError(path, names) from None
            raise BadInputError(
                path, "not a readable checkpoint (neither a torch checkpoint nor a pickle)"
            ) from None
        if "CUDA" in message and not torch.cuda.is_available():
            raise BadInputError(
                path, f"cannot be loaded onto {map_location}: CUDA is not available"
            ) from None
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
