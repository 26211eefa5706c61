"""QD paper Table 1: epsilon-distance PR AUC of our localiser and TrackPy at D = 0.75 / 1.0 / 1.75.

``cytobench reproduce qd/table1 --checkpoint runs/.../best.pt [--scale cpu]`` simulates the three
test sets with the physics the checkpoint was trained on, runs the trained Keypoint R-CNN, TrackPy
(diameter and minmass fitted on a separate simulated training sample) and two classical baselines,
scores all of them with the shared ``localization`` evaluator at eps = 1, 2, 3 px (70 / 140 / 210 nm)
and prints the table beside the paper's. It also writes ``table1.md``, ``table1.json``, PR curves
per D and eps (``pr_curves.png``) and an overlay like the paper's Fig. 3 (``overlay.png``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cytobench.evaluation.localization import LocalizationEvaluator
from cytobench.reporting.tables import format_table
from cytobench.simulate.qd import QDBatch, ScanParams, simulate_qd_batch

PAPER_FILE = Path(__file__).resolve().parents[3] / "experiments" / "qd" / "paper_table1.yaml"
DIFFUSIONS = (0.75, 1.0, 1.75)
EPS_PX = (1.0, 2.0, 3.0)
# test images per D; "paper" uses the paper's 2,570 / 2,410 / 1,870
SCALES: dict[str, int | None] = {"paper": None, "cpu": 600, "demo": 300, "smoke": 24}
TRACKPY_FIT_IMAGES = {"paper": 2000, "cpu": 600, "demo": 300, "smoke": 48}


def load_paper_table(path: str | Path = PAPER_FILE) -> dict[str, Any]:
    """The paper's numbers (``experiments/qd/paper_table1.yaml``)."""
    return yaml.safe_load(Path(path).read_text())


def test_set_sizes(scale: str, paper: dict[str, Any]) -> dict[float, int]:
    """Images per diffusion coefficient at ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {sorted(SCALES)}")
    n = SCALES[scale]
    return {float(t["diffusion"]): int(n or t["n_images"]) for t in paper["test_sets"]}


def batch_targets(batch: QDBatch) -> list[dict[str, np.ndarray]]:
    """One target per image: the trajectory centroid as keypoint, the trajectory box."""
    return [
        {
            "boxes": batch.boxes_px[i : i + 1].astype(np.float32),
            "labels": np.ones(1, dtype=np.int64),
            "keypoints": np.array([[[*batch.centroids_px[i], 2.0]]], dtype=np.float32),
        }
        for i in range(len(batch))
    ]


@torch.no_grad()
def predict_with_model(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> list[dict[str, np.ndarray]]:
    """Run a localiser on (N, 1, H, W) float images; predictions as NumPy dicts."""
    model.eval()
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunk = [img.to(device) for img in images[start : start + batch_size]]
        for pred in model(chunk):
            out.append({k: v.detach().cpu().numpy() for k, v in pred.items()})
    return out


def score_methods(
    predictions: dict[str, list[dict[str, np.ndarray]]],
    targets: list[dict[str, np.ndarray]],
    eps: Sequence[float],
) -> tuple[dict[str, dict[float, float]], dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]]:
    """AUC per method and tolerance, and the PR curves for plotting."""
    aucs: dict[str, dict[float, float]] = {}
    curves: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {}
    for name, preds in predictions.items():
        evaluator = LocalizationEvaluator(eps=eps)
        evaluator.process(targets, preds)
        metrics = evaluator.compute()
        aucs[name] = {e: metrics[f"loc/auc@eps{e:g}"] for e in eps}
        curves[name] = {e: (r, p) for e, (r, p, _) in evaluator.pr_curves().items()}
    return aucs, curves


def format_comparison(
    paper: dict[str, Any], ours: dict[str, dict[float, dict[float, float]]], eps: Sequence[float]
) -> str:
    """Markdown table: one column per (D, eps), the paper's rows then ours."""
    pixel_nm = float(paper.get("pixel_size_nm", 70))
    diffusions = [float(t["diffusion"]) for t in paper["test_sets"]]
    header = ["method", *[f"D={d:g} {e * pixel_nm:.0f}nm" for d in diffusions for e in eps]]
    rows: list[list[object]] = []
    for name, by_d in paper["rows"].items():
        rows.append([f"{name} (paper)", *[float(by_d[d][i]) for d in diffusions for i in range(len(eps))]])
    for name, by_d in ours.items():
        rows.append([f"{name} (ours)", *[by_d[d][e] for d in diffusions for e in eps]])
    return format_table(header, rows, digits=2)


