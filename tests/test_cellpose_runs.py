"""The Cellpose baseline behind cytobench's contracts: ``python train.py experiment=cellpose_brightfield``
goes to Cellpose's own loop; its checkpoint loads weights-only and scores as the run reported. The parts
that need cellpose (the optional extra) skip without it; the refusals do not need it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cytobench.engine.cellpose_run import run_cellpose
from cytobench.engine.ultralytics_run import run_yolo
from cytobench.errors import BadInputError
from cytobench.models.cellpose_baseline import build_cellpose
from cytobench.train import external_runner, run
from tests.conftest import compose_config


def test_each_model_trains_through_its_own_loop(tmp_path: Path, data_dir: Path) -> None:
    expected = {
        "cellpose_brightfield_smoke": run_cellpose,
        "yolov8_seg_brightfield_smoke": run_yolo,
        "mask_rcnn_brightfield_smoke": None,  # the shared trainer
    }
    for name, runner in expected.items():
        cfg = compose_config([f"experiment={name}"], tmp_path, data_dir)
        assert external_runner(cfg.model) is runner, name


def test_without_cellpose_the_run_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import fails as if the extra were absent
    run_dir, fresh_data = tmp_path / "run", tmp_path / "data"
    cfg = compose_config(["experiment=cellpose_brightfield_smoke"], run_dir, fresh_data)
    with pytest.raises(BadInputError, match=r"pip install -e \"\.\[cellpose\]\""):
        run(cfg)
    assert not run_dir.exists() and not fresh_data.exists()  # no config written, nothing simulated
    with pytest.raises(BadInputError, match="one class"):
        build_cellpose(num_classes=3)
    with pytest.raises(BadInputError, match="model.diam_mean: must be a diameter in px > 0 or 'auto'"):
        build_cellpose(diam_mean=0)


def test_a_cellpose_checkpoint_without_cellpose_is_a_one_line_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cytobench predict`` / ``reproduce`` on a Cellpose checkpoint where the extra is missing: the model's
    own error, not Hydra's wrapping of it."""
    from cytobench.engine.predict import load_model_from_checkpoint

    monkeypatch.setitem(sys.modules, "cellpose", None)
    path = tmp_path / "best.pt"
    config = {"_target_": "cytobench.models.cellpose_baseline.build_cellpose", "nchan": 2}
    torch.save({"model": {}, "model_config": config, "num_classes": 2}, path)
    with pytest.raises(BadInputError, match=r"cellpose: is not installed"):
        load_model_from_checkpoint(path)


@pytest.mark.slow
def test_smoke_run_checkpoint_loads_weights_only_and_scores_as_reported(
    tmp_path: Path, data_dir: Path
) -> None:
    pytest.importorskip("cellpose", reason="optional extra: pip install -e '.[cellpose]'")
    from cytobench.engine.inference import inference_on_dataset
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.engine.run_setup import build_loader
    from cytobench.io.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    cfg = compose_config(["experiment=cellpose_brightfield_smoke"], tmp_path, data_dir)
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["best"]["checkpoint"] == str(tmp_path / "checkpoints" / "best.pt")
    assert (tmp_path / "cellpose" / "models" / "cellpose_cytobench").is_file()  # Cellpose's own copy
    checkpoints = tmp_path / "checkpoints"  # one training, one state: last.pt is best.pt's copy
    assert (checkpoints / "last.pt").read_bytes() == (checkpoints / "best.pt").read_bytes()

    raw = load_checkpoint(tmp_path / "checkpoints" / "best.pt")  # weights-only
    assert raw["num_classes"] == 2 and any(k.startswith("net.") for k in raw["model"])
    model, info = load_model_from_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert info["model_config"]["_target_"].endswith("build_cellpose")
    # diam_mean "auto": the training labels' mean diameter, saved with the weights and used in inference
    from cytobench.models.cellpose_baseline import dataset_for_cellpose, mean_label_diameter

    train_labels = dataset_for_cellpose(instantiate(cfg.data.val, ann_file=cfg.data.train_ann))[1]
    assert float(raw["model"]["net.diam_mean"]) == pytest.approx(mean_label_diameter(train_labels), rel=1e-5)
    assert float(raw["model"]["net.diam_mean"]) != pytest.approx(30.0)
    model([torch.zeros(2, 32, 32)])
    assert model.cellpose.diam_mean == pytest.approx(float(raw["model"]["net.diam_mean"]))
    val = instantiate(cfg.data.val)
    loader = build_loader(val, batch_size=2, num_workers=0, train=False, seed=0)
    again = inference_on_dataset(model, loader, instantiate(cfg.evaluator))
    assert again["coco/segm_AP"] == pytest.approx(metrics["latest"]["coco/segm_AP"])

    images, targets = next(iter(loader))
    with pytest.raises(BadInputError, match="its own loop"):
        model(images, targets)
    with pytest.raises(BadInputError, match="2 channels"):
        model([torch.zeros(3, 32, 32)])
