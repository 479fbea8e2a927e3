"""Where a job's tasks meet: the one place that reads Slurm's variables (as Lightning's `SLURMEnvironment`).

Every task of a job computes the same main address and port without talking: the address is the first host of
`SLURM_JOB_NODELIST`, as its Slurm `NodeAddr` (a node name need not resolve as a host name), and the port follows
from the job id, so a requeued job (same id) finds it again. Torch's process group (`training.distributed`),
submitit's jobs (`cluster.jobs`), the Ray head of a sweep job (`cluster.sweep_job`) and the plain `slurm/train.sbatch`
(`python -m action_launch.common.cluster_env`) all take them from here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

PORT_BASE = 20000
PORT_SPAN = 20000
"""Ports derived from a job id lie in [PORT_BASE, PORT_BASE + PORT_SPAN): above the well-known and registered
services most machines run, below Linux's default ephemeral range (32768-60999 overlaps its upper part)."""


def expand_nodelist(nodelist: str) -> List[str]:
    """The host names of a Slurm node list in its order: `node[01-03,07]` -> node01, node02, node03, node07;
    `a,b` -> a, b; `rack[1-2]-n[1-2]` -> rack1-n1, rack1-n2, rack2-n1, rack2-n2 (zero padding kept)."""
    hosts: List[str] = []
    for group in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip()):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            names = [name + literal for name in names]
            if ranges:
                names = [name + suffix for name in names for suffix in _expand_ranges(ranges, nodelist)]
        hosts += [name for name in names if name]
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: no host names in it")
    return hosts


def _expand_ranges(ranges: str, nodelist: str) -> List[str]:
    """`01-03,07` -> 01, 02, 03, 07."""
    out = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range [{ranges}]")
        out += [str(n).zfill(len(low)) for n in range(int(low), int(high or low) + 1)]
    return out


def job_port(job_id: str) -> int:
    """The port every task of job `job_id` derives alike: PORT_BASE + (the id's digits) mod PORT_SPAN."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit())
    if not digits:
        raise ValueError(f"job id {job_id!r} has no digits to derive a port from")
    return PORT_BASE + int(digits) % PORT_SPAN


def node_address(node: str) -> str:
    """Slurm's NodeAddr of `node` (a NodeName need not resolve as a host name); `node` itself if unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", node], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        match = re.search(r"\bNodeAddr=(\S+)", out)
        return match.group(1) if match else node
    except (OSError, subprocess.SubprocessError):
        return node


@dataclass(frozen=True)
class ClusterEnvironment:
    """One task of a job: its place (rank, local rank, node rank) and where rank 0 listens."""

    job_id: str
    hostnames: Tuple[str, ...]
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0

    @classmethod
    def from_slurm(cls, environ: Optional[Mapping[str, str]] = None) -> Optional[ClusterEnvironment]:
        """This task from Slurm's variables (`SLURM_JOB_ID`, `SLURM_JOB_NODELIST`, `SLURM_PROCID`, `SLURM_NTASKS`,
        `SLURM_LOCALID`, `SLURM_NODEID`); None outside a Slurm job."""
        env = os.environ if environ is None else environ
        if not env.get("SLURM_JOB_ID") or not env.get("SLURM_JOB_NODELIST"):
            return None
        return cls(
            job_id=env["SLURM_JOB_ID"],
            hostnames=tuple(expand_nodelist(env["SLURM_JOB_NODELIST"])),
            rank=int(env.get("SLURM_PROCID", 0)),
            world_size=int(env.get("SLURM_NTASKS", 1)),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            node_rank=int(env.get("SLURM_NODEID", 0)),
        )

    @property
    def num_nodes(self) -> int:
        return len(self.hostnames)

    @property
    def main_host(self) -> str:
        """The node rank 0 runs on: the first of the job's nodes."""
        return self.hostnames[0]

    @property
    def main_port(self) -> int:
        """The port rank 0 listens on (`job_port` of the job id)."""
        return job_port(self.job_id)

    def main_address(self) -> str:
        """How the other nodes reach rank 0: the main host's Slurm NodeAddr (asks `scontrol`)."""
        return node_address(self.main_host)

    def torch_variables(self, main_address: Optional[str] = None) -> Dict[str, str]:
        """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT as torch.distributed reads them."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(max(1, self.world_size // self.num_nodes)),
            "MASTER_ADDR": main_address or self.main_address(),
            "MASTER_PORT": str(self.main_port),
        }


def main() -> int:
    """`eval "$(python -m action_launch.common.cluster_env)"` in a batch script: export MASTER_ADDR and MASTER_PORT."""
    env = ClusterEnvironment.from_slurm()
    if env is None:
        raise SystemExit("error: not inside a Slurm job (SLURM_JOB_ID and SLURM_JOB_NODELIST are not set)")
    print(f"export MASTER_ADDR={shlex.quote(env.main_address())} MASTER_PORT={env.main_port}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
