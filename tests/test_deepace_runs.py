"""DeepACEv2 end to end: the ablation sweep composes, a tiny sweep trains and its table is collected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cytobench.reproduce.deepace_tables import table10
from tests.conftest import CONF_DIR, compose_config, run_train_py

ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))


def test_paper_scale_experiment_points_cpu_users_to_the_cpu_config(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(["experiment=deepace"], tmp_path, data_dir)
    assert "experiment=deepace_cpu" in cfg.cpu_note
    assert compose_config(["experiment=deepace_cpu"], tmp_path, data_dir).cpu_note is None
    assert "trainer.optimizer.lr=0.005" in cfg.from_scratch_note  # lr 0.02 assumes ImageNet weights


def test_wcr_scale_ablation_keeps_the_sweep_and_sets_its_data(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(["experiment=deepace_ablation_wcr"], tmp_path, data_dir)
    assert sorted(cfg.hydra.sweeper.params["+ablation"].split(",")) == ABLATIONS
    assert cfg.data.prepare.n_chromosomes == 10 and cfg.data.prepare.scale == 96
    assert "c10_s96" in cfg.data.dir  # its own cache folder, never the 46-chromosome set's


def test_ablation_sweep_definition(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(["experiment=deepace_ablation"], tmp_path, data_dir)
    params = cfg.hydra.sweeper.params
    assert sorted(params["+ablation"].split(",")) == ABLATIONS
    assert params.seed == "range(0,10)"
    assert cfg.logger._target_.endswith("WandbLogger")


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_ablation_composes(name: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config(["experiment=deepace_smoke", f"+ablation={name}"], tmp_path, data_dir)
    if cfg.model.postprocess == "eg":
        assert cfg.model.template, "EG-NMS needs the template embeddings"


@pytest.mark.slow
def test_tiny_sweep_then_table10(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_train_py(
        [
            "-m",
            "experiment=deepace_smoke",
            "+ablation=hnas_tnrl_tm",
            "seed=0,1",
            "trainer.max_epochs=1",
            f"hydra.sweep.dir={sweep}",
            "cpu_note='use a smaller config'",
            "from_scratch_note='lower the lr'",
        ],
        data_dir,
        tmp_path,
    )
    assert proc.stderr.count("note: training on CPU. use a smaller config") == 2  # once per job
    assert proc.stderr.count("note: no pretrained weights. lower the lr") == 2
    # every run evaluated the paper's six metrics (fractions, as the evaluator reports them)
    for metrics_file in sorted(sweep.glob("*/metrics.json")):
        latest = json.loads(metrics_file.read_text())["latest"]
        for key in ("wcr", "aer", "acc", "f1", "map", "mr2"):
            assert 0.0 <= latest[f"enum/{key}"] <= 1.0, (metrics_file, key)
    # two trained models (seeds); the table re-evaluates each under SOFT and EG: paired groups
    result = table10(type("Args", (), {"runs": [str(sweep)], "out": str(tmp_path / "t10.md")})())
    assert {g: v["enum/precision"]["n"] for g, v in result["groups"].items()} == {"w SOFT": 2, "w EG": 2}
    assert "enum/recall" in result["p_values"]["EG vs SOFT"]
    assert set(result["p_values"]["EG vs SOFT (paired)"]) == {"enum/precision", "enum/recall"}
    assert (tmp_path / "t10.md").read_text().count("(ours, n=2)") == 2
    caches = sorted(sweep.rglob("postprocess_metrics.json"))
    assert len(caches) == 2  # one re-evaluation per trained run, reused by later tables
    # the cached EG numbers are the run's own validation (same weights, same post-processing)
    for cache in caches:
        own = json.loads((cache.parent / "metrics.json").read_text())["latest"]
        eg = json.loads(cache.read_text())["metrics"]["eg"]
        assert eg["enum/f1"] == pytest.approx(own["enum/f1"], abs=1e-9)
