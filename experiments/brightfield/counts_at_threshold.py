"""What a user counting cells sees: instances scored >= a confidence threshold, against the truth.

Mask AP integrates over every confidence; at one threshold a model can still show each cell twice (duplicates
below AP's notice when they score under the true match) or miss the cells it is unsure of. Per model: the
predictions per image kept at ``--score``, and precision / recall / F1 of those masks at mask IoU >= 0.5
(each truth matched once, predictions taken by descending score).

    python experiments/brightfield/counts_at_threshold.py \
        --test-json OUT/test_data/<set>/instances/annotations.json \
        --checkpoint mask_rcnn=RUN1/checkpoints/best.pt sparse=RUN2/checkpoints/best.pt

``--test-json``: the held-out instance set a ``cytobench reproduce brightfield/table5_7`` run wrote under its
``--out`` (the same 50 images as its table).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def match_masks(pred: np.ndarray, truth: np.ndarray, iou_thr: float = 0.5) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of boolean masks ``pred`` (P, H, W; best first) against ``truth`` (T, H, W)."""
    used = np.zeros(len(truth), dtype=bool)
    pixels = int(np.prod(truth.shape[1:]))
    flat_truth = truth.reshape(len(truth), pixels)
    tp = 0
    for mask in pred.reshape(len(pred), pixels):
        inter = (flat_truth & mask).sum(axis=1)
        union = (flat_truth | mask).sum(axis=1)
        iou = np.where(used, 0.0, inter / np.maximum(union, 1))
        if len(truth) and iou.max() >= iou_thr:
            used[int(iou.argmax())] = True
            tp += 1
    return tp, len(pred) - tp, int((~used).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-json", required=True, type=Path)
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="NAME=PATH")
    parser.add_argument("--score", type=float, default=0.5)
    args = parser.parse_args()

    from cytobench.data.brightfield_instances import brightfield_instance_dataset
    from cytobench.engine.predict import load_model_from_checkpoint

    dataset = brightfield_instance_dataset(
        args.test_json.parent, args.test_json, amodal=False, transforms=None
    )
    print("| model | predictions >= score per image | cells per image | precision | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        network, _ = load_model_from_checkpoint(path, "cpu")
        tp = fp = fn = kept = cells = 0
        with torch.no_grad():
            for index in range(len(dataset)):
                image, target = dataset[index]
                pred = network([image])[0]
                scores = pred["scores"].numpy()
                order = np.argsort(-scores)[: int((scores >= args.score).sum())]
                masks = pred["masks"].numpy().reshape(-1, *image.shape[-2:])[order] > 0.5
                truth = np.asarray(target["masks"], dtype=bool)
                counts = match_masks(masks, truth)
                tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
                kept, cells = kept + len(masks), cells + len(truth)
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        n = len(dataset)
        print(f"| {name} | {kept / n:.1f} | {cells / n:.1f} | {precision:.3f} | {recall:.3f} | {f1:.3f} |")


if __name__ == "__main__":
    main()
