"""The reproduce base: paper numbers as package data, the held-out test-set reader, the loop, the report."""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.errors import BadInputError, CytobenchError
from cytobench.evaluation.base import Evaluator
from cytobench.reproduce import base
from cytobench.reproduce.base import (
    TestSet,
    format_beside_paper,
    held_out_test_set,
    in_batches,
    load_paper,
    run_on_test_set,
    simulator_settings,
    write_report,
)

TOY = "cytobench.simulate.toy.simulate_toy"
ROOT = Path(__file__).resolve().parents[2]
PAPERS = Path(base.__file__).parent / "papers"


def _config(**prepare: object) -> dict:
    """A data config like a training checkpoint's (Hydra's ``prepare`` node of ensure_simulated)."""
    node = {
        "_target_": "cytobench.data.prepare.ensure_simulated",
        "_convert_": "all",
        "simulator": {"_target_": "hydra.utils.get_method", "path": TOY},
        "out_dir": "/somewhere/train",
        "n_images": 8,
        "size": [48, 32],
        "seed": 3,
        "val_fraction": 0.25,
        **prepare,
    }
    return {"size": [48, 32], "sim_seed": 3, "prepare": node}


# ------------------------------------------------------------------------------------------ paper numbers
def test_every_table_module_finds_its_paper_numbers_in_the_package() -> None:
    from cytobench.reproduce import deepace_test, fish_table1, qd_table1

    assert qd_table1.load_paper_table()["rows"]["TrackPy"][0.75] == [0.06, 0.42, 0.73]
    assert fish_table1.load_paper_table()["metrics"]["mAP50"] == 0.991
    assert deepace_test.load_paper_tables()["table2"]["columns"][0] == "wcr"
    assert set(load_paper("deepace_tables")) == {"table2", "table5", "table6", "table7", "table10"}
    # one source of truth: no copy is left in experiments/
    assert not list((ROOT / "experiments").rglob("paper_table*.yaml"))
    with pytest.raises(CytobenchError, match="no paper numbers named 'nope'"):
        load_paper("nope")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_package_data_ships_every_paper_file() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cytobench.reproduce"]
    files = sorted(p.relative_to(PAPERS.parent).as_posix() for p in PAPERS.glob("*"))
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files


# ------------------------------------------------------------------------------------------ test-set reader
def test_simulator_settings_keep_only_image_settings() -> None:
    simulator, settings, seed = simulator_settings(_config(max_objects=3))
    assert simulator == TOY and seed == 3
    assert settings == {"size": [48, 32], "max_objects": 3}  # no _target_, out_dir, n_images, seed, split
    # size from data.size when prepare has none; one side stays an int; a plain string simulator path
    config = _config()
    del config["prepare"]["size"]
    assert simulator_settings(config)[1] == {"size": [48, 32]}
    assert simulator_settings({"prepare": {"simulator": TOY, "size": 64.0}})[1:] == ({"size": 64}, None)
    # the training seed falls back to data.sim_seed
    assert simulator_settings({"sim_seed": 7, "prepare": {"simulator": TOY, "size": 64}})[2] == 7


def test_simulator_settings_faults_are_one_line() -> None:
    with pytest.raises(BadInputError, match="names no simulator"):
        simulator_settings({"prepare": {"size": 64}})
    assert simulator_settings({"prepare": {"size": 64}}, default_simulator=TOY)[0] == TOY
    with pytest.raises(BadInputError, match="names no image size"):
        simulator_settings({"prepare": {"simulator": TOY}})


def test_held_out_test_set_is_simulated_once_with_another_seed(tmp_path: Path) -> None:
    test_set = held_out_test_set(_config(), 2, cache_dir=tmp_path)
    assert isinstance(test_set, TestSet) and test_set.seed == 3 + base.TEST_SEED_OFFSET
    folder = test_set.ann_file.parent
    assert folder.parent == tmp_path and folder.name.startswith("test_48x32_n2_seed10003_")
    gt = json.loads(test_set.ann_file.read_text())
    assert [(i["width"], i["height"]) for i in gt["images"]] == [(48, 32), (48, 32)]
    targets, paths = test_set.load_targets()
    assert len(targets) == 2 and all(p.parent == test_set.images_dir and p.is_file() for p in paths)
    before = test_set.ann_file.stat().st_mtime_ns
    assert held_out_test_set(_config(), 2, cache_dir=tmp_path) == test_set  # cached
    assert test_set.ann_file.stat().st_mtime_ns == before
    # other settings, another folder (the name hashes every setting); the training seed is refused
    other = held_out_test_set(_config(max_objects=2), 2, cache_dir=tmp_path)
    assert other.ann_file.parent != folder and other.ann_file.parent.name.startswith(
        "test_48x32_n2_seed10003_"
    )
    with pytest.raises(BadInputError, match="--seed: 3 is the training data's simulation seed"):
        held_out_test_set(_config(), 2, seed=3, cache_dir=tmp_path)
    with pytest.raises(CytobenchError, match="at least one image"):
        held_out_test_set(_config(), 0, cache_dir=tmp_path)


def test_held_out_test_set_defaults_to_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYTOBENCH_DATA_DIR", str(tmp_path))
    test_set = held_out_test_set(_config(), 1, seed=11)
    assert test_set.ann_file.parent.parent == tmp_path / "test_sets" and test_set.seed == 11


