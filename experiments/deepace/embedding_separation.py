"""Do a DeepACEv2 model's Template embeddings separate what Embedding-Guided NMS needs them to separate?

EG-NMS (Algorithm 1) decays an overlapping candidate like Soft-NMS only when its embedding is within
Delta (0.3) of the kept box's; otherwise it keeps its score. So EG beats Soft-NMS when overlapping
candidates of *different* chromosomes differ by more than Delta (kept: recall on crossings) and
candidates of the *same* chromosome differ by less (decayed: no duplicates). This script takes a
checkpoint and its own validation set, gathers every pair of pre-NMS candidates (score > the model's
threshold) that overlap with IoU >= --min-iou, labels each candidate with the ground truth it overlaps
most (IoU >= 0.5; others are left out) and prints the |e_i - e_j| distribution of same- and
different-chromosome pairs and the fractions on each side of Delta.

Usage: ``python experiments/deepace/embedding_separation.py RUN/checkpoints/best.pt [--min-iou 0.3]``
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from cytobench.engine.predict import load_model_from_checkpoint
from cytobench.io.images import read_image_tensor
from cytobench.reproduce.deepace_eval import load_test_data


@torch.inference_mode()
def candidate_pairs(model, image: torch.Tensor, gt_boxes: torch.Tensor, min_iou: float):
    """(|de|, same chromosome?) for each overlapping pair of one image's pre-NMS candidates."""
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    image_list, _ = model.transform([image])
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(image_list, features)
    heads = model.roi_heads
    logits, regression = heads.box_predictor(
        heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    )
    boxes, _, _ = heads._candidates(logits, regression, proposals, image_list.image_sizes)[0]
    if len(boxes) < 2 or len(gt_boxes) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    emb = heads.embed_boxes(features, [boxes], image_list.image_sizes)[0]
    emb = emb[:, None] if emb.ndim == 1 else emb
    (h, w), (h0, w0) = image_list.image_sizes[0], image.shape[-2:]
    gt = gt_boxes * torch.tensor([w / w0, h / h0, w / w0, h / h0])
    best_iou, owner = box_iou(boxes, gt).max(dim=1)
    owned = best_iou >= 0.5
    boxes, emb, owner = boxes[owned], emb[owned], owner[owned]
    i, j = torch.triu_indices(len(boxes), len(boxes), offset=1)
    overlap = box_iou(boxes, boxes)[i, j] >= min_iou
    i, j = i[overlap], j[overlap]
    distance = torch.linalg.vector_norm(emb[i] - emb[j], dim=1)
    return distance.numpy(), (owner[i] == owner[j]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--min-iou", type=float, default=0.3)
    args = parser.parse_args()

    model, ckpt = load_model_from_checkpoint(args.checkpoint, torch.device("cpu"))
    if getattr(model.roi_heads, "template", None) is None:
        raise SystemExit(f"{args.checkpoint}: the model has no Template branch, hence no embeddings")
    val = ckpt["data_config"]["val"]
    targets, paths = load_test_data(val["ann_file"], val["root"])
    delta = model.roi_heads.eg_delta
    distances, same = [], []
    for target, path in zip(targets, paths):
        image = read_image_tensor(path)
        d, s = candidate_pairs(
            model, image, torch.as_tensor(target["boxes"], dtype=torch.float32), args.min_iou
        )
        distances.append(d)
        same.append(s)
    d, s = np.concatenate(distances), np.concatenate(same)
    print(
        f"{args.checkpoint}: {len(paths)} val images, candidate pairs with IoU >= {args.min_iou}, Delta = {delta}"
    )
    for name, sel, good in (("same chromosome", s, "<="), ("different chromosomes", ~s, ">")):
        x = d[sel]
        if not len(x):
            print(f"  {name}: no pairs")
            continue
        q = np.percentile(x, [25, 50, 75])
        frac = np.mean(x <= delta) if good == "<=" else np.mean(x > delta)
        print(
            f"  {name}: {len(x)} pairs, |de| quartiles {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}; "
            f"{100 * frac:.1f}% {good} Delta (what EG-NMS needs)"
        )


if __name__ == "__main__":
    main()
