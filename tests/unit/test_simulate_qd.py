"""Two-photon QD simulator: the physics of Sec. 4.6 (walk, PSF, Poisson), truth, determinism, routes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from cytobench.data import CocoDetectionDataset
from cytobench.data.qd_dataset import QDSimulatedDataset, counts_to_tensor
from cytobench.io.coco import load_coco
from cytobench.ops.poisson import poisson_inverse
from cytobench.simulate.qd import (
    ScanParams,
    expected_photons,
    scan_timeline,
    simulate_qd_batch,
    simulate_qd_reference,
)
from cytobench.simulate.qd_dataset import simulate_qd_dataset, simulate_qd_range
from cytobench.simulate.qd_tiles import _walk

PAPER = ScanParams()


def _z(estimate: float, truth: float, standard_error: float) -> float:
    return abs(estimate - truth) / standard_error


def test_timeline_beam_and_frame_duration() -> None:
    p = ScanParams(rows=3, cols=4, substeps=2, start_margin_px=1.0)
    times, dt, beam = scan_timeline(p)
    assert times.shape == (24,) and beam.shape == (24, 3)
    line, retrace = (
        [p.dwell_s / 2] * 7,
        [p.retrace_s + p.dwell_s / 2],
    )  # midpoint to midpoint across a retrace
    np.testing.assert_allclose(dt, line + retrace + line + retrace + line)
    assert times[-1] - times[0] + p.dwell_s / 2 == pytest.approx(p.frame_time_s)
    np.testing.assert_allclose(beam[:8, 0] / p.pixel_size_um, np.arange(8) / 2 + 0.25)  # sub-step midpoints
    np.testing.assert_allclose(beam[:, 1] / p.pixel_size_um, np.repeat([0.5, 1.5, 2.5], 8))
    assert not beam[:, 2].any()


def test_step_variance_is_2_d_dt_for_line_and_retrace_steps() -> None:
    n = 1500
    d = np.where(np.arange(n) % 2 == 0, 0.5, 2.0)  # per-image D scales each image's own steps
    batch = simulate_qd_batch(n, d, PAPER, rng=7, return_trajectories=True)
    steps = np.diff(batch.positions_um.astype(float), axis=1)  # (n, T-1, 3)
    dt = np.diff(batch.times_s)
    is_retrace = dt > 10 * PAPER.dwell_s
    assert is_retrace.sum() == PAPER.rows - 1
    assert dt[is_retrace] == pytest.approx(PAPER.retrace_s + PAPER.dwell_s)
    unit = steps / np.sqrt(2.0 * d[:, None, None] * dt[None, :, None])  # N(0, 1) if the walk is right
    for kind, mask in (("line", ~is_retrace), ("retrace", is_retrace)):
        for axis in range(3):
            z = unit[:, mask, axis].reshape(-1)
            se_var = math.sqrt(2.0 / z.size)  # chi-square: var(s^2) = 2 sigma^4 / N
            assert _z(z.var(), 1.0, se_var) < 5, (kind, axis, z.var())
            assert _z(z.mean(), 0.0, 1.0 / math.sqrt(z.size)) < 5, (kind, axis)
    assert abs(np.corrcoef(unit[:, :, 0].reshape(-1), unit[:, :, 1].reshape(-1))[0, 1]) < 0.005


def test_background_only_counts_are_poisson_with_mean_n_bkg() -> None:
    p = ScanParams(n_qd=0.0)
    batch = simulate_qd_batch(600, 1.0, p, rng=3)
    assert np.all(batch.expected == np.float32(p.n_bkg))
    counts = batch.counts.reshape(-1).astype(float)
    lam, n = p.n_bkg, counts.size
    assert _z(counts.mean(), lam, math.sqrt(lam / n)) < 5
    assert _z(counts.var(), lam, math.sqrt((lam + 2 * lam**2) / n)) < 5


@pytest.mark.parametrize("lam", [0.0, 0.07, 0.6, 8.4, 8.46, 37.3, 200.9])
def test_poisson_inverse_matches_the_pmf(lam: float) -> None:
    rng = np.random.default_rng(int(lam * 100))
    m = 100_000
    u = rng.random((2, m))
    k = poisson_inverse(np.full(m, lam), u[0], u[1])
    if lam == 0:
        assert not k.any()
        return
    lo, hi = int(stats.poisson.ppf(1e-4, lam)), int(stats.poisson.isf(1e-4, lam))
    observed = np.array([(k <= lo).sum(), *[(k == v).sum() for v in range(lo + 1, hi)], (k >= hi).sum()])
    pmf = np.array(
        [
            stats.poisson.cdf(lo, lam),
            *stats.poisson.pmf(range(lo + 1, hi), lam),
            stats.poisson.sf(hi - 1, lam),
        ]
    )
    assert observed.sum() == m
    assert stats.chisquare(observed, pmf / pmf.sum() * m).pvalue > 1e-4
    assert _z(k.mean(), lam, math.sqrt(lam / m)) < 5


def test_poisson_inverse_is_the_first_count_whose_cdf_exceeds_u() -> None:
    """The guide-table shortcuts (cells that give the count outright) agree with the definition."""
    lam = np.repeat(np.arange(0, 161) / 8, 3 * 1024)  # lam = q / 8 exactly: f = 0, u1 adds nothing
    cells = np.tile(np.arange(1024) / 1024, 161)
    u0 = np.concatenate([cells, np.nextafter(cells, 1.0), np.nextafter(cells + 1 / 1024, 0.0)])
    u0 = u0.reshape(3, 161, 1024).transpose(1, 0, 2).reshape(-1)  # cell edges and just inside them
    k = poisson_inverse(lam, u0, np.zeros_like(u0))
    assert k.dtype == np.int64
    expected = stats.poisson.ppf(u0, lam)  # smallest k with cdf(k) >= u0 ...
    expected[stats.poisson.cdf(expected, lam) <= u0] += 1  # ... made the smallest with cdf(k) > u0
    expected[lam == 0] = 0
    mismatch = np.flatnonzero(k != expected)
    # scipy's cdf and the tables' pdtr agree to rounding: only draws within 1e-12 of a step may differ
    assert all(abs(stats.poisson.cdf(min(k[i], expected[i]), lam[i]) - u0[i]) < 1e-12 for i in mismatch)


def test_poisson_inverse_writes_into_out_and_checks_sizes() -> None:
    rng = np.random.default_rng(3)
    lam = rng.uniform(0, 40, (50, 7)).astype(np.float32)
    u = rng.random((2, 50, 7))
    out = np.full((50, 7), -1, dtype=np.int32)
    assert poisson_inverse(lam, u[0], u[1], out=out) is out
    np.testing.assert_array_equal(out, poisson_inverse(lam, u[0], u[1]))
    with pytest.raises(ValueError, match="differ in size"):
        poisson_inverse(lam, u[0, :-1], u[1])


def test_seeded_images_are_those_of_the_numpy_engine() -> None:
    """Pinned from the engine before the compiled loops (commit 30cc7f1): a seed keeps its images."""
    batch = simulate_qd_batch(64, diffusion_range=(0.1, 10.0), rng=2026, return_trajectories=True)
    assert hashlib.sha256(batch.counts.tobytes()).hexdigest()[:16] == "f254ce705ac554ed"
    assert batch.expected.astype(float).sum() == pytest.approx(335286.86848163605, rel=1e-9)
    assert batch.positions_um.astype(float).sum() == pytest.approx(64891.61008068145, rel=1e-9)


def test_walk_positions_are_float64_running_sums_rounded_to_float32() -> None:
    """The compiled walk against numpy: steps scaled in float32, summed in float64, boxes their extent."""
    rng = np.random.default_rng(5)
    normals = rng.standard_normal((6, 3, 40)).astype(np.float32)
    step_sd = rng.uniform(0.001, 0.05, 40).astype(np.float32)
    sd, start = rng.uniform(0.5, 5.0, 6).astype(np.float32), rng.uniform(0.2, 1.5, (6, 2))
    steps = normals * step_sd * sd[:, None, None]
    steps[:, :2, 0], steps[:, 2, 0] = start.astype(np.float32), normals[:, 2, 0] * np.float32(0.5)
    expected = np.cumsum(steps.astype(float), axis=2).astype(np.float32)
    part, boxes = normals.copy(), np.empty((6, 4))
    _walk(part, step_sd, sd, start, np.float32(0.5), boxes)
    np.testing.assert_array_equal(part, expected)
    np.testing.assert_array_equal(boxes, np.concatenate([expected[:, :2].min(2), expected[:, :2].max(2)], 1))


def test_threads_never_change_a_result() -> None:
    n = 3 * 256 + 5  # four tiles, the last one partial
    one = simulate_qd_batch(
        n, None, PAPER, rng=21, diffusion_range=(0.5, 2.0), return_trajectories=True, workers=1
    )
    for workers in (2, 3):
        gen = np.random.default_rng(21)
        many = simulate_qd_batch(
            n, None, PAPER, rng=gen, diffusion_range=(0.5, 2.0), return_trajectories=True, workers=workers
        )
        for name in ("counts", "expected", "centroids_px", "boxes_px", "diffusion", "positions_um"):
            assert np.array_equal(getattr(one, name), getattr(many, name)), (workers, name)
        again = np.random.default_rng(21)
        simulate_qd_batch(n, None, PAPER, rng=again, diffusion_range=(0.5, 2.0), workers=1)
        assert gen.random() == again.random()  # the caller's stream is left where one thread leaves it


def test_centroid_is_the_time_weighted_trajectory_mean_and_box_covers_it() -> None:
    batch = simulate_qd_batch(50, 1.75, PAPER, rng=11, return_trajectories=True)
    pos, t = batch.positions_um.astype(float), batch.times_s
    half = PAPER.dwell_s / 2  # the frame starts half a dwell before the first sample, ends half after
    integral = np.trapezoid(pos[:, :, :2], t, axis=1) + half * (pos[:, 0, :2] + pos[:, -1, :2])
    centroid_px = integral / PAPER.frame_time_s / PAPER.pixel_size_um
    np.testing.assert_allclose(batch.centroids_px, centroid_px, atol=1e-3)
    naive = pos[:, :, :2].mean(1) / PAPER.pixel_size_um  # unweighted mean over samples is a different point
    assert np.abs(naive - centroid_px).max() > 0.05
    margin = 2 * PAPER.sigma_xy_um / PAPER.pixel_size_um
    xy = pos[:, :, :2] / PAPER.pixel_size_um
    lo = np.clip(xy.min(1) - margin, 0, [PAPER.cols, PAPER.rows])
    hi = np.clip(xy.max(1) + margin, 0, [PAPER.cols, PAPER.rows])
    np.testing.assert_allclose(batch.boxes_px, np.concatenate([lo, hi], 1), atol=1e-4)
    inside = (batch.centroids_px >= 0).all(1) & (batch.centroids_px <= [PAPER.cols, PAPER.rows]).all(1)
    assert (batch.boxes_px[inside, :2] <= batch.centroids_px[inside]).all()
    assert (batch.boxes_px[inside, 2:] >= batch.centroids_px[inside]).all()


def test_static_particle_images_as_the_psf_centred_on_it() -> None:
    p = ScanParams(rows=41, cols=41, z_start_sigma_um=0.0, start_margin_px=15.0)
    batch = simulate_qd_batch(20, 0.0, p, rng=5, return_trajectories=True)
    pos = batch.positions_um
    assert np.ptp(pos, axis=1).max() == 0.0  # D = 0: the QD does not move
    ys, xs = np.mgrid[0 : p.rows, 0 : p.cols] + 0.5
    for k in range(len(batch)):
        x_px, y_px = pos[k, 0, :2] / p.pixel_size_um
        signal = batch.expected[k] - p.n_bkg
        i, j = np.unravel_index(np.argmax(signal), signal.shape)
        assert (i, j) == (int(y_px), int(x_px))
        cx, cy = (signal * xs).sum() / signal.sum(), (signal * ys).sum() / signal.sum()
        assert (cx, cy) == (pytest.approx(x_px, abs=1e-3), pytest.approx(y_px, abs=1e-3))
        np.testing.assert_allclose(batch.centroids_px[k], (x_px, y_px), atol=1e-4)
    # Eq. 1 by hand for a QD at a chosen position, beam at the centre of pixel (row 10, col 12)
    qd = np.array([0.8, 0.9, 0.3])
    image = expected_photons(np.tile(qd, (p.n_samples, 1)), p)
    bx, by = 12.5 * p.pixel_size_um, 10.5 * p.pixel_size_um
    r2 = (qd[0] - bx) ** 2 + (qd[1] - by) ** 2
    by_hand = (
        p.n_qd
        / (2 * math.pi * p.sigma_xy_um**2)
        * math.exp(-r2 / (2 * p.sigma_xy_um**2))
        / math.sqrt(2 * math.pi * p.sigma_z_um**2)
        * math.exp(-(qd[2] ** 2) / (2 * p.sigma_z_um**2))
        + p.n_bkg
    )
    assert image[10, 12] == pytest.approx(by_hand, rel=1e-5)
    assert p.peak_photons == pytest.approx(1.0587 * p.n_qd + p.n_bkg, rel=1e-4)


@pytest.mark.parametrize("substeps", [1, 3])
def test_vectorised_expected_image_equals_the_reference_loop(substeps: int) -> None:
    p = ScanParams(substeps=substeps)
    batch = simulate_qd_batch(4, 1.75, p, rng=substeps, return_trajectories=True)
    for k in range(4):
        reference = simulate_qd_reference(batch.positions_um[k], p)
        np.testing.assert_allclose(batch.expected[k], reference, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(expected_photons(batch.positions_um, p), batch.expected, rtol=1e-6)


def test_a_block_is_the_same_alone_or_in_a_chunk() -> None:
    whole = simulate_qd_range(9, 0, 100, None, (0.75, 1.75), PAPER, True)
    part = simulate_qd_range(9, 40, 70, None, (0.75, 1.75), PAPER, True)
    assert np.array_equal(whole.counts[40:70], part.counts)
    assert np.array_equal(whole.positions_um[40:70], part.positions_um)
    np.testing.assert_allclose(whole.centroids_px[40:70], part.centroids_px, atol=1e-9)
    again = simulate_qd_batch(8, 1.0, PAPER, rng=np.random.default_rng(4))
    assert np.array_equal(again.counts, simulate_qd_batch(8, 1.0, PAPER, rng=np.random.default_rng(4)).counts)


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_same_seed_gives_identical_files_whatever_the_chunking(tmp_path: Path) -> None:
    simulate_qd_dataset(tmp_path / "a", 40, seed=2, chunk=32)
    simulate_qd_dataset(tmp_path / "b", 40, seed=2, chunk=4096)
    simulate_qd_dataset(tmp_path / "c", 40, seed=3)
    simulate_qd_dataset(tmp_path / "d", 20, seed=2, save_trajectories=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) == 42
    c = _files(tmp_path / "c")
    assert a["images/qd_000005.png"] != c["images/qd_000005.png"]
    prefix = json.loads((tmp_path / "d/annotations.json").read_text())
    full = json.loads((tmp_path / "a/annotations.json").read_text())
    assert prefix["annotations"] == full["annotations"][:20] and prefix["images"] == full["images"][:20]
    assert not (tmp_path / "d/trajectories.npz").exists()


def test_dataset_files_coco_and_trajectories(tmp_path: Path) -> None:
    ann = simulate_qd_dataset(tmp_path, 70, diffusion=np.linspace(0.5, 2.0, 70), seed=1, image_format="tif")
    coco = load_coco(ann)
    assert [c["name"] for c in coco["categories"]] == ["quantum_dot"]
    assert coco["categories"][0]["keypoints"] == ["centroid"] and coco["categories"][0]["skeleton"] == []
    image, first = coco["images"][3], coco["annotations"][3]
    assert image["file_name"] == "qd_000003.tif" and (image["height"], image["width"]) == (24, 25)
    assert image["diffusion_um2_s"] == pytest.approx(0.5 + 3 * 1.5 / 69)
    assert {"n_qd", "n_bkg", "seed", "pixel_size_um", "bit_depth"} <= set(image)
    assert first["num_keypoints"] == 1 and first["keypoints"][2] == 2 and first["iscrowd"] == 0
    assert first["area"] == pytest.approx(first["bbox"][2] * first["bbox"][3])
    with np.load(tmp_path / "trajectories.npz") as traj:
        assert traj["positions"].shape == (70, PAPER.n_samples, 3) and traj["positions"].dtype == np.float32
        assert traj["times"].shape == (PAPER.n_samples,) and traj["beam"].shape == (PAPER.n_samples, 3)
        kp = np.array([a["keypoints"][:2] for a in coco["annotations"]])
        np.testing.assert_allclose(traj["centroids"], kp)
        np.testing.assert_allclose(traj["diffusion"], np.linspace(0.5, 2.0, 70))


@pytest.mark.parametrize("diffusion", [None, 1.0])
def test_on_disk_and_on_the_fly_routes_give_the_same_items(tmp_path: Path, diffusion: float | None) -> None:
    n = 70  # three blocks, the last one partial
    ann = simulate_qd_dataset(tmp_path, n, diffusion=diffusion, seed=4, chunk=32)
    disk = CocoDetectionDataset(tmp_path / "images", ann, with_keypoints=True, bit_depth=8)
    fly = QDSimulatedDataset(n, diffusion=diffusion, seed=4)
    for index in (0, 31, 32, 45, 69, 1):
        image_disk, t_disk = disk[index]
        image_fly, t_fly = fly[index]
        assert image_fly.shape == (1, 24, 25) and image_fly.dtype == torch.float32
        assert torch.equal(image_disk, image_fly)
        for key in ("boxes", "keypoints", "area"):
            torch.testing.assert_close(t_disk[key], t_fly[key], rtol=0, atol=1e-4)
        assert torch.equal(t_disk["labels"], t_fly["labels"]) and t_disk["image_id"] == t_fly["image_id"]
        assert t_disk["meta"]["file_name"] == t_fly["meta"]["file_name"]


def test_on_the_fly_dataset_contract() -> None:
    ds = QDSimulatedDataset(40, seed=0)
    image, target = ds[33]
    assert ds.num_classes == 2 and ds.label_to_cat_id == {1: 1} and ds.categories[0]["name"] == "quantum_dot"
    assert len(ds) == 40 and 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].shape == (1, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [1] and target["labels"].dtype == torch.int64
    assert target["keypoints"].shape == (1, 1, 3) and target["keypoints"][0, 0, 2] == 2
    assert target["iscrowd"].tolist() == [0] and target["image_id"] == 34
    assert target["meta"]["orig_size"] == (24, 25) and 0.75 <= target["meta"]["diffusion"] <= 1.75
    ds.set_epoch(3)
    assert torch.equal(ds[33][0], image)
    raw = QDSimulatedDataset(40, seed=0, normalise=False)[33][0]
    torch.testing.assert_close(raw.clamp(max=255) / 255, image)
    assert raw.max() > 1 and torch.equal(raw, raw.round())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rows": 0}, "rows"),
        ({"cols": -3}, "cols"),
        ({"pixel_size_um": 0.0}, "pixel_size_um"),
        ({"dwell_s": -2e-6}, "dwell_s"),
        ({"retrace_s": 0.0}, "retrace_s"),
        ({"sigma_xy_um": 0.0}, "sigma_xy_um"),
        ({"sigma_z_um": float("nan")}, "sigma_z_um"),
        ({"n_qd": -1.0}, "n_qd"),
        ({"n_bkg": -8.4}, "n_bkg"),
        ({"substeps": 0}, "substeps"),
        ({"n_qd": 1e5}, "n_qd"),
    ],
)
def test_bad_scan_parameters_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ScanParams(**kwargs)


def test_bad_arguments_raise_value_error_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="diffusion must be finite and >= 0"):
        simulate_qd_batch(3, -1.0)
    with pytest.raises(ValueError, match="diffusion must be one value or 3 values"):
        simulate_qd_batch(3, [1.0, 2.0])
    with pytest.raises(ValueError, match="diffusion_range"):
        simulate_qd_batch(3, diffusion_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="diffusion_range"):
        QDSimulatedDataset(3, diffusion_range=(0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="not both"):
        simulate_qd_batch(3, 1.0, diffusion_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        simulate_qd_batch(0, 1.0)
    with pytest.raises(ValueError, match="image_format"):
        simulate_qd_dataset(tmp_path, 2, image_format="jpg")
    with pytest.raises(ValueError, match="bit_depth"):
        simulate_qd_dataset(tmp_path, 2, bit_depth=4)
    with pytest.raises(ValueError, match="unknown ScanParams fields"):
        simulate_qd_dataset(tmp_path, 2, params={"rowz": 3})
    with pytest.raises(ValueError, match="count_scale"):
        QDSimulatedDataset(4, count_scale=0.0)


def test_plots_write_pngs(tmp_path: Path) -> None:
    from cytobench.reporting.qd_plots import (
        plot_overlay,
        plot_overlay_grid,
        plot_sample_grid,
        save_axes_figure,
        top_location,
    )

    batch = simulate_qd_batch(9, np.linspace(0.0, 1.75, 9), PAPER, rng=0, return_trajectories=True)
    plot_sample_grid(batch, n=9, path=tmp_path / "grid.png")
    traj = batch.positions_um[0, :, :2] / PAPER.pixel_size_um
    ax = plot_overlay(
        batch.counts[0], traj, batch.centroids_px[0], {"FRCNN": (10.0, 11.0), "TrackPy": (9, 8)}
    )
    save_axes_figure(ax, tmp_path / "overlay.png")
    for name in ("grid.png", "overlay.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="return_trajectories"):
        plot_sample_grid(simulate_qd_batch(2, 1.0))
    preds = [
        {"scores": np.array([0.2, 0.9]), "keypoints": np.array([[[1.0, 2.0, 1]], [[5.0, 6.0, 1]]])},
        {"scores": np.zeros(0), "keypoints": np.zeros((0, 1, 3))},
    ] * 5
    assert top_location(preds[0]) == (5.0, 6.0) and top_location(preds[1]) is None
    plot_overlay_grid([(0.75, batch, {"m": preds}), (1.75, batch, {"m": preds})], tmp_path / "grid3.png")
    assert (tmp_path / "grid3.png").stat().st_size > 0


def test_counts_to_tensor_scales_like_the_dataset() -> None:
    counts = np.array([[[0, 10], [255, 400]]])
    images = counts_to_tensor(counts)
    assert images.shape == (1, 1, 2, 2) and images.dtype == torch.float32
    torch.testing.assert_close(images[0, 0], torch.tensor([[0.0, 10 / 255], [1.0, 1.0]]))
    torch.testing.assert_close(counts_to_tensor(counts, 1000.0)[0, 0, 1], torch.tensor([0.255, 0.4]))
