"""launch/compare.py against a real SQLite MLflow store holding a sweep written as launch/tune.py writes one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import REPO, free_port, run_train
from helpers.mlflow_sweep import (
    BEST_TRIAL,
    EXPERIMENT,
    LAST_VALUE_WINNER,
    SPACE,
    SWEEP,
    TRIALS,
    build_sweep_store,
    trial_run_name,
)

from action_launch import compare as compare_command
from action_launch.tracking import compare

# by each trial's best val/top1 (t_00000's 0.66 before its last 0.58); the errored trial (no metric) last
BY_TOP1 = ["t_00000", "t_00002", "t_00003", "t_00001", "t_00004"]
METRIC_COLUMN = "best val/top1"


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
    code, out, err = compare_main(
        capsys, "--experiment", EXPERIMENT, "--parent", SWEEP, "--tracking-uri", uri, "--out", str(tmp_path)
    )
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"{EXPERIMENT}: sweep {SWEEP}, {len(TRIALS)} trials, by best val/top1 over each "
        f"run's validations (max), best first"
    )
    header = out.splitlines()[1].split()
    # the swept keys, not data.bad_files_log (a file in each trial's own folder)
    assert header == ["trial", *SPACE, *METRIC_COLUMN.split(), "epoch", "stop", "clip_frames", "wall_s", "run_id"]
    rows = table_lines(out)
    assert [r.split()[0] for r in rows] == BY_TOP1
    assert "stopped by asha at epoch 2" in rows[2] and "errored: RuntimeError: CUDA out of me..." in rows[4]
    assert f"mlflow ui --backend-store-uri {uri}" in out and "/#/experiments/" in out

    stem = f"{EXPERIMENT}__{SWEEP}"
    table = read_csv(tmp_path / f"{stem}.csv")
    assert [r["trial"] for r in table] == BY_TOP1
    best = table[0]
    assert best[METRIC_COLUMN] == str(max(TRIALS[BEST_TRIAL][1])) and best["stop"] == "completed"
    assert best["data.num_frames"] == "8" and best["optim.lr"] == "0.001" and len(best["run_id"]) == 32
    assert table[-1]["stop"] == TRIALS["t_00004"][2] and table[-1][METRIC_COLUMN] == ""  # full message in the CSV
    assert float(best["clip_frames"]) == 4 * 640 * 8
    assert float(best["wall_s"]) == 6.5 * 4 * 8  # the wall time at its last validation
    png = (tmp_path / f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_chosen_params_metric_and_mode_by_parent_run_id(store, tmp_path, capsys):
    uri, parent, _ = store
    code, out, err = compare_main(
        capsys,
        "--experiment",
        EXPERIMENT,
        "--parent",
        parent,
        "--tracking-uri",
        uri,
        "--metric",
        "val/loss",
        "--mode",
        "min",
        "--params",
        "optim.lr, data.num_frames",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert out.splitlines()[1].split()[:5] == ["trial", "optim.lr", "data.num_frames", "best", "val/loss"]
    assert "by best val/loss over each run's validations (min)" in out.splitlines()[0]
    assert [r.split()[0] for r in table_lines(out)] == BY_TOP1  # val/loss = 1.4 - top1: same order, lowest first
    assert list(read_csv(tmp_path / f"{EXPERIMENT}__{SWEEP}.csv")[0])[:4] == [
        "trial",
        "optim.lr",
        "data.num_frames",
        "best val/loss",
    ]


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "demo_sweep"], "no experiment named 'demo_sweep'"),
        (
            ["--experiment", EXPERIMENT, "--parent", "frames_sampling"],
            "no sweep or run 'frames_sampling' in experiment",
        ),
        (["--experiment", EXPERIMENT, "--metric", "val/top5"], "no run has metric 'val/top5'; did you mean val/top1?"),
        (["--experiment", EXPERIMENT, "--params", "optim.lrr"], "no run has param 'optim.lrr'; did you mean optim.lr?"),
    ],
)
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
    code, _, err = compare_main(capsys, "--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{missing}?timeout=5")
    assert code == 1 and f"no MLflow store at {missing} " in err and not missing.exists()  # the query is not the path
    uri = f"http://127.0.0.1:{free_port()}"
    code, _, err = compare_main(capsys, "--experiment", EXPERIMENT, "--tracking-uri", uri)
    assert code == 1 and f"MLflow tracking server {uri} is unreachable" in err


@pytest.mark.slow
def test_script_uses_the_default_store_of_train_py(store):
    """As a user runs it: no --tracking-uri (run_train drops $MLFLOW_TRACKING_URI), so the store is
    sqlite:///<--output-dir>/mlflow.db as for train.py, and the CSV lands in <--output-dir>/compare."""
    uri, _, root = store
    proc = run_train(
        ["--experiment", EXPERIMENT, "--parent", SWEEP, "--output-dir", str(root)],
        script="launch/compare.py",
        timeout=300,
    )
    assert f"mlflow ui --backend-store-uri sqlite:///{root.resolve() / 'mlflow.db'}" in proc.stdout
    assert [r.split()[0] for r in table_lines(proc.stdout)] == BY_TOP1
    assert (root / "compare" / f"{EXPERIMENT}__{SWEEP}.csv").exists()


