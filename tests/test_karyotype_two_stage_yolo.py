"""The two-stage karyotyper with a YOLO enumerator: one-class annotations of the 24-class spreads, the frozen
YOLO as stage 1 (experiment=karyotype_enumerator_yolo, then experiment=karyotype_two_stage_yolo)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.data.prepare import ensure_one_class
from cytobench.errors import BadInputError
from cytobench.io.checkpoint import load_checkpoint
from cytobench.models.yolo import build_yolo_detector
from cytobench.train import run
from tests.conftest import ROOT, compose_config


def _coco(names: list[str]) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": [i, i, 5, 5], "area": 25, "iscrowd": 0}
            for i in range(len(names))
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }


def test_one_class_copy_merges_every_category_and_leaves_the_source(tmp_path: Path) -> None:
    source = tmp_path / "spreads"
    source.mkdir()
    for split, names in (("train", ["1", "2", "X"]), ("val", ["1", "Y"])):
        (source / f"{split}.json").write_text(json.dumps(_coco(names)))
    before = {p.name: p.read_bytes() for p in source.iterdir()}

    out = ensure_one_class(source, tmp_path / "one", name="chromosome")
    train = json.loads((out / "train.json").read_text())
    assert train["categories"] == [{"id": 1, "name": "chromosome", "supercategory": "chromosome"}]
    assert [a["category_id"] for a in train["annotations"]] == [1, 1, 1]
    assert [a["bbox"] for a in train["annotations"]] == [[0, 0, 5, 5], [1, 1, 5, 5], [2, 2, 5, 5]]
    assert train["images"] == _coco(["1"])["images"]
    assert len(json.loads((out / "val.json").read_text())["annotations"]) == 2
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before

    stamp = (out / "train.json").stat().st_mtime_ns
    ensure_one_class(source, tmp_path / "one", name="chromosome")  # the same merge: left as it is
    assert (out / "train.json").stat().st_mtime_ns == stamp


def test_the_enumerator_sees_the_spreads_own_images(tmp_path: Path, data_dir: Path) -> None:
    enum = compose_config(["experiment=karyotype_enumerator_yolo"], tmp_path, data_dir)
    spreads = compose_config(["experiment=karyotype_yolo", "data=karyotype_spreads"], tmp_path, data_dir)
    assert enum.data.dir == spreads.data.dir and enum.data.train.root == spreads.data.train.root
    assert enum.data.train.ann_file == f"{enum.data.dir}_one_class/train.json"


def test_tables_name_the_yolo_enumerator(tmp_path: Path, data_dir: Path) -> None:
    from omegaconf import OmegaConf

    from cytobench.reproduce.karyotype_models import model_row, model_variant

    for name, variant in (
        ("karyotype_two_stage_yolo", "YOLO detector (trained before) + crop classifier"),
        ("karyotype_two_stage", "resnet18 detector + crop classifier"),
    ):
        model = OmegaConf.to_container(
            compose_config([f"experiment={name}"], tmp_path, data_dir).model, resolve=True
        )
        assert model_row(model) == "Two-stage" and model_variant(model) == variant


def test_a_frozen_yolo_cannot_be_trained_end_to_end() -> None:
    from cytobench.models.karyotype_classifier import ChromosomeClassifier
    from cytobench.models.two_stage import TwoStageKaryotyper
    from cytobench.models.yolo import YoloModel

    frozen = YoloModel(None, [{"id": 1, "name": "chromosome"}], task="detect")  # weights outside the module
    with pytest.raises(
        BadInputError, match="model.train_detector: the detector .* set model.train_detector=false"
    ):
        TwoStageKaryotyper(frozen, ChromosomeClassifier(24), train_detector=True)
    assert TwoStageKaryotyper(frozen, ChromosomeClassifier(24), train_detector=False).detector is frozen


def test_build_yolo_detector_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="model.detector.checkpoint: no value given"):
        build_yolo_detector(2)
    with pytest.raises(BadInputError, match="gone.pt: the enumerator's checkpoint .* is not there"):
        build_yolo_detector(2, checkpoint=str(tmp_path / "gone.pt"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_enumerator_then_two_stage_classifier(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enum_dir = tmp_path / "enum"
    run(compose_config(["experiment=karyotype_enumerator_yolo_smoke"], enum_dir, data_dir))
    enum_ckpt = enum_dir / "checkpoints" / "best.pt"
    assert "enum/f1" in json.loads((enum_dir / "metrics.json").read_text())["latest"]
    detector = build_yolo_detector(2, checkpoint=str(enum_ckpt))
    assert [c["name"] for c in detector.categories] == ["chromosome"]
    assert not detector.pair_prior
    digest = _sha(enum_ckpt)

    two_dir = tmp_path / "two"
    cfg = compose_config(
        ["experiment=karyotype_two_stage_yolo", "scale=smoke", f"model.detector.checkpoint={enum_ckpt}"],
        two_dir,
        data_dir,
    )
    run(cfg)
    metrics = json.loads((two_dir / "metrics.json").read_text())
    assert metrics["epoch"] == cfg.trainer.max_epochs and "karyo/f1" in metrics["latest"]
    # only the classifier trained: the checkpoint holds it alone, and the enumerator's file is untouched
    state = load_checkpoint(two_dir / "checkpoints" / "last.pt")
    assert state["model"] and all(key.startswith("classifier.") for key in state["model"])
    assert _sha(enum_ckpt) == digest

    # experiments/karyotype/two_stage_settings.py: its first setting is the model's own (as reproduce scores
    # it); a cell threshold above every score keeps nothing
    spec = importlib.util.spec_from_file_location(
        "settings", ROOT / "experiments/karyotype/two_stage_settings.py"
    )
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)
    from cytobench.reproduce.base import TestSet
    from cytobench.reproduce.karyotype_models import models_from_checkpoints, score_model

    val_json, val_images = Path(cfg.data.val.ann_file), Path(cfg.data.val.root)
    best = two_dir / "checkpoints" / "best.pt"
    own, none = settings.score_settings(
        best, val_json, val_images, [(None, "product", 0.5), (0.7, "product", 1.01)]
    )
    plain = score_model(models_from_checkpoints([best])[0], TestSet(val_json, val_images, -1), "cpu")[
        "metrics"
    ]
    assert own == {c: pytest.approx(plain[c], nan_ok=True) for c in settings.COLUMNS}
    assert none["recall"] == 0.0 and none["exact_match"] == 0.0

    # experiments/karyotype/missed_chromosomes.py finds what the evaluator's class-agnostic matching finds
    spec = importlib.util.spec_from_file_location(
        "missed", ROOT / "experiments/karyotype/missed_chromosomes.py"
    )
    missed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(missed)
    records = missed.collect(best, val_json, val_images, 0.5)
    scored = score_model(models_from_checkpoints([best])[0], TestSet(val_json, val_images, -1), "cpu")
    assert len(records) == sum(len(t["boxes"]) for t in TestSet(val_json, val_images, -1).load_targets()[0])
    assert sum(r["found"] for r in records) == int(np.sum(scored["confusion"]))
    capsys.readouterr()
    missed.main(["--checkpoint", str(best), "--test-json", str(val_json), "--images", str(val_images)])
    table = capsys.readouterr().out
    assert f"| all | {len(records)} | {sum(not r['found'] for r in records)} |" in table

    # a 24-class YOLO is not an enumerator
    yolo24 = tmp_path / "yolo24"
    run(compose_config(["experiment=karyotype_yolo_smoke", "data=karyotype_spreads"], yolo24, data_dir))
    with pytest.raises(BadInputError, match="a YOLO of 24 classes; the enumerator finds one"):
        build_yolo_detector(2, checkpoint=str(yolo24 / "checkpoints" / "best.pt"))
    with pytest.raises(BadInputError, match="one class"):
        build_yolo_detector(25, checkpoint=str(enum_ckpt))
    assert torch.is_tensor(next(iter(state["model"].values())))
