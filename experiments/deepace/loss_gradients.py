"""How hard each DeepACEv2 loss term pulls on the shared backbone: value and gradient norm per term.

A loss's value says little about its influence on shared features: the push loss (a hinge with slope 1)
is ~0.03 yet its gradient on the backbone was as large as the classifier's in our from-scratch runs.
This script loads a training checkpoint, takes batches of its own training set and prints, for every
``loss_*`` the model returns, the value and the L2 norm of its gradient over the backbone + FPN weights.

Usage: ``python experiments/deepace/loss_gradients.py RUN/checkpoints/best.pt [--batches 4]
[--template-feature-grad G]`` (the last re-weights the Template branch's gradient, to compare settings).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate

from cytobench.engine.predict import load_model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--template-feature-grad", type=float, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, ckpt = load_model_from_checkpoint(args.checkpoint, torch.device("cpu"))
    if args.template_feature_grad is not None:
        model.roi_heads.template_feature_grad = args.template_feature_grad
    model.train()
    dataset = instantiate({**ckpt["data_config"]["train"], "transforms": None})
    batch_size = int(ckpt["data_config"].get("batch_size", 2))
    body = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]

    rows: dict[str, list[tuple[float, float]]] = {}
    for b in range(args.batches):
        items = [dataset[(b * batch_size + i) % len(dataset)] for i in range(batch_size)]
        losses = model([img for img, _ in items], [{k: t[k] for k in ("boxes", "labels")} for _, t in items])
        for key, loss in losses.items():
            grads = [
                g
                for g in torch.autograd.grad(loss, body, retain_graph=True, allow_unused=True)
                if g is not None
            ]
            norm = float(torch.sqrt(sum((g**2).sum() for g in grads))) if grads else 0.0
            rows.setdefault(key, []).append((float(loss), norm))

    print(f"{args.checkpoint} ({args.batches} batches of {batch_size}; medians)")
    print(f"{'loss':<18}{'value':>10}{'|grad| on backbone':>22}")
    for key, values in rows.items():
        value = statistics.median(v for v, _ in values)
        norm = statistics.median(n for _, n in values)
        print(f"{key:<18}{value:>10.4f}{norm:>22.3f}")


if __name__ == "__main__":
    main()
