"""experiments/brightfield/counts_at_threshold.py: greedy mask matching on hand-built masks."""

from __future__ import annotations

import importlib.util

import numpy as np

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "counts_at_threshold", ROOT / "experiments" / "brightfield" / "counts_at_threshold.py"
)
counts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(counts)


def _box(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def test_a_duplicate_is_a_false_positive_and_a_missed_cell_a_false_negative() -> None:
    truth = np.stack([_box(0, 0, 4, 4), _box(6, 6, 4, 4)])
    # the first cell found exactly, then again as a duplicate covering 12 of its 16 pixels (IoU 0.75);
    # the second cell found as a 2 x 4 half (IoU 0.5: a match at the threshold)
    pred = np.stack([_box(0, 0, 4, 4), _box(0, 0, 3, 4), _box(6, 6, 2, 4)])
    assert counts.match_masks(pred, truth) == (2, 1, 0)
    assert counts.match_masks(pred[:1], truth) == (1, 0, 1)
    assert counts.match_masks(pred[:0], truth) == (0, 0, 2)
    assert counts.match_masks(pred, truth[:0]) == (0, 3, 0)
    # a quarter of a cell (IoU 0.25) is no match
    assert counts.match_masks(np.stack([_box(0, 0, 2, 2)]), truth[:1]) == (0, 1, 1)