class _Result:
    """What `launch/sweeps/run.py`'s summary reads of a Ray Tune result (no Ray runtime needed)."""

    def __init__(self, folder: Path, trial_id: str, overrides: dict, top1: list, reason: str):
        import pandas as pd

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trial_id").write_text(trial_id)
        self.path = str(folder)
        self.config = {**overrides, "model.num_frames": overrides["data.num_frames"]}
        self.error = RuntimeError(reason) if reason.startswith("errored") else None
        frames = overrides["data.num_frames"]
        history = [
            {
                "val/top1": acc,
                "val/loss": 1.4 - acc,
                "epoch": epoch,
                "step": 10 * epoch,
                "trial_id": trial_id,
                "cost/clip_frames": float(epoch * 640 * frames),
                "cost/wall_s": 6.5 * epoch * frames,
            }
            for epoch, acc in enumerate(top1, 1)
        ]
        self.metrics = {**history[-1], "done": True} if history else {"trial_id": trial_id}  # Tune ended it
        self.metrics_dataframe = pd.DataFrame(history) if history else None


def _sweep_file(tmp_path: Path) -> str:
    """The demo sweep's space with as many trials as TRIALS (the summary lists every planned trial)."""
    import yaml

    body = yaml.safe_load((REPO / "configs" / "sweeps" / "frames_sampling_lr.yaml").read_text())
    body["num_samples"] = len(TRIALS)
    body["space"].update({"data.num_frames": {"choice": [4, 8, 16]}, "data.sampling_rate": {"choice": [2, 4, 8]}})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_compare_and_the_sweep_results_name_the_same_winner(store, tmp_path, capsys):
    """Where a trial's last value is not its best (t_00000: 0.66, then 0.58), compare.py, results.csv and
    summary.json rank by the same rule (the best over a trial's validations) and name the same winner, and
    each says which rule it used."""
    pytest.importorskip("ray")
    from action_launch.sweeps import run as sweep_run
    from action_launch.sweeps.plan import SweepRequest, make_plan
    from action_launch.sweeps.trial import TrialSetup
    from action_launch.tracking.tracker import Tracker

    assert TRIALS[BEST_TRIAL][1][-1] < TRIALS[LAST_VALUE_WINNER][1][-1] < max(TRIALS[BEST_TRIAL][1])  # last != best
    uri, _, _ = store
    code, out, err = compare_main(
        capsys, "--experiment", EXPERIMENT, "--parent", SWEEP, "--tracking-uri", uri, "--out", str(tmp_path / "compare")
    )
    assert code == 0, err
    compare_winner = table_lines(out)[0].split()[0]

    request = SweepRequest(
        config="configs/demo.yaml",
        sweep=_sweep_file(tmp_path),
        overrides=[
            f"output_dir={tmp_path / 'runs'}",
            f"experiment={EXPERIMENT}",
            "model.name=timesformer_tiny",
            "train.epochs=4",
            "tracking.enabled=false",
        ],
        name=SWEEP,
        scheduler="asha",
    )
    plan = make_plan(request)
    assert plan is not None
    plan.sweep_dir.mkdir(parents=True)
    grid = [_Result(tmp_path / "ray" / t, t, o, top1, r) for t, (o, top1, r) in TRIALS.items()]
    parent = Tracker(plan.sweep_dir, "", EXPERIMENT, SWEEP, enabled=False)
    setup = TrialSetup(
        config=None,
        overrides=[],
        sweep_dir=str(plan.sweep_dir),
        output_dir=str(tmp_path / "runs"),
        experiment=EXPERIMENT,
        sweep_name=SWEEP,
    )
    summary = sweep_run.summarise(grid, plan, parent, setup)
    printed = capsys.readouterr().out
    results = read_csv(plan.sweep_dir / "results.csv")
    on_disk = json.loads((plan.sweep_dir / "summary.json").read_text())

    assert (
        compare_winner
        == results[0]["trial_id"]
        == summary["best"]["trial_id"]
        == on_disk["best"]["trial_id"]
        == BEST_TRIAL
    )
    assert [r["trial_id"] for r in results] == BY_TOP1
    assert summary["best"]["val/top1"] == max(TRIALS[BEST_TRIAL][1])
    # both say which rule: compare.py's title (above), the sweep's summary and its printed table
    rule = compare.ranking_rule("val/top1", "max")
    assert rule in out.splitlines()[0] and on_disk["ranking"] == rule and rule in printed
    assert compare.score_column("val/top1") in results[0]


