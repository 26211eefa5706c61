"""Second stage of the two-stage karyotyper: straightened chromosome crops, their classifier, the pair prior.

**Crops** (:func:`straighten_crop`, :func:`crops_from_detections`). Each chromosome is cut out around its
centre, turned so that its long axis is vertical, and resampled into a fixed ``(H, W)`` crop (default
96 x 32) with its aspect ratio kept: one scale per crop, the larger of ``length / (H (1 - 2 margin))`` and
``width / (W (1 - 2 margin))`` source pixels per crop pixel, so the chromosome fills the crop's height or
width, whichever binds first, and the rest is the surrounding image (or ``fill`` outside the image).

* **Orientation**. With a mask: the principal axis of the mask's pixels (second central moments
  ``mu20, mu02, mu11``; the axis of largest variance, ``0.5 atan2(2 mu11, mu20 - mu02)`` from the x axis),
  centred on the middle of the mask's extent along and across that axis; length and width are those
  extents (pixels counted as unit squares). Without a mask (or with an empty one): the box's longer side,
  i.e. no rotation for a box at least as tall as wide and a quarter turn otherwise; length and width are
  the box's longer and shorter sides. The axis has no direction: which end of the chromosome (p or q arm)
  ends up on top is not decided here (the classifier is trained with random half turns).
* **Angle** returned: ``theta`` in degrees, in (-90, 90], such that the long axis runs along the unit
  vector ``(sin theta, cos theta)`` in image ``(x, y)`` pixel coordinates (x right, y down): 0 is upright,
  positive when the lower end of the chromosome lies to the right of its upper end. The crop's downward
  axis is that vector, its rightward axis ``(cos theta, -sin theta)``: a rotation, never a mirror image.
* **Sampling**. Bilinear. All crops of all images come from **one** ``grid_sample`` call: the images
  (padded to a common size) are stacked as the depth axis of a volume and each crop's sampling grid (an
  ``affine_grid`` per crop) gets the depth coordinate of its own image's slice, where trilinear weights fall
  on that slice alone. ``fill`` (default: each image's per-channel median, i.e. the background of a
  spread or karyogram) is what a crop shows outside its image.

**Classifier** (:class:`ChromosomeClassifier`): a ResNet-18-like CNN (BasicBlocks, stages of ``width``,
2, 4, 8 x ``width`` channels, random init), normalising each crop to zero mean and unit variance, with
24 logits (classes 1-22, X, Y at indices 0-23). Because every crop is scaled to fit, the pixels no longer
carry the chromosome's size, yet **size is the main cue of a chromosome's class** (the classes are
numbered by decreasing length; Denver groups A-G are size groups). The classifier therefore takes the
chromosome's length relative to the median length of the chromosomes of its cell (its image) as an extra
input, ``log(length / median)`` through a small MLP joined to the pooled image features
(``length_feature=True``). The ratio does not depend on magnification or on the cell's condensation; in a
normal cell the median length is that of the C-group (about chromosomes 9-12).

**Pair prior** (:func:`assign_with_pair_prior`): one cell's labels from its crops' class probabilities by a
minimum-cost assignment of crops to class "slots" (``scipy.optimize.linear_sum_assignment``), cost
``-log p(class)`` of the crop:

* free slots: ``cap`` (2) per autosome 1-22; for the sex chromosomes ``cap`` slots in all, of which one
  takes X or Y (whichever the crop finds likelier) and the others X only. So XX and XY cost nothing
  extra, and at most one Y is free;
* penalised slots: any further copy of any class (a third 21, a third X, a second Y, ...) at
  ``-log p + penalty``; there are enough of them for every crop, so the assignment always exists.

It is a prior, not a rule: a crop goes to a penalised slot when every free alternative is more than
``exp(penalty)`` times less likely (default penalty 3 nats: about 20 times), so a trisomy the classifier
sees clearly stays (three confident 21s stay 21), while a crop that only weakly prefers an already filled
class moves to its next choice with a free slot. With 47 crops and 46 free slots one crop is penalised
whatever its label: the assignment then picks the crop and class where that costs least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_PRIOR_PENALTY",
    "N_CHROMOSOME_CLASSES",
    "ChromosomeClassifier",
    "ChromosomeGeometry",
    "assign_with_pair_prior",
    "cell_labels",
    "chromosome_geometry",
    "crops_from_detections",
    "relative_lengths",
    "straighten_crop",
]

N_CHROMOSOME_CLASSES = 24  # 1-22, X = 23, Y = 24
X_CLASS, Y_CLASS = 23, 24
DEFAULT_PRIOR_PENALTY = 3.0  # nats: a penalised copy must be ~20x likelier than the best free alternative


# ------------------------------------------------------------------------------------------------- geometry
class ChromosomeGeometry(NamedTuple):
    """Per chromosome: where its straightened crop is cut (pixel-edge image coordinates, x right, y down).

    Attributes:
        centres: (N, 2) ``(x, y)`` centre of the crop.
        angles: (N,) degrees in (-90, 90]; the long axis runs along ``(sin, cos)`` of it (module docstring).
        lengths: (N,) extent along the long axis, px.
        widths: (N,) extent across it, px.
    """

    centres: torch.Tensor
    angles: torch.Tensor
    lengths: torch.Tensor
    widths: torch.Tensor


def _as_bool_masks(masks: torch.Tensor, n: int) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) masks (bool, integer or probabilities) -> (N, H, W) bool (> 0.5)."""
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != n:
        raise ValueError(f"masks must be (N, H, W) with N = {n} boxes, got {tuple(masks.shape)}")
    return masks if masks.dtype == torch.bool else masks > 0.5


