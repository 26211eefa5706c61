"""Every experiment composes, and every smoke experiment trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from cytobench.train import run
from tests.conftest import CONF_DIR, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Experiments on user data need paths; a small toy set stands in for them.
REQUIRED_PATHS = {
    "data": [
        "data.train.root=/nonexistent/images",
        "data.train.ann_file=/nonexistent/train.json",
        "data.val.ann_file=/nonexistent/val.json",
    ],
}


def test_there_are_experiments() -> None:
    assert "faster_rcnn" in EXPERIMENTS and "faster_rcnn_smoke" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config([f"experiment={name}"], tmp_path, data_dir)
    if OmegaConf.is_missing(cfg.data.train, "root"):
        cfg = compose_config([f"experiment={name}", *REQUIRED_PATHS["data"]], tmp_path, data_dir)
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job_cfg, resolve=True, throw_on_missing=True)
    for group in ("data", "model", "trainer", "evaluator"):
        assert resolved[group], f"{name}: empty {group} config"
    # Every _target_ names something importable.
    for node in _targets(resolved):
        get_method(node)


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_smoke")])
@pytest.mark.slow
def test_smoke_experiment_runs(name: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config([f"experiment={name}"], tmp_path, data_dir)
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epoch"] == cfg.trainer.max_epochs
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    assert metrics["latest"], "no evaluation metrics"


def _targets(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.append(node["_target_"])
        for value in node.values():
            found += _targets(value)
    elif isinstance(node, list):
        for value in node:
            found += _targets(value)
    return found
