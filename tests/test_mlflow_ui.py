"""The MLflow UI's runs table for a sweep, in headless Chromium against a real `mlflow server`.

The README's screenshot `docs/img/mlflow_sweep_runs.png` is of a real sweep: tests/test_tune.py takes it
with these helpers when UPDATE_SCREENSHOTS=1. Here, a constructed sweep checks the view itself.
An experiment of training runs opens with the columns that matter too (best and latest value of the metric,
epoch, Duration, the params that differ), from the view `compare.share_runs_view` stores (train.py stores it at
the end of each run and prints its URL), its evaluations folded under their training runs.
Three details make the page readable without clicking:
- a sort key other than the start time makes the UI list child runs flat instead of folded under
  their parent (the UI nests children only when sorted by start time without a filter);
- the columns (metric, epoch, cost, stop reason, swept params), their order and widths come from a shared
  view: an experiment tag `mlflow.sharedViewState.<key>` holding the UI state as JSON, opened with
  `?viewStateShareKey=<key>`;
- the browser reaches the server under a name that is not localhost (mapped to 127.0.0.1 by
  Chromium's resolver rules), because the UI opens its assistant panel over the table on a first
  visit to a localhost server; the server is told to accept that host and origin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, free_port
from helpers.mlflow_runs import RUNS, RUNS_EXPERIMENT, build_runs_store
from helpers.mlflow_sweep import EXPERIMENT, TRIALS, build_sweep_store, trial_run_name

from action_launch.tracking.compare import swept_keys
from action_launch.tracking.server import TrackingServer

pytestmark = pytest.mark.slow

HOST = "mlflow-sweep.test"  # any name but localhost/127.0.0.1; Chromium resolves it to 127.0.0.1
VIEW_KEY = "sweep"
SCREENSHOT = REPO / "docs" / "img" / "mlflow_sweep_runs.png"
WINDOW = (1920, 560)  # wide enough for the swept params, tall enough for a dozen trials


@pytest.fixture
def sweep_store(tmp_path):
    """(tracking uri, experiment name, parent run id) of a finished sweep in a SQLite store."""
    root = tmp_path / "store"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = build_sweep_store(uri, artifact_location=(root / "mlartifacts").as_uri())
    return uri, EXPERIMENT, parent


def share_sweep_view(uri: str, experiment: str, parent_run_id: str) -> str:
    """Store a view of the sweep's trials (best first; metric, cost, stop reason, swept params); returns the
    experiment id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    parent = client.get_run(parent_run_id)
    metric = parent.data.params.get("sweep.metric", "val/top1")
    swept = swept_keys(parent.data.params)
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")

    def col(kind: str, key: str) -> str:  # the UI's column id (its "canonical sort key")
        return f"{kind}.`{key}`"

    columns = [
        col("metrics", metric),
        col("metrics", "epoch"),
        col("metrics", "cost/clip_frames"),
        col("tags", "sweep.stop_reason"),
        *(col("params", k) for k in swept),
    ]
    widths = {
        col("attributes", "Run Name"): 50 + 7 * max(len(r.info.run_name) for r in children),
        col("tags", "sweep.stop_reason"): 220,
        col("metrics", metric): 90,
        col("metrics", "epoch"): 70,
        col("metrics", "cost/clip_frames"): 130,
        **{col("params", k): int(24 + 7 * len(k)) for k in swept},
    }
    state = {
        "orderByKey": col("metrics", metric),
        "orderByAsc": parent.data.params.get("sweep.mode") == "min",
        "selectedColumns": columns,
        "columnOrder": [col("attributes", "Run Name"), *columns],
        "columnWidths": widths,
    }
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))
    return exp_id


