"""Thin helpers over ``torch.distributed`` so the trainer reads the same with 1 or N processes.

A run started with ``torchrun --nproc_per_node N train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init_distributed` then joins the process group (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from cytobench.errors import CytobenchError


def init_distributed() -> bool:
    """Join the process group if started by torchrun. Returns True when distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank (returns ``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send ``obj`` from rank ``src`` to every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def local_device(requested: str = "auto") -> torch.device:
    """The device this process trains on: ``auto`` picks this rank's GPU when there is one.

    Raises:
        CytobenchError: an unknown device name, or a CUDA device on a machine without CUDA.
    """
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise CytobenchError(
                f"device {requested!r}: not a device name (auto, cpu, cuda, cuda:N)"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CytobenchError(
                f"device {requested!r}: CUDA is not available on this machine (use cpu or auto)"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
