"""The command line: eval on hand-made files, and one clear line (exit 2) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cytobench.cli import main

GT = {
    "images": [
        {"id": 1, "file_name": "a.png", "height": 100, "width": 100},
        {"id": 2, "file_name": "b.png", "height": 100, "width": 100},
    ],
    "categories": [{"id": 1, "name": "cell", "keypoints": ["centre"], "skeleton": []}],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 10, 20, 20],
            "area": 400,
            "iscrowd": 0,
            "keypoints": [20, 20, 2],
            "num_keypoints": 1,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "bbox": [50, 50, 30, 30],
            "area": 900,
            "iscrowd": 0,
            "keypoints": [65, 65, 2],
            "num_keypoints": 1,
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 1,
            "bbox": [0, 0, 40, 40],
            "area": 1600,
            "iscrowd": 0,
            "keypoints": [20, 20, 2],
            "num_keypoints": 1,
        },
    ],
}
# image 1: both found; image 2: one miss-placed box (FP) and the cell missed (FN)
PRED = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9, "keypoints": [20.5, 20, 1]},
    {"image_id": 1, "category_id": 1, "bbox": [51, 50, 30, 30], "score": 0.8, "keypoints": [66, 67, 1]},
    {"image_id": 2, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.7, "keypoints": [75, 75, 1]},
]


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write(tmp_path / "gt.json", GT), write(tmp_path / "pred.json", PRED)


def test_eval_enumeration_by_hand(files, capsys, tmp_path: Path) -> None:
    gt, pred = files
    code, out, _ = run_cli(
        ["eval", "enumeration", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "m.json")],
        capsys,
    )
    assert code == 0
    metrics = json.loads(out)
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    assert (metrics["enum/tp"], metrics["enum/fp"], metrics["enum/fn"]) == (2, 1, 1)
    assert metrics["enum/wcr"] == pytest.approx(0.5)
    assert metrics["enum/aer"] == pytest.approx(2 / 3)
    assert metrics["enum/acc"] == pytest.approx(2 / 4)


def test_eval_localization_by_hand(files, capsys) -> None:
    gt, pred = files
    code, out, _ = run_cli(
        ["eval", "localization", "--gt", str(gt), "--pred", str(pred), "--eps", "1", "3"], capsys
    )
    assert code == 0
    metrics = json.loads(out)
    # eps 1: only the first keypoint (0.5 px off) is a hit; eps 3: the second (2.24 px) too
    assert metrics["loc/precision@eps1"] == pytest.approx(1 / 3)
    assert metrics["loc/recall@eps3"] == pytest.approx(2 / 3)


def test_eval_coco_bbox_runs(files, capsys) -> None:
    gt, pred = files
    code, out, _ = run_cli(["eval", "coco-bbox", "--gt", str(gt), "--pred", str(pred)], capsys)
    assert code == 0
    metrics = json.loads(out)
    assert 0 < metrics["coco/bbox_AP50"] <= 1


def corrupt(**changes) -> dict:
    data = json.loads(json.dumps(GT))
    for key, value in changes.items():
        index, field = key.split("__")
        data["annotations"][int(index)][field] = value
    return data


BAD_GT = {
    "negative width": (corrupt(**{"1__bbox": [50, 50, -3, 30]}), ["annotation 2", "negative width"]),
    "zero height": (corrupt(**{"0__bbox": [10, 10, 20, 0]}), ["annotation 1", "zero height"]),
    "box outside": (corrupt(**{"2__bbox": [80, 80, 40, 40]}), ["annotation 3", "outside"]),
    "unknown category": (corrupt(**{"0__category_id": 7}), ["annotation 1", "category_id 7"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GT))
def test_bad_ground_truth_gives_one_line(case: str, tmp_path: Path, capsys) -> None:
    data, needles = BAD_GT[case]
    gt = write(tmp_path / "gt.json", data)
    pred = write(tmp_path / "pred.json", PRED)
    code, _, err = run_cli(["eval", "enumeration", "--gt", str(gt), "--pred", str(pred)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for needle in ["gt.json", *needles]:
        assert needle in err


def test_missing_and_malformed_files(tmp_path: Path, capsys) -> None:
    gt = write(tmp_path / "gt.json", GT)
    code, _, err = run_cli(
        ["eval", "coco-bbox", "--gt", str(tmp_path / "nope.json"), "--pred", str(gt)], capsys
    )
    assert code == 2 and "nope.json" in err and "not found" in err
    broken = tmp_path / "pred.json"
    broken.write_text('[{"image_id": 1,')
    code, _, err = run_cli(["eval", "coco-bbox", "--gt", str(gt), "--pred", str(broken)], capsys)
    assert code == 2 and "pred.json" in err and "line 1" in err and err.count("\n") == 1


def test_prediction_on_unknown_category_or_image(tmp_path: Path, capsys) -> None:
    gt = write(tmp_path / "gt.json", GT)
    pred = write(tmp_path / "pred.json", [{**PRED[0], "category_id": 5}])
    code, _, err = run_cli(["eval", "coco-bbox", "--gt", str(gt), "--pred", str(pred)], capsys)
    assert code == 2 and "pred.json" in err and "category_id 5" in err
    pred = write(tmp_path / "pred.json", [{**PRED[0], "image_id": 99}])
    code, _, err = run_cli(["eval", "enumeration", "--gt", str(gt), "--pred", str(pred)], capsys)
    assert code == 2 and "pred.json" in err and "99" in err


def test_unreadable_checkpoint_in_predict(tmp_path: Path, capsys) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"garbage")
    code, _, err = run_cli(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "p.json"),
        ],
        capsys,
    )
    assert code == 2 and "model.pt" in err and err.count("\n") == 1


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    gt = write(tmp_path / "gt.json", corrupt(**{"1__bbox": [50, 50, 0, 30]}))
    proc = subprocess.run(
        [sys.executable, "-m", "cytobench.cli", "eval", "coco-bbox", "--gt", str(gt), "--pred", str(gt)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "annotation 2" in proc.stderr and "gt.json" in proc.stderr


def test_simulate_metaphase_command(tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(
        ["simulate", "metaphase", "--n", "1", "--size", "256", "192", "--out", str(tmp_path)], capsys
    )
    assert code == 0 and "simulated 1" in out
    data = json.loads((tmp_path / "annotations.json").read_text())
    assert len(data["annotations"]) == data["images"][0]["n_chromosomes"]
    code, _, err = run_cli(["simulate", "metaphase", "--n", "0", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--n" in err and err.count("\n") == 1


def test_simulate_metaphase_aneuploid_split_karyotype(tmp_path: Path, capsys) -> None:
    args = ["simulate", "metaphase", "--n", "3", "--size", "256", "192", "--n-chromosomes", "45=0.5,47=0.5"]
    args += ["--val-fraction", "0.34", "--labels", "karyotype", "--scale", "60", "--out", str(tmp_path)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "train.json" in out
    train, val = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("train", "val"))
    assert (len(train["images"]), len(val["images"])) == (2, 1)
    assert {img["n_chromosomes"] for img in train["images"] + val["images"]} <= {45, 47}
    assert len(train["categories"]) == 24
    code, _, err = run_cli(
        ["simulate", "metaphase", "--n", "1", "--n-chromosomes", "46=x", "--out", "y"], capsys
    )
    assert code == 2 and "--n-chromosomes" in err


@pytest.mark.parametrize("kind", ["coco-bbox", "coco-keypoints", "enumeration", "localization"])
def test_eval_imports_neither_torch_nor_model_code(files, kind: str) -> None:
    """`cytobench eval` is a light command: scoring json needs no deep-learning stack (2 s of import)."""
    gt, pred = files
    code = (
        "import sys\nfrom cytobench.cli import main\n"
        f"main(['eval', '{kind}', '--gt', {str(gt)!r}, '--pred', {str(pred)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m in ('torch', 'scipy.stats') or m.startswith('cytobench.models'))\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)  # the metrics were printed


@pytest.mark.parametrize(
    ("simulator", "default_size"),
    [
        ("toy", [128, 128]),
        ("qd", None),
        ("metaphase", [1600, 1200]),
        ("fish", [512]),
        ("brightfield", [1080]),
        ("karyogram", [1024, 768]),
    ],
)
def test_every_simulator_shares_the_dataset_arguments(simulator: str, default_size: list[int] | None) -> None:
    from cytobench.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["simulate", simulator, "--n", "3", "--out", "d"])
    assert (args.n, args.seed, args.out, args.overwrite) == (3, 0, "d", False)
    assert getattr(args, "size", None) == default_size
    assert hasattr(args, "val_fraction") == (simulator != "qd")  # qd writes one set
    if default_size is not None:  # S (square) or W H everywhere, toy and metaphase included
        for size in (["64"], ["64", "48"]):
            assert parser.parse_args(
                ["simulate", simulator, "--n", "1", "--size", *size, "--out", "d"]
            ).size == [int(v) for v in size]


def test_square_size_shorthand_reaches_the_toy_simulator(tmp_path: Path) -> None:
    main(["simulate", "toy", "--n", "1", "--size", "40", "--out", str(tmp_path / "a")])
    main(["simulate", "toy", "--n", "1", "--size", "40", "24", "--out", str(tmp_path / "b")])
    sizes = [json.loads((tmp_path / d / "annotations.json").read_text())["images"][0] for d in ("a", "b")]
    assert [(im["width"], im["height"]) for im in sizes] == [(40, 40), (40, 24)]
