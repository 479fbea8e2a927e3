"""The tracker talks to its backend through `tracker.Sink`: a second backend is one class, here a real JSON-lines
file sink, and it receives what MLflow receives from the same calls (params, metric points, tags, artifacts, the
end status), through a resume and an offline `sync` alike."""

from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from conftest import REPO


class JsonLinesSink:
    """A tracking backend in one file: every call is a line of `<uri>/<experiment>.jsonl`; `uri` is a folder."""

    name = "JSON lines"

    def __init__(self, uri: str, experiment: str):
        self.path = Path(uri) / f"{experiment}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a uri under a file: raises, the tracker goes offline
        self.experiment_id = experiment

    def _write(self, run_id: str, kind: str, **data: Any) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"run": run_id, "kind": kind, **data}) + "\n")

    def open_run(self, run_id: Optional[str], run_name: str, tags: Mapping[str, str]) -> str:
        if run_id and run_id in read_runs(self.path):
            self._write(run_id, "reopen")
            return run_id
        run_id = uuid.uuid4().hex
        self._write(run_id, "create", name=run_name, tags=dict(tags))
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._write(run_id, "params", values=dict(params))

    def log_metrics(self, run_id: str, points: Sequence[Tuple[str, float, int, int]]) -> None:
        self._write(run_id, "metrics", points=[list(p) for p in points])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._write(run_id, "tags", values=dict(tags))

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self._write(run_id, "artifact", name=Path(path).name, folder=artifact_path)

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        self._write(run_id, "end", status=status, time=end_time)


def read_runs(path: Path) -> Dict[str, Dict[str, Any]]:
    """What a JsonLinesSink file says of each run: name, params, metric points (key -> [(step, value)]), tags,
    artifacts and status (RUNNING until ended; a reopened run runs again)."""
    runs: Dict[str, Dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        e = json.loads(line)
        if e["kind"] == "create":
            runs[e["run"]] = {
                "name": e["name"],
                "params": {},
                "metrics": {},
                "tags": dict(e["tags"]),
                "artifacts": [],
                "status": "RUNNING",
            }
            continue
        run = runs[e["run"]]
        if e["kind"] == "reopen":
            run["status"] = "RUNNING"
        elif e["kind"] == "params":
            run["params"].update(e["values"])
        elif e["kind"] == "metrics":
            for key, value, _, step in e["points"]:
                run["metrics"].setdefault(key, []).append((step, value))
        elif e["kind"] == "tags":
            run["tags"].update(e["values"])
        elif e["kind"] == "artifact":
            run["artifacts"].append(e["name"])
        elif e["kind"] == "end":
            run["status"] = e["status"]
    return runs


def _tiny_run(run_dir: Path, uri: str, sink=None) -> str:
    """The tracker API of a short training run with a resume: start, metrics, a tag, an artifact, the end."""
    from action_launch.tracking.tracker import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("model: {name: tiny}\n")
    tracker = Tracker(run_dir, uri, "sinks", "tiny", sink=sink)
    tracker.start({"optim.lr": 0.01, "data.num_frames": 8, "model.name": "tiny"}, {"purpose": "test"})
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.01}, step)
    tracker.finish("KILLED")  # a requeued job: the same run continues
    resumed = Tracker(run_dir, uri, "sinks", "tiny", sink=sink)
    resumed.start({"optim.lr": 0.01, "data.num_frames": 8, "model.name": "tiny"}, {"purpose": "test"})
    resumed.skip_replayed(2)  # step 3 was logged before the requeue: not again
    for step in (3, 4):
        resumed.log_metrics({"train/loss": 1.0 / step}, step)
    resumed.set_tags({"requeues": 1})
    resumed.log_artifact(run_dir / "config.yaml")
    resumed.finish("FINISHED")
    assert resumed.online and resumed.run_id == tracker.run_id
    return resumed.run_id


def _mlflow_view(uri: str, run_id: str) -> Dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    metrics = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}
    return {
        "name": run.info.run_name,
        "params": run.data.params,
        "metrics": metrics,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "artifacts": [a.path for a in client.list_artifacts(run_id)],
        "status": run.info.status,
    }


def _as_logged(run: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON sink's record with params as MLflow holds them (text)."""
    return {**run, "params": {k: str(v) for k, v in run["params"].items()}}


def test_a_second_sink_receives_what_mlflow_receives(tmp_path):
    from action_launch.tracking.tracker import Journal

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_run = _tiny_run(tmp_path / "runs" / "mlflow", mlflow_uri)
    json_run = _tiny_run(tmp_path / "runs" / "json", str(tmp_path / "store"), sink=JsonLinesSink)

    from_json = read_runs(tmp_path / "store" / "sinks.jsonl")
    assert list(from_json) == [json_run]
    expected = _mlflow_view(mlflow_uri, mlflow_run)
    assert _as_logged(from_json[json_run]) == expected
    assert expected["metrics"]["train/loss"] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]  # one point a step
    assert expected["status"] == "FINISHED" and expected["tags"] == {"purpose": "test", "requeues": "1"}
    # the journals, the sinks' common source, are alike too (the run id aside)
    kinds = [[e["kind"] for e in Journal(tmp_path / "runs" / name).events()] for name in ("mlflow", "json")]
    assert kinds[0] == kinds[1]


def test_a_second_sink_gets_an_offline_run_at_sync(tmp_path):
    """Unreachable at first (its folder cannot be made), the JSON sink gets the whole run from `sync`, as MLflow
    would."""
    from action_launch.tracking.tracker import Tracker, sync

    (tmp_path / "a_file").write_text("")
    run_dir = tmp_path / "runs" / "offline"
    tracker = Tracker(run_dir, str(tmp_path / "a_file" / "store"), "sinks", "offline", sink=JsonLinesSink)
    tracker.start({"optim.lr": 0.1}, {})
    tracker.log_metrics({"val/top1": 0.5}, 10)
    tracker.finish("FINISHED")
    assert not tracker.online and tracker.run_id is None

    assert sync(run_dir, str(tmp_path / "store"), sink=JsonLinesSink) == 4  # params, tags, metrics, end
    (run,) = read_runs(tmp_path / "store" / "sinks.jsonl").values()
    assert run["params"] == {"optim.lr": 0.1} and run["metrics"] == {"val/top1": [(10, 0.5)]}
    assert run["status"] == "FINISHED" and run["name"] == "offline"


def test_only_the_mlflow_sink_writes_runs_with_mlflow():
    """In `tracking`, MLflow is imported by the sink (writing) and `query` (reading back), nowhere else."""
    importing = set()
    for path in sorted((REPO / "launch" / "tracking").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importing.add(path.name)
    assert importing == {"mlflow_sink.py", "query.py"}
