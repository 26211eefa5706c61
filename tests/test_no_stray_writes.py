"""Nothing is written outside the run folder, the data cache and the paths the user names (issue 12, item 2).

Each command runs as a user runs it (its own process) with ``HOME`` and ``TMPDIR`` pointed at fresh,
empty folders; afterwards both are still empty. Before: matplotlib created ``~/.config/matplotlib`` and
``~/.cache/matplotlib``, a YOLO checkpoint made ultralytics use a shared ``/tmp/cytobench-ultralytics``,
and resuming from a YOLO checkpoint wrote ``~/.config/Ultralytics/settings.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# variables a test session (or the user) may have set that would hide what a fresh process writes
ISOLATING_VARIABLES = (
    "MPLCONFIGDIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "YOLO_CONFIG_DIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class Sandbox:
    """Runs commands with a fresh HOME and TMPDIR and checks they stay empty."""

    def __init__(self, base: Path, data_dir: Path) -> None:
        self.home, self.tmp, self.work = base / "home", base / "tmp", base / "work"
        for folder in (self.home, self.tmp, self.work):
            folder.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ISOLATING_VARIABLES}
        self.env = {
            **env,
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "CYTOBENCH_DATA_DIR": str(data_dir),
        }
        self.env["WANDB_MODE"] = "offline"

    def run(self, args: list[str], expect: int = 0, tmp_allowed: tuple[str, ...] = ()) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, env=self.env, cwd=self.work, timeout=900)
        assert proc.returncode == expect, f"{args}: {proc.stderr[-3000:]}"
        assert listing(self.home) == [], f"{args[1:4]} wrote into HOME: {listing(self.home)}"
        # an allowed pattern matches a top-level entry only (an empty folder: anything inside is listed too)
        left = [n for n in listing(self.tmp) if "/" in n or not any(fnmatch(n, p) for p in tmp_allowed)]
        assert left == [], f"{args[1:4]} left files in TMPDIR: {left}"
        for name in listing(self.tmp):  # the allowed (empty) folders: gone before the next command
            (self.tmp / name).rmdir()
        return proc.stdout

    def cli(self, *args: str, expect: int = 0) -> str:
        return self.run([sys.executable, "-m", "cytobench.cli", *args], expect)


def yolo_checkpoint(path: Path) -> Path:
    """An untrained yolov8n-seg for the fish categories, as a YOLO run saves it (built in this process)."""
    from cytobench.models import yolo as yolo_module

    yolo_module.setup_ultralytics_offline()
    from ultralytics.nn.tasks import SegmentationModel

    net = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    net.names = {0: "whole", 1: "destroyed"}
    categories = [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}]
    metadata = {"backend": "ultralytics", "task": "segment", "categories": categories, "imgsz": 128}
    metadata["model_config"] = {"_target_": "cytobench.models.yolo.build_yolo", "task": "segment"}
    return yolo_module.save_yolo_checkpoint(net, path, metadata)


def test_commands_write_nothing_into_home_or_the_temp_folder(tmp_path: Path, data_dir: Path) -> None:
    box = Sandbox(tmp_path, data_dir)
    run_dir = box.work / "run"
    train = [sys.executable, str(ROOT / "train.py"), "experiment=faster_rcnn_smoke", "logger=csv"]
    # train.py and the CLI send torch's and matplotlib's caches to a private folder removed at exit
    # (cytobench.tool_dirs.use_private_tool_dirs), so $TMPDIR stays empty too
    box.run([*train, f"hydra.run.dir={run_dir}"])

    toy = next(data_dir.glob("toy_n8_*"))
    val = json.loads((toy / "val.json").read_text())
    images = [str(toy / "images" / img["file_name"]) for img in val["images"]]
    best = run_dir / "checkpoints" / "best.pt"
    pred = box.work / "pred.json"
    box.cli("predict", "--checkpoint", str(best), "--images", *images, "--gt", str(toy / "val.json"),
            "--out", str(pred), "--device", "cpu")  # fmt: skip
    box.cli("eval", "coco-bbox", "--gt", str(toy / "val.json"), "--pred", str(pred))
    box.cli("simulate", "toy", "--n", "2", "--size", "64", "64", "--out", str(box.work / "toy"))
    fish = box.work / "fish"
    box.cli("simulate", "fish", "--n", "2", "--size", "256", "--out", str(fish))
    box.cli("fish", "analyze", "--segmenter", "otsu", "--images", str(fish), "--out", str(box.work / "otsu"),
            "--n-boot", "10")  # fmt: skip

    yolo = yolo_checkpoint(box.work / "yolo.pt")
    box.cli("fish", "analyze", "--checkpoint", str(yolo), "--images", str(fish), "--out", str(box.work / "yolo"),
            "--imgsz", "128", "--n-boot", "10")  # fmt: skip
    box.cli("predict", "--checkpoint", str(yolo), "--images", str(fish / "images"),
            "--out", str(box.work / "pred_yolo.json"), "--device", "cpu")  # fmt: skip
    # resuming from a YOLO checkpoint is refused (one line, exit 2) without ultralytics touching ~/.config
    box.run([*train, f"hydra.run.dir={box.work / 'resumed'}", f"trainer.resume={yolo}"], expect=2)
