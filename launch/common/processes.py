"""Child processes and the environment they inherit: process groups, free ports, distributed variables;
whether a process still runs (by pid and start time, read with psutil); ending with one's parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from typing import Dict, List, Mapping, Optional

import psutil

# What torchrun / Slurm jobs set to make a process one rank of a process group.
DISTRIBUTED_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0, leader_first: bool = False) -> None:
    """SIGTERM the process group `proc` leads (started with `start_new_session=True`), SIGKILL it after
    `grace_s` seconds; returns once `proc` has exited. Nothing happens to a process that already ended.

    `leader_first`: SIGTERM goes to `proc` alone, a supervisor that stops its own children in order (`ray
    start --block` drains its node through the GCS, which a signal to the whole group kills first: the drain
    then waits 30 s for it); what is left of the group once `proc` exits is SIGKILLed."""
    if proc.poll() is not None:
        return
    try:
        (os.kill if leader_first else os.killpg)(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    if leader_first or proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
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


def start_time(pid: int) -> Optional[int]:
    """When `pid` started, in clock ticks since boot (the kernel's own count, so the value a run's `state.json`
    or a reaper's command line holds stays comparable): with the pid, it names one process (pids are reused).
    None when there is no such process."""
    try:
        created = psutil.Process(pid).create_time()  # boot time + ticks / CLK_TCK, in seconds since the epoch
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return round((created - psutil.boot_time()) * os.sysconf("SC_CLK_TCK"))


def running(pid: int, started: Optional[int] = None) -> bool:
    """Whether `pid` is a live process, not a zombie, and (given `started`) still the one that started then."""
    try:
        if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # exited, not yet reaped
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process by that pid: it exists
        pass
    return started is None or start_time(pid) == int(started)


def descendants(pid: int) -> List[int]:
    """Every process below `pid` (children, their children, ...; exited ones not yet reaped included)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process once its parent ends (Linux's PR_SET_PDEATHSIG; strictly, once
    the parent's thread that started this process ends, so a parent that starts children from passing threads
    should not be relied on). Kept across exec, reset by fork. False where it cannot be asked (not Linux) or the
    request failed; the caller then has no such guarantee. A parent that ended before the call is not signalled:
    compare `os.getppid()` before and after."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return (
            libc.prctl(
                PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
            )
            == 0
        )
    except (OSError, AttributeError):  # no libc to load, or one without prctl
        return False
