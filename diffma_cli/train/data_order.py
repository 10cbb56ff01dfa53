"""Which samples each process sees at each step, and the per-sample random numbers used for them.

Two properties make a run reproducible and resumable exactly:
1. Data order depends only on (seed, epoch): each epoch is one permutation of the data set, cut into global
   batches of `global_batch_size` consecutive entries. torch's DistributedSampler deals the permutation
   out round-robin (rank r takes entries r, r+W, r+2W, ...), so the union over ranks of each rank's k-th
   slice of `global_batch_size / W` entries is exactly global batch k, whatever the world size W and the
   number of accumulation steps. Resuming skips the batches already done without reading them.
2. Random numbers (diffusion timestep, noise, latent posterior sample) come from a generator seeded by
   (seed, epoch, sample index), never from a process-wide RNG; so they do not depend on the rank that
   processes the sample, on the batch split, or on whether the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) that can start an epoch part-way, at `start` of this rank's
    entries; `set_epoch(epoch, start)` is called before each epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)


class IndexedDataset(Dataset):
    """Wraps a data set so that each item comes with its index: (index, item)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


def sample_seeds(seed: int, epoch: int, indices: Sequence[int] | torch.Tensor) -> list[int]:
    """One 63-bit seed per sample from (seed, epoch, index), mixed by numpy's SeedSequence (no collisions
    between neighbouring indices, unlike seed + index)."""
    return [int(np.random.SeedSequence([seed, epoch, int(i)]).generate_state(1, np.uint64)[0] >> 1)
            for i in indices]


class SampleRandomness:
    """Per-sample generators for one micro-batch; draws are stacked along a new batch dimension.

    Draws happen on the CPU (tiny tensors: timesteps and latent-sized noise) so that CPU and CUDA runs of
    the same recipe see the same numbers; the result is moved to `device`.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, *shape) standard normal draws."""
        draws = [torch.randn(shape, generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def randint(self, high: int) -> torch.Tensor:
        """(N,) int64 draws uniform in [0, high)."""
        draws = [torch.randint(0, high, (1,), generator=g) for g in self.generators]
        return torch.cat(draws).to(self.device)