def test_sweep_ranking_is_one_function():
    """The sweep's summary and compare.py rank with `tracking.compare.trial_score` (best value, in the mode)."""
    pytest.importorskip("ray")
    from action_launch.sweeps import run as sweep_run

    assert compare.trial_score([0.31, 0.66, 0.58], "max") == 0.66
    assert compare.trial_score([0.9, 0.7, float("nan"), 0.8], "min") == 0.7
    assert compare.trial_score([None, float("nan")], "max") is None
    assert sweep_run.trial_score is compare.trial_score


def test_sweep_view_for_the_mlflow_ui(store, tmp_path, capsys):
    """compare.py --parent stores the sweep's runs-table view on the experiment (the columns the README's
    screenshot shows: metric, epoch, costs, stop reason, swept params; trials sorted by the metric) and
    prints the URL that opens it; the function the sweep itself calls at its end does the same by run id."""
    from mlflow.tracking import MlflowClient

    uri, parent, _ = store
    code, out, err = compare_main(
        capsys, "--experiment", EXPERIMENT, "--parent", SWEEP, "--tracking-uri", uri, "--out", str(tmp_path)
    )
    assert code == 0, err
    key = compare.view_key(SWEEP)
    assert "/#/experiments/" in out and f"/runs?viewStateShareKey={key}" in out.splitlines()[-1]
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    state = json.loads(exp.tags[f"mlflow.sharedViewState.{key}"])
    assert state["orderByKey"] == "metrics.`val/top1`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:5] == [
        "metrics.`val/top1`",
        "metrics.`epoch`",
        "metrics.`cost/clip_frames`",
        "metrics.`cost/wall_s`",
        "tags.`sweep.stop_reason`",
    ]
    assert state["selectedColumns"][5:] == [f"params.`{k}`" for k in SPACE]
    assert state["columnOrder"] == ["attributes.`Run Name`", *state["selectedColumns"]]

    MlflowClient(uri).delete_experiment_tag(exp.experiment_id, f"mlflow.sharedViewState.{key}")
    assert compare.share_sweep_view(uri, EXPERIMENT, parent, "val/loss", "min") == key
    state = compare.tq.shared_view(uri, exp.experiment_id, key)
    assert state["orderByKey"] == "metrics.`val/loss`" and state["orderByAsc"] is True


