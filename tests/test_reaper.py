"""The reaper ends what a killed process started: its own process groups and the processes it named."""

import os
import signal
import subprocess
import sys

from conftest import still_running

from action_launch.common.processes import descendants, start_time

OWNER = """
import os, subprocess, time
from action_launch.common.reaper import start_reaper
server = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)  # a group
agent = subprocess.Popen(["sleep", "300"])  # a plain child, as Ray's agents are
time.sleep(0.5)
start_reaper(os.getpid(), groups=[server.pid], processes=[agent.pid])
print(server.pid, agent.pid, flush=True)
time.sleep(300)
"""


def test_a_killed_owner_takes_its_groups_and_named_processes_with_it(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    server, agent = map(int, owner.stdout.readline().split())
    group = [server, *descendants(server)]
    started = {p: start_time(p) for p in [*group, agent]}
    assert len(group) == 3 and all(started.values())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert not still_running(started, timeout_s=10)


def test_a_reused_pid_is_not_hit():
    from action_launch.common.reaper import reap

    bystander = subprocess.Popen(["sleep", "30"])
    try:
        owner = subprocess.Popen(["true"])
        owner.wait()
        reap(owner.pid, [], [(bystander.pid, 1)])  # the pid's start time differs: another process now
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_processes_are_read_with_psutil_and_start_times_stay_in_clock_ticks():
    """`common.processes` reads processes through psutil, not by parsing /proc itself, and a start time is still the
    kernel's count of clock ticks since boot (what earlier runs' `state.json` and reaper command lines hold)."""
    from action_launch import ROOT
    from action_launch.common import processes

    source = (ROOT / "launch" / "common" / "processes.py").read_text()
    assert "/proc" not in source and not hasattr(processes, "proc_stat")
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{child.pid}/stat") as f:  # the kernel's own record, field 22: starttime in ticks
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        assert start_time(child.pid) == ticks
        assert processes.running(child.pid, ticks) and not processes.running(child.pid, ticks + 1)
        assert child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not processes.running(child.pid) and start_time(child.pid) is None
