"""Every experiment composes at each of its scales, no experiment file chains another, and every smoke
experiment trains end to end.

An experiment is task x variant x scale: its file selects a scale level (``- /scale: cpu``, which
``scale=LEVEL`` on the command line changes) and the task's values at that level
(``- /scale/<task>: ${scale}``, i.e. ``conf/scale/<task>/<level>.yaml``), then holds its
``override /group:`` lines and only the values of its variant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from cytobench.train import run
from tests.conftest import CONF_DIR, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SCALE_DIR = CONF_DIR / "scale"
# Experiments on user data need paths; a small toy set stands in for them.
REQUIRED_PATHS = {
    "data": [
        "data.train.root=/nonexistent/images",
        "data.train.ann_file=/nonexistent/train.json",
        "data.val.ann_file=/nonexistent/val.json",
    ],
}


def _defaults(path: Path) -> list[Any]:
    return yaml.safe_load(path.read_text()).get("defaults") or []


def _default_group(entry: Any) -> str:
    """The group a defaults-list entry names ('/scale/qd: ${scale}' -> 'scale/qd'); '' for _self_."""
    if entry == "_self_":
        return ""
    assert not isinstance(entry, str), f"{entry!r}: includes another file of its own group (a chain)"
    assert isinstance(entry, dict) and len(entry) == 1, f"unexpected defaults entry {entry!r}"
    key = next(iter(entry))
    for prefix in ("override ", "optional "):
        key = key.removeprefix(prefix)
    assert key.startswith("/"), f"{entry!r}: name groups absolutely (a relative one is an experiment/...)"
    return key.lstrip("/").split("@")[0]


def _scale_of(name: str) -> tuple[str, str]:
    """(task, level) an experiment file declares: `- /scale: LEVEL` and `- /scale/TASK: ${scale}`."""
    entries = [e for e in _defaults(CONF_DIR / "experiment" / f"{name}.yaml") if e != "_self_"]
    level = [next(iter(e.values())) for e in entries if _default_group(e) == "scale"]
    tasks = [
        (_default_group(e).split("/", 1)[1], next(iter(e.values())))
        for e in entries
        if _default_group(e).startswith("scale/")
    ]
    assert len(level) == 1 and len(tasks) == 1, (
        f"{name}: needs `- /scale: LEVEL` and `- /scale/TASK: ${{scale}}`"
    )
    assert tasks[0][1] == "${scale}", f"{name}: the task's scale file must follow the level: ${{scale}}"
    return tasks[0][0], level[0]


def _levels(task: str) -> list[str]:
    return sorted(p.stem for p in (SCALE_DIR / task).glob("*.yaml"))


SCALED = [(name, level) for name in EXPERIMENTS for level in _levels(_scale_of(name)[0])]


def _compose(overrides: list[str], tmp_path: Path, data_dir: Path) -> DictConfig:
    """``python train.py OVERRIDES``'s config (with stand-in paths where the data needs them)."""
    cfg = compose_config(overrides, tmp_path, data_dir)
    if OmegaConf.is_missing(cfg.data.train, "root"):
        cfg = compose_config([*overrides, *REQUIRED_PATHS["data"]], tmp_path, data_dir)
    return cfg


def _job(overrides: list[str], tmp_path: Path, data_dir: Path) -> dict[str, Any]:
    """The resolved job config (everything but ``hydra``) that ``python train.py OVERRIDES`` would run."""
    return _resolve(_compose(overrides, tmp_path, data_dir))


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job_cfg, resolve=True, throw_on_missing=True)
    assert isinstance(resolved, dict)
    return resolved


def test_there_are_experiments() -> None:
    assert "faster_rcnn" in EXPERIMENTS and "faster_rcnn_smoke" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str, tmp_path: Path, data_dir: Path) -> None:
    resolved = _job([f"experiment={name}"], tmp_path, data_dir)
    for group in ("data", "model", "trainer", "evaluator"):
        assert resolved[group], f"{name}: empty {group} config"
    assert resolved["scale"] == _scale_of(name)[1]
    # Every _target_ names something importable.
    for node in _targets(resolved):
        get_method(node)


