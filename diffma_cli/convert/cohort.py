"""Several processes converting one folder of cases: `torchrun --nproc-per-node K -m diffma_cli convert ...`.

Each process (one GPU each: LOCAL_RANK picks it) converts its share of the cases that are not finished yet;
rank 0 gathers what everyone did and writes one summary. The processes talk over gloo (CPU sockets), not
NCCL: they exchange only a few small messages (a barrier after looking for finished cases, the final
gather), and a gloo group can wait as long as the slowest share takes, where NCCL's collectives time out
after minutes. One process (no torchrun) never starts a group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from diffma_cli.errors import InputError

# How long a process waits for the others at the final gather: the slowest share of a cohort.
GATHER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Share:
    """This process's place among the processes converting a cohort."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def this_share() -> Share:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (one process when absent)."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name, str(default))
        try:
            values[name] = int(text)
        except ValueError:
            raise InputError(f"environment variable {name}={text!r} is not an integer") from None
    share = Share(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if not 0 <= share.rank < share.world_size:
        raise InputError(f"RANK={share.rank} is not below WORLD_SIZE={share.world_size}")
    return share


def split(items: Sequence, rank: int, world_size: int) -> list:
    """The items process `rank` of `world_size` takes: every world_size-th, starting at its rank.

    Interleaving keeps the shares within one item of each other, and, as cases are listed by name, spreads
    a site's or a year's cases (often alike in size) over all processes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} processes")
    return list(items[rank::world_size])


@contextmanager
def cohort_group(share: Share) -> Iterator[None]:
    """Join a gloo group of all processes for the run's duration when there are several."""
    import torch.distributed as dist

    started = share.distributed and not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", rank=share.rank, world_size=share.world_size, timeout=GATHER_TIMEOUT)
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def wait_for_all(share: Share) -> None:
    """Every process reaches this point before any goes on."""
    if share.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather(value, share: Share) -> list:
    """Every process's `value` (picklable), in rank order, on every process ([value] for one process)."""
    if not share.distributed:
        return [value]
    import torch.distributed as dist

    values = [None] * share.world_size
    dist.all_gather_object(values, value)
    return values
