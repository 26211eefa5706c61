"""Sliding-window inference with averaged overlaps (thesis Sec. 5.2: 512 x 512 windows, 256 px overlap).

Windows step by ``window - overlap`` from the top-left corner; the last window of a row or column is shifted
back to end at the image edge, so every window lies inside the image and has the same size. Each pixel's
result is the mean over the windows that cover it: the per-window outputs are summed into one canvas and
divided by a coverage count map computed once. The windows form a grid, so the count map is the outer
product of the per-row and per-column counts.

A side shorter than the window gets windows of that side (no padding is invented: the function is meant for
fully convolutional forwards, which take any size). Windows run in batches of ``batch_size``.

:class:`cytobench.engine.tiling.TiledPredictor` solves a neighbouring problem (objects of instance models,
each kept from the one window whose core holds it); dense maps are averaged here instead, as the thesis does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["coverage_counts", "sliding_window_inference", "window_starts"]


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of the windows along one side.

    Args:
        length: side of the image.
        window: side of the windows (clipped to ``length``).
        overlap: overlap of neighbouring windows, ``0 <= overlap < window``.

    Returns:
        ``[0, s, 2s, ..., length - window]`` with stride ``s = window - overlap``; the last start is moved back
        so the window ends at the edge (its overlap with the previous one is then larger than ``overlap``).
    """
    if length < 1 or window < 1 or not 0 <= overlap < window:
        raise ValueError(f"bad windows: length {length}, window {window}, overlap {overlap}")
    window = min(window, length)
    last = length - window
    # a window clipped to the side leaves last == 0 (one window), whatever the overlap
    starts = list(range(0, last, max(window - overlap, 1)))
    return [*starts, last]


def coverage_counts(
    height: int, width: int, window: int, overlap: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(H, W) float32: how many windows cover each pixel."""

    def per_side(length: int) -> torch.Tensor:
        side = min(window, length)
        counts = torch.zeros(length + 1, device=device)
        starts = torch.tensor(window_starts(length, window, overlap), device=device)
        counts.index_add_(0, starts, torch.ones(len(starts), device=device))  # +1 where a window begins
        counts.index_add_(0, starts + side, -torch.ones(len(starts), device=device))  # -1 after it ends
        return counts.cumsum(0)[:length]

    return per_side(height)[:, None] * per_side(width)[None, :]


def sliding_window_inference(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: int,
    overlap: int,
    batch_size: int = 4,
) -> torch.Tensor:
    """Average ``forward`` over overlapping windows of one image.

    Args:
        forward: (B, C, h, w) window batch -> (B, K, h, w) per-pixel outputs (pass probabilities to average
            probabilities, as the thesis does).
        image: (C, H, W).
        window: window side in px.
        overlap: overlap of neighbouring windows in px, ``0 <= overlap < window``.
        batch_size: windows per ``forward`` call.

    Returns:
        (K, H, W): per pixel, the mean of the outputs of every window covering it.
    """
    if image.dim() != 3:
        raise ValueError(
            f"sliding_window_inference takes one (C, H, W) image, got shape {tuple(image.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = (int(v) for v in image.shape[-2:])
    win_h, win_w = min(window, height), min(window, width)
    origins = [
        (y, x) for y in window_starts(height, window, overlap) for x in window_starts(width, window, overlap)
    ]
    total: torch.Tensor | None = None
    for first in range(0, len(origins), batch_size):
        chunk = origins[first : first + batch_size]
        crops = torch.stack([image[:, y : y + win_h, x : x + win_w] for y, x in chunk])
        outputs = forward(crops)
        if outputs.dim() != 4 or tuple(outputs.shape[-2:]) != (win_h, win_w) or len(outputs) != len(chunk):
            raise ValueError(
                f"forward must map ({len(chunk)}, C, {win_h}, {win_w}) windows to ({len(chunk)}, K, {win_h}, "
                f"{win_w}) outputs, got {tuple(outputs.shape)}"
            )
        if total is None:
            total = outputs.new_zeros((outputs.shape[1], height, width), dtype=torch.float32)
        for (y, x), output in zip(chunk, outputs):
            total[:, y : y + win_h, x : x + win_w] += output.float()
    assert total is not None  # at least one window always exists
    return total / coverage_counts(height, width, window, overlap, device=total.device)
