"""`cytobench reproduce karyotype/table5_1` and `karyotype/accuracy` (KTH thesis Table 5.1, whole-cell accuracy).

Fast tests score stand-in detectors that read the held-out test set's own truth (:class:`TruthDetector`: exact,
with chromosome 21 called 22, or scored below the threshold), so every number is known from the truth's class
counts; the accuracy table is checked on hand-built cells. The slow test trains the five smoke models and runs
the command as a user does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.cli import main
from cytobench.errors import BadInputError
from cytobench.evaluation.karyotype import karyotype_metrics
from cytobench.fish.intervals import wilson_interval
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import coco_to_targets
from cytobench.reproduce import REPRODUCTIONS, load_reproduction
from cytobench.reproduce.base import held_out_test_set, load_paper
from cytobench.reproduce.karyotype_models import check_one_variant_per_row, model_variant
from cytobench.reproduce.karyotype_tables import (
    KaryotypeModel,
    build_accuracy_table,
    data_kind,
    model_row,
    reproduce,
)
from cytobench.simulate.chromosomes import CLASS_NAMES
from tests.conftest import run_train_py

SIM = {"_target_": "hydra.utils.get_method", "path": "cytobench.simulate.karyogram.simulate_karyogram"}
DATA_CONFIG = {  # a karyogram data config as the smoke scale resolves it (3 cells, 5% / 90% / 5% of 45/46/47)
    "size": [256, 192],
    "sim_seed": 0,
    "prepare": {
        "simulator": SIM,
        "out_dir": "unused",
        "n_images": 4,
        "size": [256, 192],
        "seed": 0,
        "n_chromosomes": {45: 0.05, 46: 0.9, 47: 0.05},
    },
}
N_TEST = 3
CATEGORIES = [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)]
NORMAL_XY = [c for c in range(1, 23) for _ in range(2)] + [23, 24]


class TruthDetector(torch.nn.Module):
    """Returns the truth of the test set's images in file order (one call per image, batch 1).

    ``mode``: ``exact`` (score 0.9), ``swap21`` (class 21 called 22, score 0.9) or ``low`` (score 0.3,
    below the evaluator's 0.5: nothing is kept).
    """

    def __init__(self, num_classes: int, ann_file: str, mode: str = "exact") -> None:
        super().__init__()
        self.truth = coco_to_targets(load_coco(ann_file))
        self.mode, self.calls = mode, 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            truth = self.truth[self.calls % len(self.truth)]
            self.calls += 1
            labels = torch.as_tensor(truth["labels"], dtype=torch.int64)
            if self.mode == "swap21":
                labels = torch.where(labels == 21, torch.tensor(22), labels)
            score = 0.3 if self.mode == "low" else 0.9
            out.append(
                {
                    "boxes": torch.as_tensor(truth["boxes"], dtype=torch.float32),
                    "labels": labels,
                    "scores": torch.full((len(labels),), score),
                }
            )
        return out


class ScoredTruthDetector(TruthDetector):
    """``swap21`` with per-class scores, as SSD and R-FCN give them: a true 21 is 22 at 0.5 and 21 at 0.45,
    every other chromosome its class at 0.95 (so the pair prior can move the 21s back)."""

    gives_class_scores = True

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        first = self.calls
        out = super().forward(images)
        for k, pred in enumerate(out):
            truth = torch.as_tensor(self.truth[(first + k) % len(self.truth)]["labels"], dtype=torch.int64)
            class_scores = torch.zeros(len(truth), 24)
            class_scores[torch.arange(len(truth)), truth - 1] = 0.95
            is21 = truth == 21
            class_scores[is21, 20], class_scores[is21, 21] = 0.45, 0.5
            pred["class_scores"] = class_scores
            pred["scores"] = class_scores.max(dim=1).values
        return out


def truth_checkpoint(path: Path, ann_file: Path, mode: str) -> Path:
    """A checkpoint as the trainer writes it (model config, data config, the 24 categories)."""
    detector = "ScoredTruthDetector" if mode == "swap21_scores" else "TruthDetector"
    config = {
        "_target_": f"{__name__}.{detector}",
        "ann_file": str(ann_file),
        "mode": "swap21" if mode == "swap21_scores" else mode,
    }
    state = {
        "model": {},
        "model_config": config,
        "data_config": DATA_CONFIG,
        "num_classes": 25,
        "label_to_cat_id": {k: k for k in range(1, 25)},
        "categories": CATEGORIES,
    }
    torch.save(state, path)
    return path


def accuracy_without_figures(models: list[KaryotypeModel], out: Path, stand_ins: dict) -> dict:
    """`reproduce karyotype/accuracy` on the stand-ins' test set, quietly, without figures."""
    return reproduce(
        "accuracy",
        models,
        out,
        n_test=N_TEST,
        data_dir=stand_ins["root"] / "test_sets",
        figures=False,
        progress=lambda _: None,
    )


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("karyotype_reproduce")
    test_set = held_out_test_set(DATA_CONFIG, N_TEST, cache_dir=root / "test_sets")
    models = {
        row: KaryotypeModel(
            truth_checkpoint(root / f"{mode}.pt", test_set.ann_file, mode),
            row,
            "karyogram",
            mode,
            DATA_CONFIG,
            mode,
        )
        for row, mode in (
            ("YOLOv8", "exact"),
            ("Faster R-CNN", "swap21"),
            ("SSD", "low"),
            ("Two-stage", "exact"),
        )
    }
    labels = [t["labels"] for t in coco_to_targets(load_coco(test_set.ann_file))]
    return {"root": root, "test_set": test_set, "models": models, "labels": labels}


def test_registered() -> None:
    assert REPRODUCTIONS["karyotype/table5_1"] == "cytobench.reproduce.karyotype_tables:table5_1"
    _, function = load_reproduction("karyotype/accuracy")
    assert function.__name__ == "accuracy"


def test_paper_numbers_are_the_theses_table_5_1() -> None:
    rows = {r["name"]: r for r in load_paper("karyotype")["table5_1"]["rows"]}
    assert [rows[n]["ours"] for n in rows] == ["YOLOv8", "Faster R-CNN", "R-FCN", "SSD"]
    assert [rows["YOLO v5"][k] for k in ("recall", "precision", "f1", "batch_size", "epochs")] == [
        0.98,
        0.83,
        0.89,
        16,
        250,
    ]
    assert [rows["Faster RCNN Inception v2"][k] for k in ("recall", "precision", "f1")] == [0.66, 0.59, 0.62]
    assert [rows["RFCN Resnet101"][k] for k in ("recall", "precision", "f1")] == [0.68, 0.72, 0.69]
    assert [rows["SSD Mobilenet v2"][k] for k in ("recall", "precision", "f1", "epochs")] == [
        0.60,
        0.69,
        0.64,
        10000,
    ]


def test_rows_and_data_kinds_from_configs() -> None:
    assert model_row({"_target_": "cytobench.models.rfcn.build_rfcn"}) == "R-FCN"
    assert model_row({"_target_": "cytobench.models.two_stage.build_two_stage"}) == "Two-stage"
    with pytest.raises(BadInputError, match="ckpt.pt: a cytobench.models.deepace.build_deepace model"):
        model_row({"_target_": "cytobench.models.deepace.build_deepace"}, "ckpt.pt")
    assert data_kind(DATA_CONFIG) == "karyogram"
    spread = {"size": [256, 192], "prepare": {"simulator": "cytobench.simulate.metaphase.simulate_metaphase"}}
    with pytest.raises(BadInputError, match="with one class"):
        data_kind(spread)
    spread["prepare"]["label_mode"] = "karyotype"
    assert data_kind(spread) == "spread"


def test_models_of_one_row_but_different_variants_are_refused_not_averaged(tmp_path: Path) -> None:
    rfcn = {"_target_": "cytobench.models.rfcn.build_rfcn", "backbone": "resnet18"}
    assert model_variant(rfcn) == "resnet18"
    assert model_variant({**rfcn, "output_stride": 8}) == "resnet18, output stride 8"

    def model(source: str, **config) -> KaryotypeModel:
        config = {**rfcn, **config}
        return KaryotypeModel(Path(source), "R-FCN", "karyogram", model_variant(config), DATA_CONFIG, source)

    repeats = [model("runs/rfcn_s0"), model("runs/rfcn_s1")]
    check_one_variant_per_row(repeats)  # seeds of one model: repeats
    spreads8 = dataclasses.replace(model("runs/rfcn8_spreads", output_stride=8), kind="spread")
    check_one_variant_per_row([*repeats, spreads8])  # another data kind: another row of the table
    mixed = [*repeats, model("runs/rfcn8", output_stride=8)]
    with pytest.raises(
        BadInputError,
        match=r"R-FCN models .* karyogram .*resnet18 \(runs/rfcn_s0\); "
        r"resnet18, output stride 8 \(runs/rfcn8\)",
    ):
        reproduce("table5_1", mixed, tmp_path, n_test=N_TEST, progress=lambda _: None)
    assert not any(tmp_path.iterdir())  # refused before anything was simulated or written


def test_table5_1_scores_each_row_beside_the_thesis(stand_ins: dict, tmp_path: Path) -> None:
    models = list(stand_ins["models"].values())
    result = reproduce(
        "table5_1",
        models,
        tmp_path,
        n_test=N_TEST,
        data_dir=stand_ins["root"] / "test_sets",
        progress=lambda _: None,
    )
    ours = result["ours"]["karyogram"]
    for row in ("YOLOv8", "Two-stage"):  # the exact stand-in
        assert [ours[row][c]["mean"] for c in ("recall", "precision", "f1")] == [1.0, 1.0, 1.0]
    # class 21 called 22: class 21 recall 0 (precision undefined), class 22 precision n22 / (n22 + n21)
    counts = np.bincount(np.concatenate(stand_ins["labels"]), minlength=25)[1:]
    present = counts > 0
    n21, n22 = counts[20], counts[21]
    recall = np.where(present, 1.0, np.nan)
    recall[20] = 0.0
    precision = np.where(present, 1.0, np.nan)
    precision[20], precision[21] = np.nan, n22 / (n22 + n21)
    f1 = np.where(present, 1.0, np.nan)
    f1[20], f1[21] = 0.0, 2 * n22 / (2 * n22 + n21)
    swap = ours["Faster R-CNN"]
    assert swap["recall"]["mean"] == pytest.approx(np.nanmean(recall))
    assert swap["precision"]["mean"] == pytest.approx(np.nanmean(precision))
    assert swap["f1"]["mean"] == pytest.approx(np.nanmean(f1))
    assert ours["SSD"]["recall"]["mean"] == 0.0 and math.isnan(ours["SSD"]["precision"]["mean"])

    written = (tmp_path / "table5_1.md").read_text()
    table, best_title, best_table = written.strip().split("\n\n")

    def cells(markdown: str) -> dict[str, list[str]]:
        return {
            line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines()[2:]
        }

    lines = cells(table)
    # under it, ours at the best-F1 confidence: the perfect YOLO stays perfect at its one score
    assert "best class-mean F1" in best_title
    best = cells(best_table)["YOLOv8 (ours; the thesis used YOLOv5)"]
    assert best[:4] == ["karyograms", "1.000", "1.000", "1.000"]
    assert ours["YOLOv8"]["best_f1"]["mean"] == 1.0
    assert lines["YOLO v5 (thesis; batch 16, 250 epochs)"] == ["0.98", "0.83", "0.89", "-", "-", "-"]
    assert lines["RFCN Resnet101 (thesis; batch 12, 5000 epochs)"][:3] == ["0.68", "0.72", "0.69"]
    assert lines["YOLOv8 (ours; the thesis used YOLOv5)"] == ["1.000", "1.000", "1.000", "-", "-", "-"]
    assert lines["Faster R-CNN (ours)"][0] == f"{np.nanmean(recall):.3f}"
    assert lines["SSD (ours)"][:3] == ["0.000", "-", "0.000"]
    assert "Two-stage (ours)" in lines and not any(k.startswith("R-FCN (ours") for k in lines)
    saved = json.loads((tmp_path / "table5_1.json").read_text())
    assert saved["paper"]["SSD Mobilenet v2"] == {"recall": 0.60, "precision": 0.69, "f1": 0.64}
    assert (
        saved["figures"] == ["fig5_1_4_karyogram.png"]
        and (tmp_path / "fig5_1_4_karyogram.png").stat().st_size > 0
    )

    # a second run into the same folder is refused, and the table is left as it was
    with pytest.raises(BadInputError, match="exists .*pass --overwrite"):
        reproduce("table5_1", models[:1], tmp_path, n_test=N_TEST, data_dir=stand_ins["root"] / "test_sets")
    assert (tmp_path / "table5_1.md").read_text() == written
    # the accuracy table writes other files: not refused
    acc = accuracy_without_figures(models, tmp_path, stand_ins)
    exact = acc["ours"]["karyogram"]
    assert (
        exact["YOLOv8"]["mean"]["exact_match"] == 1.0 and exact["Faster R-CNN"]["mean"]["exact_match"] == 0.0
    )
    assert exact["Faster R-CNN"]["mean"]["denver_accuracy"] == 1.0  # 21 and 22 are both group G
    assert exact["Faster R-CNN"]["mean"]["class_accuracy"] == pytest.approx(1 - n21 / counts.sum())


def test_a_yolo_karyotyper_is_scored_raw_and_again_with_its_pair_prior(
    stand_ins: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The YOLO row stays the raw detections (the thesis' row); a second row scores the same checkpoint with
    its pair prior on. Models whose prior cannot be switched get one row."""
    from cytobench.reproduce import karyotype_tables

    real, calls = karyotype_tables.score_model, []

    def recording(model: KaryotypeModel, test_set: object, device: object, **kwargs: object) -> dict:
        calls.append((model.row, kwargs["pair_prior"]))
        scored = real(model, test_set, device, **kwargs)
        assert scored["switchable_prior"] is False  # the stand-ins are not YOLO models
        scored["switchable_prior"] = model.row == "YOLOv8"  # as for a YOLO karyotyper
        return scored

    monkeypatch.setattr(karyotype_tables, "score_model", recording)
    models = [stand_ins["models"]["SSD"], stand_ins["models"]["YOLOv8"]]
    result = accuracy_without_figures(models, tmp_path, stand_ins)
    assert calls == [("YOLOv8", False), ("YOLOv8", True), ("SSD", False)]
    assert list(result["ours"]["karyogram"]) == ["YOLOv8", "YOLOv8 + pair prior", "SSD"]
    assert "| YOLOv8 + pair prior (ours; the same weights; one box per chromosome" in result["table"]


def test_a_detector_with_class_scores_gets_a_pair_prior_row(stand_ins: dict, tmp_path: Path) -> None:
    """SSD / R-FCN style: 21s called 22 at 0.5 (21 at 0.45). Raw, class 21 is never found; with the pair prior
    the cell's two 22 slots go to the sure 22s and the 21s move back, except a third 21 (a trisomy keeps
    one 21 as 22: a third copy is penalised either way, and 22 scores higher)."""
    root = stand_ins["root"]
    checkpoint = truth_checkpoint(root / "swap21_scores.pt", stand_ins["test_set"].ann_file, "swap21_scores")
    model = KaryotypeModel(checkpoint, "SSD", "karyogram", "scored", DATA_CONFIG, "scored")
    ours = accuracy_without_figures([model], tmp_path, stand_ins)["ours"]["karyogram"]
    assert list(ours) == ["SSD", "SSD + pair prior"]
    found = sum(min(int((labels == 21).sum()), 2) for labels in map(np.asarray, stand_ins["labels"]))
    missed = sum(int((np.asarray(labels) == 21).sum()) for labels in stand_ins["labels"]) - found
    raw, prior = ours["SSD"]["repeats"][0], ours["SSD + pair prior"]["repeats"][0]
    assert raw["class_accuracy"] < prior["class_accuracy"]
    total = sum(len(labels) for labels in stand_ins["labels"])
    assert prior["class_accuracy"] == pytest.approx(1 - missed / total)
    assert raw["class_accuracy"] == pytest.approx(1 - (found + missed) / total)


def test_score_model_applies_adjust_to_the_loaded_model_before_scoring(stand_ins: dict) -> None:
    """``adjust`` changes prediction settings of the checkpoint's model (two_stage_settings.py's sweep)."""
    from cytobench.reproduce.karyotype_models import score_model

    model, test_set = stand_ins["models"]["YOLOv8"], stand_ins["test_set"]
    plain = score_model(model, test_set, "cpu")["metrics"]
    assert plain["recall"] == pytest.approx(1.0) and plain["exact_match"] == pytest.approx(1.0)
    seen: list[str] = []

    def low_scores(net: torch.nn.Module) -> None:
        seen.append(type(net).__name__)
        net.mode = "low"  # every score 0.3, under the evaluator's 0.5

    lowered = score_model(model, test_set, "cpu", adjust=low_scores)["metrics"]
    assert seen == ["TruthDetector"]
    assert lowered["recall"] == 0.0 and lowered["exact_match"] == 0.0


def test_cli_refuses_to_overwrite_before_reading_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "karyotype_accuracy.json").write_text("mine")
    torch.save(
        {"model": {}}, tmp_path / "x.pt"
    )  # not a training checkpoint: never read, the refusal comes first
    argv = ["reproduce", "karyotype/accuracy", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "karyotype_accuracy.json: exists" in err and "--overwrite" in err
    assert (tmp_path / "karyotype_accuracy.json").read_text() == "mine"
    with pytest.raises(SystemExit) as exit_info:  # with --overwrite the checkpoint is read, and refused
        main([*argv, "--overwrite"])
    assert exit_info.value.code == 2
    assert "x.pt: not a cytobench training checkpoint" in capsys.readouterr().err
    assert (tmp_path / "karyotype_accuracy.json").read_text() == "mine"


def test_cli_refuses_a_model_that_is_not_a_karyotype_detector(
    stand_ins: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = stand_ins["models"]["YOLOv8"].checkpoint
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["reproduce", "karyotype/table5_1", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{__name__}.TruthDetector model; Table 5.1 compares" in err
    assert not (tmp_path / "o").exists()


def test_accuracy_table_on_hand_built_cells() -> None:
    """Three cells: 46,XY found exactly; 47,XY,+21 found exactly; 46,XY with a chromosome 1 missed (called 45).
    Exact match 2/3, count match 2/3; abnormal truth 1 (called abnormal: sensitivity 1/1), normal truth 2 (one
    called abnormal: specificity 1/2); every matched pair classed right (class and Denver accuracy 1)."""
    trisomy = sorted([*NORMAL_XY, 21])
    cells = [NORMAL_XY, trisomy, NORMAL_XY]

    def boxes(n: int) -> np.ndarray:
        return np.array([[10.0 * i, 0.0, 10.0 * i + 8, 20.0] for i in range(n)])

    gt_boxes = [boxes(len(c)) for c in cells]
    gt_labels = [np.array(c) for c in cells]
    det_boxes = [gt_boxes[0], gt_boxes[1], gt_boxes[2][1:]]
    det_labels = [gt_labels[0], gt_labels[1], gt_labels[2][1:]]
    scores = [np.full(len(b), 0.9) for b in det_boxes]
    good = karyotype_metrics(gt_boxes, gt_labels, det_boxes, det_labels, scores).summary()
    none = karyotype_metrics(
        gt_boxes, gt_labels, [np.zeros((0, 4))] * 3, [np.zeros(0, int)] * 3, [np.zeros(0)] * 3
    )
    table, result = build_accuracy_table({"spread": {"Two-stage": [good], "SSD": [none.summary()]}})
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in table.splitlines()[2:4]
    }
    lo, hi = wilson_interval(1, 2, 0.95)
    lo1, hi1 = wilson_interval(1, 1, 0.95)
    assert rows["Two-stage (ours)"] == [
        "metaphase spreads",
        "3 (1)",
        "0.667",
        "0.667",
        "1.000",
        "1.000",
        f"1.000 [{lo1:.3f}, {hi1:.3f}]",
        f"0.500 [{lo:.3f}, {hi:.3f}]",
    ]
    # nothing found: every cell is a 0-chromosome cell, called abnormal; no matched pair (accuracies '-')
    assert rows["SSD (ours)"][2:6] == ["0.000", "0.000", "-", "-"]
    assert rows["SSD (ours)"][7] == f"0.000 [0.000, {wilson_interval(0, 2, 0.95)[1]:.3f}]"
    assert [(c["than"], c["metric"], c["holds"]) for c in result["claims"]] == [
        ("SSD", "f1", True),
        ("SSD", "exact_match", True),
    ]
    assert "| Two-stage > SSD (metaphase spreads) | exact match |     0.667 | 0.000 |   yes |" in table


@pytest.mark.slow
def test_smoke_models_end_to_end(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The five smoke experiments trained as a user trains them; the table has a row of each, in [0, 1]."""
    runs = tmp_path / "runs"
    for model in ("yolo", "faster_rcnn", "rfcn", "ssd", "two_stage"):
        run_train_py(
            [f"experiment=karyotype_{model}_smoke", f"hydra.run.dir={runs / model}"], data_dir, cwd=tmp_path
        )
    out = tmp_path / "tables"
    argv = ["reproduce", "karyotype/table5_1", "--runs", str(runs), "--scale", "smoke", "--out", str(out)]
    main([*argv, "--device", "cpu"])
    capsys.readouterr()
    result = json.loads((out / "table5_1.json").read_text())
    ours = result["ours"]["karyogram"]
    # the YOLO, R-FCN and SSD runs twice: raw (the thesis' row) and with the pair prior
    assert list(ours) == [
        "YOLOv8",
        "YOLOv8 + pair prior",
        "Faster R-CNN",
        "R-FCN",
        "R-FCN + pair prior",
        "SSD",
        "SSD + pair prior",
        "Two-stage",
    ]
    for row in ours.values():
        for column in ("recall", "precision", "f1"):
            value = row[column]["mean"]
            assert value is None or math.isnan(value) or 0.0 <= value <= 1.0
            assert row[column]["n"] == 1
    assert result["test_sets"]["karyogram"]["n_images"] == 4
    paper = {r["name"]: r for r in load_paper("karyotype")["table5_1"]["rows"]}
    assert {k: {c: v[c] for c in ("recall", "precision", "f1")} for k, v in paper.items()} == result["paper"]
    with pytest.raises(SystemExit) as exit_info:  # again without --overwrite: refused
        main([*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    main([*argv, "--device", "cpu", "--overwrite", "--no-figure"])
