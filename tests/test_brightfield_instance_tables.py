"""cytobench reproduce brightfield/table5_7, 5_9, 5_10, 5_11: row labels, the table maths on hand-made repeats,
and the command end to end on smoke runs (SparseSEU-Net single- and multi-level, SEU-Net + watershed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cytobench.reproduce.base import load_paper
from cytobench.reproduce.brightfield_eval import TrainedModel, models_from_runs
from cytobench.reproduce.brightfield_instances import (
    aggregation_label,
    build_table,
    model_label,
    overlap_label,
    reproduce,
)
from cytobench.train import run
from tests.conftest import compose_config

COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _model(target: str, **config: Any) -> TrainedModel:
    return TrainedModel(Path("x.pt"), {"_target_": target, **config}, {}, "x")


SPARSE = "cytobench.models.sparse_seunet.build_sparse_seunet"


def test_rows_follow_the_model_and_its_switches() -> None:
    assert model_label(_model("cytobench.models.mask_rcnn.build_mask_rcnn")) == "Mask R-CNN"
    assert model_label(_model("cytobench.models.yolo.build_yolo", task="segment")) == "YOLOv8"
    assert model_label(_model("cytobench.models.yolo.build_yolo", task="detect")) is None
    assert model_label(_model("cytobench.models.cellpose_baseline.build_cellpose")) == "Cellpose"
    assert (
        model_label(_model("cytobench.models.seunet_watershed.build_seunet_watershed"))
        == "SEU-Net + watershed"
    )
    assert (
        model_label(_model("cytobench.models.seunet.build_seunet")) is None
    )  # semantic only: not an instance row
    assert model_label(_model(SPARSE)) == "SparseSEU-Net"
    assert model_label(_model(SPARSE, aggregation="multi")) == "SparseSEU-Net (multi-level)"
    with_attention = _model(SPARSE, overlap_head=True, attention_mask=True)
    assert model_label(with_attention) == "SparseSEU-Net (overlap head + attn. mask)"
    assert overlap_label(with_attention) == "+ overlap head + attn. mask"
    assert overlap_label(_model(SPARSE, overlap_head=True)) == "+ overlap head"
    assert overlap_label(_model(SPARSE, aggregation="multi")) is None  # Table 5.9 is the single-level model's
    assert aggregation_label(_model(SPARSE, aggregation="multi")) == "multi-level"
    assert aggregation_label(with_attention) is None


def test_table_is_in_percent_with_the_thesis_rows_and_a_one_sided_test() -> None:
    spec = load_paper("brightfield_instances")["table5_10"]

    def runs(ap: list[float]) -> list[dict[str, float]]:
        return [{f"coco/segm_{c}": (v if c == "AP" else 0.5) for c in COLUMNS} for v in ap]

    groups = {"single-level": runs([0.30, 0.32]), "multi-level": runs([0.40, 0.44])}
    table, result = build_table("table5_10", spec, groups, COLUMNS)
    assert "| multi-level (thesis)" in table and "44.3" in table
    assert "42.0 +- 2.8" in table  # mean 0.42, sample std 0.0283, in %
    assert "31.0 +- 1.4" in table
    p = result["p_values"]["multi-level > single-level"]["p_one_sided"]
    assert 0.0 < p < 0.05  # means 0.42 vs 0.31 with these small spreads
    assert result["ours"]["multi-level"]["mean"]["coco/segm_AP"] == pytest.approx(0.42)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three smoke runs in one folder: SparseSEU-Net single- and multi-level, SEU-Net + watershed."""
    root = tmp_path_factory.mktemp("bf_tables")
    data = root / "data"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ["model.aggregation=single", "model.overlap_head=false", "model.attention_mask=false"]
        for name, overrides in (
            ("sparse_single", ["experiment=sparse_seunet_smoke", *single]),
            ("sparse_multi", ["experiment=sparse_seunet_smoke", "model.aggregation=multi", *single[1:]]),
            ("watershed", ["experiment=seunet_watershed_smoke"]),
        ):
            run(compose_config(overrides, root / "runs" / name, data))
    finally:
        torch.set_num_threads(threads)
    return root


def test_tables_on_smoke_runs(smoke_runs: Path, tmp_path: Path) -> None:
    models = models_from_runs([smoke_runs / "runs"])
    out = tmp_path / "out"
    lines: list[str] = []
    common = {
        "scale": "smoke",
        "device": "cpu",
        "data_dir": smoke_runs / "test_sets",
        "progress": lines.append,
    }
    t7 = reproduce("table5_7", models, out, **common)
    assert set(t7["models"]) == {"SparseSEU-Net", "SparseSEU-Net (multi-level)", "SEU-Net + watershed"}
    for row in t7["ours"].values():
        for value in row["mean"].values():
            assert math.isnan(value) or 0.0 <= value <= 1.0
    assert Path(t7["figure"]).is_file() and (out / "table5_7.md").is_file()
    markdown = (out / "table5_7.md").read_text()
    assert "SparseSEU-Net (thesis)" in markdown and "39.6" in markdown and "(ours, n=1)" in markdown
    assert sum(line.startswith("evaluating") for line in lines) == 3

    t10 = reproduce("table5_10", models, out, figure=False, **common)
    assert set(t10["models"]) == {"single-level", "multi-level"}
    assert sum(line.startswith("evaluating") for line in lines) == 3  # cached: scored for 5.7 already

    t11 = reproduce("table5_11", models, out, figure=False, **common)
    ours = t11["ours"]
    assert set(ours) == {"baseline", "w/ gt mask", "gt matched"}
    assert "coco/segm_AP" in ours["baseline"]["mean"] and "gt_mask/segm_AP" in ours["w/ gt mask"]["mean"]
    assert "scored model: SparseSEU-Net (multi-level)" in t11["notes"]
    saved = json.loads((out / "table5_11.json").read_text())
    assert saved["paper"]["w/ gt mask"][0] == 97.8

    with pytest.raises(Exception, match="none of the"):
        reproduce("table5_9", [m for m in models if "watershed" in m.source], out, figure=False, **common)
