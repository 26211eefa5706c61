"""Multirun sweeps (basic launcher) with one W&B group per sweep, the SLURM launcher config, `cytobench train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_config, run_train_py


@pytest.mark.slow
def test_multirun_sweep_shares_a_wandb_group(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    run_train_py(
        [
            "-m",
            "experiment=faster_rcnn_smoke",
            "seed=0,1",
            "logger=wandb",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ],
        data_dir,
        tmp_path,
    )
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in runs] == [
        "0_logger=wandb,seed=0,trainer.max_epochs=1",
        "1_logger=wandb,seed=1,trainer.max_epochs=1",
    ]
    for run_dir in runs:
        assert json.loads((run_dir / "metrics.json").read_text())["epoch"] == 1
        (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        assert sweep.name.encode() in wandb_file.read_bytes()  # the group is the sweep folder's name


def test_slurm_launcher_config_composes(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(["experiment=faster_rcnn_smoke", "hydra/launcher=slurm"], tmp_path, data_dir)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_cytobench_train_is_train_py(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cytobench.cli",
            "train",
            "experiment=faster_rcnn_smoke",
            "--cfg",
            "job",
            "--resolve",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CYTOBENCH_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task_name: faster_rcnn_smoke" in proc.stdout and "backbone: resnet18" in proc.stdout


def test_wandb_logger_without_wandb_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    from cytobench.engine.loggers import WandbLogger
    from cytobench.errors import CytobenchError

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(CytobenchError, match=r"cytobench\[wandb\].*logger=csv"):
        WandbLogger(tmp_path)
