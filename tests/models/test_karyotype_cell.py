"""The pair prior as post-processing of any detector with per-class scores (cytobench.models.karyotype_cell):
duplicates of one box count once, overlapping boxes merge, a weak extra copy of a class moves to its next
choice, label columns follow the model's own class order."""

from __future__ import annotations

import pytest
import torch

from cytobench.errors import BadInputError
from cytobench.models.karyotype_cell import PairPriorCells, chromosome_columns, pair_prior_cell
from cytobench.simulate.chromosomes import CLASS_NAMES

IDENTITY = torch.arange(24)


def scores_row(**by_class: float) -> list[float]:
    """A 24-column class score row with the given class names' scores (e.g. ``c1=0.8``), the rest 0."""
    row = [0.0] * 24
    for name, value in by_class.items():
        row[CLASS_NAMES.index(name[1:])] = value
    return row


def detections(boxes: list[list[float]], rows: list[list[float]]) -> dict[str, torch.Tensor]:
    class_scores = torch.tensor(rows)
    return {
        "boxes": torch.tensor(boxes),
        "scores": class_scores.max(dim=1).values,
        "labels": class_scores.argmax(dim=1) + 1,
        "class_scores": class_scores,
    }


def test_a_box_kept_under_two_labels_counts_once() -> None:
    # one default box / RoI kept as a 4 (0.4) and as a 5 (0.35) by a per-class NMS: the same box twice
    row = scores_row(c4=0.4, c5=0.35)
    pred = detections([[0, 0, 10, 40], [0, 0, 10, 40]], [row, row])
    pred["labels"] = torch.tensor([4, 5])
    pred["scores"] = torch.tensor([0.4, 0.35])
    out = pair_prior_cell(pred, IDENTITY)
    assert len(out["boxes"]) == 1
    assert float(out["scores"][0]) == pytest.approx(0.75)  # existence 0.4 + 0.35, not 1 - 0.25^2
    assert int(out["labels"][0]) == 4


def test_overlapping_boxes_merge_and_a_weak_extra_copy_moves_to_its_next_choice() -> None:
    boxes = [[0, 0, 10, 40], [1, 0, 11, 40], [30, 0, 40, 40], [60, 0, 70, 40], [90, 0, 100, 40]]
    rows = [
        scores_row(c1=0.6),  # two boxes of one chromosome 1: merged (IoU 0.82)
        scores_row(c1=0.5),
        scores_row(c1=0.9),
        scores_row(c1=0.9),  # a confident second 1
        scores_row(c1=0.5, c2=0.45),  # weakly a 1, nearly a 2: the third 1 moves to 2
    ]
    out = pair_prior_cell(detections(boxes, rows), IDENTITY)
    # kept boxes by decreasing existence (the merged pair's 0.6 ranked it last); the merged one takes 1 - 0.4 * 0.5
    assert out["boxes"].tolist() == [[90, 0, 100, 40], [30, 0, 40, 40], [60, 0, 70, 40], [0, 0, 10, 40]]
    assert out["scores"].tolist() == pytest.approx([0.95, 0.9, 0.9, 1 - 0.4 * 0.5])
    # three sure 1s keep their class (a prior, not a rule: a trisomy stays); the weak fourth 1 becomes a 2
    assert out["labels"].tolist() == [2, 1, 1, 1]
    assert float(out["class_scores"][3, 0]) == pytest.approx(1.1)  # class evidence summed


def test_wrapper_reads_the_models_own_class_order() -> None:
    names = list(reversed(CLASS_NAMES))  # label 1 is "Y", label 24 is "1"
    columns = chromosome_columns(names)
    assert columns[0] == 23 and columns[23] == 0

    class Stub(torch.nn.Module):
        def forward(self, images):
            rows = [list(reversed(scores_row(c1=0.9))), list(reversed(scores_row(c1=0.9)))]
            rows.append(list(reversed(scores_row(c1=0.5, c2=0.45))))
            return [detections([[0, 0, 10, 40], [30, 0, 40, 40], [60, 0, 70, 40]], rows)]

    model = PairPriorCells(Stub(), columns).eval()
    (out,) = model([torch.zeros(1, 8, 8)])
    by_box = {tuple(b): names[int(label) - 1] for b, label in zip(out["boxes"].tolist(), out["labels"])}
    assert by_box == {
        (0, 0, 10, 40): "1",
        (30, 0, 40, 40): "1",
        (60, 0, 70, 40): "2",
    }  # the model's label ids
    with pytest.raises(BadInputError, match="24 chromosome classes"):
        chromosome_columns(["chromosome"])


def test_empty_detections_pass_through() -> None:
    empty = detections([[0, 0, 1, 1]], [scores_row(c1=0.9)])
    empty = {k: v[:0] for k, v in empty.items()}
    out = pair_prior_cell(empty, IDENTITY)
    assert all(len(v) == 0 for v in out.values())