def chromium(url: str, png: Path, profile: Path, timeout: int = 120, attempts: int = 3) -> str:
    """Load `url` in headless Chromium, save a screenshot to `png` and return the DOM.

    A load takes about 10 s; on two cores shared with other jobs Chromium now and then never returns,
    so a run that passes `timeout` is killed and retried with a fresh profile.
    """
    for attempt in range(1, attempts + 1):
        cmd = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={profile}-{attempt}",
            f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
            "--virtual-time-budget=10000",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={png}",
            "--dump-dom",
            url,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the browser's helper processes too
            proc.communicate()
            continue
        assert proc.returncode == 0 and png.exists(), f"chromium failed ({proc.returncode}): {err[-2000:]}"
        return out
    raise AssertionError(f"chromium did not finish loading {url} in {attempts} tries of {timeout} s")


def runs_table(uri: str, experiment: str, parent_run_id: str, folder: Path) -> tuple:
    """(DOM, screenshot) of the sweep's runs table, from an `mlflow server` started and stopped here."""
    exp_id = share_sweep_view(uri, experiment, parent_run_id)
    port = free_port()
    # answering under HOST as well as 127.0.0.1; a cold start on two busy cores takes over a minute
    server = TrackingServer(
        uri,
        port,
        folder / "server.log",
        extra_args=[
            "--allowed-hosts",
            f"{HOST}:{port},127.0.0.1:{port}",
            "--cors-allowed-origins",
            f"http://{HOST}:{port}",
        ],
    )
    try:
        server.wait(timeout=300)
        png = folder / "mlflow_sweep_runs.png"
        dom = chromium(
            f"http://{HOST}:{port}/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}", png, folder / "chromium"
        )
    finally:
        server.stop()
    return dom, png


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_sweep_runs_table_in_mlflow_ui(sweep_store, tmp_path):
    from PIL import Image

    uri, experiment, parent = sweep_store
    dom, png = runs_table(uri, experiment, parent, tmp_path)
    assert "Request error" not in dom, "the UI could not load the runs (see server.log)"
    for trial_id in TRIALS:
        assert trial_run_name(trial_id) in dom, f"{trial_run_name(trial_id)} is not in the runs table"
    for reason in {r for _, _, r in TRIALS.values()}:
        assert reason[:30] in dom  # the stop-reason column is shown
    assert "MLflow Assistant" not in dom  # its panel would cover the table
    with Image.open(png) as image:
        assert image.size == WINDOW
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())
    assert colours > 100, "the screenshot looks blank"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_training_runs_open_with_the_columns_that_matter(tmp_path):
    from action_launch.tracking.compare import share_runs_view
    from action_launch.tracking.query import shared_view

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluation = build_runs_store(uri, (tmp_path / "mlartifacts").as_uri())
    key = share_runs_view(uri, RUNS_EXPERIMENT, "val/top1")
    from mlflow.tracking import MlflowClient

    exp_id = MlflowClient(uri).get_experiment_by_name(RUNS_EXPERIMENT).experiment_id
    state = shared_view(uri, exp_id, key)
    # the best value, the latest one, the epoch, the wall time and the params that differ (not name nor seed)
    assert state["selectedColumns"] == [
        "metrics.`best/val/top1`",
        "metrics.`val/top1`",
        "metrics.`epoch`",
        "attributes.`Duration`",
        "params.`data.num_frames`",
        "params.`optim.lr`",
    ]
    port = free_port()
    server = TrackingServer(
        uri,
        port,
        tmp_path / "server.log",
        extra_args=[
            "--allowed-hosts",
            f"{HOST}:{port},127.0.0.1:{port}",
            "--cors-allowed-origins",
            f"http://{HOST}:{port}",
        ],
    )
    try:
        server.wait(timeout=300)
        dom = chromium(
            f"http://{HOST}:{port}/#/experiments/{exp_id}/runs?viewStateShareKey={key}",
            tmp_path / "runs.png",
            tmp_path / "chromium",
        )
    finally:
        server.stop()
    assert "Request error" not in dom, "the UI could not load the runs (see server.log)"
    for name in RUNS:
        assert name in dom, f"{name} is not in the runs table"
    for header in ("best/val/top1", "Duration", "optim.lr", "data.num_frames"):
        assert header in dom, f"no {header} column"
    assert "0.61" in dom and "0.59" in dom  # the best values, not only the last ones (0.57)
    assert evaluation not in dom  # folded under its training run, not a row of its own
