"""QD end to end: the smoke localiser trains and `reproduce qd/table1` writes the table; the CLI simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cytobench.cli import main as cli_main
from cytobench.reproduce.qd_table1 import reproduce
from cytobench.train import run
from tests.conftest import compose_config


@pytest.mark.slow
def test_smoke_localiser_then_table(tmp_path: Path, data_dir: Path) -> None:
    run(compose_config(["experiment=qd_smoke"], tmp_path / "run", data_dir))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"loc/auc@eps1", "loc/auc@eps2", "loc/auc@eps3"} <= set(metrics["latest"])

    out = tmp_path / "table"
    result = reproduce(
        tmp_path / "run" / "checkpoints" / "last.pt", out, scale="smoke", progress=lambda _: None
    )
    methods = {"Keypoint R-CNN", "TrackPy", "Intensity centroid", "Gaussian MLE"}
    assert set(result["auc"]) == methods
    for by_d in result["auc"].values():
        assert set(by_d) == {"0.75", "1.0", "1.75"}
        for by_eps in by_d.values():
            values = [by_eps[e] for e in ("1", "2", "3")]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert values == sorted(values)  # a larger tolerance never lowers the AUC
    assert result["trackpy"]["diameter"] % 2 == 1
    table = (out / "table1.md").read_text()
    assert "TrackPy (paper)" in table and "Keypoint R-CNN (ours)" in table
    assert (out / "pr_curves.png").stat().st_size > 0 and (out / "overlay.png").stat().st_size > 0


def test_cli_simulates_a_coco_dataset(tmp_path: Path, capsys) -> None:
    cli_main(
        ["simulate", "qd", "--n", "5", "--diffusion", "1.0", "--seed", "3", "--out", str(tmp_path / "qd")]
    )
    data = json.loads((tmp_path / "qd" / "annotations.json").read_text())
    assert len(data["images"]) == len(data["annotations"]) == 5
    assert data["categories"][0]["keypoints"] == ["centroid"]
    assert all(img["diffusion_um2_s"] == 1.0 for img in data["images"])
    assert (tmp_path / "qd" / "trajectories.npz").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--n", "4", "--diffusion", "-1"], "diffusion"),
        (["--n", "4", "--diffusion", "1", "--n-qd", "-5"], "n_qd"),
        (["--n", "0", "--diffusion", "1"], "n"),
        (["--n", "4"], "exactly one of"),
    ],
)
def test_cli_bad_simulator_input_is_one_line(args: list[str], needle: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["simulate", "qd", *args, "--out", str(tmp_path / "qd")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_disk_and_on_the_fly_routes_give_the_same_frames(tmp_path: Path) -> None:
    import torch

    from cytobench.data import CocoDetectionDataset
    from cytobench.data.qd_dataset import QDSimulatedDataset
    from cytobench.simulate.qd_dataset import simulate_qd_splits

    simulate_qd_splits(tmp_path, n_train=5, n_val=3)
    disk = CocoDetectionDataset(
        tmp_path / "train" / "images",
        tmp_path / "train" / "annotations.json",
        with_keypoints=True,
        bit_depth=8,
    )
    live = QDSimulatedDataset(5, diffusion_range=(0.75, 1.75), seed=1)
    for i in range(5):
        (img_a, tgt_a), (img_b, tgt_b) = disk[i], live[i]
        assert torch.equal(img_a, img_b)
        torch.testing.assert_close(tgt_a["keypoints"], tgt_b["keypoints"])


@pytest.mark.slow
def test_smoke_localiser_trains_from_disk(tmp_path: Path, data_dir: Path) -> None:
    run(
        compose_config(
            [
                "experiment=qd_smoke",
                "data=qd_disk",
                "data.n_train=12",
                "data.n_val=6",
                "data.image_size=48",
                "data.image_size_max=50",
            ],
            tmp_path,
            data_dir,
        )
    )
    assert json.loads((tmp_path / "metrics.json").read_text())["epoch"] == 2
