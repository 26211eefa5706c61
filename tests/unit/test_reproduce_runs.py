"""Collecting sweep runs into the DeepACEv2 ablation tables: labels, means, Welch p-values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from cytobench.cli import main as cli_main
from cytobench.errors import BadInputError
from cytobench.reproduce.base import load_paper
from cytobench.reproduce.deepace_tables import build_table
from cytobench.reproduce.runs import collect_runs, runs_with_checkpoint

FULL = {"hnas": True, "tnrl": True, "template": True, "hnas_criterion": "v2"}


def write_run(folder: Path, model: dict, wcr_by_epoch: list[float], best_epoch: int) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, "seed": 0}))
    history = [
        {"epoch": e + 1, "step": 10 * (e + 1), "enum/wcr": w, "enum/recall": 0.9}
        for e, w in enumerate(wcr_by_epoch)
    ]
    summary = {"history": history, "latest": history[-1], "best": {"epoch": best_epoch}}
    (folder / "metrics.json").write_text(json.dumps(summary))


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[Path, list[float], list[float]]:
    eg, soft = [0.70, 0.72, 0.71], [0.66, 0.67, 0.65]
    for i, w in enumerate(eg):
        write_run(tmp_path / f"eg{i}", {**FULL, "postprocess": "eg"}, [0.1, w, 0.2], best_epoch=2)
    for i, w in enumerate(soft):
        write_run(tmp_path / f"soft{i}", {**FULL, "postprocess": "soft"}, [0.1, w], best_epoch=2)
    write_run(
        tmp_path / "base", {"hnas": False, "tnrl": False, "template": False, "postprocess": "nms"}, [0.5], 1
    )
    return tmp_path, eg, soft


def test_table6_groups_by_switches_with_welch_p(sweep) -> None:
    root, eg, soft = sweep
    paper = load_paper("deepace_tables")
    table, result = build_table("table6", collect_runs([root]), paper)
    groups = result["groups"]
    assert set(groups) == {"Single1+HNAS+TNRL+TM[EG]", "Single1+HNAS+TNRL+TM[SOFT]", "Single1"}
    # the best epoch's metrics are used, not the latest
    assert groups["Single1+HNAS+TNRL+TM[EG]"]["enum/wcr"]["mean"] == pytest.approx(100 * np.mean(eg))
    assert groups["Single1+HNAS+TNRL+TM[EG]"]["enum/wcr"]["std"] == pytest.approx(100 * np.std(eg, ddof=1))
    expected_p = stats.ttest_ind(np.array(eg) * 100, np.array(soft) * 100, equal_var=False).pvalue
    assert result["p_values"]["EG vs SOFT"]["enum/wcr"] == pytest.approx(expected_p)
    assert "Single1+HNAS+TNRL+TM[EG] (paper)" in table and "EG vs SOFT p (ours, Welch)" in table


def test_table10_keeps_only_full_models(sweep) -> None:
    root, _, _ = sweep
    paper = load_paper("deepace_tables")
    _, result = build_table("table10", collect_runs([root]), paper)
    assert set(result["groups"]) == {"w EG", "w SOFT"}
    assert result["groups"]["w EG"]["enum/recall"]["n"] == 3


def test_cli_and_empty_folder(sweep, tmp_path: Path, capsys) -> None:
    root, _, _ = sweep
    cli_main(["reproduce", "deepace/table7", "--runs", str(root)])
    captured = capsys.readouterr()
    assert "HNASv2 (ours, n=3)" in captured.out
    # these runs have no checkpoints to re-evaluate: each is kept with its own post-processing, and said so
    assert captured.err.count("no checkpoints/best.pt, kept with its own post-processing only") == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no finished runs"):
        collect_runs([tmp_path / "empty"])


def test_unfinished_runs_are_left_out_and_rows_follow_the_paper(tmp_path: Path, capsys) -> None:
    for i in range(2):
        write_run(tmp_path / f"eg{i}", {**FULL, "postprocess": "eg"}, [0.1, 0.7], best_epoch=2)
    write_run(tmp_path / "base", {"hnas": False, "tnrl": False, "template": False}, [0.5], 1)
    write_run(tmp_path / "v1", {**FULL, "hnas_criterion": "v1", "postprocess": "eg"}, [0.6], 1)  # Table 7's
    # a run still training: metrics.json is a per-epoch snapshot (no "best"), epoch 1 of 5
    folder = tmp_path / "training"
    write_run(folder, {**FULL, "postprocess": "eg"}, [0.9], best_epoch=1)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "trainer": {"max_epochs": 5}}))
    summary = json.loads((folder / "metrics.json").read_text())
    del summary["best"]
    (folder / "metrics.json").write_text(json.dumps({**summary, "epoch": 1}))

    runs = collect_runs([tmp_path])
    assert sorted(r.path.name for r in runs) == ["base", "eg0", "eg1", "v1"]
    err = capsys.readouterr().err
    assert "left out 1 unfinished run(s)" in err and "--checkpoint" not in err  # tables from metrics alone
    assert runs_with_checkpoint([tmp_path]) == []  # no run has a checkpoint; the unfinished one gets a hint
    assert "training; to score one as it is: --checkpoint RUN/checkpoints/best.pt" in capsys.readouterr().err
    paper = load_paper("deepace_tables")
    table, result = build_table("table6", runs, paper)
    assert list(result["groups"]) == ["Single1", "Single1+HNAS+TNRL+TM[EG]"]  # paper order, not path order
    # the HNASv1 run is not a TM row
    assert result["groups"]["Single1+HNAS+TNRL+TM[EG]"]["enum/wcr"]["n"] == 2


def test_table_states_the_scale_of_its_runs(sweep, capsys) -> None:
    root, _, _ = sweep
    cli_main(["reproduce", "deepace/table6", "--runs", str(root), "--no-reevaluate"])
    assert "Scale (ours): ? px, 46 chromosomes/cell, ? images, ?, ? epochs" in capsys.readouterr().out


def test_out_writes_the_table_and_its_numbers(sweep, tmp_path: Path, capsys) -> None:
    root, _, _ = sweep
    out = tmp_path / "tables" / "t10.md"
    cli_main(["reproduce", "deepace/table10", "--runs", str(root), "--no-reevaluate", "--out", str(out)])
    printed = capsys.readouterr().out
    text = out.read_text()
    assert "w EG (ours, n=3)" in text and text.rstrip().endswith("? epochs")
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["groups"]["w EG"]["enum/recall"]["n"] == 3
    assert numbers["table"] in text and numbers["table"] in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["t10.json", "t10.md"]