def fit_trackpy(params: ScanParams, n: int, seed: int) -> Any:
    """TrackPy with diameter and minmass chosen on a simulated training sample (D in the paper's range)."""
    from cytobench.models.classical import TrackpyLocator

    rng = np.random.default_rng([seed, 1])
    train = simulate_qd_batch(n, rng.uniform(0.75, 1.75, n), params, rng)
    return TrackpyLocator().fit(train.counts, train.centroids_px, eps=2.0, max_detections_options=(None, 1))


def reproduce(
    checkpoint: str | Path | None,
    out_dir: str | Path,
    *,
    scale: str = "cpu",
    seed: int = 2024,
    device: str = "auto",
    baselines: Sequence[str] = ("trackpy", "centroid", "gaussian"),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the table; returns everything written to ``table1.json``."""
    from cytobench.data.qd_dataset import counts_to_tensor
    from cytobench.engine.distributed import local_device
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.models.classical import GaussianFitLocator, IntensityCentroidLocator
    from cytobench.reporting.plots import close, plot_pr_grid
    from cytobench.reporting.qd_plots import plot_overlay_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = load_paper_table()
    sizes = test_set_sizes(scale, paper)
    dev = local_device(device)
    model, params, count_scale = None, ScanParams(), None
    if checkpoint:
        model, ckpt = load_model_from_checkpoint(checkpoint, dev)
        params, count_scale = physics_from_checkpoint(ckpt)
    locators: dict[str, Any] = {}
    if "trackpy" in baselines:
        progress(f"fitting TrackPy on {TRACKPY_FIT_IMAGES[scale]} simulated training images ...")
        locators["TrackPy"] = fit_trackpy(params, TRACKPY_FIT_IMAGES[scale], seed)
    if "centroid" in baselines:
        locators["Intensity centroid"] = IntensityCentroidLocator()
    if "gaussian" in baselines:
        locators["Gaussian MLE"] = GaussianFitLocator()

    ours: dict[str, dict[float, dict[float, float]]] = {}
    curves: dict[str, dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]] = {}
    overlays = []
    for k, (diffusion, n) in enumerate(sizes.items()):
        progress(f"D = {diffusion:g} um^2/s: simulating {n} test images and localising ...")
        batch = simulate_qd_batch(
            n, diffusion, params, np.random.default_rng([seed, 100 + k]), return_trajectories=True
        )
        predictions: dict[str, list[dict[str, np.ndarray]]] = {}
        if model is not None:
            predictions["Keypoint R-CNN"] = predict_with_model(
                model, counts_to_tensor(batch.counts, count_scale), dev
            )
        for name, locator in locators.items():
            predictions[name] = locator(batch.counts)
        aucs, pr = score_methods(predictions, batch_targets(batch), EPS_PX)
        for name, by_eps in aucs.items():
            ours.setdefault(name, {})[diffusion] = by_eps
        curves[f"D={diffusion:g}"] = pr
        overlays.append((diffusion, batch, predictions))

    table = format_comparison(paper, ours, EPS_PX)
    (out_dir / "table1.md").write_text(table + "\n")
    close(plot_pr_grid(curves, out_dir / "pr_curves.png"))
    close(plot_overlay_grid(overlays, out_dir / "overlay.png"))
    result = {
        "scale": scale,
        "test_images": {str(d): n for d, n in sizes.items()},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "scan_params": params.to_dict(),
        "auc": {
            name: {str(d): {f"{e:g}": v for e, v in by_e.items()} for d, by_e in by_d.items()}
            for name, by_d in ours.items()
        },
        "trackpy": _trackpy_choice(locators.get("TrackPy")),
        "table": table,
    }
    (out_dir / "table1.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def physics_from_checkpoint(ckpt: dict[str, Any]) -> tuple[ScanParams, float | None]:
    """The scan parameters and count scale the checkpoint's training data used."""
    train = (ckpt.get("data_config") or {}).get("train") or {}
    fields = {k: v for k, v in (train.get("params") or {}).items() if not k.startswith("_")}
    return ScanParams(**fields), train.get("count_scale")


def _trackpy_choice(locator: Any) -> dict[str, Any] | None:
    if locator is None:
        return None
    return {
        "diameter": locator.diameter,
        "minmass": locator.minmass,
        "max_detections": locator.max_detections,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="trained localiser (omit to score the classical methods only)")
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="cpu", help="test-set sizes (paper = 2570/2410/1870)"
    )
    parser.add_argument("--out", default="runs/reproduce/qd_table1", help="folder for table, plots and json")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = reproduce(args.checkpoint, args.out, scale=args.scale, seed=args.seed, device=args.device)
    print(result["table"])
    print(f"\nwritten to {args.out}: table1.md, table1.json, pr_curves.png, overlay.png")
    return result
