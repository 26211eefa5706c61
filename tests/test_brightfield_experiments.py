"""SEU-Net brightfield experiments: the configs hold the thesis' recipe and the sweeps its variants, the data
sets check the contract up front, seunet_smoke trains and writes every head's metrics, and
``cytobench reproduce brightfield/table5_K`` scores tiny checkpoints beside the thesis' numbers (the head
metrics themselves are hand-checked in tests/unit/test_eval_head_pixel.py)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from scipy import stats

from cytobench.cli import main as cytobench
from cytobench.data.brightfield_sets import BrightfieldSets, brightfield_dataset, brightfield_training_set
from cytobench.errors import BadInputError
from cytobench.evaluation.head_pixel import HEAD_METRICS
from cytobench.reproduce import REPRODUCTIONS, load_reproduction
from cytobench.reproduce.base import load_paper
from cytobench.reproduce.brightfield_eval import TrainedModel
from cytobench.reproduce.brightfield_labels import attention_label, heads_label, training_set_label
from cytobench.reproduce.brightfield_tables import (
    build_table,
    one_sided_welch,
    pair_training_rows,
    welch_cell,
)
from cytobench.simulate.brightfield import simulate_brightfield
from cytobench.train import run
from tests.conftest import CONF_DIR, ROOT, compose_config

SEUNET_EXPERIMENTS = (
    sorted(  # the pixel experiments; seunet_watershed* is an instance baseline (its own tests)
        p.stem for p in (CONF_DIR / "experiment").glob("seunet*.yaml") if "watershed" not in p.stem
    )
)
ALL_HEADS = ("cytoplasm", "nuclei", "border", "background", "overlap")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One thread: on a busy 2-core machine two torch threads wait on each other (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def job_config(overrides: list[str], tmp_path: Path, data_dir: Path) -> dict[str, Any]:
    cfg = compose_config(overrides, tmp_path, data_dir)
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def sweep_values(name: str, key: str, tmp_path: Path, data_dir: Path) -> list[Any]:
    """The values an experiment's sweep gives ``key`` (parsed as `python train.py -m` parses them)."""
    params = compose_config([f"experiment={name}"], tmp_path, data_dir).hydra.sweeper.params
    override = OverridesParser.create().parse_overrides([f"{key}={params[key]}"])[0]
    return list(override.sweep_iterator())


def trained(heads: list[str], decoder: str = "decoupled", **model: Any) -> TrainedModel:
    """A TrainedModel with only the configs the table labels read."""
    data = {"train_set": model.pop("train_set", "real"), "synthetic_dir": model.pop("synthetic_dir", None)}
    return TrainedModel(Path("x.pt"), {"heads": heads, "decoder": decoder, **model}, data, "x")


# ------------------------------------------------------------------------------------------------ configs
def test_every_seunet_experiment_is_listed() -> None:
    assert SEUNET_EXPERIMENTS == [
        "seunet",
        "seunet_cpu",
        "seunet_heads",
        "seunet_overlap",
        "seunet_smoke",
        "seunet_synthetic",
    ]


@pytest.mark.parametrize("name", SEUNET_EXPERIMENTS)
def test_seunet_experiment_scores_its_monitor(name: str, tmp_path: Path, data_dir: Path) -> None:
    job = job_config([f"experiment={name}"], tmp_path, data_dir)
    assert job["model"]["_target_"] == "cytobench.models.seunet.build_seunet"
    assert job["evaluator"]["_target_"] == "cytobench.evaluation.HeadPixelEvaluator"
    monitor_head = job["trainer"]["monitor"].removeprefix("pix/").rsplit("_", 1)[0]
    assert monitor_head in job["model"]["heads"], f"{name}: monitors a head it does not have"
    assert job["model"]["in_channels"] == len(job["data"]["planes"]) == 2


def test_paper_scale_is_the_thesis_recipe(tmp_path: Path, data_dir: Path) -> None:
    job = job_config(["experiment=seunet"], tmp_path, data_dir)
    data, model, trainer = job["data"], job["model"], job["trainer"]
    assert trainer["optimizer"] == {**trainer["optimizer"], "name": "adamw", "lr": 1e-5, "weight_decay": 1e-5}
    assert trainer["max_epochs"] == 1000 and data["batch_size"] == 4
    assert (data["size"], data["resize"], data["crop"]) == (1080, 1024, 512)
    assert (model["window"], model["window_overlap"]) == (512, 256)
    n, val = data["n_images"], round(data["n_images"] * data["val_fraction"])
    assert (n - val, val) == (18, 5)  # the thesis' 18 train / 5 val (+ 5 simulated test images)
    assert (
        model["heads"] == ["cytoplasm", "nuclei", "border", "background"] and model["decoder"] == "decoupled"
    )


