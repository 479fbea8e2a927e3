"""Tracking against a real `mlflow server` on 127.0.0.1: down at first, synced later, then live; and
runs started at once on a new SQLite store."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest
from conftest import free_port, run_train, tiny_overrides

from action_launch.tracking.server import TrackingServer

pytestmark = pytest.mark.slow


def journal_events(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("deepspeed_ready")
def test_server_down_then_sync_then_live(video_set, tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = run_train([*tiny_overrides(video_set, tmp_path, "offline"), f"tracking.uri={uri}", "train.epochs=1"])
    assert proc.stdout.count("is unreachable; training continues") == 1
    assert "python launch/track.py sync" in proc.stdout
    run_dir = tmp_path / "tests" / "offline"
    events = journal_events(run_dir)
    metric_steps = [e["step"] for e in events if e["kind"] == "metrics" and "train/loss" in e["values"]]
    assert metric_steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "tracking" / "state.json").read_text()).get("run_id") is None

    failed = run_train(["sync", str(run_dir)], script="launch/track.py", check=False)
    assert failed.returncode == 1 and "unreachable" in failed.stderr

    server_dir = tmp_path / "server"
    with TrackingServer(f"sqlite:///{server_dir / 'server.db'}", port, server_dir / "server.log"):
        synced = run_train(["sync", str(run_dir)], script="launch/track.py")
        assert f"sent {len(events)} journal events" in synced.stdout
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["model.name"] == "timesformer_tiny"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == metric_steps
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        again = run_train(["sync", str(run_dir)], script="launch/track.py")
        assert "sent 0 journal events" in again.stdout
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(metric_steps)

        live = run_train(
            [*tiny_overrides(video_set, tmp_path, "live"), "train.epochs=1"], env={"MLFLOW_TRACKING_URI": uri}
        )
        assert "unreachable" not in live.stdout
        (live_run,) = client.search_runs(
            [client.get_experiment_by_name("tests").experiment_id], "attributes.run_name = 'live'"
        )
        assert live_run.info.status == "FINISHED"
        assert len(client.get_metric_history(live_run.info.run_id, "val/top1")) == 1
        state = json.loads((tmp_path / "tests" / "live" / "tracking" / "state.json").read_text())
        assert state["run_id"] == live_run.info.run_id and state["synced"] == len(
            journal_events(tmp_path / "tests" / "live")
        )


def _start_run_at_once(root: str, index: int, barrier, results) -> None:
    """One process of the test below: a Tracker run on the shared store, started when all are ready."""
    from action_launch.tracking.tracker import Tracker

    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    warnings: list = []
    logging.getLogger("action_launch").addHandler(Keep(logging.WARNING))
    tracker = Tracker(Path(root) / f"run{index}", f"sqlite:///{root}/mlflow.db", "together", f"run{index}")
    barrier.wait(timeout=120)
    tracker.start({"index": index}, {"test": "together"})
    tracker.log_metrics({"train/loss": 1.0 / (index + 1)}, step=1)
    tracker.finish()
    results.put((index, tracker.online, warnings))


def test_runs_started_at_once_on_a_new_sqlite_store(tmp_path):
    """Issue 15, item 8: MLflow creates a new store's schema on first use; four runs starting together
    must not each run the migrations (all but one went offline with `duplicate column name: step`)."""
    from mlflow.tracking import MlflowClient

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_start_run_at_once, args=(str(tmp_path), i, barrier, results)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        if proc.exitcode is None:
            proc.kill()
        assert proc.exitcode == 0
    reported = sorted(results.get(timeout=10) for _ in procs)
    for index, online, warnings in reported:
        assert online and warnings == [], f"run{index} went offline: {warnings}"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1", "run2", "run3"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] > 0
        run_dir = tmp_path / run.info.run_name
        state = json.loads((run_dir / "tracking" / "state.json").read_text())
        assert state["run_id"] == run.info.run_id and state["synced"] == len(journal_events(run_dir))


def test_store_lock_held_too_long_goes_offline(tmp_path, monkeypatch, caplog):
    """Nothing waits forever for the store's schema lock: past the timeout the run goes offline, saying why."""
    import fcntl

    from action_launch.tracking import server
    from action_launch.tracking.tracker import Tracker

    monkeypatch.setattr(server, "STORE_INIT_TIMEOUT_S", 0.5)
    with open(tmp_path / "mlflow.db.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        tracker = Tracker(tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}", "held", "run")
        tracker.start({"a": 1}, {})
    assert not tracker.online and "run_id" not in json.loads((tmp_path / "run" / "tracking" / "state.json").read_text())
    (reason,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "mlflow.db.lock for over 0.5 s" in reason and "\n" not in reason


@pytest.mark.usefixtures("deepspeed_ready")
def test_a_killed_run_is_closed_as_killed_by_sync(video_set, tmp_path):
    """Issue 15, item 9: a run whose process dies (SIGKILL, a cancelled job) must not stay RUNNING: `track.py
    sync` finds its writer gone and ends it KILLED, with every metric it had journalled."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO
    from mlflow.tracking import MlflowClient

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")
    }
    run_dir = tmp_path / "tests" / "dies"
    journal = run_dir / "tracking" / "journal.jsonl"
    with open(tmp_path / "train.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "launch/train.py", *tiny_overrides(video_set, tmp_path, "dies"), "train.epochs=50"],
            cwd=REPO,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"kind": "metrics"') >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "train.log").read_text()[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads((run_dir / "tracking" / "state.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # what the kill leaves

    synced = run_train(["sync", str(run_dir)], script="launch/track.py")
    assert "closed as KILLED" in synced.stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    events = journal_events(run_dir)
    assert events[-1]["kind"] == "end" and events[-1]["status"] == "KILLED"
    journalled = [e["step"] for e in events if e["kind"] == "metrics" and "train/loss" in e["values"]]
    assert len(journalled) >= 3
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == journalled
    again = run_train(["sync", str(run_dir)], script="launch/track.py")
    assert "sent 0 journal events" in again.stdout and client.get_run(run_id).info.status == "KILLED"


def test_sync_keeps_a_live_run_running_and_a_new_route_is_no_change(tmp_path, monkeypatch):
    """A run whose writer is alive is not closed by a sync; a run resumed through another URI of the same store
    (a resumed sweep's new server) records no `changed.tracking.uri`; a line cut by a kill is dropped, not
    glued to the next event."""
    from mlflow.tracking import MlflowClient

    from action_launch.tracking.tracker import Tracker, sync

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tmp_path / "run", store, "live", "run")
    tracker.start({"tracking.uri": "http://127.0.0.1:1", "optim.lr": 0.1}, {})
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert sync(tmp_path / "run") == 0
    client = MlflowClient(store)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # this process writes it: alive

    with open(tmp_path / "run" / "tracking" / "journal.jsonl", "a") as fh:
        fh.write('{"kind": "metrics", "step": 2, "ti')  # the writer was killed mid-line
    again = Tracker(tmp_path / "run", store, "live", "run")
    again.start({"tracking.uri": "http://127.0.0.1:2", "optim.lr": 0.2}, {})
    again.finish()
    run = client.get_run(tracker.run_id)
    assert again.run_id == tracker.run_id and run.info.status == "FINISHED"
    assert "changed.optim.lr" in run.data.tags and "changed.tracking.uri" not in run.data.tags
    assert journal_events(tmp_path / "run")[-1]["kind"] == "end"

    third = Tracker(tmp_path / "run", store, "live", "run")  # an attempt on another host: its writer can't be checked
    third.start({}, {})
    third.journal.save_state(writer={"host": "elsewhere", "pid": 1})
    sync(tmp_path / "run")
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    sync(tmp_path / "run", killed=True)  # `track.py sync --killed`: the caller knows it is gone
    assert client.get_run(tracker.run_id).info.status == "KILLED"
