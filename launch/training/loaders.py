"""DataLoaders for the engine: rank-sharded, resumable mid-epoch, and reproducible sample by sample.

The training sampler yields `(index, seed)` keys: the seed is a pure function of (run seed, epoch,
index), so a clip's augmentation does not depend on worker count, prefetching or where a resumed run
restarted. Datasets accept such keys (see `datasets.video`).

`SequenceStreamSampler` batches the windows of recordings (interactions) so that each recording is
walked in order through successive batches, for models that carry memory from window to window
(`training.memory`).
"""
from __future__ import annotations

import random
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from action_launch.datasets.config import DataConfig


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


def sequences_of(dataset: Dataset) -> Optional[List[List[int]]]:
    """Dataset indices of each recording's windows in window order, for a dataset that groups its
    samples into recordings (`interactions` and `windows(id)`, as `datasets.multiperson`); else None."""
    if not hasattr(dataset, "interactions") or not hasattr(dataset, "windows"):
        return None
    return [list(dataset.windows(rec)) for rec in dataset.interactions]


class SequenceStreamSampler(Sampler):
    """Batches in which slot b walks recordings window by window, in order (stateful sequence models).

    Training (`shuffle=True`): the recordings, in an order shuffled per (seed, epoch), are
    concatenated and cut into `num_replicas x batch_size` streams of equal length (the remainder
    is dropped); rank r takes streams r*B ... r*B+B-1 and batch t holds the t-th window of each,
    as `(index, seed)` keys like `ResumableDistributedSampler`. Every batch is full; a stream may
    begin or end inside a recording, whose memory then starts afresh there (truncated
    back-propagation through time, as language models batch a corpus). `length` caps the samples
    per epoch; `set_epoch(epoch, start)` skips the first `start` samples (resume).

    Evaluation (`shuffle=False`): whole recordings, rank r taking recordings r, r+W, ...; each
    goes to the slot with the fewest windows so far, so every recording is walked from its first
    window; the last batches shrink as slots run out (from the end: slot b stays at position b;
    no padding: each window counted once).
    Plain indices.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, length: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sequences = [list(s) for s in sequences if len(s)]
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        total = sum(len(s) for s in self.sequences)
        self.stream_length = total // (num_replicas * batch_size)
        if length is not None:
            self.stream_length = min(self.stream_length, length // batch_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle the recordings for `epoch` and skip the first `start` samples (whole batches) of this rank."""
        self.epoch, self.start = epoch, start // self.batch_size

    def streams(self) -> List[List[int]]:
        """This rank's slots: the dataset indices each slot walks, in order."""
        if not self.shuffle:
            mine = self.sequences[self.rank::self.num_replicas]
            slots: List[List[int]] = [[] for _ in range(self.batch_size)]
            for seq in mine:
                min(slots, key=len).extend(seq)
            # longest first: slots that run out are always the last ones, so a slot keeps its position
            return sorted(slots, key=len, reverse=True)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.sequences))
        flat = [i for k in order for i in self.sequences[k]]
        n = self.stream_length
        first = self.rank * self.batch_size
        return [flat[(first + b) * n:(first + b + 1) * n] for b in range(self.batch_size)]

    def __iter__(self) -> Iterator[List[Union[int, Tuple[int, int]]]]:
        slots = self.streams()
        steps = max((len(s) for s in slots), default=0)
        for t in range(self.start if self.shuffle else 0, steps):
            batch = [s[t] for s in slots if t < len(s)]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in batch] if self.shuffle else batch

    def __len__(self) -> int:
        if self.shuffle:
            return self.stream_length - self.start
        return max((len(s) for s in self.streams()), default=0)


def split_batch(batch: Sequence[Any]) -> Tuple[Any, Any, Optional[Any]]:
    """(inputs, targets, meta or None) of a collated batch of `(inputs, target)` or `(inputs, target, meta)` samples."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    inputs, targets = batch
    return inputs, targets, None


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, cfg: DataConfig, seed: int,
                drop_last: bool) -> DataLoader:
    """A DataLoader with seeded workers and its own generator (it never draws from the global RNG).

    A `SequenceStreamSampler` makes the batches itself (`batch_size` and `drop_last` are then its business)."""
    workers = cfg.num_workers
    batching = ({"batch_sampler": sampler} if isinstance(sampler, SequenceStreamSampler)
                else {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last})
    return DataLoader(
        dataset, **batching, num_workers=workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(), worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None)
