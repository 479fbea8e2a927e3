"""Child processes and the environment they inherit: process groups, free ports, distributed variables."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import Dict, Mapping, Optional

# What torchrun / Slurm jobs set to make a process one rank of a process group.
DISTRIBUTED_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process group `proc` leads (started with `start_new_session=True`), SIGKILL it after
    `grace_s` seconds; returns once `proc` has exited. Nothing happens to a process that already ended."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def without_distributed_vars(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """`env` (default this process's) without the variables that would make a child one rank of this
    process's group: a child started from a rank (a sweep trial, a test) is a run of its own."""
    out = dict(os.environ if env is None else env)
    for key in DISTRIBUTED_VARS:
        out.pop(key, None)
    return out
