"""DataLoaders for the engine: rank-sharded, resumable mid-epoch, and reproducible sample by sample.

The training sampler yields `(index, seed)` keys: the seed is a pure function of (run seed, epoch,
index), so a clip's augmentation does not depend on worker count, prefetching or where a resumed run
restarted. Datasets accept such keys (see `datasets.video`).

`SequenceStreamSampler` batches the windows of recordings (interactions) so that each recording is
walked in order through successive batches, for models that carry memory from window to window
(`training.memory`).

Workers are started by a forkserver, not forked from the training process: that process has threads
(the process group's, DeepSpeed's, MLflow's), and a fork taken while another thread holds a lock can
leave the child stuck for ever (CPython gh-112275, in PyOS_AfterFork_Child). A loader's wait for a
batch is bounded (`train.data_timeout_s`): a stuck worker raises `DataTimeout` instead of hanging. When the
training process dies (SIGKILL, the OOM killer), its workers, the forkserver and the resource tracker end
within seconds (`_end_with_training_process`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import multiprocessing
import os
import random
import signal
import sys
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from action_launch.common.console import setup_logging
from action_launch.common.processes import die_with_parent
from action_launch.datasets.config import DataConfig
from action_launch.datasets.contract import HasRecordings
from action_launch.training.signals import HELPER_IGNORED

log = logging.getLogger(__name__)


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
        indices = list(super().__iter__())[self.start : self.length]
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


class BatchShardSampler(Sampler):
    """Evaluation by whole batches: the batches of the one-process pass, in groups that one rank walks in order (a
    batch, or the batches of a block of recordings for a model that carries memory); rank r takes groups r, r+W, ...
    A sample is computed in the batch it has in one process, so its result does not depend on the world size (a
    kernel may be chosen by batch size). Yields the batches: a loader's `batch_sampler`."""

    def __init__(self, groups: Sequence[Sequence[Sequence[int]]], num_replicas: int = 1, rank: int = 0):
        self.batches: List[List[int]] = [list(batch) for group in groups[rank::num_replicas] for batch in group]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def sequences_of(dataset: Dataset) -> Optional[List[List[int]]]:
    """Dataset indices of each recording's windows in window order, for a dataset that groups its
    samples into recordings (`datasets.contract.HasRecordings`, as `datasets.multiperson`); else None."""
    if not isinstance(dataset, HasRecordings):
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

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        length: Optional[int] = None,
    ):
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
            mine = self.sequences[self.rank :: self.num_replicas]
            slots: List[List[int]] = [[] for _ in range(self.batch_size)]
            for seq in mine:
                min(slots, key=len).extend(seq)
            # longest first: slots that run out are always the last ones, so a slot keeps its position
            return sorted(slots, key=len, reverse=True)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.sequences))
        flat = [i for k in order for i in self.sequences[k]]
        n = self.stream_length
        first = self.rank * self.batch_size
        return [flat[(first + b) * n : (first + b + 1) * n] for b in range(self.batch_size)]

    def __iter__(self) -> Iterator[Union[List[int], List[Tuple[int, int]]]]:
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


def _init_worker(worker_id: int, owner: int, log_level: Optional[int] = None) -> None:
    """End with the training process (`owner`, its pid; `_end_with_training_process`), seed numpy and `random`
    from the worker's torch seed, and ignore the requeue signals (Slurm sends them to every process of a job step
    before a preemption or the time limit) and Ctrl-C's SIGINT (a terminal sends it to the whole process group):
    the training process acts on them. A worker of a forkserver started
    by `_worker_context` has them blocked from its start already; this also covers one of a forkserver that
    multiprocessing restarted. SIGTERM keeps its default: it is how the DataLoader and multiprocessing end a
    stuck worker. `log_level`: the training process's (`_console_level`), for `_take_logging`."""
    _end_with_training_process(owner)
    _take_logging(log_level)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    for name in HELPER_IGNORED:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _console_level() -> Optional[int]:
    """The level below which this process's log lines are dropped (its root logger's and handlers'), or None
    when it set up no logging."""
    root = logging.getLogger()
    if not root.handlers:
        return None
    return max([root.level, *(handler.level for handler in root.handlers)])


def _take_logging(level: Optional[int]) -> None:
    """A worker started by a forkserver inherits none of the training process's logging set-up: given the suite's
    format at the training process's level, what the dataset logs (a skipped file) reads as every other line of the
    run. A forked worker has the set-up already."""
    root = logging.getLogger()
    if level is None or root.handlers:
        return
    setup_logging(False)
    root.setLevel(level)


def _end_with_training_process(owner: int) -> None:
    """Make this worker end within a moment of the training process `owner`, however that ends (SIGKILL, the OOM
    killer, a crash). A worker started by a forkserver is the forkserver's child, not `owner`'s, so torch's
    watchdog (which waits for the worker's parent pid to change) never fired, and the worker outlived a killed
    rank for ever, with the forkserver and the resource tracker. Here the kernel ends the worker with its
    parent, the forkserver (single-threaded, so the thread caveat of `die_with_parent` does not apply), and the
    worker lets go of the forkserver's liveness pipe, so the forkserver ends as soon as `owner` does; the
    resource tracker ends once all of them have. A worker forked by `owner` itself is left to torch's watchdog."""
    forkserver_pid = os.getppid()
    if forkserver_pid == owner:
        return
    # where the kernel cannot be asked (not Linux), the forkserver still ends with `owner`, and torch's watchdog
    # then ends an idle worker within its 5 s check (its parent pid changes); a busy one, after its batch
    die_with_parent(signal.SIGKILL)
    _release_forkserver_liveness()
    if os.getppid() != forkserver_pid:  # the forkserver ended before the kernel was asked: nobody would signal
        os._exit(0)