def test_trial_wall_time_reaches_its_mlflow_run(tmp_path, capsys):
    """The sweep's driver puts each trial's wall time (`cost/wall_s`, reported to Tune at each validation) on
    the MLflow run train.py opened in the trial folder, at the reported steps, and only once: summarising
    again (as a resumed sweep does) adds no point. compare.py shows it in the sweep's wall_s column."""
    pytest.importorskip("ray")
    from mlflow.tracking import MlflowClient

    from action_launch.sweeps import run as sweep_run
    from action_launch.sweeps.plan import SweepRequest, make_plan
    from action_launch.sweeps.trial import TrialSetup
    from action_launch.tracking.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = make_plan(
        SweepRequest(
            config="configs/demo.yaml",
            sweep=_sweep_file(tmp_path),
            overrides=[
                f"output_dir={tmp_path / 'runs'}",
                f"experiment={EXPERIMENT}",
                "model.name=timesformer_tiny",
                "train.epochs=4",
                f"tracking.uri={uri}",
            ],
            name="walls",
            scheduler="asha",
        )
    )
    parent = Tracker(plan.sweep_dir, uri, EXPERIMENT, "walls")
    parent.start(
        {"sweep.metric": "val/top1", "sweep.mode": "max", **{f"space.{k}": v for k, v in SPACE.items()}},
        {"sweep.role": "parent", "sweep.name": "walls"},
    )
    grid = []
    for trial_id in ("t_00000", "t_00001"):
        overrides, top1, reason = TRIALS[trial_id]
        run = Tracker(plan.sweep_dir / trial_id, uri, EXPERIMENT, f"walls/{trial_id}")  # as train.py opens it
        run.start(overrides, {"mlflow.parentRunId": parent.run_id, "sweep.name": "walls", "sweep.trial_id": trial_id})
        for epoch, acc in enumerate(top1, 1):
            run.log_metrics({"val/top1": acc, "epoch": epoch}, 10 * epoch)
        run.finish("FINISHED")
        grid.append(_Result(tmp_path / "ray" / trial_id, trial_id, overrides, top1, reason))
    setup = TrialSetup(
        config=None,
        overrides=[],
        sweep_dir=str(plan.sweep_dir),
        output_dir=str(tmp_path / "runs"),
        experiment=EXPERIMENT,
        sweep_name="walls",
        tracking_uri=uri,
        parent_run_id=parent.run_id,
    )
    for _ in range(2):  # the sweep, then its resume
        sweep_run.summarise(grid, plan, parent, setup)
    printed = capsys.readouterr().out
    assert f"viewStateShareKey={compare.view_key('walls')}" in printed  # the sweep's view, printed at its end

    client = MlflowClient(uri)
    runs = {
        r.data.tags["sweep.trial_id"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`sweep.trial_id` != ''"
        )
    }
    walls = {
        t: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "cost/wall_s")] for t, r in runs.items()
    }
    assert walls == {"t_00000": [(10, 52.0), (20, 104.0), (30, 156.0), (40, 208.0)], "t_00001": [(10, 26.0)]}
    assert runs["t_00000"].info.status == "FINISHED" and runs["t_00001"].info.status == "KILLED"  # ASHA's stop
    code, out, err = compare_main(
        capsys,
        "--experiment",
        EXPERIMENT,
        "--parent",
        "walls",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "compare"),
    )
    assert code == 0, err
    rows = {r.split()[0]: r for r in table_lines(out)}
    assert "3m28s" in rows["t_00000"] and "26s" in rows["t_00001"]


def test_experiment_table_and_view_leave_out_evaluations(tmp_path, capsys):
    """The runs of an experiment whose first run has an evaluation nested under it (as test.py logs one): the table
    lists the training runs only, and the experiment's runs view (printed URL) gets the table's columns."""
    from helpers.mlflow_runs import RUNS, RUNS_EXPERIMENT, build_runs_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluation = build_runs_store(uri, (tmp_path / "mlartifacts").as_uri())
    code, out, err = compare_main(
        capsys, "--experiment", RUNS_EXPERIMENT, "--tracking-uri", uri, "--params", "optim.lr", "--out", str(tmp_path)
    )
    assert code == 0, err
    assert sorted(r.split()[0] for r in table_lines(out)) == sorted(RUNS) and evaluation not in out
    assert out.splitlines()[-1].endswith(f"/runs?viewStateShareKey={compare.RUNS_VIEW}")
    exp_id = compare.tq.experiment_id(uri, RUNS_EXPERIMENT)
    state = compare.tq.shared_view(uri, exp_id, compare.RUNS_VIEW)
    assert state["selectedColumns"] == [
        "metrics.`best/val/top1`",
        "metrics.`val/top1`",
        "metrics.`epoch`",
        "attributes.`Duration`",
        "params.`optim.lr`",
    ]
