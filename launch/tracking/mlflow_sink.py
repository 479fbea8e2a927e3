"""The MLflow sink of the tracker (`tracker.Sink`): writes runs through `MlflowClient`, no global active-run state.

The only module of `tracking` that imports MLflow to write runs (`query` reads them back, `server` runs the
`mlflow server`). MLflow's own limits live here: the characters a key may hold, 100 params per batch, 1000
metrics per batch, params that cannot change once logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence, Tuple

from action_launch.tracking.server import artifact_root_for, store_init_lock

log = logging.getLogger(__name__)

_PARAM_BATCH = 100  # MLflow's log_batch accepts at most 100 params and 1000 metrics per call
_METRIC_BATCH = 1000
_PARAM_CHARS = 6000  # longer param values are refused
_ROUTE_PARAMS = {"tracking.uri"}
"""Params that say how a run reaches its store, not what it trained: a resumed sweep trial logs through the new
sweep's server (another port, the same store and run), which is no change of the run (no `changed.` tag)."""


def mlflow_key(name: str) -> str:
    """A param/metric/tag name MLflow accepts: characters other than letters, digits, `_ - . / : ` and
    space become `_` (a key MLflow rejects would fail the whole batch it is sent in)."""
    return re.sub(r"[^/\w.\- :]", "_", name)


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:_PARAM_CHARS]


class MlflowSink:
    """One experiment of an MLflow store or server (`uri`), created if needed (artifacts beside a SQLite store)."""

    name: ClassVar[str] = "MLflow"

    def __init__(self, uri: str, experiment: str):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        with store_init_lock(uri):  # opening a new SQLite store creates its schema: one process at a time
            self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment_id(experiment, artifact_root_for(uri))

    def _experiment_id(self, name: str, artifact_root: Optional[Path]) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (artifact_root / name).resolve().as_uri() if artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it between our two calls
            created = self.client.get_experiment_by_name(name)
            if created is None:  # not that race: creating it failed for a reason of its own
                raise
            return created.experiment_id

    def open_run(self, run_id: Optional[str], run_name: str, tags: Mapping[str, str]) -> str:
        """Reuse `run_id` when the server knows it (resume, requeue), marked RUNNING again; else create a run."""
        from mlflow.exceptions import MlflowException

        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except MlflowException:
                log.warning("MLflow run %s not found at %s; starting a new run", run_id, self.uri)
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags)).info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """MLflow params are immutable: a resumed run with a changed value records it as a `changed.` tag."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(run_id).data.params
        texts = {mlflow_key(k): _param_text(v) for k, v in params.items()}
        new = [Param(k, v) for k, v in texts.items() if k not in logged]
        changed = [
            RunTag(f"changed.{k}", v)
            for k, v in texts.items()
            if k in logged and logged[k] != v and k not in _ROUTE_PARAMS
        ]
        for i in range(0, len(new), _PARAM_BATCH):
            self.client.log_batch(run_id, params=new[i : i + _PARAM_BATCH])
        if changed:
            self.client.log_batch(run_id, tags=changed)

    def log_metrics(self, run_id: str, points: Sequence[Tuple[str, float, int, int]]) -> None:
        """Points (key, value, time in ms, step), in batches of 1000."""
        from mlflow.entities import Metric

        metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in points]
        for i in range(0, len(metrics), _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _METRIC_BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        """Close the run with `status` (FINISHED, FAILED, KILLED) at `end_time` (ms since the epoch)."""
        self.client.set_terminated(run_id, status=status, end_time=end_time)
