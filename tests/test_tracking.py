"""Tracking against a real `mlflow server` on 127.0.0.1: down at first, synced later, then live."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from action_launch.tracking.server import TrackingServer

from conftest import free_port, run_train, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ready")]


def journal_events(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]


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

        live = run_train([*tiny_overrides(video_set, tmp_path, "live"), "train.epochs=1"],
                         env={"MLFLOW_TRACKING_URI": uri})
        assert "unreachable" not in live.stdout
        (live_run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                         "attributes.run_name = 'live'")
        assert live_run.info.status == "FINISHED"
        assert len(client.get_metric_history(live_run.info.run_id, "val/top1")) == 1
        state = json.loads((tmp_path / "tests" / "live" / "tracking" / "state.json").read_text())
        assert state["run_id"] == live_run.info.run_id and state["synced"] == len(journal_events(tmp_path / "tests" / "live"))