# ------------------------------------------------------------------------------------------ loop
class _CountBoxes(Evaluator):
    """Records image ids, ground-truth box counts and image sizes it was given."""

    def reset(self) -> None:
        self.seen: list[tuple[int, int, tuple[int, ...]]] = []

    def process_image(self, target, prediction) -> None:
        self.seen.append((int(target["image_id"]), len(target["boxes"]), tuple(prediction["size"])))

    def compute(self) -> dict[str, float]:
        return {"n": float(len(self.seen))}


class _SizeModel(torch.nn.Module):
    """Predicts nothing but the size of each image (the loop's contract: list in, list out)."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{"size": torch.tensor(img.shape), "boxes": torch.zeros((0, 4))} for img in images]


def test_run_on_test_set_feeds_the_loop_in_file_order(tmp_path: Path) -> None:
    test_set = held_out_test_set(_config(), 3, cache_dir=tmp_path)
    gt = json.loads(test_set.ann_file.read_text())
    evaluator = _CountBoxes()
    assert run_on_test_set(_SizeModel(), test_set, evaluator, batch_size=2) == {"n": 3.0}
    counts = [sum(a["image_id"] == img["id"] for a in gt["annotations"]) for img in gt["images"]]
    assert evaluator.seen == [(img["id"], n, (3, 32, 48)) for img, n in zip(gt["images"], counts)]
    run_on_test_set(_SizeModel(), test_set, evaluator, with_targets=False)  # images only: no ground truth
    assert [n for _, n, _ in evaluator.seen] == [0, 0, 0]


def test_in_batches_keeps_order_and_pairs() -> None:
    images = torch.arange(5.0).reshape(5, 1, 1, 1)
    targets = [{"image_id": i} for i in range(5)]
    batches = in_batches(images, targets, 2)
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert [float(img) for imgs, _ in batches for img in imgs] == [0, 1, 2, 3, 4]
    assert [t["image_id"] for _, ts in batches for t in ts] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="5 images but 4 targets"):
        in_batches(images, targets[:4], 2)


# ------------------------------------------------------------------------------------------ report
def test_format_beside_paper_paper_rows_first_then_ours() -> None:
    table = format_beside_paper(["method", "a", "b"], {"X": [0.5, 1.0]}, {"Y": [0.123, math.nan]})
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["method", "a", "b"]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [["X (paper)", "0.50", "1.00"], ["Y (ours)", "0.12", "nan"]]


def test_format_beside_paper_pairs_repeats_and_extra_rows() -> None:
    paper = {"A": ["1.00"], "B": ["2.00"], "C": ["3.00"]}
    ours = {"mine A": ["0.50 +- 0.10"], "mine C": ["0.70"], "unpaired": ["9"]}
    table = format_beside_paper(
        ["method", "x"],
        paper,
        ours,
        pairs={"A": "mine A", "B": "missing", "C": "mine C"},
        repeats={"mine A": 3},
        extra=[["p", "0.05"]],
    )
    labels = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert labels == ["A (paper)", "A (ours, n=3)", "B (paper)", "C (paper)", "C (ours)", "p"]
    assert "0.50 +- 0.10" in table and "unpaired" not in table


def test_write_report_writes_markdown_and_json_atomically(tmp_path: Path) -> None:
    result = {"auc": np.float64(0.25), "n": np.int64(3), "undefined": float("nan"), "table": "| t |"}
    written = write_report(tmp_path / "out", "table1", "| t |", result)
    assert written == [tmp_path / "out" / "table1.md", tmp_path / "out" / "table1.json"]
    assert (tmp_path / "out" / "table1.md").read_text() == "| t |\n"
    data = json.loads((tmp_path / "out" / "table1.json").read_text())
    assert data["auc"] == 0.25 and data["n"] == 3 and data["undefined"] is None  # standard JSON: null
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "table1.json",
        "table1.md",
    ]  # no temp files
    assert write_report(tmp_path, "only", "x") == [tmp_path / "only.md"]


def test_check_scale_is_a_one_line_error() -> None:
    assert base.check_scale("cpu", {"cpu": 3}) == 3
    with pytest.raises(CytobenchError, match=r"unknown scale 'huge': use one of \['cpu', 'smoke'\]"):
        base.check_scale("huge", {"smoke": 1, "cpu": 3})


def test_checkpoint_configs_of_torch_and_yolo_checkpoints(tmp_path: Path) -> None:
    """Every table reads a run's configs the same way, from a torch run's checkpoint or a YOLO run's."""
    from cytobench.models.yolo_checkpoint import CKPT_KEY, YOLO_FORMAT

    model, data = {"_target_": "m.build"}, {"size": 256}
    torch.save({"model": {}, "model_config": model, "data_config": data}, tmp_path / "torch.pt")
    torch.save(
        {"format": YOLO_FORMAT, CKPT_KEY: {"model_config": model, "data_config": data}}, tmp_path / "yolo.pt"
    )
    for name in ("torch.pt", "yolo.pt"):
        assert base.checkpoint_configs(tmp_path / name) == (model, data)
    torch.save({"format": YOLO_FORMAT, CKPT_KEY: {}}, tmp_path / "bare.pt")  # a YOLO file of no cytobench run
    with pytest.raises(BadInputError, match="bare.pt: not a cytobench training checkpoint"):
        base.checkpoint_configs(tmp_path / "bare.pt")
