"""A training process that dies without cleaning up (SIGKILL, the OOM killer) takes the helper processes it started
with it: its DataLoader workers, the forkserver that starts them and multiprocessing's resource tracker (about
230 MB each; they used to stay for ever). Real `launch/train.py` processes, real workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import psutil
import pytest
from conftest import REPO, tiny_overrides
from test_distributed_faults import start_ranks, wait_for_training

from action_launch.common.processes import descendants, running, start_time, without_distributed_vars

pytestmark = pytest.mark.slow
BOUND_S = 20  # measured: about 2 s (the forkserver's interpreter exit, then its workers' end), on 2 busy cores
START_S = 300  # until the first training step: minutes when the 2 cores are shared with other tests


def run_args(video_set: Path, tmp_path: Path) -> List[str]:
    """A tiny run that is still training when it is killed; workers persist, as by default."""
    return [
        *tiny_overrides(video_set, tmp_path, "orphans"),
        "train.micro_batch_size=4",
        "train.epochs=3",
        "data.num_workers=2",
        "tracking.enabled=false",
    ]


def process_tree(pid: int) -> Dict[int, Tuple[int, int, str]]:
    """Every process below `pid`: pid -> (start time, parent pid, command line). Taken before a kill, as the
    orphans of a killed process are reparented and no longer found below it."""
    tree = {}
    for child in descendants(pid):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(child)
            tree[child] = (start_time(child), proc.ppid(), " ".join(proc.cmdline()))
    return tree


def helper_kinds(owner: int, tree: Dict[int, Tuple[int, int, str]]) -> Dict[str, int]:
    """How many resource trackers, forkservers and workers (children of a forkserver) `owner` started."""
    servers = {pid for pid, (_, parent, cmd) in tree.items() if parent == owner and "multiprocessing.forkserver" in cmd}
    return {
        "resource tracker": sum("multiprocessing.resource_tracker" in cmd for _, _, cmd in tree.values()),
        "forkserver": len(servers),
        "worker": sum(parent in servers for _, parent, _ in tree.values()),
    }


def seconds_until_gone(tree: Dict[int, Tuple[int, int, str]], bound_s: float) -> Tuple[float, List[str]]:
    """Seconds until every process of `tree` ended, or the bound and the command lines of those left."""
    started = time.monotonic()
    while True:
        left = [cmd[:120] for pid, (at, _, cmd) in tree.items() if running(pid, at)]
        elapsed = time.monotonic() - started
        if not left or elapsed > bound_s:
            return elapsed, left
        time.sleep(0.05)


def kill_and_measure(proc: subprocess.Popen) -> Tuple[float, List[str]]:
    """SIGKILL `proc` once its helpers run (checked: a tracker, a forkserver, workers); seconds until they ended."""
    tree = process_tree(proc.pid)
    kinds = helper_kinds(proc.pid, tree)
    assert kinds["resource tracker"] == 1 and kinds["forkserver"] == 1 and kinds["worker"] >= 1, (kinds, tree)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seconds_until_gone(tree, BOUND_S)


def end_groups(procs: List[subprocess.Popen]) -> None:
    """SIGKILL each process group the test started, leader gone or not: orphans of a failed check stay in it."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.usefixtures("deepspeed_ready")
def test_a_killed_rank_takes_its_workers_forkserver_and_resource_tracker_with_it(video_set, tmp_path):
    procs = start_ranks([*run_args(video_set, tmp_path), "train.collective_timeout_s=20"])
    try:
        wait_for_training(tmp_path / "tests" / "orphans", procs, START_S)
        survivor_tree = process_tree(procs[0].pid)
        seconds, left = kill_and_measure(procs[1])
        print(f"rank 1's helpers ended {seconds:.1f} s after it was killed")
        assert not left, f"still running {seconds:.0f} s after rank 1 was killed: {left}"
        procs[0].communicate(timeout=120)  # rank 0 stops with an error (the existing fault tests check which)
        seconds, left = seconds_until_gone(survivor_tree, BOUND_S)
        assert not left, f"still running {seconds:.0f} s after rank 0 stopped: {left}"
    finally:
        end_groups(procs)


@pytest.mark.usefixtures("deepspeed_ready")
def test_a_killed_single_process_run_takes_its_helpers_with_it(video_set, tmp_path):
    env = {**without_distributed_vars(), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "launch/train.py", *run_args(video_set, tmp_path)],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_training(tmp_path / "tests" / "orphans", [proc], START_S)
        seconds, left = kill_and_measure(proc)
        print(f"the helpers ended {seconds:.1f} s after the run was killed")
        assert not left, f"still running {seconds:.0f} s after the run was killed: {left}"
    finally:
        end_groups([proc])
