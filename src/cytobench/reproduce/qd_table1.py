"""QD paper Table 1: epsilon-distance PR AUC of our localiser and TrackPy at D = 0.75 / 1.0 / 1.75.

``cytobench reproduce qd/table1 --checkpoint runs/.../best.pt [--scale cpu]`` simulates the three
test sets (in memory, one per diffusion coefficient) with the physics the checkpoint was trained on
(:func:`physics_from_data_config`), runs the trained Keypoint R-CNN through the streaming loop, TrackPy
(diameter and minmass fitted on a separate simulated training sample) and two classical baselines,
scores all of them with the shared ``localization`` evaluator at eps = 1, 2, 3 px (70 / 140 / 210 nm)
and prints the table beside the paper's. It also writes ``table1.md``, ``table1.json``, PR curves
per D and eps (``pr_curves.png``) and an overlay like the paper's Fig. 3 (``overlay.png``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import CytobenchError
from cytobench.evaluation.localization import LocalizationEvaluator
from cytobench.reproduce.base import check_scale, format_beside_paper, in_batches, load_paper, write_report
from cytobench.simulate.qd import QDBatch, ScanParams, simulate_qd_batch

DIFFUSIONS = (0.75, 1.0, 1.75)
EPS_PX = (1.0, 2.0, 3.0)
# test images per D; "paper" uses the paper's 2,570 / 2,410 / 1,870
SCALES: dict[str, int | None] = {"paper": None, "cpu": 600, "demo": 300, "smoke": 24}
TRACKPY_FIT_IMAGES = {"paper": 2000, "cpu": 600, "demo": 300, "smoke": 48}


def load_paper_table() -> dict[str, Any]:
    """The paper's numbers (package data ``papers/qd_table1.yaml``)."""
    return load_paper("qd_table1")


def test_set_sizes(scale: str, paper: dict[str, Any]) -> dict[float, int]:
    """Images per diffusion coefficient at ``scale``."""
    n = check_scale(scale, SCALES)
    return {float(t["diffusion"]): int(n or t["n_images"]) for t in paper["test_sets"]}


def batch_targets(batch: QDBatch) -> list[dict[str, Any]]:
    """One target per image (``image_id`` = its index): the trajectory centroid as keypoint, the box."""
    return [
        {
            "image_id": i,
            "boxes": batch.boxes_px[i : i + 1].astype(np.float32),
            "labels": np.ones(1, dtype=np.int64),
            "keypoints": np.array([[[*batch.centroids_px[i], 2.0]]], dtype=np.float32),
        }
        for i in range(len(batch))
    ]


def simulate_test_sets(
    params: ScanParams, sizes: Mapping[float, int], seed: int
) -> Iterator[tuple[float, QDBatch]]:
    """The held-out test sets, one at a time: ``(D, batch with trajectories)`` per diffusion coefficient.

    Set ``k`` (in the order of ``sizes``) is drawn from ``numpy.random.default_rng([seed, 100 + k])``,
    so it does not depend on the other sets' sizes; TrackPy's fitting sample uses ``[seed, 1]``.
    """
    for k, (diffusion, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, 100 + k])
        yield diffusion, simulate_qd_batch(n, diffusion, params, rng, return_trajectories=True)


def predict_with_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: Sequence[Mapping[str, Any]],
    device: torch.device,
    batch_size: int = 64,
) -> list[dict[str, np.ndarray]]:
    """Run a localiser on (N, 1, H, W) float images through the streaming loop; NumPy dicts per image."""
    from cytobench.engine.inference import PredictionRecorder, inference_on_dataset

    recorder = PredictionRecorder(keys=("boxes", "scores", "labels", "keypoints"))
    inference_on_dataset(model, in_batches(images, targets, batch_size), recorder, device)
    return recorder.predictions


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
    theirs = {
        name: [float(by_d[d][i]) for d in diffusions for i in range(len(eps))]
        for name, by_d in paper["rows"].items()
    }
    mine = {name: [by_d[d][e] for d in diffusions for e in eps] for name, by_d in ours.items()}
    return format_beside_paper(header, theirs, mine, digits=2)


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
        model, info = load_model_from_checkpoint(checkpoint, dev)
        params, count_scale = physics_from_data_config(info.get("data_config") or {}, checkpoint)
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
    for diffusion, batch in simulate_test_sets(params, sizes, seed):
        progress(f"D = {diffusion:g} um^2/s: {len(batch)} simulated test images, localising ...")
        targets = batch_targets(batch)
        predictions: dict[str, list[dict[str, np.ndarray]]] = {}
        if model is not None:
            images = counts_to_tensor(batch.counts, count_scale)
            predictions["Keypoint R-CNN"] = predict_with_model(model, images, targets, dev)
        for name, locator in locators.items():
            predictions[name] = locator(batch.counts)
        aucs, pr = score_methods(predictions, targets, EPS_PX)
        for name, by_eps in aucs.items():
            ours.setdefault(name, {})[diffusion] = by_eps
        curves[f"D={diffusion:g}"] = pr
        overlays.append((diffusion, batch, predictions))

    table = format_comparison(paper, ours, EPS_PX)
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
    write_report(out_dir, "table1", table, result)
    return result


def physics_from_data_config(
    data_config: Mapping[str, Any], source: str | Path = "data config"
) -> tuple[ScanParams, float | None]:
    """The scan parameters and count scale a checkpoint's training data used.

    ``params`` is read from the training set's node (``data=qd``: frames simulated on the fly), else
    from the ``prepare`` node (``data=qd_disk``), else from ``data.params``; ``count_scale`` from the
    training set's node or ``data.count_scale`` (None: the default 255).
    """
    train = data_config.get("train") or {}
    nodes = (train, data_config.get("prepare") or {}, data_config)
    params = next((node["params"] for node in nodes if node.get("params") is not None), {})
    fields = {k: v for k, v in params.items() if not str(k).startswith("_")}
    try:
        scan = ScanParams(**fields)
    except (TypeError, ValueError) as err:
        raise CytobenchError(f"{source}: the training data's params are not scan parameters: {err}") from None
    return scan, train.get("count_scale", data_config.get("count_scale"))


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
