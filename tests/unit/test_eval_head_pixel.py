"""HeadPixelEvaluator: per-head binary metrics on hand-counted maps, thresholds, ignored pixels, absent heads,
state merging, config, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cytobench.errors import BadInputError, CytobenchError
from cytobench.evaluation import EvaluatorList, HeadPixelEvaluator, PixelEvaluator

ROOT = Path(__file__).resolve().parents[2]

# 3 x 4 semantic map (0 background, 1 cytoplasm, 2 nucleus, 3 border) and its overlap map.
SEMANTIC = torch.tensor([[0, 3, 3, 0], [0, 1, 2, 0], [3, 1, 1, 255]])
OVERLAP = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.uint8)


def target(image_id: int = 1) -> dict:
    return {"image_id": image_id, "semantic": SEMANTIC, "overlap": OVERLAP}


def approx(values: dict[str, float], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(values[key]), key
        else:
            assert values[key] == pytest.approx(value), key


def test_cytoplasm_counts_by_hand() -> None:
    # truth (whole cell = classes 1-3), 255 left out:  pred > 0.5:
    #   0 1 1 0                                         1 1 0 0
    #   0 1 1 0                                         0 1 1 1
    #   1 1 1 .                                         0 1 1 .
    # TP 5, FP 2 ((0,0), (1,3)), FN 2 ((0,2), (2,0)), TN 2 -> 11 pixels
    prob = torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.4, 0.7, 0.6, 0.55], [0.3, 0.9, 0.8, 0.99]])
    evaluator = HeadPixelEvaluator()
    evaluator.process([target()], [{"maps": {"cytoplasm": prob}}])
    approx(
        evaluator.compute(),
        {
            "pix/cytoplasm_accuracy": 7 / 11,
            "pix/cytoplasm_precision": 5 / 7,
            "pix/cytoplasm_recall": 5 / 7,
            "pix/cytoplasm_f1": 10 / 14,
            "pix/cytoplasm_iou": 5 / 9,
        },
    )


def test_each_semantic_head_reads_its_class_and_a_base_model_has_only_cytoplasm_keys() -> None:
    truth_nuclei = (SEMANTIC == 2).float()
    border = (SEMANTIC == 3).float()
    maps = {"nuclei": truth_nuclei, "border": border, "background": torch.zeros(3, 4)}
    evaluator = HeadPixelEvaluator()
    evaluator.process([target()], [{"maps": maps}])
    metrics = evaluator.compute()
    assert sorted(metrics) == sorted(
        f"pix/{h}_{m}"
        for h in ("nuclei", "border", "background")
        for m in ("accuracy", "precision", "recall", "f1", "iou")
    )
    approx(metrics, {"pix/nuclei_f1": 1.0, "pix/nuclei_accuracy": 1.0, "pix/border_iou": 1.0})
    # background predicted nowhere: 4 true background pixels missed, precision undefined
    approx(
        metrics,
        {
            "pix/background_recall": 0.0,
            "pix/background_precision": float("nan"),
            "pix/background_f1": 0.0,
            "pix/background_accuracy": 7 / 11,
        },
    )
    base = HeadPixelEvaluator()
    base.process([target()], [{"maps": {"cytoplasm": torch.ones(3, 4)}}])
    assert {k.split("_")[0] for k in base.compute()} == {"pix/cytoplasm"}


def test_thresholds_are_strict_and_per_head() -> None:
    # overlap threshold 0.3: 0.3 itself is not foreground, 0.31 is; the cytoplasm map at 0.5 is all background
    overlap = torch.tensor([[0.0, 0.3, 0.31, 0.9], [0.0, 0.0, 0.29, 0.0], [0.0, 0.0, 0.0, 0.0]])
    evaluator = HeadPixelEvaluator()
    evaluator.process([target()], [{"maps": {"overlap": overlap, "cytoplasm": torch.full((3, 4), 0.5)}}])
    metrics = evaluator.compute()
    # overlap (every pixel counts, no ignore): TP 2 ((0,2), (0,3)), FN 1 ((1,2)), FP 0, TN 9
    approx(
        metrics, {"pix/overlap_precision": 1.0, "pix/overlap_recall": 2 / 3, "pix/overlap_accuracy": 11 / 12}
    )
    approx(metrics, {"pix/cytoplasm_recall": 0.0})
    lowered = HeadPixelEvaluator(thresholds={"overlap": 0.2})
    lowered.process([target()], [{"maps": {"overlap": overlap}}])
    approx(lowered.compute(), {"pix/overlap_recall": 1.0, "pix/overlap_precision": 3 / 4})


def test_ignored_pixels_are_left_out_of_semantic_heads_only() -> None:
    everything = torch.ones(3, 4)
    evaluator = HeadPixelEvaluator()
    evaluator.process([target()], [{"maps": {"cytoplasm": everything, "overlap": everything}}])
    state = evaluator.state()["confusion"]
    names = evaluator.head_names
    assert state[names.index("cytoplasm")].sum() == 11  # the 255 pixel is not counted
    assert state[names.index("overlap")].sum() == 12  # the overlap map has no ignore value


def test_heads_restrict_what_is_scored_and_images_accumulate() -> None:
    only = HeadPixelEvaluator(heads=["overlap"])
    both = {"cytoplasm": torch.ones(3, 4), "overlap": OVERLAP.float()}
    only.process([target(1), target(2)], [{"maps": both}, {"maps": {"overlap": torch.zeros(3, 4)}}])
    metrics = only.compute()
    assert all(k.startswith("pix/overlap_") for k in metrics)
    # image 1 perfect (3 TP), image 2 predicts nothing (3 FN): recall 3 / 6, precision 1
    approx(metrics, {"pix/overlap_recall": 0.5, "pix/overlap_precision": 1.0, "pix/overlap_iou": 0.5})


def test_states_merge_like_one_stream() -> None:
    rng = np.random.default_rng(0)
    preds = [
        {"maps": {h: torch.from_numpy(rng.random((3, 4))) for h in ("cytoplasm", "overlap")}}
        for _ in range(4)
    ]
    whole, first, second = HeadPixelEvaluator(), HeadPixelEvaluator(), HeadPixelEvaluator()
    targets = [target(i) for i in range(4)]
    whole.process(targets, preds)
    first.process(targets[:2], preds[:2])
    second.process(targets[2:], preds[2:])
    merged = HeadPixelEvaluator()
    merged.load_states([first.state(), second.state()])
    assert merged.compute() == whole.compute()
    with pytest.raises(ValueError, match="state of shape"):
        merged.load_states([{"confusion": np.zeros((2, 2, 2)), "images": np.zeros(2)}])


def test_keys_do_not_clash_with_the_pixel_evaluator() -> None:
    both = EvaluatorList([HeadPixelEvaluator(), PixelEvaluator(num_classes=4)])
    pred = {"maps": {"cytoplasm": torch.ones(3, 4)}, "semantic": SEMANTIC.clamp(max=3)}
    both.process([{**target(), "semantic": SEMANTIC.clamp(max=3)}], [pred])
    metrics = both.compute()
    assert "pix/cytoplasm_f1" in metrics and "pix/f1_c1" in metrics


def test_bad_input() -> None:
    evaluator = HeadPixelEvaluator()
    with pytest.raises(CytobenchError, match="image 1 has no 'maps'"):
        evaluator.process([target()], [{"semantic": torch.zeros(3, 4)}])
    with pytest.raises(CytobenchError, match=r"maps: \[overlap\]"):
        evaluator.process([{"image_id": 1, "semantic": SEMANTIC}], [{"maps": {"overlap": torch.zeros(3, 4)}}])
    with pytest.raises(CytobenchError, match="with_semantic: true"):
        evaluator.process([{"image_id": 1}], [{"maps": {"cytoplasm": torch.zeros(3, 4)}}])
    with pytest.raises(ValueError, match=r"image 1: the cytoplasm map is \(2, 4\)"):
        evaluator.process([target()], [{"maps": {"cytoplasm": torch.zeros(2, 4)}}])
    with pytest.raises(BadInputError, match="evaluator.heads"):
        HeadPixelEvaluator(heads=["cytoplasm", "nucleus"])
    with pytest.raises(BadInputError, match=r"evaluator.thresholds: overlap: must lie in \[0, 1\)"):
        HeadPixelEvaluator(thresholds={"overlap": 1.0})
    with pytest.raises(BadInputError, match="unknown head"):
        HeadPixelEvaluator(thresholds={"cells": 0.5})


def test_config_builds_the_thesis_defaults() -> None:
    cfg = OmegaConf.load(ROOT / "conf" / "evaluator" / "brightfield_pixel.yaml")
    evaluator = instantiate(cfg)
    assert isinstance(evaluator, HeadPixelEvaluator)
    assert evaluator.thresholds["overlap"] == 0.3 and evaluator.thresholds["cytoplasm"] == 0.5
    assert evaluator.ignore_index == 255 and evaluator.heads == list(evaluator.head_names)
