"""DeepACEv2 test-set evaluation: evaluate_checkpoint per post-processing, Tables 2 / 5 end to end,
the baseline experiments (compose and smoke-train)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from cytobench.errors import BadInputError
from cytobench.io.files import save_atomic
from cytobench.io.images import read_image_tensor
from cytobench.reproduce import deepace_test
from cytobench.reproduce.base import held_out_test_set, load_test_data
from cytobench.reproduce.deepace_eval import evaluate_checkpoint, evaluate_checkpoint_modes, score_predictions
from cytobench.reproduce.deepace_figures import pick_examples
from cytobench.reproduce.deepace_test import format_comparison
from tests.conftest import compose_config

# the data and model sizes of experiment=deepace_smoke
SMOKE_SIZES = [
    "trainer=smoke",
    "data.n_images=6",
    "data.val_fraction=0.34",
    "data.size=[256,192]",
    "data.image_size=192",
    "data.image_size_max=256",
    "model.anchor_sizes=[8,12,16,24]",
    "model.rpn_pre_nms_top_n_train=600",
    "model.rpn_post_nms_top_n_train=200",
    "model.rpn_pre_nms_top_n_test=600",
    "model.rpn_post_nms_top_n_test=100",
    "model.box_batch_size_per_image=128",
    "trainer.optimizer.lr=0.005",
]
SIM = {"_target_": "hydra.utils.get_method", "path": "cytobench.simulate.metaphase.simulate_metaphase"}
DATA_CONFIG = {
    "size": [256, 192],
    "sim_seed": 0,
    "prepare": {"simulator": SIM, "out_dir": "unused", "n_images": 6, "size": [256, 192], "seed": 0},
}


def _tiny_checkpoint(path: Path, template: bool, seed: int) -> Path:
    """An untrained ResNet-18 DeepACE at the smoke sizes, saved like a training checkpoint."""
    config = {
        "_target_": "cytobench.models.deepace.build_deepace",
        "backbone": "resnet18",
        "min_size": 192,
        "max_size": 256,
        "anchor_sizes": [8, 12, 16, 24],
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 60,
        "image_mean": [0.81] * 3,
        "image_std": [0.09] * 3,
        "hnas": template,
        "template": template,
        "tnrl": template,
        "postprocess": "eg" if template else "nms",
    }
    torch.manual_seed(seed)
    model = instantiate(config, num_classes=2)
    state = {
        "model": model.state_dict(),
        "model_config": config,
        "data_config": DATA_CONFIG,
        "num_classes": 2,
    }
    return save_atomic(state, path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deepace_test")
    sets = root / "data" / "deepace_test"  # where `--data-dir root/data` keeps test sets
    ann, images, _ = held_out_test_set(DATA_CONFIG, 3, seed=5, cache_dir=sets)
    return {
        "deepace": _tiny_checkpoint(root / "deepace.pt", template=True, seed=0),
        "baseline": _tiny_checkpoint(root / "baseline.pt", template=False, seed=1),
        "ann": ann,
        "images": images,
        "root": root,
        "sets": sets,
    }


# ------------------------------------------------------------------------------------------ test set
def test_held_out_test_set_is_held_out_and_cached(tiny: dict[str, Path]) -> None:
    ann, images = tiny["ann"], tiny["images"]
    gt = json.loads(ann.read_text())
    assert len(gt["images"]) == 3 and {(i["width"], i["height"]) for i in gt["images"]} == {(256, 192)}
    assert ann.parent.name.startswith("test_256x192_n3_seed5_")
    before = ann.stat().st_mtime_ns
    assert held_out_test_set(DATA_CONFIG, 3, seed=5, cache_dir=tiny["sets"]) == (ann, images, 5)
    assert ann.stat().st_mtime_ns == before  # reused, not simulated again
    # the training images (seed 0) differ from the test images (seed 5)
    other = {**DATA_CONFIG, "prepare": {**DATA_CONFIG["prepare"], "seed": 99}}  # a config trained on seed 99
    train_ann, train_images, _ = held_out_test_set(other, 1, seed=0, cache_dir=tiny["sets"])
    first_train = read_image_tensor(
        train_images / json.loads(train_ann.read_text())["images"][0]["file_name"]
    )
    assert not torch.equal(first_train, read_image_tensor(images / gt["images"][0]["file_name"]))
    with pytest.raises(BadInputError, match="--seed: 0 is the training data's simulation seed"):
        held_out_test_set(DATA_CONFIG, 3, seed=0, cache_dir=tiny["sets"])


# ------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def deepace_results(tiny: dict[str, Path]) -> dict[str, tuple[dict[str, float], list[dict]]]:
    return evaluate_checkpoint_modes(tiny["deepace"], tiny["ann"], tiny["images"], ["nms", "soft", "eg"])


@pytest.mark.slow
def test_evaluate_checkpoint_each_postprocess_equals_full_forward(
    tiny: dict[str, Path], deepace_results: dict[str, tuple[dict[str, float], list[dict]]]
) -> None:
    from torchvision.ops import box_iou

    from cytobench.engine.predict import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(tiny["deepace"], torch.device("cpu"))
    targets, paths = load_test_data(tiny["ann"], tiny["images"])
    images = [read_image_tensor(p) for p in paths]
    for mode, (metrics, predictions) in deepace_results.items():
        model.roi_heads.postprocess = mode
        with torch.no_grad():
            full = model(images)
        for ours, ref, target in zip(predictions, full, targets):
            np.testing.assert_allclose(ours["boxes"], ref["boxes"].numpy(), atol=1e-5)
            np.testing.assert_allclose(ours["scores"], ref["scores"].numpy(), atol=1e-6)
            assert ours["image_id"] == target["image_id"] and ours["embeddings"].shape == ours["scores"].shape
        assert metrics == pytest.approx(score_predictions(targets, predictions), nan_ok=True)
        assert metrics["enum/n_images"] == 3 and metrics["enum/tp"] + metrics["enum/fn"] > 3 * 20
    nms = deepace_results["nms"][1][0]
    assert len(nms["scores"]) > 1
    # hard NMS leaves no pair above its IoU threshold (0.5); Soft-NMS only decays scores, never raises them
    iou = box_iou(torch.from_numpy(nms["boxes"]), torch.from_numpy(nms["boxes"])).fill_diagonal_(0)
    assert iou.max() <= 0.5 + 1e-6
    assert deepace_results["soft"][1][0]["scores"].max() <= nms["scores"].max() + 1e-6
    # None keeps the checkpoint's own post-processing (EG here)
    own, _ = evaluate_checkpoint(tiny["deepace"], tiny["ann"], tiny["images"])
    assert own == pytest.approx(deepace_results["eg"][0], nan_ok=True)


def test_evaluate_checkpoint_rejects_bad_modes(tiny: dict[str, Path]) -> None:
    with pytest.raises(BadInputError, match="baseline.pt: postprocess 'eg' needs the Template branch"):
        evaluate_checkpoint(tiny["baseline"], tiny["ann"], tiny["images"], postprocess="eg")
    with pytest.raises(BadInputError, match="unknown post-processing 'greedy'"):
        evaluate_checkpoint(tiny["deepace"], tiny["ann"], tiny["images"], postprocess="greedy")


# ------------------------------------------------------------------------------------------ table helpers
def test_format_comparison_percent_beside_paper() -> None:
    spec = {"columns": ["wcr", "mr2"], "rows": {"A": [61.21, 12.13], "B": [1.0, 2.0]}}
    table = format_comparison(spec, {"ours A": {"enum/wcr": 0.5, "enum/mr2": 0.125}}, {"A": "ours A"})
    lines = table.splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["A (paper)", "A (ours)", "B (paper)"]
    assert [c.strip() for c in lines[0].split("|")[2:4]] == ["WCR", "MR^-2"]
    assert [c.strip() for c in lines[3].split("|")[2:4]] == ["50.00", "12.50"]


def test_table5_pairs_fall_back_without_eg() -> None:
    rows = {r: {} for r, _, _ in deepace_test.ROWS}
    assert deepace_test.table5_pairs(rows) == deepace_test.TABLE5_ROWS
    del rows["DeepACEv2 (HNAS+TNRL+TM[EG])"], rows["Faster R-CNN (ResNet-101+FPN)"]
    assert deepace_test.table5_pairs(rows) == {"DeepACEv2": "DeepACEv2 (HNAS+TNRL+TM[SOFT])"}


def test_pick_examples_prefers_images_the_second_model_fixes() -> None:
    box = np.array([[0, 0, 10, 10]], float)
    targets = [{"boxes": box}] * 3
    hit = {"boxes": box, "scores": np.array([0.9])}
    miss = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    # image 1: fixed by the second model; images 0 and 2 tie (no gain), the harder one (2) goes first
    assert pick_examples(targets, [hit, miss, miss], [hit, hit, miss], n=2) == [1, 2]


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_table2_and_table5_end_to_end(
    tiny: dict[str, Path],
    deepace_results: dict[str, tuple[dict[str, float], list[dict]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = [
        "--deepace", str(tiny["deepace"]), "--baseline", str(tiny["baseline"]), "--scale", "smoke",
        "--n-test", "3", "--seed", "5", "--out", str(out), "--data-dir", str(tiny["root"] / "data"),
    ]  # fmt: skip
    import argparse

    parser = argparse.ArgumentParser()
    deepace_test.add_arguments(parser)
    result = deepace_test.table2(parser.parse_args(argv))
    assert result["test_set"]["ann_file"] == str(tiny["ann"])  # the cached set of the fixture
    rows = result["rows"]
    assert list(rows) == [r for r, _, _ in deepace_test.ROWS]
    for (row, role, mode), metrics in zip(deepace_test.ROWS, rows.values()):
        if role == "deepace":
            assert metrics == pytest.approx(deepace_results[mode][0], nan_ok=True), row
        else:  # another model on the same images
            assert (
                metrics["enum/tp"] + metrics["enum/fn"]
                == deepace_results["nms"][0]["enum/tp"] + deepace_results["nms"][0]["enum/fn"]
            )
    assert result["baseline_modules"] == {"hnas": False, "template": False, "tnrl": False}
    printed = capsys.readouterr().out
    assert "| DeepACEv2 (HNAS+TNRL+TM[EG]) (paper)" in printed and "(ours)" in printed
    for name in ("table2.md", "table2.json", "table5.md", "table5.json", *deepace_test.FIGURES):
        assert (out / name).is_file(), name
    t5 = json.loads((out / "table5.json").read_text())
    assert set(t5["rows"]) == set(deepace_test.TABLE5_ROWS.values())
    assert t5["paper_rows"] == deepace_test.TABLE5_ROWS
    assert (
        t5["rows"]["Faster R-CNN (ResNet-101+FPN)"]["enum/overlap_n"]
        == rows[deepace_test.ROWS[0][0]]["enum/overlap_n"]
    )
    # table5 reuses the cached evaluation: nothing is evaluated again
    monkeypatch.setattr(deepace_test, "evaluate_checkpoint_modes", _fail)
    result5 = deepace_test.table5(parser.parse_args(argv))
    assert set(result5["rows"]) == set(rows)  # read back from the cache: NaN again
    for row, metrics in rows.items():
        assert result5["rows"][row] == pytest.approx(metrics, nan_ok=True), row
    assert "| Faster R-CNN (ours)" in capsys.readouterr().out


def _fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("evaluated again despite the cache")


@pytest.mark.slow
def test_table2_over_repeats(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "--deepace", str(tiny["deepace"]), str(tiny["deepace"]), "--baseline", str(tiny["baseline"]),
        "--scale", "smoke", "--n-test", "3", "--seed", "5", "--out", str(out),
        "--data-dir", str(tiny["root"] / "data"),
    ]  # fmt: skip
    import argparse

    parser = argparse.ArgumentParser()
    deepace_test.add_arguments(parser)
    result = deepace_test.table2(parser.parse_args(argv))
    deepace_rows = [row for row, role, _ in deepace_test.ROWS if role == "deepace"]
    assert {row: len(runs) for row, runs in result["repeats"].items()} == {
        row: 2 if row in deepace_rows else 1 for row, _, _ in deepace_test.ROWS
    }
    for row in deepace_rows:  # the same weights twice: identical metrics, zero spread
        assert result["repeats"][row][0] == pytest.approx(result["repeats"][row][1], nan_ok=True)
        assert result["rows"][row] == pytest.approx(result["repeats"][row][0], nan_ok=True)
        for key, std in result["std"][row].items():
            assert std == 0 or (np.isnan(std) and np.isnan(result["rows"][row][key])), key
    printed = capsys.readouterr().out
    assert "| DeepACEv2 (HNAS+TNRL+TM[EG]) (ours, n=2) " in printed and " +- 0.00 " in printed
    assert "| Faster R-CNN (ResNet-101+FPN) (ours) " in printed  # one baseline checkpoint: plain values
    # every EG - SOFT difference is 0: paired_ttest has no variance to test and gives NaN
    label = deepace_test.P_LABELS["table2"]
    p_row = next(line for line in printed.splitlines() if line.startswith(f"| {label}"))
    assert [c.strip() for c in p_row.split("|")[2:-1]] == ["nan"] * 6
    paired = result["p_values"]["table2"][label]
    assert list(paired) == [f"enum/{c}" for c in ("wcr", "aer", "acc", "f1", "map", "mr2")]
    assert all(np.isnan(p) for p in paired.values())
    assert result["p_values"]["table5"] == {}  # Welch needs two baseline repeats too
    assert label in json.loads((out / "table2.json").read_text())["p_values"]
    assert (out / deepace_test.FIG7).is_file() and deepace_test.FIG7 in result["figures"]
    # table5 reuses the cached repeats
    monkeypatch.setattr(deepace_test, "evaluate_checkpoint_modes", _fail)
    result5 = deepace_test.table5(parser.parse_args(argv))
    for row, runs in result["repeats"].items():  # read back from the cache: NaN again
        assert [pytest.approx(r, nan_ok=True) for r in runs] == result5["repeats"][row]
    assert "| DeepACEv2 (ours, n=2) " in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize(
    ("name", "post"), [("deepace_baseline", "nms"), ("deepace_baseline_softnms", "soft")]
)
def test_baseline_experiments_compose(name: str, post: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config([f"experiment={name}"], tmp_path, data_dir)
    ref = compose_config(["experiment=deepace_cpu"], tmp_path, data_dir)
    assert cfg.model.fpn_level == "P3" and cfg.model.postprocess == post
    assert not (cfg.model.hnas or cfg.model.template or cfg.model.tnrl)
    assert cfg.data.dir == ref.data.dir and cfg.trainer.max_epochs == ref.trainer.max_epochs
    for key in ("backbone", "anchor_sizes", "rpn_post_nms_top_n_test"):
        assert cfg.model[key] == ref.model[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepace_baseline", "deepace_baseline_softnms"])
def test_baseline_experiments_smoke_train(name: str, tmp_path: Path, data_dir: Path) -> None:
    from cytobench.train import run

    cfg = compose_config([f"experiment={name}", *SMOKE_SIZES, "trainer.max_epochs=1"], tmp_path, data_dir)
    run(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert (
        ckpt["model_config"]["postprocess"] == cfg.model.postprocess and not ckpt["model_config"]["template"]
    )
    assert "enum/wcr" in json.loads((tmp_path / "metrics.json").read_text())["latest"]


def test_cli_bad_checkpoints_are_one_line_errors(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    from cytobench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "deepace/table2", "--deepace", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip() == f"BadInputError: {tmp_path / 'none.pt'}: checkpoint file not found"
    )
    foreign = save_atomic({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(SystemExit):
        main(
            [
                "reproduce",
                "deepace/table5",
                "--deepace",
                str(tiny["deepace"]),
                "--baseline",
                str(foreign),
                "--out",
                str(tmp_path),
            ]
        )
    assert "foreign.pt: not a cytobench training checkpoint" in capsys.readouterr().err
