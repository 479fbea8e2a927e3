"""launch/compare.py against a real SQLite MLflow store holding a sweep written as launch/tune.py writes one."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from action_launch import compare as compare_command
from action_launch.tracking import compare

from conftest import free_port, run_train
from helpers.mlflow_sweep import BEST_TRIAL, EXPERIMENT, SPACE, SWEEP, TRIALS, build_sweep_store, trial_run_name

BY_TOP1 = ["t_00002", "t_00000", "t_00003", "t_00001", "t_00004"]  # errored trial (no metric) last


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking uri, parent run id, output dir): the sweep plus one run outside it, in `<dir>/mlflow.db`."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = build_sweep_store(uri, artifact_location=(root / "mlartifacts").as_uri())
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    solo = client.create_run(exp_id, run_name="baseline").info.run_id
    client.log_param(solo, "data.num_frames", "8")
    client.log_batch(solo, metrics=[Metric("val/top1", 0.5, 0, 1)])
    client.set_terminated(solo)
    return uri, parent, root


def compare_main(capsys, *args):
    code = compare_command.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def table_lines(stdout: str):
    """The data rows of the printed table (after the dashed rule, before the 'Wrote' line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}) + 1
    return [line for line in lines[start:] if not line.startswith(("Wrote", "Browse", "("))]


def read_csv(path: Path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_table_best_first_with_swept_params_csv_and_png(store, tmp_path, capsys):
    uri, parent, _ = store
    code, out, err = compare_main(capsys, "--experiment", EXPERIMENT, "--parent", SWEEP, "--tracking-uri", uri,
                                  "--out", str(tmp_path))
    assert code == 0, err
    header = out.splitlines()[1].split()
    # the swept keys, not data.bad_files_log (a file in each trial's own folder)
    assert header == ["trial", *SPACE, "val/top1", "epoch", "stop", "clip_frames", "wall_s", "run_id"]
    rows = table_lines(out)
    assert [r.split()[0] for r in rows] == BY_TOP1
    assert "stopped by asha at epoch 2" in rows[2] and "errored: RuntimeError: CUDA out of me..." in rows[4]
    assert f"mlflow ui --backend-store-uri {uri}" in out and "/#/experiments/" in out

    stem = f"{EXPERIMENT}__{SWEEP}"
    table = read_csv(tmp_path / f"{stem}.csv")
    assert [r["trial"] for r in table] == BY_TOP1
    best = table[0]
    assert best["val/top1"] == str(TRIALS[BEST_TRIAL][1][-1]) and best["stop"] == "completed"
    assert best["data.num_frames"] == "16" and best["optim.lr"] == "0.002" and len(best["run_id"]) == 32
    assert table[-1]["stop"] == TRIALS["t_00004"][2] and table[-1]["val/top1"] == ""  # full message in the CSV
    assert float(best["clip_frames"]) == 4 * 640 * 16
    png = (tmp_path / f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_chosen_params_metric_and_mode_by_parent_run_id(store, tmp_path, capsys):
    uri, parent, _ = store
    code, out, err = compare_main(capsys, "--experiment", EXPERIMENT, "--parent", parent, "--tracking-uri", uri,
                                  "--metric", "val/loss", "--mode", "min", "--params", "optim.lr, data.num_frames",
                                  "--out", str(tmp_path))
    assert code == 0, err
    assert out.splitlines()[1].split()[:4] == ["trial", "optim.lr", "data.num_frames", "val/loss"]
    assert [r.split()[0] for r in table_lines(out)] == BY_TOP1  # val/loss = 1.4 - top1: same order, lowest first
    assert list(read_csv(tmp_path / f"{EXPERIMENT}__{SWEEP}.csv")[0])[:4] == ["trial", "optim.lr", "data.num_frames",
                                                                            "val/loss"]


def test_experiment_lists_runs_but_not_sweep_parents(store, tmp_path, capsys):
    uri, _, _ = store
    code, out, err = compare_main(capsys, "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(tmp_path))
    assert code == 0, err
    names = [r.split()[0] for r in table_lines(out)]
    assert names == [trial_run_name(t) for t in BY_TOP1[:2]] + ["baseline"] + [trial_run_name(t) for t in BY_TOP1[2:]]
    assert SWEEP not in names
    assert (tmp_path / f"{EXPERIMENT}.csv").exists() and (tmp_path / f"{EXPERIMENT}.png").exists()


def test_swept_keys_split_joint_entries():
    params = {"sweep.metric": "val/top1", "space.data.num_frames:model.num_frames": "grid", "space.optim.lr": "log"}
    assert compare.swept_keys(params) == ["data.num_frames", "model.num_frames", "optim.lr"]


def test_cost_from_the_trial_tag_when_not_a_metric():
    run = {"name": "s/t_0", "metrics": {"val/top1": 0.5}, "tags": {"sweep.compute.clip_frames": "2048"}}
    assert compare._with_cost_tags(run)["metrics"] == {"val/top1": 0.5, "cost/clip_frames": 2048.0}


@pytest.mark.parametrize("args, message", [
    (["--experiment", "demo_sweep"], "no experiment named 'demo_sweep'"),
    (["--experiment", EXPERIMENT, "--parent", "frames_sampling"], "no sweep or run 'frames_sampling' in experiment"),
    (["--experiment", EXPERIMENT, "--metric", "val/top5"], "no run has metric 'val/top5'; did you mean val/top1?"),
    (["--experiment", EXPERIMENT, "--params", "optim.lrr"], "no run has param 'optim.lrr'; did you mean optim.lr?"),
])
def test_unknown_names_fail_with_what_exists(store, tmp_path, capsys, args, message):
    uri, _, _ = store
    code, out, err = compare_main(capsys, *args, "--tracking-uri", uri, "--out", str(tmp_path))
    assert code == 1 and out == ""
    assert message in err
    if "experiment named" in message:
        assert f"did you mean {EXPERIMENT}?" in err
    if "no sweep" in message:
        assert f"did you mean {SWEEP}?" in err and f"(sweeps there: {SWEEP})" in err


def test_missing_store_and_unreachable_server(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    code, _, err = compare_main(capsys, "--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{missing}")
    assert code == 1 and f"no MLflow store at {missing}" in err
    assert not missing.exists()  # reading never creates an empty store
    uri = f"http://127.0.0.1:{free_port()}"
    code, _, err = compare_main(capsys, "--experiment", EXPERIMENT, "--tracking-uri", uri)
    assert code == 1 and f"MLflow tracking server {uri} is unreachable" in err


def test_script_uses_the_default_store_of_train_py(store):
    """As a user runs it: no --tracking-uri (run_train drops $MLFLOW_TRACKING_URI), so the store is
    sqlite:///<--output-dir>/mlflow.db as for train.py, and the CSV lands in <--output-dir>/compare."""
    uri, _, root = store
    proc = run_train(["--experiment", EXPERIMENT, "--parent", SWEEP, "--output-dir", str(root)],
                     script="launch/compare.py", timeout=300)
    assert f"mlflow ui --backend-store-uri sqlite:///{root.resolve() / 'mlflow.db'}" in proc.stdout
    assert [r.split()[0] for r in table_lines(proc.stdout)] == BY_TOP1
    assert (root / "compare" / f"{EXPERIMENT}__{SWEEP}.csv").exists()
