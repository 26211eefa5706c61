"""FID (thesis Sec. 5.6): the Frechet distance on closed-form Gaussians, the feature extractors (the
stand-in and Inception-v3 from a local weights file) and ``synth fid``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.cli import main
from cytobench.errors import BadInputError
from cytobench.synth.fid import (
    ImageStatisticsFeatures,
    InceptionFeatures,
    feature_statistics,
    fid,
    frechet_distance,
)
from tests.unit.test_copy_paste import write_tiny_set


def random_covariance(dim: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_mean_shift_only_gives_the_squared_distance() -> None:
    eye = np.eye(3)
    assert frechet_distance(np.array([1.0, 2.0, 3.0]), eye, np.zeros(3), eye) == pytest.approx(14.0)
    cov = random_covariance(3, np.random.default_rng(0))
    assert frechet_distance(np.ones(3), cov, np.zeros(3), cov) == pytest.approx(3.0, abs=1e-9)


def test_diagonal_covariances_give_the_sum_of_squared_root_differences() -> None:
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    # sum (sqrt(a) - sqrt(b))^2 = (1 - 2)^2 + (2 - 1)^2 + (3 - 4)^2
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(3.0)
    assert frechet_distance(np.zeros(1), np.array([[2.0]]), np.zeros(1), np.array([[8.0]])) == pytest.approx(
        2.0
    )
    # the same pair in a rotated basis: the distance does not change
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))
    rotated = frechet_distance(np.zeros(3), q @ np.diag(a) @ q.T, np.zeros(3), q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(3.0, abs=1e-9)


def test_distance_is_symmetric_zero_for_one_gaussian_and_finite_when_singular() -> None:
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    c1, c2 = random_covariance(5, rng), random_covariance(5, rng)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)
    low_rank = np.outer(np.arange(5.0), np.arange(5.0))  # rank 1, as with fewer images than dimensions
    value = frechet_distance(mu1, low_rank, mu1, low_rank)
    assert math.isfinite(value) and value == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))


def test_fid_of_image_sets_with_the_stand_in_extractor() -> None:
    rng = np.random.default_rng(3)
    images = [np.clip(0.4 + 0.05 * rng.standard_normal((48, 48)), 0, 1) for _ in range(12)]
    extractor = ImageStatisticsFeatures()
    features = extractor(images[:2])
    assert features.shape == (2, 35) and np.array_equal(features, extractor(images[:2]))
    assert fid(images, images, extractor) == pytest.approx(0.0, abs=1e-9)
    brighter = [np.clip(x + 0.1, 0, 1) for x in images]
    much_brighter = [np.clip(x + 0.3, 0, 1) for x in images]
    near, far = fid(images, brighter, extractor), fid(images, much_brighter, extractor)
    assert 0 < near < far
    assert fid(brighter, images, extractor) == pytest.approx(near, rel=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        fid(images[:1], images, extractor)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locally saved random-init torchvision Inception-v3 state dict (nothing downloaded)."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_features_load_a_local_state_dict(inception_file: Path, tmp_path: Path) -> None:
    extractor = InceptionFeatures(inception_file)
    saved = torch.load(inception_file, weights_only=True)
    assert torch.equal(extractor.model.Conv2d_1a_3x3.conv.weight, saved["Conv2d_1a_3x3.conv.weight"])
    rng = np.random.default_rng(4)
    images = [rng.random((40, 60)).astype(np.float32), rng.random((80, 80)).astype(np.float32)]
    features = extractor(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    assert "Inception-v3" in extractor.name and inception_file.name in extractor.name
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(BadInputError, match="none of its 1 tensors fits"):
        InceptionFeatures(tmp_path / "foreign.pth")


def test_synth_fid_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = write_tiny_set(tmp_path / "real", n_images=3)
    fake = write_tiny_set(tmp_path / "fake", n_images=3)
    main(["synth", "fid", "--real", str(real), "--fake", str(fake)])
    out = capsys.readouterr().out
    assert "not comparable to published FID" in out
    report = json.loads(out[out.index("{") :])
    assert report["n_real"] == 3 and report["inception"] is False
    assert report["fid/bf_lower"] == pytest.approx(0.0, abs=1e-9)  # identical planes
    phase_only = tmp_path / "phase_only"
    main(["synth", "make", "--data", str(real), "--n", "2", "--cells", "2", "--out", str(phase_only)])
    capsys.readouterr()
    cases = [
        (["--real", str(real), "--fake", str(phase_only)], "has no brightfield planes"),
        (["--real", str(real), "--fake", str(tmp_path / "missing")], "folder not found"),
        (["--real", str(real), "--fake", str(real / "images")], "compare two data set folders"),
        (["--real", str(real), "--fake", str(fake), "--features", str(tmp_path / "w.pth")], "file not found"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["synth", "fid", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
