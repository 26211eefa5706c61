"""Config checks before training and what a resumed checkpoint fixes (cytobench.engine.run_checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from cytobench.engine.run_checks import (
    check_config,
    check_resume_config,
    check_resume_data,
    check_trainer_checkpoint,
    missing_keys,
    train_config_state,
)
from cytobench.errors import BadInputError
from tests.conftest import compose_config
from tests.test_configs import SCALED, _compose

SMOKE = ["experiment=faster_rcnn_smoke"]
CATEGORIES = [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]


def _cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_config([*SMOKE, *overrides], tmp_path, tmp_path / "data")


def checkpoint_of(cfg: DictConfig, **changes: Any) -> dict[str, Any]:
    """A checkpoint as train.py writes it for ``cfg`` (plain data; no training needed)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    state = {
        "model": {},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.005, "initial_lr": 0.005}]},
        "scheduler": {},
        "epoch": 1,
        "step": 3,
        "hooks": {},
        "rng": {},
        "model_config": container["model"],
        "data_config": container["data"],
        "num_classes": 3,
        "categories": CATEGORIES,
        **train_config_state(container["seed"], container["trainer"]),
    }
    state.update(changes)
    return state


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.max_epochs=abc",
            r"^BadInputError: trainer\.max_epochs: must be an integer >= 1, got 'abc'$",
        ),
        ("trainer.max_epochs=0", r"trainer\.max_epochs: must be an integer >= 1, got 0"),
        ("trainer.optimizer.lr=-1", r"trainer\.optimizer\.lr: must be a number > 0, got -1"),
        ("trainer.optimizer.lr=nan", r"trainer\.optimizer\.lr: must be a number > 0"),
        ("trainer.optimizer.name=adam", r"trainer\.optimizer\.name: must be one of sgd / adamw, got 'adam'"),
        ("trainer.scheduler.name=poly", r"trainer\.scheduler\.name: must be one of constant"),
        ("trainer.scheduler.milestones=[a]", r"trainer\.scheduler\.milestones: must be a list of epochs"),
        ("trainer.amp=maybe", r"trainer\.amp: must be true or false, got 'maybe'"),
        ("trainer.clip_grad_norm=0", r"trainer\.clip_grad_norm: must be null or a number > 0, got 0"),
        ("trainer.monitor_mode=up", r"trainer\.monitor_mode: must be one of max / min"),
        ("data.batch_size=0", r"data\.batch_size: must be an integer >= 1, got 0"),
        ("seed=1.5", r"seed: must be an integer, got 1\.5"),
    ],
)
def test_bad_config_values_are_one_line(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=message) as info:
        check_config(_cfg(tmp_path, override))
    assert "\n" not in str(info.value)


def test_missing_values_are_named_without_resolving_interpolations(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "data=coco")  # data.val.root is ${data.train.root}, itself ???
    assert [k for k in missing_keys(cfg) if k.startswith("data.")] == [
        "data.train.root",
        "data.train.ann_file",
        "data.val.ann_file",
    ]
    with pytest.raises(BadInputError, match=r"^BadInputError: data\.train\.ann_file, data\.train\.root, "):
        check_config(cfg)
    check_config(
        _cfg(tmp_path, "data=coco", "data.train.root=/i", "data.train.ann_file=/t", "data.val.ann_file=/v")
    )


@pytest.mark.slow  # composes every experiment at each of its scales
@pytest.mark.parametrize(("name", "level"), SCALED, ids=[f"{n}-{s}" for n, s in SCALED])
def test_every_experiment_passes_the_checks(name: str, level: str, tmp_path: Path) -> None:
    check_config(_compose([f"experiment={name}", f"scale={level}"], tmp_path, tmp_path / "data"))


