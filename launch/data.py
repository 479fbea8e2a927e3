"""DataLoaders for the engine: rank-sharded, resumable mid-epoch, and reproducible sample by sample.

The training sampler yields `(index, seed)` keys: the seed is a pure function of (run seed, epoch,
index), so a clip's augmentation does not depend on worker count, prefetching or where a resumed run
restarted. Datasets accept such keys (see `datasets.video`).
"""
from __future__ import annotations

import random
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datasets.config import DataConfig


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ResumableDistributedSampler(DistributedSampler):
    """`DistributedSampler` that can start mid-epoch, stop after `length` samples and yields seeded keys."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, length: Optional[int] = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.length = min(length, self.num_samples) if length else self.num_samples
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for `epoch` and skip the first `start` samples of this rank's shard."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())[self.start:self.length]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.length - self.start


class ShardSampler(Sampler):
    """Evaluation: rank r takes indices r, r+W, ...; no padding, so every sample is counted once."""

    def __init__(self, size: int, num_replicas: int, rank: int):
        self.indices: List[int] = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, cfg: DataConfig, seed: int,
                drop_last: bool) -> DataLoader:
    """A DataLoader with seeded workers and its own generator (it never draws from the global RNG)."""
    workers = cfg.num_workers
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(), worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None)