def test_sweeps_train_the_thesis_rows(tmp_path: Path, data_dir: Path) -> None:
    heads = sweep_values("seunet_heads", "model.heads", tmp_path, data_dir)
    rows = [heads_label(trained(h)) for h in heads]
    assert rows == [*load_paper("brightfield")["table5_1"]["rows"]]
    keys = sweep_values("seunet_overlap", "model.attention_key", tmp_path, data_dir)
    overlap = job_config(["experiment=seunet_overlap"], tmp_path, data_dir)["model"]
    rows = [
        attention_label(trained(overlap["heads"], overlap_loss=overlap["overlap_loss"], attention_key=k))
        for k in keys
    ]
    assert rows == [f"SEU-Net + attn. map (v{k})" for k in range(5)]
    plain = trained(overlap["heads"], overlap_loss="bce", attention_key=None)  # the README's baseline command
    assert attention_label(plain) == "SEU-Net"
    assert sweep_values("seunet_heads", "seed", tmp_path, data_dir) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ data sets
@pytest.fixture(scope="module")
def bf_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bf") / "real"
    simulate_brightfield(6, folder, size=160, seed=0, val_fraction=0.34)
    return folder


def edited_copy(source: Path, target: Path, edit: Any) -> Path:
    """``source``'s train.json edited by ``edit(coco)`` into ``target`` (images linked), returns the json."""
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "images").exists():
        (target / "images").symlink_to(source / "images")
    coco = json.loads((source / "train.json").read_text())
    edit(coco)
    (target / "train.json").write_text(json.dumps(coco))
    return target / "train.json"


def test_training_sets_real_synthetic_mixed(bf_set: Path, tmp_path: Path) -> None:
    synthetic = tmp_path / "synth"
    edited_copy(bf_set, synthetic, lambda coco: None)
    shutil.copy(bf_set / "val.json", synthetic / "val.json")  # every split of a synthetic folder trains
    options = {"real_root": bf_set / "images", "real_ann_file": bf_set / "train.json", "heads": ["cytoplasm"]}
    real = brightfield_training_set("real", **options)
    synth = brightfield_training_set("synthetic", synthetic_dir=synthetic, **options)
    mixed = brightfield_training_set("mixed", synthetic_dir=synthetic, **options)
    assert (len(real), len(synth), len(mixed)) == (4, 6, 10)
    assert isinstance(mixed, BrightfieldSets) and mixed.num_classes == 3
    assert mixed.category_names == ["cell", "nucleus"]
    mixed.set_epoch(3)
    assert all(part.epoch == 3 for part in mixed.parts)
    image, target = mixed[9]  # the synthetic set's last image
    assert image.shape[0] == 2 and target["semantic"].max() <= 3
    label = training_set_label(trained(["cytoplasm"], train_set="mixed", synthetic_dir=str(synthetic)))
    assert label == "Mixed (6)"
    with pytest.raises(BadInputError, match="data.synthetic_dir: is not set"):
        brightfield_training_set("synthetic", synthetic_dir=None, **options)
    with pytest.raises(BadInputError, match="must be one of"):
        brightfield_training_set("both", **options)


def test_attention_map_is_read_only_when_the_focal_loss_uses_it(bf_set: Path) -> None:
    def maps(**model: Any) -> list[str]:
        return brightfield_dataset(bf_set / "images", bf_set / "train.json", **model).maps

    overlap = ["cytoplasm", "overlap"]
    assert maps(heads=overlap, attention_key="overlap_attention_v2", overlap_loss="focal") == [
        "overlap",
        "overlap_attention_v2",
    ]
    assert maps(heads=overlap, attention_key="overlap_attention_v2", overlap_loss="bce") == ["overlap"]
    assert maps(heads=["cytoplasm"], attention_key="overlap_attention_v2", overlap_loss="focal") == [
        "overlap"
    ]
    _, target = brightfield_dataset(
        bf_set / "images", bf_set / "train.json", heads=overlap, attention_key="overlap_attention_v2"
    )[0]
    assert target["overlap_attention_v2"].min() >= 0.1 - 1e-6  # the thesis' background value


