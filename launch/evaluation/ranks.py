"""The processes of one evaluation (`launch/test.py`, alone or under torchrun / a Slurm step): which rank this is,
on which device, and how the ranks keep together, every wait bounded and every failure told to all of them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from datetime import timedelta
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist

from action_launch.training.distributed import CollectiveError, Collectives, configure_threads, resolve_env

log = logging.getLogger("launch.evaluate")


class EvaluationStopped(RuntimeError):
    """Another rank of the evaluation failed: every rank stops, with that rank's error."""


class Ranks:
    """The processes of one evaluation: this one's rank and device, and how they keep together.

    The ranks agree (`agree`) before the pass and after every batch that none has failed, then gather their
    predictions once (`collect`); every wait is bounded (`Collectives`). A rank whose own work raises says so
    instead of leaving (`together`): at the agreement the others are in, or in the gather, so every rank stops
    at once with that rank's error (`EvaluationStopped`; its own error on that rank). A rank that dies or hangs is
    found by the bounded collective itself (`CollectiveError`). One process: no collective at all.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, comm: Collectives):
        self.rank, self.world_size, self.device, self.comm = rank, world_size, device, comm
        self._agreements_left: Optional[int] = None  # unknown until `plan`: a failure is then told at an agreement
        self._collected = False

    @classmethod
    def one_process(cls, device: Optional[torch.device] = None) -> Ranks:
        """This process alone (`train.py --test-best` on rank 0 of a training job included), on `device` (default:
        the current GPU, else the CPU)."""
        if device is None:
            device = (
                torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
            )
        return cls(0, 1, device, Collectives(0, 1, 1.0))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes, logs and prints results."""
        return self.rank == 0

    def plan(self, batches: int) -> None:
        """Set the agreements of the pass: one before it and one after each of `batches` batches."""
        self._agreements_left = batches + 1

    def agree(self, what: str) -> None:
        """Every rank reached `what` without failing; else stop with the error of the rank(s) that failed."""
        if self._agreements_left is not None:
            self._agreements_left -= 1
        if self.comm.any(False, what):
            self._stop(self.comm.gather(None, "the gather of the errors"))

    def collect(self, share: Any) -> List[Any]:
        """Every rank's `share`, in rank order (the last collective of the pass, over the CPU group)."""
        self._collected = True
        return self._stop(self.comm.gather(("share", share), "the gather of the predictions"))

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Run this rank's part of the evaluation; an error of its own is told to the other ranks (at the
        collective they are in or will enter next) before it is raised here."""
        try:
            yield
        except (CollectiveError, EvaluationStopped):
            raise
        except Exception as err:
            self._tell(err)
            raise

    def _tell(self, err: BaseException) -> None:
        """Tell the other ranks that this one failed with `err`, in the collectives they are in or will enter."""
        if self._collected or not self.comm.active:
            return
        if self._agreements_left != 0:  # the others are in (or will reach) an agreement: it says "stop"
            self.comm.any(True, f"rank {self.rank}'s report of its error")
        self.comm.gather(("error", f"{type(err).__name__}: {_first_line(err)}"), "the gather of the errors")

    def _stop(self, parts: List[Any]) -> List[Any]:
        """The shares of `parts`; raise `EvaluationStopped` if a rank reported an error instead (None: a rank that
        did not fail but stops)."""
        failed = [(rank, part[1]) for rank, part in enumerate(parts) if part is not None and part[0] == "error"]
        if failed:
            who = "; ".join(f"rank {rank} failed: {text}" for rank, text in failed)
            raise EvaluationStopped(f"rank {self.rank}: {who}; every rank stops")
        return [part[1] for part in parts]


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (a DataLoader's, a decoder's), for the other ranks."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:1000]


@contextlib.contextmanager
def evaluation_ranks(timeout_s: float, data_workers: int) -> Iterator[Ranks]:
    """This process's place in the evaluation: alone, or a rank of a torchrun or Slurm job (`resolve_env`) on its
    own device (`cuda:LOCAL_RANK`, else the CPU), its process group started for the pass and ended after it; its
    console (`_console`) and torch threads (`configure_threads`, as in training) set for its rank.

    The group is gloo on GPUs too: the ranks exchange host data only (agreement flags, and the predictions after
    their one copy to the host), so no NCCL communicator is set up. `timeout_s` bounds the rendezvous and every
    collective."""
    env = resolve_env()
    _console(env.is_main)
    log.info("%s", configure_threads(env, data_workers))
    device = env.device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # every tensor made on "cuda" lands on this rank's GPU, not on cuda:0
    if env.world_size == 1:
        yield Ranks(0, 1, device, Collectives(0, 1, timeout_s))
        return
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield Ranks(env.rank, env.world_size, device, Collectives(env.rank, env.world_size, timeout_s))
    finally:
        dist.destroy_process_group()


def _console(is_main: bool) -> None:
    """Rank 0 logs what it does; the other ranks only their errors (rank 0 says everything else once)."""
    from action_launch.common.console import setup_logging

    setup_logging(is_main)
    if not is_main:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
