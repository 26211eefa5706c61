"""The simulators' shared split writer and argument checks, and the `simulate` CLI's first-use errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cytobench.cli import main
from cytobench.simulate.common import (
    check_out_dir,
    check_size,
    save_simulated_coco,
    split_coco,
    val_count,
)
from cytobench.simulate.fish import simulate_fish
from cytobench.simulate.metaphase import simulate_metaphase
from cytobench.simulate.qd import ScanParams
from cytobench.simulate.qd_dataset import simulate_qd_dataset
from cytobench.simulate.toy import simulate_toy


def _dataset(n: int) -> dict:
    return {
        "info": {"description": "test"},
        "images": [{"id": i + 1, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(n)],
        "annotations": [{"id": 10 + i, "image_id": i % n + 1} for i in range(2 * n)],
        "categories": [{"id": 1, "name": "x"}],
    }


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(10, 0.3, 3), (10, 0.25, 2), (2, 0.01, 1), (3, 0.99, 2), (5, 0.4, 2)]
)
def test_val_count_rounds_and_keeps_both_splits(n: int, fraction: float, n_val: int) -> None:
    assert val_count(n, fraction) == n_val  # round(2.5) = 2 (banker's rounding, as before)


def test_split_takes_the_last_images_and_keeps_everything_else() -> None:
    data = _dataset(5)
    before = json.dumps(data)
    train, val = split_coco(data, 0.4)
    assert [i["id"] for i in train["images"]] == [1, 2, 3] and [i["id"] for i in val["images"]] == [4, 5]
    assert [a["id"] for a in val["annotations"]] == [13, 14, 18, 19]
    assert len(train["annotations"]) + len(val["annotations"]) == 10
    assert list(train) == list(val) == ["info", "images", "annotations", "categories"]  # same key order
    assert train["info"] == data["info"] and val["categories"] == data["categories"]
    assert json.dumps(data) == before  # the input is not modified
    with pytest.raises(ValueError, match="val_fraction"):
        split_coco(_dataset(1), 0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        split_coco(_dataset(4), 0.0)


def test_save_writes_whole_or_split(tmp_path: Path) -> None:
    assert save_simulated_coco(tmp_path / "a", _dataset(3)) == tmp_path / "a/annotations.json"
    assert json.loads((tmp_path / "a/annotations.json").read_text()) == _dataset(3)
    assert save_simulated_coco(tmp_path / "b", _dataset(3), 0.34) == tmp_path / "b/train.json"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["train.json", "val.json"]
    assert len(json.loads((tmp_path / "b/val.json").read_text())["images"]) == 1


def test_check_size_is_w_h_or_a_square() -> None:
    assert check_size((300, 200)) == (300, 200)
    assert check_size([300, 200]) == (300, 200)
    assert check_size(64) == (64, 64)
    for bad in ((0, 10), (10, -1), (1.5, 2), "64", (True, 5), (1, 2, 3), None):
        with pytest.raises(ValueError, match="size"):
            check_size(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[64, 8192\]"):
        check_size((64, 9000), min_side=64, max_side=8192)


def test_check_out_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            check_out_dir(out)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "simulate",
    [
        lambda out, **kw: simulate_toy(3, out, size=(64, 48), seed=2, **kw),
        lambda out, **kw: simulate_metaphase(3, out, size=(160, 120), n_chromosomes=6, seed=2, **kw),
        lambda out, **kw: simulate_fish(3, out, size=(128, 96), seed=2, **kw),
    ],
    ids=["toy", "metaphase", "fish"],
)
def test_every_simulator_splits_through_split_coco(tmp_path: Path, simulate) -> None:  # noqa: ANN001
    whole = _json(simulate(tmp_path / "whole"))
    train_path = simulate(tmp_path / "split", val_fraction=0.34)
    train, val = split_coco(whole, 0.34)
    assert _json(train_path) == train and _json(tmp_path / "split/val.json") == val
    assert (tmp_path / "split/train.json").read_text() == json.dumps(train)  # the same bytes
    first = sorted((tmp_path / "whole/images").iterdir())
    assert [p.read_bytes() for p in first] == [
        p.read_bytes() for p in sorted((tmp_path / "split/images").iterdir())
    ]


def test_qd_writes_through_the_same_writer(tmp_path: Path) -> None:
    path = simulate_qd_dataset(
        tmp_path, 2, diffusion=1.0, seed=0, save_trajectories=False, params=ScanParams()
    )
    assert path == tmp_path / "annotations.json" and len(_json(path)["images"]) == 2


# ------------------------------------------------------------------------------------------------ CLI
def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_toy_size_is_w_h_and_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "toy", "--n", "3", "--size", "80", "48", "--val-fraction", "0.34"]
    code, out, _ = _run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0 and "train.json" in out
    train, val = _json(tmp_path / "train.json"), _json(tmp_path / "val.json")
    assert (len(train["images"]), len(val["images"])) == (2, 1)
    assert {(i["width"], i["height"]) for i in train["images"]} == {(80, 48)}


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["toy", "--n", "0"], "--n"),
        (["toy", "--n", "-3"], "--n"),
        (["toy", "--n", "2", "--size", "-5", "64"], "--size"),
        (["toy", "--n", "2", "--size", "8", "8"], "size"),
        (["toy", "--n", "2", "--seed", "-1"], "--seed"),
        (["toy", "--n", "1", "--val-fraction", "0.5"], "--val-fraction"),
        (["qd", "--n", "0", "--diffusion", "1"], "positive integer"),
        (["qd", "--n", "1", "--diffusion", "-1"], "got -1.0"),
        (["metaphase", "--n", "1", "--size", "-1", "100"], "size"),
        (["metaphase", "--n", "1", "--size", "128", "96", "--seed", "-1"], "--seed"),
        (["metaphase", "--n", "2", "--size", "128", "96", "--val-fraction", "2"], "--val-fraction"),
        (["fish", "--n", "0"], "--n"),
        (["fish", "--n", "1", "--size", "0"], "size"),
        (["fish", "--n", "1", "--size", "128", "-3"], "size"),
        (["fish", "--n", "1", "--seed", "-3"], "--seed"),
    ],
)
def test_cli_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], word: str
) -> None:
    code, _, err = _run(["simulate", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, err
    assert err.startswith(f"simulate {args[0]}: ")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("simulator", ["toy", "qd", "metaphase", "fish"])
def test_cli_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], simulator: str) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    extra = ["--diffusion", "1"] if simulator == "qd" else []
    code, _, err = _run(["simulate", simulator, "--n", "1", *extra, "--out", str(target)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a file, not a folder" in err, err
    assert target.read_text() == "not a folder"


def test_ensure_simulated_leaves_nothing_behind_on_bad_arguments(tmp_path: Path) -> None:
    from cytobench.data.prepare import MARKER, ensure_simulated

    with pytest.raises(ValueError, match="n_images"):
        ensure_simulated(simulate_toy, tmp_path / "toy", n_images=0)
    assert list(tmp_path.iterdir()) == []  # no half-written temp folder
    out = ensure_simulated(simulate_toy, tmp_path / "toy", n_images=2, size=[48, 32], val_fraction=0.5)
    assert (out / MARKER).is_file() and _json(out / "val.json")["images"][0]["width"] == 48
