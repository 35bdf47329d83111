"""torchrun support: process-group set-up, reductions over ranks, and main-process checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes (one process: rank 0 of 1).

    ``enabled``: a process group runs (torchrun started this process, whatever the number of
    processes), so the model trains under DistributedDataParallel.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), if any: as
    torchvision's references do, whenever torchrun started the process, one process included,
    so a one-GPU torchrun runs NCCL, DDP and SyncBatchNorm as many GPUs do."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        enabled=True,
    )
    if not dist.is_initialized():
        if device_type == "cuda":
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
            # NCCL binds to this rank's GPU now, instead of guessing at the first barrier
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return info


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values, device: torch.device) -> np.ndarray:
    """Element-wise sum of ``values`` over all ranks (the values themselves with one process)."""
    array = np.asarray(values, dtype=np.float64)
    if not (dist.is_available() and dist.is_initialized()):
        return array
    tensor = torch.from_numpy(array).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place, on its device (nothing with one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def all_gather_rows(row: torch.Tensor) -> torch.Tensor:
    """(world_size, n): ``row`` (n,) of every rank, in rank order, on each rank (``row[None]``
    with one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return row[None]
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
