"""Process-group environment: who am I, how many are we, where is rank 0.

Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), falls back to
Slurm's for a bare `srun` (`common.cluster_env.ClusterEnvironment`: ranks, and the main address and port of the
job), and to a single local process otherwise. It exports the torchrun names, which is what
`torch.distributed` and DeepSpeed read, so no hostfile, ssh or MPI is involved.

`Collectives` is the trainer's side of the process group: every wait on the other ranks is bounded
(`train.collective_timeout_s`), host-side agreement runs over a CPU (gloo) group, and a collective
that fails (a rank died, hung or never arrived) stops every rank with one `CollectiveError` naming the
collective and the ranks that did not answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist

from action_launch.common.cluster_env import ClusterEnvironment
from action_launch.common.processes import free_port

PROBE_S = 10.0
"""Longest wait, after a collective failed, for the other ranks to answer the probe that names the silent ones."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints, tracks and writes shared files."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """nccl on CUDA, gloo on CPU."""
        return "nccl" if torch.cuda.is_available() else "gloo"

    @property
    def device(self) -> torch.device:
        """This process's device: `local_device` of its LOCAL_RANK among the visible GPUs."""
        return local_device(self.local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def local_device(local_rank: int, cuda_devices: int) -> torch.device:
    """GPU `local_rank` of `cuda_devices` visible ones (modulo their count, for jobs that show each task only its own
    GPU), else the CPU."""
    return torch.device("cuda", local_rank % cuda_devices) if cuda_devices else torch.device("cpu")


def resolve_env() -> DistEnv:
    """Find rank/world/master from the environment and export them under torchrun's names."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = int(env.get("MASTER_PORT", 0)) or free_port()
    elif "SLURM_PROCID" in env and (slurm := ClusterEnvironment.from_slurm(env)) and slurm.world_size > 1:
        rank, world, local_rank = slurm.rank, slurm.world_size, slurm.local_rank
        # the job's one main address and port (`common.cluster_env`): every task finds the same without talking
        addr = env.get("MASTER_ADDR") or slurm.main_address()
        port = int(env.get("MASTER_PORT", 0)) or slurm.main_port
    else:
        rank, world, local_rank = 0, 1, 0
        addr, port = "127.0.0.1", int(env.get("MASTER_PORT", 0)) or free_port()
    for key, value in dict(
        RANK=rank, WORLD_SIZE=world, LOCAL_RANK=local_rank, MASTER_ADDR=addr, MASTER_PORT=port
    ).items():
        env[key] = str(value)
    return DistEnv(rank, world, local_rank, addr, port)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (a Slurm allocation's --cpus-per-task, a container's
    cpuset, taskset), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(env: DistEnv, data_workers: int) -> str:
    """Set torch's intra-op threads so the processes of this node and their DataLoader workers do not
    oversubscribe the cores: cores / processes per node - workers, at least 1; `OMP_NUM_THREADS`, when set,
    wins (as with torchrun). Returns the choice in words, for the log."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = available_cores()
    if os.environ.get("OMP_NUM_THREADS"):
        return f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    threads = max(1, cores // max(1, local) - data_workers)
    torch.set_num_threads(threads)
    return (
        f"torch threads {threads} = {cores} cores / {local} process(es) on this node - {data_workers} data "
        f"worker(s), at least 1 (OMP_NUM_THREADS overrides)"
    )


class CollectiveError(RuntimeError):
    """A collective failed or timed out: a rank died, hung or never arrived. Every rank stops with it."""


def enforce_nccl_timeout() -> Optional[str]:
    """Make NCCL's watchdog act on the process group's timeout; call before the NCCL group starts.

    torch reads TORCH_NCCL_ASYNC_ERROR_HANDLING when it builds the group (default 3: on a timeout or an
    NCCL error the watchdog ends the process) and TORCH_NCCL_BLOCKING_WAIT (wait() blocks the host until
    the collective ends or times out: a host sync per collective, left off). Only 0 turns the watchdog's
    action off, so that a collective with a dead peer waits forever: that one value is replaced by 3.
    Returns the warning to log, or None.
    """
    names = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING")
    blocking = any(os.environ.get(n) == "1" for n in ("TORCH_NCCL_BLOCKING_WAIT", "NCCL_BLOCKING_WAIT"))
    mode = next((os.environ[n] for n in names if n in os.environ), None)
    if mode != "0" or blocking:
        return None
    os.environ.pop("NCCL_ASYNC_ERROR_HANDLING", None)
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "3"
    return (
        "TORCH_NCCL_ASYNC_ERROR_HANDLING=0 would let a collective wait forever for a dead rank; set to 3 "
        "(the watchdog ends the process at train.collective_timeout_s)"
    )


def bound_every_group(timeout: timedelta) -> None:
    """Give every process group of this process `timeout`: DeepSpeed makes its own groups (a clone of the
    world for its gradient all-reduce) without one, which torch then gives its default (10 min NCCL, 30 min
    gloo) instead of ours."""
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return
    for group in list(c10d._world.pg_map):  # private API: torch has no public list of a process's groups
        c10d._set_pg_timeout(timeout, group)  # private API: nor a public setter of a made group's timeout


def _host_group(timeout: timedelta) -> Optional[Any]:
    """A CPU (gloo) group for host-side agreement under NCCL, so agreeing on a stop flag never waits for the
    GPU; None (the default group) where the default group is already gloo or there is one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=timeout)


def _from_collective(err: BaseException) -> bool:
    """Whether `err` came out of a collective (torch.distributed's own error types, a call that raised inside
    torch.distributed, or a gloo/NCCL transport message), not out of the model or the data."""
    if isinstance(err, dist.DistError):
        return True
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    inner = Path(frames[-1]).as_posix() if frames else ""
    return "/torch/distributed/" in inner or "gloo" in str(err) or "NCCL" in str(err)


def _first_sentence(err: BaseException) -> str:
    """The gist of a transport error: its first sentence, without gloo's `[source.cc:line]` prefix."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:300]


def silent_ranks(group: Optional[Any], seconds: float = PROBE_S) -> List[int]:
    """The ranks that do not answer a hello within `seconds`, over a gloo group: rank 0 hears every rank and
    answers those it heard; another rank only learns whether rank 0 answers. A dead rank's closed connection
    fails at once; a stuck one takes `seconds`."""
    me, world = dist.get_rank(), dist.get_world_size()
    peers = list(range(1, world)) if me == 0 else [0]
    heard = _exchange(peers, group, seconds, receive=me == 0)
    if me == 0:
        _exchange(heard, group, seconds, receive=False)
        return [p for p in peers if p not in heard]
    return [] if _exchange(peers, group, seconds, receive=True) else [0]


def _exchange(peers: List[int], group: Optional[Any], seconds: float, receive: bool) -> List[int]:
    """Receive from (or send to) each of `peers` one value; the peers with whom it went through in time."""
    deadline = time.monotonic() + seconds
    done: List[int] = []
    works: Dict[int, dist.Work] = {}
    for peer in peers:
        try:
            op = dist.irecv if receive else dist.isend
            work = op(torch.zeros(1, device="cpu"), peer, group=group, tag=7919)
        except RuntimeError:  # the connection is already closed: that peer is gone
            continue
        if work is None:  # torch's answer to a rank outside `group`; the groups probed here hold every rank
            raise ValueError(f"rank {dist.get_rank()} probes peer {peer} over a group it is not in")
        works[peer] = work
    for peer, work in works.items():
        try:
            if work.wait(timedelta(seconds=max(0.1, deadline - time.monotonic()))):
                done.append(peer)
        except RuntimeError:
            pass
    return done


class Collectives:
    """The trainer's collectives, each with a bounded wait and one clear error when a rank is gone.

    `timeout_s` bounds every group of the process (`bound_every_group`); host-side agreement (stop flags,
    object gathers, barriers) runs over a gloo group even under NCCL, so a lost rank surfaces there as a
    Python error rather than as a GPU kernel that waits for the NCCL watchdog.
    """

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.active = dist.is_initialized() and world_size > 1
        self.group = _host_group(timedelta(seconds=timeout_s)) if self.active else None

    def bound(self) -> None:
        """Bound every group made so far (call after DeepSpeed made its own)."""
        bound_every_group(timedelta(seconds=self.timeout_s))

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the collectives of `what`; if one fails, raise `CollectiveError` naming `what`, the ranks that did
        not answer a probe and the timeout (errors of the model or the data pass through unchanged)."""
        start = time.monotonic()
        try:
            yield
        except RuntimeError as err:
            if not self.active or isinstance(err, CollectiveError) or not _from_collective(err):
                raise
            raise CollectiveError(self._failure(what, time.monotonic() - start, err)) from err

    def _failure(self, what: str, waited: float, err: BaseException) -> str:
        silent = silent_ranks(self.group, min(PROBE_S, self.timeout_s))
        who = (
            f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} did not answer (dead or stuck)"
            if silent
            else "every rank answered a probe afterwards (one was busy for longer than the timeout, "
            "or the ranks ran different collectives)"
        )
        return (
            f"rank {self.rank}: {what} failed after {waited:.1f} s: {who}; every rank stops "
            f"(train.collective_timeout_s={self.timeout_s:g}). Cause: {_first_sentence(err)}"
        )

    def any(self, flag: bool, what: str) -> bool:
        """True on every rank if `flag` is true on any; host state over the CPU group, so the GPU keeps its queue."""
        value = torch.tensor([1.0 if flag else 0.0], device="cpu")  # host state, for the CPU group
        if self.active:
            with self.guard(what):
                dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def gather(self, obj: Any, what: str) -> List[Any]:
        """Every rank's `obj`, in rank order (pickled over the CPU group: no copy through the GPU)."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        with self.guard(what):
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self, what: str) -> None:
        """All ranks meet (over the CPU group: files written by every rank are on disk when it returns)."""
        if self.active:
            with self.guard(what):
                dist.barrier(group=self.group)

    def means(self, values: torch.Tensor, what: str) -> List[float]:
        """The mean over the ranks of each entry of `values`, a 1-D tensor on this rank's device, read back to the host:
        one all-reduce over the default group (NCCL on GPUs: the tensor stays on the device until the one read)."""
        if self.active:
            values = values.clone()
            with self.guard(what):
                dist.all_reduce(values)
                values /= self.world_size
                return values.tolist()  # inside the guard: under NCCL a lost rank surfaces at this read
        return values.tolist()

    def close(self) -> None:
        """No collective follows (the end of the run): let go of the CPU group, so that destroying it
        (`engine.shutdown_distributed`) ends its threads. No barrier first: rank 0 may still be evaluating the
        best checkpoint for longer than `timeout_s`."""
        self.active, self.group = False, None
