"""Sliding-window inference: window placement, coverage counts, averaging, equality with whole-image inference."""

from __future__ import annotations

import pytest
import torch

from cytobench.models.seunet.sliding import coverage_counts, sliding_window_inference, window_starts


def pointwise_model(seed: int = 0) -> torch.nn.Module:
    """A 1x1-convolution + sigmoid model: its receptive field is one pixel, so windows cannot change it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Sigmoid())


def test_window_starts_step_by_the_stride_and_end_at_the_edge() -> None:
    assert window_starts(1080, 512, 256) == [0, 256, 512, 568]  # the thesis' windows on a 1080 px image
    assert window_starts(1024, 512, 256) == [0, 256, 512]  # fits exactly: no extra window
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0) == [0, 4, 7]
    assert window_starts(512, 512, 256) == [0]
    assert window_starts(300, 512, 256) == [0]  # a side shorter than the window: one window of that side


@pytest.mark.parametrize(("length", "window", "overlap"), [(0, 4, 0), (10, 0, 0), (10, 4, 4), (10, 4, -1)])
def test_bad_windows_are_refused(length: int, window: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="bad windows"):
        window_starts(length, window, overlap)


def test_coverage_counts_by_hand() -> None:
    # one row: windows [0, 4), [2, 6), [4, 8), [6, 10)
    assert coverage_counts(1, 10, 4, 2)[0].tolist() == [1, 1, 2, 2, 2, 2, 2, 2, 1, 1]
    # 2D: the product of the row and column counts; 5 px columns take two 4 px windows, [0, 4) and [1, 5)
    assert window_starts(5, 4, 2) == [0, 1]
    rows = torch.tensor([1, 1, 2, 2, 2, 2, 2, 2, 1, 1], dtype=torch.float32)
    cols = torch.tensor([1, 2, 2, 2, 1], dtype=torch.float32)
    torch.testing.assert_close(coverage_counts(10, 5, 4, 2), rows[:, None] * cols[None, :])
    # brute force on a ragged case
    brute = torch.zeros(37, 29)
    for y in window_starts(37, 16, 5):
        for x in window_starts(29, 16, 5):
            brute[y : y + 16, x : x + 16] += 1
    torch.testing.assert_close(coverage_counts(37, 29, 16, 5), brute)


def test_overlapping_windows_are_averaged() -> None:
    """A forward that paints each window with its mean: pixels get the mean of their windows' means."""
    image = torch.arange(6, dtype=torch.float32).view(1, 1, 6)  # windows [0, 4) and [2, 6) along x

    def window_mean(batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *batch.shape[-2:])

    out = sliding_window_inference(window_mean, image, window=4, overlap=2, batch_size=1)
    # window means 1.5 and 3.5; pixels 2, 3 lie in both
    assert out[0, 0].tolist() == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]


@pytest.mark.parametrize(
    ("size", "window", "overlap", "batch_size"),
    [
        ((64, 64), 32, 16, 4),
        ((37, 53), 16, 5, 3),
        ((1080, 96), 512, 256, 2),
        ((20, 9), 32, 8, 4),
        ((31, 31), 31, 0, 1),
    ],
)
def test_pointwise_model_equals_whole_image_inference(
    size: tuple[int, int], window: int, overlap: int, batch_size: int
) -> None:
    model = pointwise_model()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(image[None])[0]
        windows = sliding_window_inference(model, image, window, overlap, batch_size)
    assert windows.shape == (2, *size)
    torch.testing.assert_close(windows, whole, atol=1e-6, rtol=0)


def test_batch_size_does_not_change_the_result() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 5, padding=2), torch.nn.Sigmoid()
    )  # sees across windows
    image = torch.rand(3, 45, 38)
    with torch.no_grad():
        one = sliding_window_inference(model, image, 16, 6, batch_size=1)
        many = sliding_window_inference(model, image, 16, 6, batch_size=7)
        whole = model(image[None])[0]
    torch.testing.assert_close(one, many)
    # far from every window edge (>= 2 px: the kernel's reach) the windows agree with the whole image
    inner = (slice(None), slice(2, 8), slice(2, 8))
    torch.testing.assert_close(one[inner], whole[inner])
    assert not torch.allclose(one, whole)  # but not at window edges that lie inside the image


def test_forward_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="outputs"):
        sliding_window_inference(lambda b: b[:, :, :-1], torch.rand(1, 20, 20), 8, 4)
    with pytest.raises(ValueError, match="one"):
        sliding_window_inference(lambda b: b, torch.rand(1, 1, 20, 20), 8, 4)
