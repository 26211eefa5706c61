"""cytobench: one framework to train, evaluate and compare microscopy and cytogenetics models."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Nothing in cytobench may reach the network at run time: keep optional libraries offline.
for _name, _value in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "WANDB_SILENT": "true",
}.items():
    os.environ.setdefault(_name, _value)
