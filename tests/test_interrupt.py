"""Ctrl-C on a single run: a checkpoint at the next optimizer step, exit 130, one line with the command that
resumes it, the MLflow run KILLED (not FAILED); a second Ctrl-C stops at once, also KILLED."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import REPO, run_train, tiny_overrides


def ctrl_c(args: List[str], run_dir: Path, presses: int) -> subprocess.CompletedProcess:
    """Start train.py in a session of its own, press Ctrl-C `presses` times (SIGINT to its whole process group, as a
    terminal does) once it logged its second step, and wait for the end."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI")}
    proc = subprocess.Popen(
        [sys.executable, "launch/train.py", *args],
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    journal = run_dir / "tracking" / "journal.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = journal.read_text().splitlines() if journal.exists() else []
        if sum('"train/loss"' in line for line in lines) >= 2:
            break
        time.sleep(0.05)
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def mlflow_status(output_dir: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    return run.info.status


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_a_run_in_one_line_killed_and_resumable(video_set, tmp_path, presses):
    args = [*tiny_overrides(video_set, tmp_path), "train.epochs=20", "train.micro_batch_size=4"]
    run_dir = tmp_path / "tests" / "run"
    proc = ctrl_c(args, run_dir, presses)
    said = proc.stderr.strip().splitlines()
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "[rank0]" not in proc.stderr, proc.stderr[-3000:]
    assert said[-1] == (
        f"interrupted (Ctrl-C): {run_dir} resumes from its newest checkpoint with the same command: "
        f"{shlex.join(['python', 'launch/train.py', *args])}"
    )
    assert mlflow_status(tmp_path) == "KILLED"
    checkpoints = sorted(run_dir.glob("checkpoints/step_*/meta.json"))
    if presses == 1:  # the first Ctrl-C checkpoints the step it stopped at
        assert checkpoints and json.loads(checkpoints[-1].read_text())["epoch"] < 20
        resumed = run_train([*args, "train.epochs=1"], check=False)  # a continuation key: the run goes on
        assert "resumed from" in resumed.stdout + resumed.stderr
