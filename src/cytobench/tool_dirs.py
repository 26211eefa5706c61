"""Third-party libraries' config and cache folders, kept out of the user's home and the shared temp folder.

cytobench writes only into the run folder, the data cache and the paths the user names. Libraries it
uses would write elsewhere on their own: matplotlib creates ``~/.config/matplotlib`` and
``~/.cache/matplotlib`` (its font cache) and torch creates ``$TMPDIR/torchinductor_<user>`` when imported.
:func:`use_private_tool_dirs` points them (``MPLCONFIGDIR``, ``TORCHINDUCTOR_CACHE_DIR``) at one private
temp folder (``tempfile.mkdtemp``, so no other user can have made it) that is removed when the process
exits. Commands call it first, before torch or matplotlib is imported (``cli.main``); ultralytics gets
its own folder the same way (:func:`private_temp_dir`, from
:func:`cytobench.models.yolo.setup_ultralytics_offline`).

This module imports nothing heavy, so that an entry point can call it before anything else.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["TOOL_ENV", "private_temp_dir", "use_private_tool_dirs"]

#: environment variable -> (sub-folder of the private folder, module that reads it once, at import)
TOOL_ENV: dict[str, tuple[str, str]] = {
    "MPLCONFIGDIR": ("matplotlib", "matplotlib"),
    "TORCHINDUCTOR_CACHE_DIR": ("torchinductor", "torch._dynamo"),
}

_ROOT: Path | None = None


def private_temp_dir(name: str) -> Path:
    """``<private temp folder>/<name>`` (created): one folder per process, removed when it exits.

    Args:
        name: sub-folder, e.g. ``"ultralytics"``.
    """
    global _ROOT
    if _ROOT is None or not _ROOT.is_dir():
        _ROOT = Path(tempfile.mkdtemp(prefix="cytobench-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    folder = _ROOT / name
    folder.mkdir(exist_ok=True)
    return folder


def use_private_tool_dirs() -> dict[str, str]:
    """Point matplotlib's and torch's config / cache folders at a private temp folder removed at exit.

    A variable the user has set is kept, and so is one whose library is already imported (it has read
    its folder by then). Child processes inherit the variables and so use the same folder.

    Returns:
        The variables set by this call, ``{name: folder}``.
    """
    chosen = {}
    for variable, (sub, module) in TOOL_ENV.items():
        if variable in os.environ or module in sys.modules:
            continue
        folder = str(private_temp_dir(sub))
        os.environ[variable] = folder
        chosen[variable] = folder
    return chosen