def test_contract_errors_name_the_file_and_fault(bf_set: Path, tmp_path: Path) -> None:
    def no_nucleus(coco: dict) -> None:
        coco["categories"] = [c for c in coco["categories"] if c["name"] != "nucleus"]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == 1]

    ann = edited_copy(bf_set, tmp_path / "a", no_nucleus)
    brightfield_dataset(ann.parent / "images", ann, heads=["cytoplasm"])  # the base model needs no nuclei
    with pytest.raises(
        BadInputError, match=rf"{ann}: has no 'nucleus' category, which the nuclei head needs"
    ):
        brightfield_dataset(ann.parent / "images", ann, heads=["cytoplasm", "nuclei"])

    def no_overlap_map(coco: dict) -> None:
        coco["images"][1]["maps"].pop("overlap")

    ann = edited_copy(bf_set, tmp_path / "b", no_overlap_map)
    image_id = json.loads(ann.read_text())["images"][1]["id"]
    with pytest.raises(
        BadInputError, match=rf"image {image_id}: has no 'overlap' map file .* overlap head needs"
    ):
        brightfield_dataset(ann.parent / "images", ann, heads=["cytoplasm", "overlap"])

    def phase_only(coco: dict) -> None:
        for info in coco["images"]:
            info["planes"] = info["planes"][2:]

    ann = edited_copy(bf_set, tmp_path / "c", phase_only)
    with pytest.raises(BadInputError, match=r"has 1 plane\(s\) but the data set selects planes \[0, 1\]"):
        brightfield_dataset(ann.parent / "images", ann, heads=["cytoplasm"])


def test_train_py_stops_on_a_json_without_nuclei(bf_set: Path, tmp_path: Path) -> None:
    def no_nucleus(coco: dict) -> None:
        coco["categories"] = [c for c in coco["categories"] if c["name"] != "nucleus"]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == 1]

    ann = edited_copy(bf_set, tmp_path / "bad", no_nucleus)
    shutil.copy(bf_set / "val.json", ann.parent / "val.json")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=seunet_smoke",
            f"data.dir={ann.parent}",
            "data.prepare=null",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        f"BadInputError: {ann}: has no 'nucleus' category, which the nuclei head needs (categories: ['cell'])"
    )


# ------------------------------------------------------------------------------------------------ training
def train_smoke(tmp_path_factory: pytest.TempPathFactory, name: str, extra: list[str]) -> Path:
    run_dir = tmp_path_factory.mktemp(f"seunet_{name}")
    run(
        compose_config(
            ["experiment=seunet_smoke", *extra], run_dir, tmp_path_factory.getbasetemp() / "bf_data"
        )
    )
    return run_dir


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seunet_smoke: every head, trained once for this module."""
    return train_smoke(tmp_path_factory, "all", [])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seunet_smoke's base model (cytoplasm only)."""
    return train_smoke(tmp_path_factory, "base", ["model.heads=[cytoplasm]"])


def test_smoke_run_writes_every_head_metric(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "metrics.json").read_text())
    assert summary["epoch"] == 2 and (smoke_run / "checkpoints" / "best.pt").is_file()
    expected = {f"pix/{h}_{m}" for h in ALL_HEADS for m in HEAD_METRICS}
    assert set(summary["latest"]) == expected
    for key, value in summary["latest"].items():
        assert value is None or 0.0 <= value <= 1.0, key  # None: a precision with nothing predicted


# ------------------------------------------------------------------------------------------------ tables
def test_tables_are_registered() -> None:
    for k in range(1, 7):
        assert (
            REPRODUCTIONS[f"brightfield/table5_{k}"] == f"cytobench.reproduce.brightfield_tables:table5_{k}"
        )
        module, fn = load_reproduction(f"brightfield/table5_{k}")
        assert callable(fn) and hasattr(module, "add_arguments")


