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
from typing import Any, List, Tuple

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


def stop_during_a_write(tmp_path: Path, nth: int) -> Tuple[float, str, List[Tuple[int, float]], int]:
    """Ctrl-C once, then again just after the `nth` SQL statement of logging a metric point (the handler runs at the
    next bytecode, inside SQLAlchemy); end the run KILLED as `Trainer.fit` does, with the KeyboardInterrupt in
    flight. How long the end took (-1: no KeyboardInterrupt), the run's status and its points in MLflow, and how
    many statements the write ran before it stopped."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from action_launch.tracking.tracker import Tracker
    from action_launch.training.signals import StopFlag

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tmp_path / f"run{nth}", uri, "tests", f"run{nth}")
    tracker.start({"lr": 0.1}, {})
    previous = signal.getsignal(signal.SIGINT)
    stop = StopFlag().install(("SIGINT",))
    statements = 0

    def press(*args: Any) -> None:
        nonlocal statements
        statements += 1
        if statements == nth:
            os.kill(os.getpid(), signal.SIGINT)

    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: a stop at the next optimizer step
    assert stop.interrupted
    ended = -1.0
    event.listen(Engine, "after_cursor_execute", press)
    try:
        try:
            tracker.log_metrics({"train/loss": 1.5}, step=3)
        finally:
            event.remove(Engine, "after_cursor_execute", press)
    except KeyboardInterrupt:
        started = time.monotonic()
        tracker.finish("KILLED")
        ended = time.monotonic() - started
    finally:
        signal.signal(signal.SIGINT, previous)
    client = MlflowClient(uri)
    points = [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train/loss")]
    return ended, client.get_run(tracker.run_id).info.status, points, statements


def test_a_second_ctrl_c_during_an_mlflow_write_lets_the_write_end_and_the_run_end_killed(tmp_path):
    """The second Ctrl-C landing anywhere inside an MLflow write (here after each of its SQL statements in turn).
    Cut after the SELECT that opens `log_batch`, its rows not yet read, the write's SQLite connection kept its lock:
    the KILLED end waited 20 s for it and failed ("database is locked", a traceback, the run left RUNNING). The
    write ends first, then the run stops at once."""
    nth = 1
    while True:
        ended, status, points, statements = stop_during_a_write(tmp_path, nth)
        if statements < nth:  # the write has fewer statements: it was cut after each one
            break
        assert 0 <= ended < 5 and status == "KILLED" and points == [(3, 1.5)], (nth, ended, status, points)
        nth += 1
    assert nth > 4


def test_inside_a_write_the_second_ctrl_c_waits_for_its_end_and_a_third_stops_now():
    from action_launch.common.interrupts import uninterrupted
    from action_launch.training.signals import StopFlag

    previous = signal.getsignal(signal.SIGINT)
    StopFlag().install(("SIGINT",))
    reached = []
    try:
        os.kill(os.getpid(), signal.SIGINT)  # a stop at the next optimizer step
        with pytest.raises(KeyboardInterrupt):
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the second")
            reached.append("after the section")
        # e.g. the KILLED end, written while that KeyboardInterrupt propagates
        with pytest.raises(KeyboardInterrupt), uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)  # the third: now
            reached.append("after the third")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reached == ["after the second"]
