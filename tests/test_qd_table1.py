"""QD Table 1 parts (fast): physics read from a checkpoint's data config, test sets per D, the model
through the streaming loop, the table beside the paper's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytobench.errors import CytobenchError
from cytobench.reproduce import qd_table1
from cytobench.reproduce.qd_table1 import (
    EPS_PX,
    batch_targets,
    format_comparison,
    physics_from_data_config,
    predict_with_model,
    simulate_test_sets,
)
from cytobench.simulate.qd import ScanParams


def test_physics_from_either_qd_data_config() -> None:
    on_the_fly = {  # data=qd: the training set simulates frames with params and count_scale
        "params": {"n_qd": 7.0},
        "train": {"params": {"n_qd": 7.0, "_convert_": "all"}, "count_scale": 100.0},
    }
    params, scale = physics_from_data_config(on_the_fly)
    assert params == ScanParams(n_qd=7.0) and scale == 100.0
    on_disk = {"params": {"n_qd": 9.0}, "prepare": {"params": {"n_qd": 9.0}}, "train": {"ann_file": "x"}}
    params, scale = physics_from_data_config(on_disk)  # data=qd_disk: the prepare node's params
    assert params == ScanParams(n_qd=9.0) and scale is None
    assert physics_from_data_config({}) == (ScanParams(), None)
    with pytest.raises(CytobenchError, match="ckpt.pt: the training data's params are not scan parameters"):
        physics_from_data_config({"train": {"params": {"warp": 9}}}, "ckpt.pt")


def test_test_sets_are_drawn_per_diffusion_coefficient() -> None:
    params = ScanParams()
    first = dict(simulate_test_sets(params, {0.75: 3, 1.0: 2}, seed=5))
    again = dict(simulate_test_sets(params, {0.75: 1, 1.0: 2}, seed=5))
    assert [len(b) for b in first.values()] == [3, 2]
    # set k has its own generator: the second set does not depend on the first one's size
    np.testing.assert_array_equal(first[1.0].counts, again[1.0].counts)
    assert first[0.75].positions_um is not None  # trajectories kept for the overlay


class _FirstPixel(torch.nn.Module):
    """A 'localiser' whose one detection sits at (index of the batch, first pixel value)."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for k, img in enumerate(images):
            value = float(img.reshape(-1)[0])
            out.append(
                {
                    "boxes": torch.tensor([[k, value, k + 1.0, value + 1.0]]),
                    "scores": torch.tensor([value]),
                    "labels": torch.ones(1, dtype=torch.int64),
                    "keypoints": torch.tensor([[[k + 0.5, value + 0.5, 1.0]]]),
                    "keypoints_scores": torch.ones(1, 1),
                }
            )
        return out


def test_model_predictions_come_through_the_loop_in_image_order() -> None:
    images = torch.arange(5.0).reshape(5, 1, 1, 1) / 10
    targets = [{"image_id": i} for i in range(5)]
    preds = predict_with_model(_FirstPixel(), images, targets, torch.device("cpu"), batch_size=2)
    assert [p["image_id"] for p in preds] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([p["scores"][0] for p in preds], [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-7)
    assert [p["keypoints"][0, 0, 0] for p in preds] == [0.5, 1.5, 0.5, 1.5, 0.5]  # position in its batch
    assert all(isinstance(p["boxes"], np.ndarray) and "keypoints_scores" not in p for p in preds)


def test_batch_targets_hold_the_centroid_as_keypoint() -> None:
    _, batch = next(iter(simulate_test_sets(ScanParams(), {1.0: 2}, seed=1)))
    targets = batch_targets(batch)
    assert [t["image_id"] for t in targets] == [0, 1]
    np.testing.assert_array_equal(targets[1]["keypoints"][0, 0, :2], batch.centroids_px[1].astype(np.float32))


def test_table_has_the_papers_rows_then_ours() -> None:
    paper = qd_table1.load_paper_table()
    ours = {"Mine": {d: {e: 0.5 for e in EPS_PX} for d in qd_table1.DIFFUSIONS}}
    table = format_comparison(paper, ours, EPS_PX)
    lines = table.splitlines()
    assert (
        lines[0].split("|")[2].strip() == "D=0.75 70nm" and lines[0].split("|")[-2].strip() == "D=1.75 210nm"
    )
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["TrackPy (paper)", "FCNN (paper)", "Mine (ours)"]
    assert [c.strip() for c in lines[2].split("|")[2:5]] == ["0.06", "0.42", "0.73"]
    assert [c.strip() for c in lines[-1].split("|")[2:-1]] == ["0.50"] * 9