def test_tables_print_the_thesis_beside_ours(
    smoke_run: Path, base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_metrics = json.loads((base_run / "metrics.json").read_text())["latest"]
    assert set(base_metrics) == {
        f"pix/cytoplasm_{m}" for m in HEAD_METRICS
    }  # the thesis' '-' for other heads
    base, every = (str(r / "checkpoints" / "best.pt") for r in (base_run, smoke_run))
    common = ["--scale", "smoke", "--out", str(tmp_path), "--device", "cpu"]
    cytobench(["reproduce", "brightfield/table5_1", "--checkpoint", base, every, *common])
    out = capsys.readouterr().out
    assert "| SEU-Net (base) (thesis)" in out and "0.9016 | 0.9318 | 0.8600 | 0.9061 | 0.8300 |" in out
    assert "| SEU-Net (base) (ours, n=1)" in out
    result = json.loads((tmp_path / "table5_1.json").read_text())
    assert list(result["ours"]) == ["SEU-Net (base)"]  # the 5-head model has an overlap head: Table 5.3's
    assert "left out 1 of 2 model(s)" in " ".join(result["notes"])
    assert (tmp_path / "table5_1.md").read_text().strip() == result["table"].strip()
    assert (tmp_path / "fig5_1_heads.png").is_file()
    cytobench(["reproduce", "brightfield/table5_3", "--runs", str(smoke_run), *common])
    out = capsys.readouterr().out
    assert "| SEU-Net + attn. map (v4) (thesis)    | 0.9760 |" in out
    assert "| SEU-Net + attn. map (v4) (ours, n=1) |" in out
    assert (tmp_path / "fig5_3_overlaps.png").is_file()
    # Table 5.6 (training sets) reuses the scoring cached by 5.3; a model trained on the real set is Original
    cytobench(["reproduce", "brightfield/table5_6", "--checkpoint", every, *common, "--no-figure"])
    out = capsys.readouterr().out
    assert "evaluating" not in out
    assert re.search(r"\| SEU-Net \(3-head\), Original \(thesis\) +\| 0\.9855 \|", out)
    assert "| Original (ours, n=1)" in out
    assert "cytoplasm+nuclei+border+background+overlap, decoupled, focal, attn. map v4" in out


def test_a_table_without_its_variants_stops_with_one_line(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = str(base_run / "checkpoints" / "best.pt")
    with pytest.raises(SystemExit) as exit_info:
        cytobench(
            [
                "reproduce",
                "brightfield/table5_3",
                "--checkpoint",
                base,
                "--scale",
                "smoke",
                "--out",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "BadInputError: --runs / --checkpoint: none of the 1 model(s) is a variant of table5_3"
    )


def test_row_labels() -> None:
    assert heads_label(trained(["cytoplasm"], "shared")) == "SEU-Net (base)"
    assert heads_label(trained(["nuclei", "cytoplasm"])) == "SEU-Net (2-head)"
    assert (
        heads_label(trained(["cytoplasm", "nuclei", "border", "background"], "shared"))
        == "SEU-Net (multi-channel)"
    )
    assert heads_label(trained(["cytoplasm", "border"])) == "SEU-Net (cytoplasm+border, decoupled decoder)"
    assert heads_label(trained(["cytoplasm", "overlap"])) is None  # Table 5.3's
    assert heads_label(trained(["cytoplasm"], train_set="synthetic")) is None  # Tables 5.4-5.6'
    overlap = ["cytoplasm", "overlap"]
    assert attention_label(trained(overlap, overlap_loss="focal", attention_key="overlap_attention")) == (
        "SEU-Net + attn. map (v4)"
    )
    assert attention_label(trained(overlap, overlap_loss="focal", attention_key=None)) == (
        "SEU-Net (focal, no attn. map)"
    )
    assert attention_label(trained(["cytoplasm"])) is None
    assert training_set_label(trained(["cytoplasm"])) == "Original"
    assert training_set_label(
        trained(["cytoplasm"], train_set="synthetic", synthetic_dir="/gone/bf_syn")
    ) == ("Synthetic (bf_syn)")


def test_thesis_synthetic_rows_pair_by_size() -> None:
    paper = ["Original", "Synthetic (100)", "Synthetic (1000)"]
    assert pair_training_rows(paper, ["Original", "Synthetic (40)"]) == {
        "Original": "Original",
        "Synthetic (100)": "Synthetic (40)",
    }
    assert pair_training_rows(
        paper, ["Synthetic (400)", "Synthetic (40)", "Synthetic (100)", "Mixed (40)"]
    ) == {
        "Synthetic (100)": "Synthetic (100)",
        "Synthetic (1000)": "Synthetic (400)",
    }
    assert pair_training_rows(paper, ["Synthetic (40)", "Synthetic (80)", "Synthetic (400)"]) == {
        "Synthetic (100)": "Synthetic (40)",
        "Synthetic (1000)": "Synthetic (400)",
    }


def test_table_means_spreads_and_one_sided_p_by_hand() -> None:
    def runs(f1s: list[float]) -> list[dict[str, float]]:
        return [
            {
                "pix/cytoplasm_accuracy": 0.9,
                "pix/cytoplasm_precision": 0.8,
                "pix/cytoplasm_recall": 0.7,
                "pix/cytoplasm_f1": f1,
                "pix/cytoplasm_iou": f1 / 2,
            }
            for f1 in f1s
        ]

    spec = load_paper("brightfield")["table5_1"]
    groups = {"SEU-Net (base)": runs([0.80, 0.82, 0.84]), "SEU-Net (4-head)": runs([0.90, 0.91, 0.95])}
    table, result = build_table("table5_1", spec, groups, ["Acc.", "Prec.", "Rec.", "F1", "IoU"])
    # 4-head F1: mean 0.92, sample std sqrt(((-0.02)^2 + (-0.01)^2 + 0.03^2) / 2) = sqrt(0.0007)
    four = result["ours"]["SEU-Net (4-head)"]
    assert four["mean"]["pix/cytoplasm_f1"] == pytest.approx(0.92)
    assert four["std"]["pix/cytoplasm_f1"] == pytest.approx(math.sqrt(0.0007))
    assert f"| 0.9200 +- {math.sqrt(0.0007):.4f} |" in table
    assert "| 0.9000 +- 0.0000 |" in table  # accuracy: the same in every repeat
    expected = stats.ttest_ind([0.90, 0.91, 0.95], [0.80, 0.82, 0.84], equal_var=False, alternative="greater")
    p = result["p_values"]["SEU-Net (4-head) > SEU-Net (base)"]["p_one_sided"]
    assert p == pytest.approx(expected.pvalue)
    assert f"p = {p:.3g}" in table
    lines = table.splitlines()  # each thesis row followed by ours; rows without ours stay alone
    assert lines[2].startswith("| SEU-Net (base) (thesis)") and lines[3].startswith(
        "| SEU-Net (base) (ours, n=3)"
    )
    assert lines[4].startswith("| SEU-Net (2-head) (thesis)") and lines[5].startswith(
        "| SEU-Net (3-head) (thesis)"
    )


def test_one_sided_p_follows_the_claimed_direction() -> None:
    better, worse = [0.5, 0.6, 0.7], [0.1, 0.2, 0.35]
    assert one_sided_welch(better, worse) + one_sided_welch(worse, better) == pytest.approx(1.0)
    assert one_sided_welch(better, worse) < 0.05 < one_sided_welch(worse, better)
    assert math.isnan(one_sided_welch([0.5], worse))
    assert np.isnan(one_sided_welch([0.5, float("nan")], worse))  # NaN repeats are dropped: one value left
    # the table cell says why there is no p: too few repeats, no value (APs without small cells), no spread
    assert welch_cell(better, worse)[1] == f"p = {one_sided_welch(better, worse):.3g}"
    assert welch_cell([0.5], worse)[1] == "n/a (2+ repeats each)"
    nan = float("nan")
    assert welch_cell([nan, nan], [nan, nan])[1] == "n/a (no value to compare)"
    assert welch_cell([0.5, 0.5], [0.4, 0.4])[1] == "n/a (no spread on either side)"


def test_predict_writes_every_head_map_from_the_two_plane_files(smoke_run: Path, tmp_path: Path) -> None:
    """`cytobench predict --planes _bf_lower _bf_upper` on a trained SEU-Net: one PNG per head whose values are
    the network's own probabilities on the stacked planes (to 8-bit rounding), RLE masks at each head's
    threshold (overlap 0.3)."""
    from pycocotools import mask as mask_utils

    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.io.images import read_image

    config = OmegaConf.load(smoke_run / "config.yaml")
    images = Path(config.data.images)
    lower = sorted(images.glob("*_bf_lower.png"))[0]
    upper = lower.with_name(lower.name.replace("_bf_lower", "_bf_upper"))
    out = tmp_path / "pred.json"
    checkpoint = smoke_run / "checkpoints" / "best.pt"
    cytobench(
        ["predict", "--checkpoint", str(checkpoint), "--planes", "_bf_lower", "_bf_upper"]
        + ["--out", str(out), "--images", str(lower)]
    )

    network, _ = load_model_from_checkpoint(checkpoint, "cpu")
    planes = np.stack([read_image(p).array[..., 0] for p in (lower, upper)])  # [0, 1] floats
    with torch.no_grad():
        expected = network([torch.from_numpy(planes)])[0]["maps"]
    records = json.loads((tmp_path / "pred.maps" / "maps.json").read_text())
    by_head = {r["head"]: r for r in records}
    assert set(by_head) == set(ALL_HEADS)
    for head, record in by_head.items():
        png = read_image(tmp_path / "pred.maps" / record["png"]).array[..., 0]
        want = expected[head].numpy()
        assert png.shape == planes.shape[1:]
        np.testing.assert_allclose(png, want, atol=0.5 / 255 + 1e-6)
        threshold = 0.3 if head == "overlap" else 0.5
        assert record["threshold"] == threshold
        assert np.array_equal(mask_utils.decode(record["segmentation"]).astype(bool), want > threshold)
