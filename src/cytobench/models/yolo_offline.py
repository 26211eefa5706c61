"""ultralytics without network: its settings folder, fonts, integrations and device strings.

:func:`setup_ultralytics_offline` sets ``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=0`` (and
``YOLO_CONFIG_DIR``, to the run folder or a private temp folder removed at exit, when ultralytics is not
imported yet and the variable is unset), copies matplotlib's ``DejaVuSans.ttf`` to ``<config dir>/Arial.ttf``
and ``Arial.Unicode.ttf`` (every training run asks for them and would download them otherwise) and turns off
ultralytics' telemetry and its third-party logger integrations (cytobench logs to CSV / W&B itself). The
lowest of the three YOLO modules: :mod:`cytobench.models.yolo_checkpoint` and :mod:`cytobench.models.yolo`
build on it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

__all__ = ["FONT_NAMES", "setup_ultralytics_offline", "ultralytics_device"]

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "hub": False,
    "neptune": False,
    "vscode_msg": False,
}


def setup_ultralytics_offline(config_dir: str | Path | None = None) -> Path:
    """Prepare ultralytics to run without network; returns its settings folder (``USER_CONFIG_DIR``).

    Args:
        config_dir: value for ``YOLO_CONFIG_DIR`` when ultralytics is not imported yet and the variable
            is unset (ultralytics reads it once, at import), e.g. inside a run folder; matplotlib's folder
            (``MPLCONFIGDIR``, read when ultralytics imports it) then goes there too, when unset. None: a
            private temp folder removed when the process exits
            (:func:`cytobench.tool_dirs.private_temp_dir`), so that the user's own ultralytics settings
            (``~/.config/Ultralytics``) are never read or changed and no shared folder is written.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if "ultralytics" not in sys.modules:
        if "YOLO_CONFIG_DIR" not in os.environ:
            if config_dir:
                folder = Path(config_dir).resolve()
            else:
                from cytobench.tool_dirs import private_temp_dir

                folder = private_temp_dir("ultralytics")
            os.environ["YOLO_CONFIG_DIR"] = str(folder)
        if config_dir and "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
            os.environ["MPLCONFIGDIR"] = str(Path(config_dir).resolve() / "matplotlib")
    import ultralytics.utils as ul_utils

    for name in ("ultralytics.utils", "ultralytics.utils.checks", "ultralytics.utils.events"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ONLINE", False):
            module.ONLINE = False  # imported before YOLO_OFFLINE was set
    user_dir = Path(ul_utils.USER_CONFIG_DIR)
    user_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONT_NAMES:
        if not (user_dir / name).is_file():
            shutil.copyfile(font, user_dir / name)
    settings = ul_utils.SETTINGS
    changes = {k: v for k, v in _INTEGRATIONS_OFF.items() if k in settings and settings[k] != v}
    if changes:
        settings.update(changes)
    return user_dir


def ultralytics_device(device: str | torch.device) -> str:
    """ultralytics' device string: ``"cpu"`` or a CUDA index such as ``"0"``.

    Args:
        device: ``"auto"`` (first GPU if any, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch device.
    """
    dev = str(device)
    if dev == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        return dev.split(":", 1)[1] if ":" in dev else "0"
    return dev
