"""Evaluator state: what DDP ranks gather merges into exactly the single-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytobench.engine.inference import PredictionRecorder, inference_on_dataset
from cytobench.evaluation import CocoEvaluator, EnumerationEvaluator, EvaluatorList, LocalizationEvaluator


def _images(n: int) -> list[tuple[dict, dict]]:
    """(target, prediction) pairs with boxes, keypoints and masks; predictions are noisy truth."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 40, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 12, (k, 2))], axis=1).astype(np.float32)
        masks = np.zeros((k, 64, 64), np.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            masks[j, y0:y1, x0:x1] = 1
        kps = np.concatenate([(boxes[:, :2] + boxes[:, 2:])[:, None] / 2, np.ones((k, 1, 1))], axis=2)
        target = {
            "boxes": boxes,
            "labels": np.ones(k, np.int64),
            "masks": masks,
            "keypoints": kps,
            "image_id": i + 1,
        }
        noisy = boxes + rng.normal(0, 1.0, boxes.shape).astype(np.float32)
        pred = {"boxes": noisy, "scores": rng.uniform(0.1, 1, k), "labels": np.ones(k, np.int64), "masks": masks,
                "keypoints": kps + rng.normal(0, 0.5, kps.shape)}  # fmt: skip
        pairs.append((target, pred))
    return pairs


def _evaluators() -> EvaluatorList:
    return EvaluatorList(
        [CocoEvaluator(("bbox", "segm")), EnumerationEvaluator(), LocalizationEvaluator(eps=(1.0, 2.0))]
    )


def test_two_ranks_states_merge_to_the_single_process_metrics() -> None:
    pairs = _images(9)
    whole = _evaluators()
    whole.process([t for t, _ in pairs], [p for _, p in pairs])
    ranks = [_evaluators(), _evaluators()]
    for rank, evaluator in enumerate(ranks):  # ShardSampler order: every 2nd image from the rank
        shard = pairs[rank::2]
        evaluator.process([t for t, _ in shard], [p for _, p in shard])
    merged = _evaluators()
    merged.load_states([r.state() for r in ranks])
    expected, got = whole.compute(), merged.compute()
    assert set(got) == set(expected) and len(got) > 30
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    ann_ids = [a["id"] for a in merged.evaluators[0].coco_gt()["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))  # renumbered: ranks each counted from 1


def test_duplicate_keys_and_images_are_errors() -> None:
    with pytest.raises(ValueError, match="prefix"):
        EvaluatorList([EnumerationEvaluator(), EnumerationEvaluator()]).compute()
    ok = EvaluatorList([EnumerationEvaluator(), EnumerationEvaluator(prefix="enum_soft")]).compute()
    assert "enum/wcr" in ok and "enum_soft/wcr" in ok
    pairs = _images(2)
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        EnumerationEvaluator().process([t for t, _ in pairs], [pairs[0][1]])
    a, b = CocoEvaluator(), CocoEvaluator()
    a.process([pairs[0][0]], [pairs[0][1]])
    b.process([pairs[0][0]], [pairs[0][1]])
    with pytest.raises(Exception, match="processed twice"):
        CocoEvaluator().load_states([a.state(), b.state()])


class _Modes(torch.nn.Module):
    """Two post-processings of one pass: "all" keeps every box, "top" the best one."""

    def __init__(self, pairs: list[tuple[dict, dict]]) -> None:
        super().__init__()
        self.pairs, self.passes = pairs, 0

    def predict_modes(self, images: list[torch.Tensor], modes: list[str]) -> dict[str, list[dict]]:
        preds = [self.pairs[self.passes + i][1] for i in range(len(images))]
        self.passes += len(images)
        top = [{k: v[np.argsort(-p["scores"])[:1]] for k, v in p.items()} for p in preds]
        return {"all": preds, "top": top}


def test_the_loop_scores_each_mode_of_one_pass_with_its_own_evaluator() -> None:
    pairs = _images(5)
    loader = [
        ([torch.zeros(1, 64, 64)] * 2, [t for t, _ in pairs[:2]]),
        ([torch.zeros(1, 64, 64)] * 3, [t for t, _ in pairs[2:]]),
    ]
    model = _Modes(pairs)
    recorders = {"all": PredictionRecorder(), "top": PredictionRecorder()}
    evaluators = {m: EvaluatorList([EnumerationEvaluator(), recorders[m]]) for m in ("all", "top")}
    metrics = inference_on_dataset(model, loader, evaluators)
    assert model.passes == 5 and set(metrics) == {"all", "top"}
    assert [len(p["boxes"]) for p in recorders["top"].predictions] == [1] * 5
    assert [p["image_id"] for p in recorders["all"].predictions] == [1, 2, 3, 4, 5]
    n_true = sum(len(t["boxes"]) for t, _ in pairs)
    assert metrics["top"]["enum/tp"] + metrics["top"]["enum/fn"] == n_true
    assert metrics["all"]["enum/tp"] >= metrics["top"]["enum/tp"]