@pytest.mark.parametrize(("name", "level"), SCALED, ids=[f"{n}-{s}" for n, s in SCALED])
def test_experiment_composes_at_each_scale(name: str, level: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = _compose([f"experiment={name}", f"scale={level}"], tmp_path, data_dir)
    resolved = _resolve(cfg)
    assert resolved["scale"] == level
    task = _scale_of(name)[0]
    assert cfg.hydra.runtime.choices[f"scale/{task}"] == level
    assert (cfg.hydra.runtime.choices.trainer == "smoke") == (level == "smoke"), "smoke: the smoke trainer"
    for node in _targets(resolved):
        get_method(node)


def test_scale_files_are_one_level() -> None:
    """A level file names its level (and may switch a group); a task's scale file holds values only."""
    for path in sorted(SCALE_DIR.glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["scale"] == path.stem
        for entry in _defaults(path):
            assert _default_group(entry) in ("", "trainer"), f"{path.name}: {entry!r}"
    for path in sorted(SCALE_DIR.glob("*/*.yaml")):
        assert not _defaults(path), f"{path}: a task's scale file has no defaults list"
        assert (SCALE_DIR / path.name).is_file(), f"{path}: no level file conf/scale/{path.name}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_includes_no_other_experiment(name: str) -> None:
    for entry in _defaults(CONF_DIR / "experiment" / f"{name}.yaml"):
        group = _default_group(entry)
        assert group.split("/")[0] != "experiment", f"{name}: includes {entry!r} (no chains of experiments)"


# ---------------------------------------------------------------------------------- behaviour kept
# Values that pin what each experiment trained before the scale split (conf/scale/).
KEY_VALUES = {
    "deepace": {
        "scale": "paper",
        "model.backbone": "resnet101",
        "model.template_feature_grad": 1.0,
        "data.size": [1600, 1200],
        "trainer.max_epochs": 24,
        "trainer.monitor": "enum/wcr",
        "trainer.optimizer.lr": 0.02,
        "trainer.scheduler.milestones": [16, 22],
    },
    "deepace_cpu": {
        "data.size": [512, 384],
        "data.n_images": 300,
        "model.anchor_sizes": [12, 20, 32, 44],
        "model.template_feature_grad": 0.1,
        "trainer.max_epochs": 8,
        "trainer.monitor": "enum/f1",
        "cpu_note": None,
    },
    "deepace_smoke": {"data.n_images": 6, "trainer.max_epochs": 2, "trainer.clip_grad_norm": None},
    "deepace_baseline": {
        "model.hnas": False,
        "model.template": False,
        "model.tnrl": False,
        "model.postprocess": "nms",
        "model.template_feature_grad": 1.0,
    },
    "deepace_baseline_softnms": {"model.hnas": False, "model.template": False, "model.postprocess": "soft"},
    "deepace_ablation": {
        "data.size": [384, 288],
        "data.n_images": 120,
        "model.anchor_sizes": [9, 15, 24, 33],
        "trainer.max_epochs": 7,
        "trainer.scheduler.milestones": [5, 6],
        "trainer.progress": False,
        "logger._target_": "cytobench.engine.loggers.WandbLogger",
    },
    "deepace_ablation_wcr": {
        "data.size": [320, 240],
        "data.prepare.n_chromosomes": 10,
        "data.prepare.scale": 96,
        "model.anchor_sizes": [20, 40, 60, 80],
        "model.template_feature_grad": 0.1,
        "trainer.max_epochs": 10,
        "trainer.scheduler.milestones": [7, 9],
        "trainer.monitor": "enum/f1",
        "trainer.progress": False,
    },
    "qd": {"data.n_train": 29838, "model.backbone": "resnet50", "trainer.optimizer.lr": 0.001},
    "qd_cpu": {"data.n_train": 2400, "data.n_val": 300, "trainer.max_epochs": 4},
    "qd_demo": {
        "data.n_train": 900,
        "data.n_val": 150,
        "trainer.max_epochs": 2,
        "trainer.optimizer.lr": 0.01,
    },
    "qd_smoke": {
        "data.n_train": 12,
        "model.keypoint_head_layers": [32, 32],
        "trainer.monitor": "loc/auc@eps2",
    },
    "fish_smoke": {"evaluator.iou_types": ["bbox", "segm"], "model.imgsz": 160, "trainer.max_epochs": 2},
    "fish_cpu": {
        "evaluator.iou_types": ["bbox", "segm"],
        "model.train_args.nbs": 8,
        "trainer.max_epochs": 60,
    },
    "fish_yolov8seg": {
        "evaluator.iou_types": ["bbox", "segm"],
        "evaluator.max_dets": [1, 10, 300],
        "model.arch": "yolov8s-seg.yaml",
        "trainer.max_epochs": 300,
        "trainer.early_stopping.patience": 50,
    },
    "seunet": {
        "model.heads": ["cytoplasm", "nuclei", "border", "background"],
        "model.decoder": "decoupled",
        "model.window": 512,
        "data.crop": 512,
        "data.batch_size": 4,
        "trainer.max_epochs": 1000,
        "trainer.optimizer.lr": 1e-5,
        "trainer.monitor": "pix/cytoplasm_f1",
    },
    "seunet_cpu": {"data.size": 256, "data.crop": 192, "model.width": 8, "trainer.max_epochs": 60},
    "seunet_smoke": {
        "model.heads": ["cytoplasm", "nuclei", "border", "background", "overlap"],
        "model.attention_key": "overlap_attention_v4",
        "data.size": 160,
        "trainer.max_epochs": 2,
    },
    "seunet_overlap": {"model.heads": ["cytoplasm", "overlap"], "trainer.monitor": "pix/overlap_f1"},
    "seunet_synthetic": {"data.train_set": "synthetic", "model.overlap_loss": "bce"},
    "faster_rcnn": {"trainer.max_epochs": 24, "trainer.scheduler.milestones": [16, 22]},
    "faster_rcnn_demo": {"data.n_images": 96, "trainer.max_epochs": 8, "trainer.scheduler.milestones": [6]},
    "faster_rcnn_smoke": {"data.n_images": 8, "data.size": 64, "trainer.max_epochs": 2},
    # the karyotyping comparison: 24-class karyograms with an aneuploid mix, one schedule, karyo/f1
    "karyotype_faster_rcnn": {
        "scale": "cpu",
        "data.prepare.simulator.path": "cytobench.simulate.karyogram.simulate_karyogram",
        "data.prepare.n_chromosomes": {45: 0.1, 46: 0.8, 47: 0.1},
        "data.n_images": 200,
        "data.size": [512, 384],
        "data.batch_size": 2,
        "model._target_": "cytobench.models.faster_rcnn.build_faster_rcnn",
        "model.backbone": "resnet18",
        "model.min_size": 384,
        "model.max_size": 512,
        "model.anchor_sizes": [8, 16, 32, 64, 128],
        "model.box_batch_size_per_image": 128,
        "trainer.max_epochs": 6,
        "trainer.optimizer.lr": 0.005,
        "trainer.scheduler.milestones": [4, 5],
        "trainer.monitor": "karyo/f1",
        "evaluator.evaluators": [
            {
                "_target_": "cytobench.evaluation.CocoEvaluator",
                "iou_types": ["bbox"],
                "max_dets": [1, 10, 100],
            },
            {
                "_target_": "cytobench.evaluation.KaryotypeEvaluator",
                "iou_thr": 0.5,
                "score_thr": 0.5,
                "confidence": 0.95,
            },
        ],
    },
    "karyotype_faster_rcnn_smoke": {
        "scale": "smoke",
        "data.n_images": 4,
        "data.size": [256, 192],
        "model.backbone": "resnet18",
        "model.min_size": 192,
        "trainer.max_epochs": 2,
        "trainer.monitor": "karyo/f1",
    },
    "karyotype_rfcn": {
        "model._target_": "cytobench.models.rfcn.build_rfcn",
        "model.backbone": "resnet18",
        "model.use_layer4": True,
        "model.anchor_sizes": [16, 32, 64, 128],
        "model.min_size": 384,
        "trainer.monitor": "karyo/f1",
    },
    "karyotype_rfcn_smoke": {"scale": "smoke", "model.backbone": "resnet18", "data.n_images": 4},
    "karyotype_ssd": {
        "model._target_": "cytobench.models.ssd.build_ssd",
        "model.variant": "ssdlite320_mobilenet_v3_large",
        "model.size": [512, 384],
        "model.anchor_scales": [0.04, 0.08, 0.14, 0.22, 0.35, 0.55, 0.8],
        "data.batch_size": 8,
        "trainer.monitor": "karyo/f1",
    },
    "karyotype_ssd_smoke": {"scale": "smoke", "model.size": [256, 192], "data.batch_size": 8},
    "karyotype_two_stage": {
        "model._target_": "cytobench.models.two_stage.build_two_stage",
        "model.detector._target_": "cytobench.models.deepace.build_deepace",
        "model.detector.backbone": "resnet18",
        "model.detector.min_size": 384,
        "model.detector.anchor_sizes": [16, 32, 64, 128],
        "model.detector.template_feature_grad": 0.1,
        "model.classifier.width": 16,
        "model.crop_size": [64, 24],
        "model.pair_prior": True,
        "trainer.monitor": "karyo/f1",
    },
    "karyotype_two_stage_smoke": {
        "scale": "smoke",
        "model.detector.backbone": "resnet18",
        "data.n_images": 4,
    },
    "karyotype_yolo": {
        "model._target_": "cytobench.models.yolo.build_yolo",
        "model.task": "detect",
        "model.arch": "yolov8n.yaml",
        "model.imgsz": 512,
        "model.train_args.batch": 8,
        "model.train_args.nbs": 8,
        "model.train_args.epochs": 6,
        "data.batch_size": 8,
        "trainer.monitor": "karyo/f1",
    },
    "karyotype_yolo_smoke": {
        "scale": "smoke",
        "data.prepare.simulator.path": "cytobench.simulate.karyogram.simulate_karyogram",
        "model.arch": "yolov8n.yaml",
        "model.imgsz": 256,
        "model.train_args.epochs": 2,
        "model.train_args.workers": 0,
    },
}
# Experiments that are another one at another scale (or another variant at the same scale): their
# configs agree on everything but these keys (None: any value; a set: exactly these sub-keys differ).
SAME_AS: list[tuple[str, list[str], dict[str, set[str] | None]]] = [
    ("deepace_cpu", ["experiment=deepace", "scale=cpu"], {"task_name": None}),
    ("deepace_smoke", ["experiment=deepace", "scale=smoke"], {"task_name": None}),
    ("deepace_ablation_wcr", ["experiment=deepace_ablation", "scale=cpu_wcr"], {"task_name": None}),
    ("qd_demo", ["experiment=qd", "scale=demo"], {"task_name": None}),
    ("fish_cpu", ["experiment=fish_yolov8seg", "scale=cpu"], {"task_name": None}),
    ("seunet_cpu", ["experiment=seunet", "scale=cpu"], {"task_name": None}),
    # the Tables 5.1 / 5.2 sweep: seunet_cpu's 4-head run, swept over heads and seeds
    ("seunet_heads", ["experiment=seunet_cpu"], {"task_name": None}),
    # the baseline: deepace_cpu's data and schedule with the modules off (template_feature_grad: the
    # model default, unused without the Template Module)
    (
        "deepace_baseline",
        ["experiment=deepace_cpu"],
        {"task_name": None, "model": {"hnas", "template", "tnrl", "postprocess", "template_feature_grad"}},
    ),
    (
        "deepace_baseline",
        ["experiment=deepace_baseline_softnms"],
        {"task_name": None, "model": {"postprocess"}},
    ),
    # qd_demo: qd_cpu's model and schedule on fewer frames (train / val hold their n), 2 epochs
    (
        "qd_demo",
        ["experiment=qd_cpu"],
        {
            "task_name": None,
            "scale": None,
            "data": {"n_train", "n_val", "train", "val"},
            "trainer": {"max_epochs"},
        },
    ),
    # the karyotyping comparison: each model's smoke experiment is its experiment at scale=smoke ...
    *[
        (f"karyotype_{m}_smoke", [f"experiment=karyotype_{m}", "scale=smoke"], {"task_name": None})
        for m in ("faster_rcnn", "rfcn", "ssd", "two_stage", "yolo")
    ],
    # ... and the models see the same data, schedule and evaluator (the batch-norm models SSDlite and YOLO
    # train on batches of 8)
    ("karyotype_rfcn", ["experiment=karyotype_faster_rcnn"], {"task_name": None, "model": None}),
    ("karyotype_two_stage", ["experiment=karyotype_faster_rcnn"], {"task_name": None, "model": None}),
    (
        "karyotype_ssd",
        ["experiment=karyotype_faster_rcnn"],
        {"task_name": None, "model": None, "data": {"batch_size"}},
    ),
    (
        "karyotype_yolo",
        ["experiment=karyotype_faster_rcnn"],
        {"task_name": None, "model": None, "data": {"batch_size"}},
    ),
    # data=karyotype_spreads: the same task on metaphase spreads (its own cache folder, simulator and pixel
    # statistics, which the torch models' normalisation follows)
    *[
        (
            f"karyotype_{m}",
            [f"experiment=karyotype_{m}", "data=karyotype_spreads"],
            {
                "data": {"dir", "image_mean", "image_std", "prepare", "train", "val"},
                "model": model_differs,
            },
        )
        for m, model_differs in (
            ("rfcn", {"image_mean", "image_std"}),
            ("two_stage", {"detector"}),
            ("yolo", set()),
        )
    ],
    # the two-stage model with a YOLO enumerator: the enumerator is karyotype_yolo on the spreads' images with
    # one class (its own annotations and evaluator; no pair prior) ...
    (
        "karyotype_enumerator_yolo_smoke",
        ["experiment=karyotype_enumerator_yolo", "scale=smoke"],
        {"task_name": None},
    ),
    (
        "karyotype_enumerator_yolo",
        ["experiment=karyotype_yolo", "data=karyotype_spreads"],
        {
            "task_name": None,
            "data": None,  # two keys more (test_karyotype_two_stage_yolo.py checks the images are the same)
            "evaluator": None,
            "trainer": {"monitor"},
            "model": {"eval"},
        },
    ),
    # ... and stage 2 is karyotype_two_stage's classifier on the same spreads, the detector frozen
    (
        "karyotype_two_stage_yolo",
        ["experiment=karyotype_two_stage", "data=karyotype_spreads"],
        {"task_name": None, "model": {"detector", "train_detector"}},
    ),
    # the Cellpose baseline: its smoke experiment is itself at scale=smoke (smaller patches), and it sees
    # the same data, epochs and evaluator as Mask R-CNN (Cellpose's optimizer is its own: trainer's unused)
    (
        "cellpose_brightfield_smoke",
        ["experiment=cellpose_brightfield", "scale=smoke"],
        {"task_name": None, "model": {"bsize"}},
    ),
    (
        "cellpose_brightfield",
        ["experiment=mask_rcnn_brightfield"],
        {"task_name": None, "model": None, "trainer": {"optimizer", "scheduler", "clip_grad_norm"}},
    ),
]


@pytest.mark.parametrize("name", sorted(KEY_VALUES))
def test_experiment_key_values(name: str, tmp_path: Path, data_dir: Path) -> None:
    resolved = OmegaConf.create(_job([f"experiment={name}"], tmp_path, data_dir))
    for key, expected in KEY_VALUES[name].items():
        value = OmegaConf.select(resolved, key, throw_on_missing=True)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        assert value == expected, f"{name}: {key} = {value!r}, expected {expected!r}"


@pytest.mark.parametrize(
    ("name", "other", "differ"), SAME_AS, ids=[f"{n}={' '.join(o)}" for n, o, _ in SAME_AS]
)
def test_experiment_equals(
    name: str, other: list[str], differ: dict[str, set[str] | None], tmp_path: Path, data_dir: Path
) -> None:
    ours, theirs = _job([f"experiment={name}"], tmp_path, data_dir), _job(other, tmp_path, data_dir)
    assert set(ours) == set(theirs)
    for key in ours:
        if key not in differ:
            assert ours[key] == theirs[key], f"{name} vs {other}: {key}"
        elif differ[key] is not None:
            assert set(ours[key]) == set(theirs[key])
            changed = {k for k in ours[key] if ours[key][k] != theirs[key][k]}
            assert changed == differ[key], f"{name} vs {other}: {key}"


def test_ablation_sweeps_keep_their_parameters(tmp_path: Path, data_dir: Path) -> None:
    ablations = ",".join(sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml")))
    for name in ("deepace_ablation", "deepace_ablation_wcr"):
        params = compose_config([f"experiment={name}"], tmp_path, data_dir).hydra.sweeper.params
        assert sorted(params["+ablation"].split(",")) == ablations.split(",")
        assert params.seed == "range(0,10)"
    # at another scale too: the sweep is the variant, the scale only sizes it
    params = compose_config(
        ["experiment=deepace_ablation", "scale=paper"], tmp_path, data_dir
    ).hydra.sweeper.params
    assert params["+ablation"] == "single1,hnas,hnas_tnrl,hnas_tnrl_tm,hnas_v1"


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_smoke")])
@pytest.mark.slow
def test_smoke_experiment_runs(name: str, tmp_path: Path, data_dir: Path) -> None:
    if name.startswith("cellpose"):
        pytest.importorskip("cellpose", reason="optional extra: pip install -e '.[cellpose]'")
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