def _release_forkserver_liveness() -> None:
    """Close this worker's copy of the write end of the forkserver's "alive" pipe. multiprocessing hands it to
    every process the forkserver starts, so that it could use the same forkserver; the forkserver ends when
    the pipe's last writer closes it, so while a worker held it, the forkserver (and the worker, its child)
    waited for each other for ever after the training process died. A worker that starts processes of its own
    by forkserver (none of ours does) starts a forkserver of its own."""
    server = getattr(forkserver, "_forkserver", None)  # private API: the one forkserver has no public handle
    fd = getattr(server, "_forkserver_alive_fd", None)  # private API: nor the pipe that keeps it alive
    if server is None or fd is None:
        return
    server._forkserver_alive_fd = None  # private API: (as above) closed here, so forget it
    with contextlib.suppress(OSError):
        os.close(fd)


class DataTimeout(RuntimeError):
    """A DataLoader waited its timeout for one batch from its workers: a worker is stuck."""


class BoundedLoader(DataLoader):
    """A DataLoader whose wait for one batch from its workers raises `DataTimeout`, naming the loader, after
    `timeout` seconds (0: no bound)."""

    def __init__(self, *args: Any, name: str = "data", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.name = name

    # torch declares its own iterator class as DataLoader.__iter__'s return type, narrower than the Iterable
    # contract it serves; this one wraps that iterator in a generator, and every caller only iterates it
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._bounded(super().__iter__())

    def _bounded(self, batches: Iterator[Any]) -> Iterator[Any]:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as err:
                if self.timeout and "timed out" in str(err):
                    raise DataTimeout(
                        f"{self.name} DataLoader: no batch from its {self.num_workers} worker(s) in {self.timeout:g} s "
                        f"(train.data_timeout_s): a worker is stuck (a deadlock, a stalled file system or decoder); "
                        f"the run stops instead of waiting"
                    ) from err
                raise
            yield batch


@functools.cache
def worker_start_method() -> str:
    """`forkserver` where the platform has it and this process's main script may be imported by a worker
    (`_main_reimport_safe`), else the platform's default (said once in the log)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_start_method()
    if not _main_reimport_safe():
        log.warning(
            '%s has no `if __name__ == "__main__":` guard, so DataLoader workers are forked from this '
            "process (a worker started by a forkserver would run that script again); a fork of a process "
            "with threads can hang, which train.data_timeout_s bounds",
            sys.modules["__main__"].__file__,
        )
        return "fork"
    return "forkserver"


def _main_reimport_safe() -> bool:
    """Whether a worker started by forkserver or spawn, which imports this process's main script first, may do
    so: run with `-m` or interactively, or a script with a top-level `if __name__ == "__main__":` guard."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) or not main_file:
        return True
    try:
        tree = ast.parse(Path(main_file).read_text())
    except (OSError, SyntaxError, ValueError):
        return False
    tests = [ast.unparse(node.test) for node in tree.body if isinstance(node, ast.If)]
    return any("__name__" in test and "__main__" in test for test in tests)


def _worker_context(dataset: Dataset, workers: int) -> Optional[Any]:
    """The multiprocessing context of the workers. A forkserver imports torch and the dataset's module once (about
    2 s), so that each worker it forks starts in a fraction of a second; it starts here, so those imports run
    while the trainer builds the model and DeepSpeed, not while the first batch is awaited."""
    if workers == 0:
        return None
    method = worker_start_method()
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # the preload list is read when the server starts; later calls change nothing
        context.set_forkserver_preload(["numpy", "torch", type(dataset).__module__])
        _start_with_requeue_signals_blocked(forkserver.ensure_running)  # and the resource tracker it needs
    return context


def _start_with_requeue_signals_blocked(start: Callable[[], None]) -> None:
    """Call `start` with the requeue signals blocked in this thread, so the helper process it starts
    (multiprocessing's resource tracker, the forkserver) and every worker forked from it inherit them blocked:
    Slurm sends them to every process of a job step before a preemption, and they are the training process's
    to act on (a preempted job failed: a worker, and the resource tracker, died of SIGUSR1 mid-batch). One
    that arrives meanwhile reaches this process afterwards."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {getattr(signal, name) for name in HELPER_IGNORED})
    try:
        start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    cfg: DataConfig,
    seed: int,
    drop_last: bool,
    timeout_s: float = 0.0,
    name: str = "data",
) -> DataLoader:
    """A DataLoader with seeded workers and its own generator (it never draws from the global RNG).

    A `SequenceStreamSampler` or `BatchShardSampler` makes the batches itself (`batch_size` and `drop_last` are then
    its business).
    With workers, they start by `worker_start_method()` and a wait of over `timeout_s` for one batch (0: no
    bound) raises `DataTimeout` naming the loader (`name`)."""
    workers = cfg.num_workers
    batching = (
        {"batch_sampler": sampler}
        if isinstance(sampler, (SequenceStreamSampler, BatchShardSampler))
        else {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
    )
    return BoundedLoader(
        dataset,
        **batching,
        num_workers=workers,
        name=name,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        worker_init_fn=functools.partial(_init_worker, owner=os.getpid(), log_level=_console_level()),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=cfg.persistent_workers and workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        multiprocessing_context=_worker_context(dataset, workers),
        timeout=timeout_s if workers > 0 else 0,
    )
