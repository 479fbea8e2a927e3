"""Process-group environment: who am I, how many are we, where is rank 0.

Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), falls back to
Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, first host of SLURM_JOB_NODELIST) for a bare
`srun`, and to a single local process otherwise. It exports the torchrun names, which is what
`torch.distributed` and DeepSpeed read, so no hostfile, ssh or MPI is involved.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch

from action_launch.common.processes import free_port


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
        """This process's device: GPU `LOCAL_RANK` of the visible ones (modulo their count, for jobs that show
        each task only its own GPU), else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def resolve_env() -> DistEnv:
    """Find rank/world/master from the environment and export them under torchrun's names."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = int(env.get("MASTER_PORT", 0)) or free_port()
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        addr = env.get("MASTER_ADDR") or _first_slurm_host(env["SLURM_JOB_NODELIST"])
        # A port derived from the job id: every task computes the same one without talking.
        port = int(env.get("MASTER_PORT", 0)) or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    else:
        rank, world, local_rank = 0, 1, 0
        addr, port = "127.0.0.1", int(env.get("MASTER_PORT", 0)) or free_port()
    for key, value in dict(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=local_rank, MASTER_ADDR=addr, MASTER_PORT=port).items():
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
    return (f"torch threads {threads} = {cores} cores / {local} process(es) on this node - {data_workers} data "
            f"worker(s), at least 1 (OMP_NUM_THREADS overrides)")
