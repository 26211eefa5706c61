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


@pytest.mark.slow
def test_sweep_records_a_diverged_job_and_exits_nonzero(tmp_path: Path, data_dir: Path) -> None:
    """One of two jobs diverges: both folders say how they ended, the sweep folder sums them up, the
    sweep exits 1, and train.log holds each run's log; reproduce/runs.py takes only the finished one."""
    from cytobench.reproduce.runs import collect_runs

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "experiment=faster_rcnn_smoke",
            "trainer.optimizer.lr=0.005,1e6",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CYTOBENCH_DATA_DIR": str(data_dir)},
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    good, bad = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert bad.name == "1_trainer.max_epochs=1,trainer.optimizer.lr=1000000.0"
    assert "best coco/bbox_AP" in proc.stdout  # the console output of the good job is as before
    diverged = [line for line in proc.stderr.splitlines() if line.startswith("TrainingDiverged: ")]
    assert len(diverged) == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("sweep: 1 of 2 jobs failed or were killed, e.g. 1_")
    )

    good_status = json.loads((good / "status.json").read_text())
    assert good_status["status"] == "done" and good_status["monitor"] == "coco/bbox_AP"
    assert json.loads((good / "metrics.json").read_text())["status"] == "done"
    bad_status = json.loads((bad / "status.json").read_text())
    assert bad_status["status"] == "failed" and bad_status["reason"] == diverged[0]

    summary = json.loads((sweep / "sweep.json").read_text())
    assert summary["complete"] and summary["counts"] == {"done": 1, "failed": 1}
    assert [(j["num"], j["status"]) for j in summary["jobs"]] == [(0, "done"), (1, "failed")]
    assert summary["jobs"][0]["monitor"] == "coco/bbox_AP" and summary["jobs"][0]["value"] is not None
    assert (
        "| 1 | experiment=faster_rcnn_smoke trainer.optimizer.lr=1000000.0"
        in (sweep / "sweep.md").read_text()
    )

    good_log, bad_log = (good / "train.log").read_text(), (bad / "train.log").read_text()
    assert "epoch 1/1 step 1: loss" in good_log and "epoch 1 evaluation: coco/bbox_AP" in good_log
    assert "best coco/bbox_AP = " in good_log
    assert "TrainingDiverged: loss became non-finite" in bad_log and "Traceback" in bad_log

    assert [r.path for r in collect_runs([sweep])] == [good]


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
