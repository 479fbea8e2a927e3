"""A run's times in MLflow say when it trained: a rerun that trains nothing leaves its run alone, and each
evaluation of one of its checkpoints (test.py, train.py --test-best) is an MLflow run of its own, nested under it.
Real MLflow (a SQLite store), real training for the end-to-end case."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, run_train, tiny_overrides

from action_launch.config import dump_config, load_config
from action_launch.evaluation import evaluate as ev
from action_launch.tracking.tracker import (
    EVALUATED_TAG,
    LATEST_EVALUATION_TAG,
    PARENT_TAG,
    Tracker,
    evaluation_folders,
    sync,
)
from action_launch.training import checkpoint as ckpt


def _runs(uri: str, experiment: str = "tests") -> list:
    """The experiment's runs, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time ASC"])


def _named(runs: list, name: str):
    (run,) = [r for r in runs if r.info.run_name == name]
    return run


def _times(run) -> tuple:
    return run.info.status, run.info.start_time, run.info.end_time


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_a_rerun_and_evaluations_leave_the_training_run_times_alone(video_set, tmp_path):
    args = [*tiny_overrides(video_set, tmp_path), "train.epochs=1"]
    first = run_train(args)
    uri, run_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "tests" / "run"
    trained = _named(_runs(uri), "run")
    assert trained.info.status == "FINISHED" and "best/val/top1" in trained.data.metrics
    assert "viewStateShareKey=runs" in first.stdout  # the summary's link opens the experiment's runs view
    journal = (run_dir / "tracking" / "journal.jsonl").read_text()

    time.sleep(1.1)  # a moved end time would show
    again = run_train([*args, "--test-best"])  # nothing to train, then an evaluation of the best checkpoint
    assert "nothing to train" in again.stdout + again.stderr
    before = time.time() * 1000
    run_train(["--checkpoint", str(run_dir), "data.num_workers=0"], script="launch/test.py")
    after = time.time() * 1000

    runs = _runs(uri)
    assert _times(_named(runs, "run")) == _times(trained)  # status, start and end as training left them
    assert (run_dir / "tracking" / "journal.jsonl").read_text().startswith(journal)
    evaluations = [r for r in runs if r.data.tags.get(PARENT_TAG) == trained.info.run_id]
    assert len(evaluations) == 2 and len(runs) == 3 and len(evaluation_folders(run_dir)) == 2
    for evaluation in evaluations:
        assert evaluation.info.status == "FINISHED" and evaluation.info.end_time >= evaluation.info.start_time
        assert evaluation.data.tags[EVALUATED_TAG].startswith(str(run_dir / "checkpoints"))
        assert "test/top1" in evaluation.data.metrics and not any(k.startswith("test/") for k in trained.data.metrics)
    assert before <= evaluations[1].info.start_time <= evaluations[1].info.end_time <= after
    assert _named(runs, "run").data.tags[LATEST_EVALUATION_TAG] == evaluations[1].info.run_id

    # a process that died after its last checkpoint, before it closed its run: a rerun closes it (no run left RUNNING)
    from mlflow.tracking import MlflowClient

    path = run_dir / "tracking" / "journal.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("".join(f"{line}\n" for line in lines if json.loads(line)["kind"] != "end"))
    MlflowClient(uri).update_run(trained.info.run_id, status="RUNNING")
    closing = run_train(args)
    assert "nothing to train" not in closing.stdout + closing.stderr
    assert (
        _named(_runs(uri), "run").info.status == "FINISHED"
        and json.loads(path.read_text().splitlines()[-1])["kind"] == "end"
    )


def _trained_folder(tmp_path: Path, uri: str):
    """A run folder with one checkpoint of a 1x1 linear model and an ended MLflow run (tracking through `uri`)."""
    cfg = load_config(
        None, [f"output_dir={tmp_path}", "experiment=tests", "name=run", "data.num_workers=0", "tracking.enabled=true"]
    )
    folder = cfg.run_dir() / "checkpoints" / ckpt.tag_for(3)
    folder.mkdir(parents=True)
    torch.save({"module": torch.nn.Linear(1, 1).state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": 3}))
    training = Tracker(cfg.run_dir(), uri, "tests", "run")
    training.start({"optim.lr": 0.1}, {})
    training.finish("FINISHED")
    return cfg, folder


def test_an_evaluation_kept_offline_is_synced_nested_under_its_training_run(tmp_path, monkeypatch):
    """Both the training run and its evaluation journalled while the server was down: `sync` creates the training
    run, then the evaluation's run, nested under it."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    down = f"http://127.0.0.1:{free_port()}"
    cfg, folder = _trained_folder(tmp_path, down)
    result = ev.Evaluation({"top1": 50.0}, {"test.views": "1"}, [])
    ev._track_checkpoint(cfg, cfg.run_dir(), folder, 3, result)
    (evaluation,) = evaluation_folders(cfg.run_dir())
    assert not json.loads((cfg.run_dir() / evaluation / "state.json").read_text()).get("run_id")

    assert sync(cfg.run_dir(), store) > 0
    runs = _runs(store)
    training, tested = _named(runs, "run"), _named(runs, f"run test {folder.name}")
    assert tested.data.tags[PARENT_TAG] == training.info.run_id and tested.data.metrics["test/top1"] == 50.0
    assert tested.info.status == training.info.status == "FINISHED"
    assert sync(cfg.run_dir(), store) == 0  # nothing left to send, nothing reopened
