"""Devices and processes: one process (CPU or one GPU) or several started by `torchrun` (DDP).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when WORLD_SIZE > 1 the process
group is initialised from them (NCCL on CUDA, gloo on CPU). Only rank 0 prints, logs and writes files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffma_cli.devices import env_int, resolve_device


@dataclass(frozen=True)
class Processes:
    """Where this process sits: its rank among `world_size` processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextmanager
def processes(device: str = "auto") -> Iterator[Processes]:
    """Join the torchrun process group if there is one (and leave it afterwards); yield where we are."""
    world_size = env_int("WORLD_SIZE", 1)
    rank, local_rank = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank)
    started_here = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=resolved if resolved.type == "cuda" else None)
        started_here = True
    try:
        yield Processes(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)
    except BaseException:
        if started_here:
            dist.destroy_process_group()
        raise
    if started_here:
        # Leave together: a rank that tears its group down while rank 0 is still exporting can make gloo
        # abort the other process (seen as a rare SIGABRT of rank 1 at the end of a 2-process CPU run).
        dist.barrier()
        dist.destroy_process_group()


def barrier(where: Processes) -> None:
    if where.distributed:
        dist.barrier()


def mean_over_processes(value: torch.Tensor, where: Processes) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (itself in a single process)."""
    if not where.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / where.world_size


def from_main(value, where: Processes):
    """Rank 0's `value` (any picklable object) on every process."""
    if not where.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
