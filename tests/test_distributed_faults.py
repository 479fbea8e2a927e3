"""Faults of a multi-process run end it within a bound, with one clear error: a killed or stuck rank, a stuck
DataLoader worker. Real gloo process groups, real DeepSpeed, real MLflow store, real DataLoader workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import REPO, free_port, tiny_overrides

pytestmark = pytest.mark.slow
HELPER = REPO / "tests" / "helpers" / "stuck_loader.py"


def start_ranks(args: List[str], world: int = 2) -> List[subprocess.Popen]:
    """One `launch/train.py` process per rank, as a bare `srun` starts them (no torchrun to end the others)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "launch/train.py", *args],
                cwd=REPO,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def wait_for_training(run_dir: Path, procs: List[subprocess.Popen], timeout_s: float = 120) -> None:
    """Return once rank 0 logged its first training loss (mid-epoch 1 of 3)."""
    journal = run_dir / "tracking" / "journal.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if journal.exists() and '"train/loss"' in journal.read_text():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended before training:\n{procs[0].communicate()[0][-4000:]}")
        time.sleep(0.05)
    raise AssertionError("training did not start")


def end_all(procs: List[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def mlflow_status(output_dir: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    return run.info.status


def fault_run(video_set: Path, tmp_path: Path, fault: signal.Signals, timeout_s: float, *overrides: str):
    """Two ranks train; once they do, rank 1 gets `fault`. Returns rank 0's exit code, output and seconds from
    the fault to its exit."""
    args = [
        *tiny_overrides(video_set, tmp_path, "fault"),
        "train.micro_batch_size=4",
        "train.epochs=3",
        f"train.collective_timeout_s={timeout_s}",
        *overrides,
    ]
    procs = start_ranks(args)
    try:
        wait_for_training(tmp_path / "tests" / "fault", procs)
        os.kill(procs[1].pid, fault)
        faulted = time.monotonic()
        out, _ = procs[0].communicate(timeout=timeout_s + 60)
        return procs[0].returncode, out, time.monotonic() - faulted
    finally:
        end_all(procs)


def the_error(out: str) -> str:
    """The one error line of rank 0's output (train.py prints the CollectiveError, no traceback)."""
    assert "Traceback" not in out, out[-3000:]
    (error,) = [line for line in out.splitlines() if line.startswith("error: rank 0:")]
    return error


def waited(error: str) -> float:
    """How long the failed collective waited, as the error says."""
    return float(re.search(r"failed after ([\d.]+) s", error).group(1))


@pytest.mark.usefixtures("deepspeed_ready")
def test_a_killed_rank_ends_the_job_with_one_clear_error(video_set, tmp_path):
    code, out, seconds = fault_run(video_set, tmp_path, signal.SIGKILL, timeout_s=20)
    print(f"rank 0 ended {seconds:.1f} s after rank 1 was killed")
    assert code != 0, out[-3000:]
    error = the_error(out)
    assert "rank 1 did not answer" in error and "collective_timeout_s=20" in error, error
    assert "Connection reset by peer" in error or "Connection closed by peer" in error, error
    assert waited(error) < 5, error  # a closed connection is found at once, not at the timeout
    assert seconds < 60, f"{seconds:.1f} s"  # the error, then the interpreter's exit (seconds of garbage collection)
    assert mlflow_status(tmp_path) == "FAILED"


@pytest.mark.usefixtures("deepspeed_ready")
def test_a_stuck_rank_ends_the_job_at_the_collective_timeout(video_set, tmp_path):
    # no MLflow store to open: rank 0 would take seconds to while rank 1 waits in the first all-reduce
    code, out, seconds = fault_run(video_set, tmp_path, signal.SIGSTOP, 8, "tracking.enabled=false")
    print(f"rank 0 ended {seconds:.1f} s after rank 1 stopped")
    assert code != 0, out[-3000:]
    error = the_error(out)
    assert "rank 1 did not answer" in error and "Timed out" in error, error
    # DeepSpeed's all-reduce (its group had torch's default, 30 min) or the stop agreement waits 8 s
    assert 8 <= waited(error) < 12, error
    assert seconds < 8 + 8 + 30, f"{seconds:.1f} s"  # then the probe (at most 8 s) and the exit


def run_helper(mode: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HELPER), mode, str(timeout_s)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_stuck_dataloader_worker_raises_within_its_timeout():
    started = time.monotonic()
    proc = run_helper("hang", 3)
    assert proc.returncode != 0
    assert time.monotonic() - started < 30
    assert proc.stderr.strip().splitlines()[-1] == (
        "action_launch.training.loaders.DataTimeout: validation DataLoader: no batch from its 1 worker(s) in 3 s "
        "(train.data_timeout_s): a worker is stuck (a deadlock, a stalled file system or decoder); the run stops "
        "instead of waiting"
    )


def test_workers_do_not_inherit_a_lock_another_thread_holds():
    # a forked worker would start with the lock held by a thread it does not have, and wait for ever
    proc = run_helper("held-lock", 20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "batches 2"


def test_workers_leave_slurm_signals_to_the_training_process():
    """Slurm signals every process of a job step (USR1/USR2 before a preemption or the time limit): the workers,
    the forkserver and the resource tracker carry on, the training process alone acts (a worker killed by SIGUSR1
    failed a preempted job with ConnectionRefusedError; a killed tracker relaunched with KeyError tracebacks)."""
    proc = run_helper("signalled", 20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "batches 2", proc.stderr[-3000:]
    assert "KeyError" not in proc.stderr and "relaunching" not in proc.stderr, proc.stderr[-3000:]


def test_the_timeouts_are_config_keys():
    from action_launch.config import ConfigError, load_config

    cfg = load_config(None, ["train.collective_timeout_s=20", "train.data_timeout_s=0"])
    assert (cfg.train.collective_timeout_s, cfg.train.data_timeout_s) == (20, 0)
    with pytest.raises(ConfigError, match="collective_timeout_s"):
        load_config(None, ["train.collective_timeout_s=0"])
    assert json.dumps(load_config(None, []).train.collective_timeout_s) == "300.0"


def test_nccl_keeps_its_watchdog(monkeypatch):
    from action_launch.training.distributed import enforce_nccl_timeout

    for name in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"):
        monkeypatch.delenv(name, raising=False)
    assert enforce_nccl_timeout() is None and "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ  # torch's 3
    monkeypatch.setenv("NCCL_ASYNC_ERROR_HANDLING", "0")  # the old name, still read by torch
    assert "wait forever" in enforce_nccl_timeout()
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and "NCCL_ASYNC_ERROR_HANDLING" not in os.environ
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    monkeypatch.setenv("TORCH_NCCL_BLOCKING_WAIT", "1")  # wait() itself then raises at the timeout
    assert enforce_nccl_timeout() is None and os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"