def chromosome_geometry(boxes: torch.Tensor, masks: torch.Tensor | None = None) -> ChromosomeGeometry:
    """Centre, angle, length and width of each chromosome of one image (see the module docstring).

    Args:
        boxes: (N, 4) xyxy boxes in pixel-edge coordinates.
        masks: optional (N, H, W) (or (N, 1, H, W)) instance masks in image coordinates; an empty mask falls
            back to its box.

    Returns:
        :class:`ChromosomeGeometry` (float32 tensors on the boxes' device).
    """
    boxes = boxes.reshape(-1, 4).float()
    n = boxes.shape[0]
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    tall = bh >= bw
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)
    angles = torch.where(tall, torch.zeros_like(bw), torch.full_like(bw, 90.0))
    lengths = torch.maximum(bw, bh)
    widths = torch.minimum(bw, bh)
    if masks is None or n == 0:
        return ChromosomeGeometry(centres, angles, lengths, widths)

    m = _as_bool_masks(masks, n).to(boxes.device)
    nz = m.nonzero()  # (K, 3): mask index, y, x of every mask pixel
    idx = nz[:, 0]
    y = nz[:, 1].float() + 0.5  # pixel centres
    x = nz[:, 2].float() + 0.5
    area = torch.bincount(idx, minlength=n).float()
    has = area > 0
    safe = area.clamp(min=1.0)
    cx = torch.zeros(n, device=boxes.device).index_add_(0, idx, x) / safe
    cy = torch.zeros(n, device=boxes.device).index_add_(0, idx, y) / safe
    dx, dy = x - cx[idx], y - cy[idx]
    mu20 = torch.zeros(n, device=boxes.device).index_add_(0, idx, dx * dx)
    mu02 = torch.zeros(n, device=boxes.device).index_add_(0, idx, dy * dy)
    mu11 = torch.zeros(n, device=boxes.device).index_add_(0, idx, dx * dy)
    phi = 0.5 * torch.atan2(2 * mu11, mu20 - mu02)  # axis angle from the x axis, in [-90, 90] degrees
    ax, ay = torch.cos(phi), torch.sin(phi)
    flip = (ay < 0) | ((ay == 0) & (ax < 0))  # the axis points down (or right when horizontal)
    ax, ay = torch.where(flip, -ax, ax), torch.where(flip, -ay, ay)
    theta = torch.rad2deg(torch.atan2(ax, ay))  # (sin theta, cos theta) = (ax, ay); theta in (-90, 90]
    ex, ey = ay, -ax  # the crop's rightward axis (cos theta, -sin theta)

    along = dx * ax[idx] + dy * ay[idx]
    across = dx * ex[idx] + dy * ey[idx]
    big = torch.finfo(torch.float32).max

    def extent(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.full((n,), big, device=boxes.device).scatter_reduce(0, idx, values, "amin")
        hi = torch.full((n,), -big, device=boxes.device).scatter_reduce(0, idx, values, "amax")
        return lo, hi

    v_lo, v_hi = extent(along)
    u_lo, u_hi = extent(across)
    half_pixel = 0.5 * (ax.abs() + ay.abs())  # half the extent of a unit pixel along either axis
    v_mid, u_mid = (v_lo + v_hi) / 2, (u_lo + u_hi) / 2
    mask_centres = torch.stack([cx + u_mid * ex + v_mid * ax, cy + u_mid * ey + v_mid * ay], dim=1)
    keep = has[:, None]
    return ChromosomeGeometry(
        torch.where(keep, mask_centres, centres),
        torch.where(has, theta, angles),
        torch.where(has, v_hi - v_lo + 2 * half_pixel, lengths),
        torch.where(has, u_hi - u_lo + 2 * half_pixel, widths),
    )


def relative_lengths(lengths: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``lengths / median(lengths[reference])`` of one cell (all lengths when no reference is given or
    selected); 1 for an empty cell."""
    if lengths.numel() == 0:
        return lengths.clone()
    pool = lengths if reference is None or not bool(reference.any()) else lengths[reference]
    return lengths / torch.quantile(pool.float(), 0.5).clamp(min=1e-6)


# ---------------------------------------------------------------------------------------------------- crops
def _image_fill(image: torch.Tensor, fill: float | None) -> torch.Tensor:
    """(C,) value a crop shows outside its image: ``fill``, or the per-channel median of the image."""
    if fill is not None:
        return torch.full((image.shape[0],), float(fill), dtype=image.dtype, device=image.device)
    return image.flatten(1).median(dim=1).values


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1)
    if channels == 1:
        return image.mean(dim=0, keepdim=True)
    raise ValueError(f"cannot turn a {image.shape[0]}-channel image into {channels} channels")


def crops_from_detections(
    images: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None] | None = None,
    out_size: tuple[int, int] = (96, 32),
    *,
    margin: float = 0.05,
    fill: float | None = None,
    channels: int | None = None,
    geometry: Sequence[ChromosomeGeometry] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightened crops of every chromosome of every image, resampled in one ``grid_sample`` call.

    Args:
        images: per image (C, H, W) float; sizes may differ.
        boxes: per image (N_i, 4) xyxy boxes.
        masks: optional per image (N_i, H, W) masks (or None for an image without them).
        out_size: crop ``(H, W)``.
        margin: fraction of the crop's height and width left free on each side of the chromosome.
        fill: value outside the image; None: each image's per-channel median (its background).
        channels: channels of the crops (1: mean of an image's channels; 3: a gray image repeated);
            None: the most channels among the images.
        geometry: per image, precomputed :func:`chromosome_geometry` of its boxes (and masks).

    Returns:
        ``(crops, image_index)``: (N, C, H, W) crops in image order then box order, and (N,) int64 index
        of the image each came from.
    """
    if len(boxes) != len(images):
        raise ValueError(f"{len(images)} images but {len(boxes)} box sets")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} mask sets")
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    out_h, out_w = (int(s) for s in out_size)
    if images:
        device, dtype = images[0].device, images[0].dtype if images[0].is_floating_point() else torch.float32
    else:
        device, dtype = torch.device("cpu"), torch.float32
    c = int(channels) if channels is not None else max((int(img.shape[0]) for img in images), default=1)
    counts = [int(b.reshape(-1, 4).shape[0]) for b in boxes]
    image_index = torch.repeat_interleave(
        torch.arange(len(images), device=device), torch.tensor(counts, device=device, dtype=torch.long)
    )
    n = sum(counts)
    if n == 0:
        return torch.zeros(0, c, out_h, out_w, device=device, dtype=dtype), image_index

    if geometry is None:
        geometry = [
            chromosome_geometry(b.to(device), None if masks is None else masks[i])
            for i, b in enumerate(boxes)
        ]
    centres = torch.cat([g.centres for g in geometry]).to(device)
    theta = torch.deg2rad(torch.cat([g.angles for g in geometry]).to(device))
    lengths = torch.cat([g.lengths for g in geometry]).to(device).clamp(min=1.0)
    widths = torch.cat([g.widths for g in geometry]).to(device).clamp(min=1.0)

    # the images as the depth axis of one volume, minus their fill (so that zero padding shows the fill)
    with_crops = [i for i, k in enumerate(counts) if k > 0]
    slot = {i: s for s, i in enumerate(with_crops)}
    h_max = max(int(images[i].shape[-2]) for i in with_crops)
    w_max = max(int(images[i].shape[-1]) for i in with_crops)
    volume = torch.zeros(c, len(with_crops), h_max, w_max, device=device, dtype=dtype)
    fills = torch.zeros(len(with_crops), c, device=device, dtype=dtype)
    for i in with_crops:
        img = _to_channels(images[i].to(dtype), c)
        fills[slot[i]] = _image_fill(img, fill)
        volume[:, slot[i], : img.shape[-2], : img.shape[-1]] = img - fills[slot[i]][:, None, None]

    # crop (x_o, y_o) in [-1, 1] -> image point c + a e + b d, a = x_o W s / 2, b = y_o H s / 2
    scale = torch.maximum(lengths / (out_h * (1 - 2 * margin)), widths / (out_w * (1 - 2 * margin)))
    sin, cos = torch.sin(theta), torch.cos(theta)
    ex, ey, dx, dy = cos, -sin, sin, cos
    half_w, half_h = out_w * scale / 2, out_h * scale / 2
    affine = torch.stack(
        [
            torch.stack([half_w * ex * 2 / w_max, half_h * dx * 2 / w_max, 2 * centres[:, 0] / w_max - 1], 1),
            torch.stack([half_w * ey * 2 / h_max, half_h * dy * 2 / h_max, 2 * centres[:, 1] / h_max - 1], 1),
        ],
        dim=1,
    ).to(dtype)
    grid = F.affine_grid(affine, [n, c, out_h, out_w], align_corners=False)  # (N, H, W, 2)
    slot_of = torch.full((len(images),), -1, dtype=torch.long, device=device)
    slot_of[torch.tensor(with_crops, device=device)] = torch.arange(len(with_crops), device=device)
    slices = slot_of[image_index]
    depth = ((2 * slices.to(dtype) + 1) / len(with_crops) - 1)[:, None, None, None].expand(n, out_h, out_w, 1)
    grid3 = torch.cat([grid, depth], dim=-1).unsqueeze(0)  # (1, N, H, W, 3): x, y, image slice
    sampled = F.grid_sample(
        volume.unsqueeze(0), grid3, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (1, C, N, H, W)
    crops = sampled[0].transpose(0, 1) + fills[slices][:, :, None, None]
    return crops.contiguous(), image_index


def straighten_crop(
    image: torch.Tensor,
    box: torch.Tensor,
    mask: torch.Tensor | None = None,
    out_size: tuple[int, int] = (96, 32),
    *,
    margin: float = 0.05,
    fill: float | None = None,
) -> tuple[torch.Tensor, float]:
    """One chromosome cut out of ``image``, turned upright and fitted into an ``out_size`` crop.

    Args:
        image: (C, H, W) float image.
        box: (4,) xyxy box of the chromosome.
        mask: optional (H, W) mask of the chromosome in image coordinates (its principal axis sets the
            angle); without it the box's longer side is the axis.
        out_size: crop ``(H, W)``.
        margin / fill: as :func:`crops_from_detections`.

    Returns:
        ``(crop, angle)``: the (C, H, W) crop and the chromosome's angle in degrees (module docstring).
    """
    boxes = torch.as_tensor(box, dtype=torch.float32, device=image.device).reshape(1, 4)
    masks = None if mask is None else mask.reshape(1, *mask.shape[-2:])
    geom = chromosome_geometry(boxes, masks)
    crops, _ = crops_from_detections(
        [image], [boxes], None, out_size, margin=margin, fill=fill, geometry=[geom]
    )
    return crops[0], float(geom.angles[0])


# ------------------------------------------------------------------------------------------------ classifier
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ChromosomeClassifier(nn.Module):
    """ResNet-18-like classifier of straightened chromosome crops (see the module docstring).

    Args:
        num_classes: output logits (24: classes 1-22, X, Y at indices 0-23).
        in_channels: crop channels (1 for G-banded gray images).
        width: channels of the first stage (ResNet-18: 64); stages have width x (1, 2, 4, 8).
        blocks: BasicBlocks per stage (ResNet-18: (2, 2, 2, 2)).
        length_feature: take ``relative_length`` (length / the cell's median length) as an extra input.
        dropout: dropout before the last layer.

    ``model(crops, relative_length)``: crops (N, C, H, W) float in any range (each crop is standardised to
    zero mean and unit variance), relative_length (N,) positive -> (N, num_classes) logits.
    """

    def __init__(
        self,
        num_classes: int = N_CHROMOSOME_CLASSES,
        *,
        in_channels: int = 1,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2, 2),
        length_feature: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1 or not blocks or min(blocks) < 1:
            raise ValueError("num_classes, in_channels, width and every stage's block count must be >= 1")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.length_feature = bool(length_feature)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = width
        for stage, n_blocks in enumerate(blocks):
            cout = width * 2**stage
            for b in range(int(n_blocks)):
                layers.append(_BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.feature_dim = cin
        length_dim = 32 if self.length_feature else 0
        self.length_mlp = (
            nn.Sequential(nn.Linear(1, length_dim), nn.ReLU(inplace=True), nn.Linear(length_dim, length_dim))
            if self.length_feature
            else None
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin + length_dim, num_classes)

    def forward(self, crops: torch.Tensor, relative_length: torch.Tensor | None = None) -> torch.Tensor:
        if crops.ndim != 4 or crops.shape[1] != self.in_channels:
            raise ValueError(f"crops must be (N, {self.in_channels}, H, W), got {tuple(crops.shape)}")
        x = crops.float()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.flatten(1).std(dim=1)[:, None, None, None] if x[0].numel() > 1 else torch.ones_like(mean)
        x = (x - mean) / (std + 1e-3)
        feats = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)
        if self.length_mlp is not None:
            if relative_length is None:
                raise ValueError("this classifier takes relative_length (length_feature=True)")
            rel = relative_length.reshape(-1, 1).to(feats).clamp(min=1e-3)
            if rel.shape[0] != feats.shape[0]:
                raise ValueError(f"{feats.shape[0]} crops but {rel.shape[0]} relative lengths")
            feats = torch.cat([feats, F.relu(self.length_mlp(rel.log()))], dim=1)
        return self.head(self.dropout(feats))


# ----------------------------------------------------------------------------------------------- pair prior
def assign_with_pair_prior(logits: Any, cap: int = 2, penalty: float = DEFAULT_PRIOR_PENALTY) -> Any:
    """Labels 1-24 of one cell's crops under the pair prior (module docstring: slots and costs).

    Args:
        logits: (N, 24) class logits (classes 1-22, X, Y), a tensor or an array.
        cap: free copies per autosome, and free sex-chromosome slots in all (one of them X or Y, the
            others X only).
        penalty: extra cost (nats) of every further copy; ``inf`` would make the caps hard (then more than
            46 crops have no assignment: not allowed).

    Returns:
        (N,) int64 labels in 1-24: a tensor on the logits' device for tensor input, else an array.
    """
    is_tensor = isinstance(logits, torch.Tensor)
    arr = logits.detach().double().cpu().numpy() if is_tensor else np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_CHROMOSOME_CLASSES:
        raise ValueError(f"logits must be (N, {N_CHROMOSOME_CLASSES}), got {arr.shape}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"penalty must be finite and >= 0, got {penalty}")
    n = arr.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    if n > 0:
        from scipy.optimize import linear_sum_assignment

        shifted = arr - arr.max(axis=1, keepdims=True)
        cost = -(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))  # -log softmax, (N, 24)
        cost = np.minimum(cost, 1e6)  # a probability of 0 (-inf logit) stays a finite, huge cost
        n_auto = N_CHROMOSOME_CLASSES - 2
        xy = cost[:, [X_CLASS - 1, Y_CLASS - 1]]
        columns = [
            np.repeat(cost[:, :n_auto], cap, axis=1),  # free autosome copies
            xy.min(axis=1, keepdims=True),  # the free "X or Y" slot
            np.repeat(cost[:, [X_CLASS - 1]], cap - 1, axis=1),  # free X-only slots
            np.repeat(cost + penalty, n, axis=1),  # penalised copies: n per class
        ]
        column_labels = np.concatenate(
            [
                np.repeat(np.arange(1, n_auto + 1), cap),
                [-1],  # decided per crop
                np.full(cap - 1, X_CLASS),
                np.repeat(np.arange(1, N_CHROMOSOME_CLASSES + 1), n),
            ]
        )
        rows, cols = linear_sum_assignment(np.concatenate(columns, axis=1))
        labels[rows] = column_labels[cols]
        either = labels == -1
        labels[either] = np.where(xy[either, 0] <= xy[either, 1], X_CLASS, Y_CLASS)
    if is_tensor:
        return torch.as_tensor(labels, device=logits.device)
    return labels


def cell_labels(
    logits: torch.Tensor,
    in_cell: torch.Tensor,
    pair_prior: bool = True,
    cap: int = 2,
    penalty: float = DEFAULT_PRIOR_PENALTY,
) -> torch.Tensor:
    """Labels 1-24 of one cell's detections: the pair prior's over those ``in_cell``, the likeliest class
    for the rest (and for all when ``pair_prior`` is off).

    Args:
        logits: (N, 24) class logits, or logs of any positive class scores (e.g. of a YOLO head's
            per-class sigmoids), columns in class order 1-22, X, Y; the prior normalises each row.
        in_cell: (N,) bool: the detections that make up the cell (e.g. detector score >= 0.5).
    """
    labels = logits.argmax(dim=1) + 1
    if pair_prior and bool(in_cell.any()):
        labels[in_cell] = assign_with_pair_prior(logits[in_cell], cap, penalty).to(labels.device)
    return labels
