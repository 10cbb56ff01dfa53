"""Devices and processes: one process (CPU or one GPU) or several started by `torchrun` (DDP).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when WORLD_SIZE > 1 the process
group is initialised from them (NCCL on CUDA, gloo on CPU). Only rank 0 prints, logs and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffma_cli.errors import EnvironmentProblem, InputError

DEVICES = ("auto", "cpu", "cuda")


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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA when available else CPU; `cuda` -> this process's GPU (LOCAL_RANK under torchrun)."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}", hint=f"use one of: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem("CUDA was asked for but is not available here",
                                     hint="use --device cpu, or install a CUDA build of PyTorch; "
                                          "`diffma doctor` shows what torch sees")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


@contextmanager
def processes(device: str = "auto") -> Iterator[Processes]:
    """Join the torchrun process group if there is one (and leave it afterwards); yield where we are."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
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
