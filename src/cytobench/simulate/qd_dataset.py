"""Seeded QD image sequences and their COCO data sets on disk (simulator: :mod:`cytobench.simulate.qd`).

Seeding: image ``i`` of seed ``s`` belongs to block ``b = i // BLOCK_SIZE`` whose random stream is
``numpy.random.default_rng([s, b])``; a block is always simulated whole, so image ``i`` is the same
whatever the number of images, the chunk size, or whether it is written to disk
(:func:`simulate_qd_dataset`) or generated on the fly (:class:`cytobench.data.qd_dataset.QDSimulatedDataset`).

Files written by :func:`simulate_qd_dataset`:

* ``images/qd_000000.png``: grayscale 16-bit PNG (or TIFF) of the raw photon counts, clipped to
  ``2**bit_depth - 1`` (default ``bit_depth=8``: counts above 255 saturate, like an 8-bit detector range).
  Read them with ``bit_depth=bit_depth`` (``CocoDetectionDataset(..., bit_depth=8)``) so that every image
  is divided by the same ``2**bit_depth - 1``; with the default 8 bits the inferred depth is 8 anyway
  (no value exceeds 255), so readers that infer the depth agree.
* ``annotations.json``: COCO, category 1 ``quantum_dot`` with ``keypoints: ["centroid"]``; one annotation
  per image (``bbox`` xywh, ``keypoints`` ``[x, y, 2]`` = trajectory centroid, ``area`` = box area); the
  image dicts carry ``diffusion_um2_s``, ``n_qd``, ``n_bkg``, ``seed``, ``pixel_size_um``, ``bit_depth``
  and ``saturated_pixels``; ``info`` holds all scan parameters.
* ``trajectories.npz`` (optional): ``times`` (T,), ``positions`` (n, T, 3) float32 um, ``beam`` (T, 3),
  ``centroids`` (n, 2) px, ``diffusion`` (n,), written chunk by chunk (30k images take ~0.2 GB).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cytobench.io.images import write_image
from cytobench.simulate.common import check_out_dir, save_simulated_coco
from cytobench.simulate.qd import (
    PAPER_DIFFUSION_RANGE,
    TILE,
    QDBatch,
    ScanParams,
    check_diffusion,
    scan_timeline,
    simulate_streams,
)

__all__ = [
    "BLOCK_SIZE",
    "CATEGORY",
    "as_scan_params",
    "file_name",
    "simulate_qd_dataset",
    "simulate_qd_range",
]

BLOCK_SIZE = 32  # images per random stream
CATEGORY: dict[str, Any] = {
    "id": 1,
    "name": "quantum_dot",
    "supercategory": "particle",
    "keypoints": ["centroid"],
    "skeleton": [],
}
_FORMATS = {"png": ".png", "tif": ".tif", "tiff": ".tif"}
_WRITERS = 8  # threads writing image files
assert TILE % BLOCK_SIZE == 0, "a block must never straddle two simulation tiles"


def as_scan_params(params: ScanParams | Mapping[str, Any] | None) -> ScanParams:
    """A :class:`ScanParams` from itself, a mapping of its fields (e.g. a Hydra config) or None (defaults)."""
    if params is None:
        return ScanParams()
    if isinstance(params, ScanParams):
        return params
    if isinstance(params, Mapping):
        unknown = set(params) - set(ScanParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"params has unknown ScanParams fields: {sorted(unknown)}")
        return ScanParams(**{str(k): v for k, v in params.items()})
    raise ValueError(f"params must be a ScanParams or a mapping, got {type(params).__name__}")


def file_name(index: int, image_format: str = "png") -> str:
    """File name of image ``index`` (0-based), e.g. ``qd_000000.png``."""
    return f"qd_{index:06d}{_FORMATS[image_format]}"


def simulate_qd_range(
    seed: int,
    start: int,
    stop: int,
    diffusion: np.ndarray | None,
    diffusion_range: tuple[float, float] | None,
    params: ScanParams,
    return_trajectories: bool = False,
) -> QDBatch:
    """Images ``start .. stop-1`` of the seeded sequence (whole blocks simulated, then sliced).

    Args:
        seed: non-negative integer seed.
        start: first image index (>= 0).
        stop: one past the last image index (> start).
        diffusion: D (um^2/s) of every image of the sequence, (n,) with ``n >= stop``; entries past the end
            pad the last block with 0. None draws D from ``diffusion_range`` (per block stream).
        diffusion_range: ``(lo, hi)`` used when ``diffusion`` is None.
        params: scan parameters.
        return_trajectories: also return times, positions and beam.

    Returns:
        The :class:`QDBatch` of the ``stop - start`` images.
    """
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}")
    first, last = start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE
    lo, hi = first * BLOCK_SIZE, (last + 1) * BLOCK_SIZE
    streams = [(np.random.default_rng([seed, b]), BLOCK_SIZE) for b in range(first, last + 1)]
    d = None
    if diffusion is not None:
        d = np.zeros(hi - lo)
        d[: max(0, min(hi, len(diffusion)) - lo)] = diffusion[lo:hi]
    batch = simulate_streams(streams, d, diffusion_range, params, return_trajectories)
    cut = slice(start - lo, stop - lo)
    for name in ("counts", "expected", "centroids_px", "boxes_px", "diffusion", "positions_um"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value[cut])
    return batch


def simulate_qd_dataset(
    out_dir: str | Path,
    n: int,
    diffusion: float | ArrayLike | None = None,
    diffusion_range: tuple[float, float] | None = None,
    params: ScanParams | Mapping[str, Any] | None = None,
    seed: int = 0,
    chunk: int = 4096,
    image_format: str = "png",
    save_trajectories: bool = True,
    bit_depth: int = 8,
) -> Path:
    """Simulate ``n`` QD images into ``out_dir`` (images, COCO json, trajectories; see the module doc).

    Args:
        out_dir: output folder (created).
        n: number of images.
        diffusion: D in um^2/s, one value or (n,) per image.
        diffusion_range: ``(lo, hi)`` to draw D uniformly per image; when both are None the paper's
            training range ``(0.75, 1.75)`` is used.
        params: :class:`ScanParams` or a mapping of its fields; None for the paper's values.
        seed: non-negative integer seed.
        chunk: images simulated per vectorised call (memory ~ 20 kB per image).
        image_format: ``"png"`` or ``"tif"``.
        save_trajectories: write ``trajectories.npz``.
        bit_depth: counts are clipped to ``2**bit_depth - 1`` (8..16); read images with this bit depth.

    Returns:
        Path of ``annotations.json``.

    Raises:
        ValueError: a bad argument (names the parameter).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int | np.integer) or not 8 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be an integer in [8, 16], got {bit_depth!r}")
    p = as_scan_params(params)
    if diffusion is None and diffusion_range is None:
        diffusion_range = PAPER_DIFFUSION_RANGE
    d = check_diffusion(diffusion, diffusion_range, int(n))
    if diffusion_range is not None:
        diffusion_range = (float(diffusion_range[0]), float(diffusion_range[1]))
    out_dir = check_out_dir(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    n, chunk, max_count = int(n), max(BLOCK_SIZE, int(chunk) // BLOCK_SIZE * BLOCK_SIZE), 2**bit_depth - 1
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    centroids, diffusions = np.empty((n, 2)), np.empty(n)
    traj = _TrajectoryWriter(out_dir / "trajectories.npz", (n, p.n_samples, 3)) if save_trajectories else None
    try:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            batch = simulate_qd_range(int(seed), start, stop, d, diffusion_range, p, traj is not None)
            centroids[start:stop], diffusions[start:stop] = batch.centroids_px, batch.diffusion
            if traj is not None:
                traj.write(batch.positions_um)  # type: ignore[arg-type]
            saturated = (batch.counts > max_count).sum(axis=(1, 2))
            pixels = np.minimum(batch.counts, max_count).astype(np.uint16)
            names = [file_name(index, image_format) for index in range(start, stop)]
            paths = [out_dir / "images" / name for name in names]
            with ThreadPoolExecutor(_WRITERS) as pool:  # file creation is latency-bound: overlap it
                list(pool.map(write_image, paths, pixels))
            for k, name in enumerate(names):
                index = start + k
                images.append(_image_dict(index, name, p, float(batch.diffusion[k]), int(seed), bit_depth))
                images[-1]["saturated_pixels"] = int(saturated[k])
                annotations.append(_annotation(index, batch.boxes_px[k], batch.centroids_px[k]))
        if traj is not None:
            times, _, beam = scan_timeline(p)
            traj.finish(times=times, beam=beam, centroids=centroids, diffusion=diffusions)
    finally:
        if traj is not None:
            traj.close()
    info = {
        "description": "cytobench two-photon quantum-dot simulator (Netterstrom et al., Sec. 4.6)",
        "version": "1",
        "seed": int(seed),
        "block_size": BLOCK_SIZE,
        "bit_depth": int(bit_depth),
        "count_scale": float(max_count),
        "scan_params": p.to_dict(),
        "diffusion_range": list(diffusion_range) if diffusion_range is not None else None,
    }
    data = {"info": info, "images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}
    return save_simulated_coco(out_dir, data)


def _image_dict(index: int, name: str, p: ScanParams, d: float, seed: int, bit_depth: int) -> dict[str, Any]:
    return {
        "id": index + 1,
        "file_name": name,
        "height": p.rows,
        "width": p.cols,
        "diffusion_um2_s": d,
        "n_qd": p.n_qd,
        "n_bkg": p.n_bkg,
        "seed": seed,
        "pixel_size_um": p.pixel_size_um,
        "bit_depth": bit_depth,
    }


def _annotation(index: int, box: np.ndarray, centroid: np.ndarray) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return {
        "id": index + 1,
        "image_id": index + 1,
        "category_id": 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": 0,
        "keypoints": [float(centroid[0]), float(centroid[1]), 2],
        "num_keypoints": 1,
    }


class _TrajectoryWriter:
    """Stream ``positions`` (n, T, 3) float32 into an uncompressed ``.npz``, then add the small arrays.

    Written to ``<path>.tmp`` and renamed on :meth:`finish`; :meth:`close` removes an unfinished file.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.entry = self.zip.open("positions.npy", "w", force_zip64=True)
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_2_0(self.entry, header)
        self.done = False

    def write(self, positions: np.ndarray) -> None:
        self.entry.write(np.ascontiguousarray(positions, dtype="<f4").tobytes())

    def finish(self, **arrays: np.ndarray) -> None:
        self.entry.close()
        for name, value in arrays.items():
            with self.zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
        self.zip.close()
        os.replace(self.tmp, self.path)
        self.done = True

    def close(self) -> None:
        if not self.done:
            self.entry.close()
            self.zip.close()
            self.tmp.unlink(missing_ok=True)


def simulate_qd_splits(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    diffusion_range: tuple[float, float] = (0.75, 1.75),
    params: ScanParams | Mapping[str, Any] | None = None,
    train_seed: int = 1,
    val_seed: int = 2,
) -> Path:
    """Write ``out_dir/train`` and ``out_dir/val`` (see :func:`simulate_qd_dataset`).

    The default seeds are those of the on-the-fly ``data=qd`` config, so both routes hold the same frames.
    """
    out_dir = Path(out_dir)
    simulate_qd_dataset(
        out_dir / "train", n_train, diffusion_range=tuple(diffusion_range), params=params, seed=train_seed
    )
    simulate_qd_dataset(
        out_dir / "val", n_val, diffusion_range=tuple(diffusion_range), params=params, seed=val_seed
    )
    return out_dir
