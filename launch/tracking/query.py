"""The read side of the tracking layer: an experiment's runs, or one sweep's trials, as plain dicts.

A run comes back as `{"run_id", "name", "status", "start_time", "end_time", "params", "metrics",
"tags"}`, where `metrics` holds each metric's latest value. A sweep (written by `launch/tune.py`) is
a parent run tagged `sweep.role=parent` and `sweep.name=<name>` whose trials are child runs tagged
`mlflow.parentRunId=<parent id>`. Like the rest of `tracking`, this module may import MLflow; the
callers (`launch/compare.py`) see dicts and the errors below only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import quote

from action_launch.tracking.server import server_reachable

RunDict = Dict[str, Any]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""The MLflow UI reads a runs-table view (columns, order, sort) from experiment tag `<prefix><key>` when
the page is opened with `?viewStateShareKey=<key>`; without the key the UI uses the browser's own saved
state, which no server can set."""


class TrackingQueryError(LookupError):
    """An experiment, run or sweep that is not in the store; the message says what is there."""


def check_store(uri: str) -> None:
    """Fail with ConnectionError for an unreachable server and FileNotFoundError for a missing local store.

    Reading must never create an empty store: MLflow would make a new SQLite file (or `mlruns/` folder)
    at a mistyped path and then report that the experiment does not exist.
    """
    if uri.startswith(("http://", "https://")):
        if not server_reachable(uri):
            raise ConnectionError(
                f"MLflow tracking server {uri} is unreachable (no answer from {uri.rstrip('/')}/health)"
            )
        return
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url  # MLflow's own database layer parses its SQLite URIs

        database = make_url(uri).database
        if not database or database == ":memory:":
            return
        path = Path(database)
    elif uri.startswith("file://"):
        path = Path(uri[len("file://") :])
    elif "://" not in uri:
        path = Path(uri)
    else:
        return  # other database URIs (postgresql://, mysql://): let MLflow report what is wrong
    if not path.exists():
        raise FileNotFoundError(
            f"no MLflow store at {path} (tracking URI {uri}); train a run first or pass "
            f"--tracking-uri / set MLFLOW_TRACKING_URI"
        )


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    from mlflow.tracking import MlflowClient

    check_store(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, experiment: str) -> str:
    """The id of experiment `experiment`; an unknown name fails listing the closest existing names."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    names = [e.name for e in client.search_experiments()]
    close = difflib.get_close_matches(experiment, names, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise TrackingQueryError(
        f"no experiment named {experiment!r} at {uri}{hint} (experiments there: {', '.join(sorted(names)) or 'none'})"
    )


def _as_dict(run) -> RunDict:
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def _search(client, exp_id: str, filter_string: str = "") -> List[RunDict]:
    runs: List[RunDict] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string, max_results=1000, page_token=token, order_by=["attributes.start_time ASC"]
        )
        runs += [_as_dict(r) for r in page]
        token = page.token
        if not token:
            return runs


def list_runs(uri: str, experiment: str, filter_string: str = "") -> List[RunDict]:
    """Every run of `experiment` (oldest first), optionally narrowed by an MLflow search filter."""
    client = _client(uri)
    return _search(client, experiment_id(uri, experiment), filter_string)


def find_sweep(uri: str, experiment: str, parent: str) -> RunDict:
    """A sweep's parent run, by run id or by sweep name (the newest parent of that name wins)."""
    client = _client(uri)
    exp_id = experiment_id(uri, experiment)
    if _RUN_ID.match(parent):
        runs = _search(client, exp_id, f"attributes.run_id = '{parent}'")
        if runs:
            return runs[0]
    quoted = parent.replace("'", "\\'")
    runs = _search(client, exp_id, f"tags.`sweep.name` = '{quoted}' and tags.`sweep.role` = 'parent'")
    if runs:
        return runs[-1]
    sweeps = sorted(
        {r["tags"].get("sweep.name", r["name"]) for r in _search(client, exp_id, "tags.`sweep.role` = 'parent'")}
    )
    close = difflib.get_close_matches(parent, sweeps, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise TrackingQueryError(
        f"no sweep or run {parent!r} in experiment {experiment!r}{hint} (sweeps there: {', '.join(sweeps) or 'none'})"
    )


def sweep_trials(uri: str, experiment: str, parent: str) -> Tuple[RunDict, List[RunDict]]:
    """A sweep's parent run and its child runs (one per trial, oldest first)."""
    client = _client(uri)
    parent_run = find_sweep(uri, experiment, parent)
    children = _search(client, experiment_id(uri, experiment), f"tags.mlflow.parentRunId = '{parent_run['run_id']}'")
    return parent_run, children


def metric_histories(uri: str, run_ids: Iterable[str], metric: str) -> Dict[str, List[float]]:
    """Every value each run logged for `metric` (its validations, for a `val/` metric), oldest first."""
    client = _client(uri)
    return {
        run_id: [
            m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        ]
        for run_id in run_ids
    }


def share_view(uri: str, exp_id: str, key: str, state: Mapping[str, Any]) -> None:
    """Store a runs-table view on the experiment, opened in the UI with `?viewStateShareKey=<key>`."""
    _client(uri).set_experiment_tag(exp_id, VIEW_TAG_PREFIX + key, json.dumps(state))


def shared_view(uri: str, exp_id: str, key: str) -> Optional[Dict[str, Any]]:
    """The view stored under `key` on the experiment, or None."""
    text = _client(uri).get_experiment(exp_id).tags.get(VIEW_TAG_PREFIX + key)
    return json.loads(text) if text else None


def sweep_parents(runs: List[RunDict]) -> List[RunDict]:
    """The sweep parent runs among `runs`."""
    return [r for r in runs if r["tags"].get("sweep.role") == "parent"]


def ui_url(uri: str, exp_id: str, port: int = 5000, view_key: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(the `mlflow ui` command to run first or None for a server, the URL of the experiment's runs table,
    opening the shared view `view_key` when given)."""
    page = f"#/experiments/{exp_id}/runs" + (f"?viewStateShareKey={quote(view_key, safe='')}" if view_key else "")
    if uri.startswith(("http://", "https://")):
        return None, f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}", f"http://127.0.0.1:{port}/{page}"
