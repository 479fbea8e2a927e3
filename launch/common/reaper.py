"""Ends what a process started when that process dies without cleaning up (kill -9, an OOM kill).

A sweep driver starts an `mlflow server` (about ten processes in a session of their own) and a local
Ray instance; when the driver is killed, nothing stops them: the server kept 2.4 GB and its port, and
Ray's agents stayed. `start_reaper` starts a small watcher, detached from the owner, that waits for the
owner to end and then ends the given process groups and processes (SIGTERM, then SIGKILL after a grace
period). Processes are named by pid and start time, so a reused pid is never hit.

    python -m action_launch.common.reaper --owner PID [--group PGID ...] [--process PID:START ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

from action_launch.common.processes import running, start_time

POLL_S = 0.5
GRACE_S = 5.0


def start_reaper(owner: int, groups: Sequence[int] = (), processes: Iterable[int] = ()) -> subprocess.Popen:
    """Start the watcher for `owner`: once it ends, the process groups `groups` and the processes
    `processes` (as they are now) are ended too."""
    args = [sys.executable, "-m", "action_launch.common.reaper", "--owner", str(owner)]
    for group in groups:
        args += ["--group", str(group)]
    for pid in processes:
        started = start_time(pid)
        if started is not None:
            args += ["--process", f"{pid}:{started}"]
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_reaper(reaper: subprocess.Popen) -> None:
    """Dismiss a watcher whose owner cleaned up after itself."""
    reaper.terminate()
    try:
        reaper.wait(timeout=5)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def _signal_all(groups: Sequence[int], processes: Sequence[Tuple[int, int]], sig: int) -> bool:
    """Send `sig`; True if anything was still there."""
    any_left = False
    for group in groups:
        try:
            os.killpg(group, sig)
            any_left = True
        except (ProcessLookupError, PermissionError):
            pass
    for pid, started in processes:
        if running(pid, started):
            try:
                os.kill(pid, sig)
                any_left = True
            except (ProcessLookupError, PermissionError):
                pass
    return any_left


def reap(owner: int, groups: Sequence[int], processes: Sequence[Tuple[int, int]]) -> None:
    """Wait for `owner` to end, then end the rest: SIGTERM, and SIGKILL to what is left after GRACE_S."""
    while running(owner):
        time.sleep(POLL_S)
    if not _signal_all(groups, processes, signal.SIGTERM):
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        if not _signal_all(groups, processes, 0):
            return
    _signal_all(groups, processes, signal.SIGKILL)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m action_launch.common.reaper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--owner", type=int, required=True, help="the process whose end ends the others")
    parser.add_argument("--group", type=int, action="append", default=[], help="a process group to end")
    parser.add_argument("--process", action="append", default=[], help="PID:START (start time in clock ticks)")
    a = parser.parse_args(argv)
    processes = [(int(pid), int(started)) for pid, started in (p.split(":", 1) for p in a.process)]
    reap(a.owner, a.group, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