def test_resume_with_the_same_config_passes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "trainer.max_epochs=1")
    resumed = _cfg(tmp_path, "trainer.max_epochs=5", "trainer.eval_period=2", "trainer.device=cpu")
    check_resume_config(checkpoint_of(cfg), "last.pt", resumed)  # not fixed: epochs, evaluation, device
    # pretrained-weight paths only choose the initial weights, which resuming replaces
    check_resume_config(checkpoint_of(cfg), "last.pt", _cfg(tmp_path, "model.weights_path=/w.pt"))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.optimizer.lr=1e10", "trainer.optimizer.lr=0.005 (this run: 1e+10)"),
        ("trainer.optimizer.momentum=0.5", "trainer.optimizer.momentum=0.9 (this run: 0.5)"),
        ("trainer.scheduler.name=cosine", "trainer.scheduler.name=constant (this run: cosine)"),
        ("trainer.grad_accum_steps=2", "trainer.grad_accum_steps=1 (this run: 2)"),
        ("trainer.monitor=enum/wcr", "trainer.monitor=coco/bbox_AP (this run: enum/wcr)"),
        ("trainer.early_stopping.patience=3", "trainer.early_stopping.patience=0 (this run: 3)"),
        ("seed=1", "seed=0 (this run: 1)"),
        ("data.batch_size=4", "data.batch_size=2 (this run: 4)"),
        ("model.backbone=resnet34", "model.backbone=resnet18 (this run: resnet34)"),
    ],
)
def test_resume_refuses_what_the_checkpoint_fixes(override: str, named: str, tmp_path: Path) -> None:
    state = checkpoint_of(_cfg(tmp_path))
    with pytest.raises(BadInputError) as info:
        check_resume_config(state, "runs/x/last.pt", _cfg(tmp_path, override))
    line = str(info.value)
    assert line.startswith("BadInputError: runs/x/last.pt: the checkpoint fixes ") and "\n" not in line
    assert named in line and "model.weights_path=runs/x/last.pt" in line


def test_cosine_schedule_fixes_max_epochs(tmp_path: Path) -> None:
    state = checkpoint_of(_cfg(tmp_path, "trainer.scheduler.name=cosine", "trainer.max_epochs=2"))
    with pytest.raises(BadInputError, match=r"trainer\.max_epochs=2 \(this run: 4\)"):
        check_resume_config(
            state, "c.pt", _cfg(tmp_path, "trainer.scheduler.name=cosine", "trainer.max_epochs=4")
        )


def test_checkpoint_without_trainer_config_is_checked_by_its_optimizer_state(tmp_path: Path) -> None:
    state = checkpoint_of(_cfg(tmp_path))
    del state["trainer_config"], state["seed"]
    check_resume_config(state, "old.pt", _cfg(tmp_path))
    with pytest.raises(BadInputError, match=r"trainer\.optimizer\.lr=0\.005 \(this run: 1e\+10\)"):
        check_resume_config(state, "old.pt", _cfg(tmp_path, "trainer.optimizer.lr=1e10"))


def test_only_trainer_checkpoints_resume() -> None:
    yolo = {
        "model": {"w": 0},
        "cytobench": {"model_config": {"_target_": "cytobench.models.yolo.build_yolo"}},
    }
    with pytest.raises(BadInputError, match=r"^BadInputError: y\.pt: is a YOLO \(ultralytics\) checkpoint;"):
        check_trainer_checkpoint(yolo, "y.pt")
    with pytest.raises(BadInputError, match=r"w\.pt: holds no training state \(optimizer, scheduler"):
        check_trainer_checkpoint({"model": {}}, "w.pt")
    with pytest.raises(BadInputError, match=r"not a cytobench training checkpoint"):
        check_trainer_checkpoint([1, 2], "l.pt")


def test_resume_refuses_other_categories(tmp_path: Path) -> None:
    state = checkpoint_of(_cfg(tmp_path))
    check_resume_data(state, "c.pt", 3, CATEGORIES)
    more = [*CATEGORIES, {"id": 3, "name": "mitosis"}]
    with pytest.raises(BadInputError) as info:
        check_resume_data(state, "c.pt", 4, more)
    assert str(info.value) == (
        "BadInputError: c.pt: was trained on 2 categories (cell, debris) but this run's data has 3 "
        "(cell, debris, mitosis); resume on the data it was trained on, or start a new run from its weights "
        "with model.weights_path=c.pt"
    )
    with pytest.raises(BadInputError, match=r"\(cell, debris\) but this run's data has 2 \(cell, nucleus\)"):
        check_resume_data(state, "c.pt", 3, [CATEGORIES[0], {"id": 2, "name": "nucleus"}])
