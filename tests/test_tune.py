"""Ray Tune sweeps for real: a Ray runtime on 127.0.0.1, trials that train the tiny TimeSformer with
DeepSpeed, an `mlflow server` started by tune.py, ASHA stopping trials, a retried-then-errored trial,
and a sweep killed halfway then resumed."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import EPOCH_VALIDATION, REPO, still_running, tiny_overrides

from action_launch.common.processes import descendants, start_time
from action_launch.sweeps.spec import SweepError, load_sweep, parse_sweep, trial_overrides
from action_launch.sweeps.trial import trial_cost

TINY = str(REPO / "configs" / "timesformer" / "tiny.yaml")


def write_sweep(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tune_cmd(sweep: Path, data: Path, out: Path, *flags: str, epochs: int = 2) -> list:
    overrides = [o for o in tiny_overrides(data, out) if not o.startswith(("data.num_workers", "train.epochs"))]
    return [
        sys.executable,
        "launch/tune.py",
        "--config",
        TINY,
        "--sweep",
        str(sweep),
        *flags,
        *overrides,
        "data.num_workers=0",
        "train.log_every_steps=2",
        f"train.epochs={epochs}",
    ]


def run_tune(cmd: list, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"tune.py failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def mlflow_runs(store: Path, experiment: str = "tests"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


# ------------------------------------------------------------------------------------- sweep file
def test_sweep_file_entries_and_errors(tmp_path):
    spec = load_sweep(REPO / "configs" / "sweeps" / "frames_sampling_lr.yaml")
    assert spec.metric == "val/top1" and spec.mode == "max" and spec.grid_size() * spec.num_samples == 9
    assert set(spec.swept_keys()) >= {
        "data.num_frames",
        "data.sampling_rate",
        "optim.lr",
        "optim.lr_scaling",
        "train.micro_batch_size",
    }
    joint = parse_sweep(
        {
            "space": {
                "data.num_frames,data.sampling_rate": {"grid": [[8, 8], [32, 2]]},
                "optim.warmup_epochs": {"depends_on": "data.num_frames", "cases": {8: 1}, "default": 0},
            }
        }
    )
    assert joint.grid_size() * joint.num_samples == 2
    assert trial_overrides({"data.num_frames,data.sampling_rate": [32, 2], "optim.lr": 0.001}) == [
        "data.num_frames=32",
        "data.sampling_rate=2",
        "optim.lr=0.001",
    ]
    bad = [
        ({"space": {"optim.lr": {"loguniform": [0, 1]}}}, "space.optim.lr: loguniform needs positive bounds"),
        ({"space": {"optim.lr": {"between": [1, 2]}}}, "expected exactly one of"),
        ({"space": {"a,b": {"grid": [[1, 2], [3]]}}}, "list of 2 values"),
        ({"space": {"model.num_frames": {"same_as": "data.num_frames"}}}, "does not set"),
        ({"space": {"optim.lr": [1]}, "mode": "up"}, r"mode: expected one of 'max', 'min', got 'up' \(in sweep\)"),
        ({"space": {"optim.lr": [1]}, "pbt": {"mutate": ["optim.momentum"]}}, "not an entry of space"),
        ({"space": {"optim.lr": [1]}, "seed": "x"}, "seed: expected int, got 'x'"),
        ({"space": {"optim.lr": [1]}, "seed": -1}, "seed: expected a value >= 0, got -1"),
        ({"space": {"optim.lr": [1]}, "num_samples": 0}, "num_samples: expected a value >= 1, got 0"),
    ]
    for raw, message in bad:
        with pytest.raises(SweepError, match=message):
            parse_sweep(raw)


def test_a_trial_names_its_mlflow_run_by_its_folder_whatever_the_base_config_says(tmp_path):
    """A base config may carry a run name of its own (e.g. an array task's config.yaml): each trial's run is still
    `<sweep>/<trial id>`, not one name shared by every trial."""
    from action_launch.config import load_config
    from action_launch.sweeps.trial import TrialSetup, training_command

    base = tmp_path / "base.yaml"
    base.write_text("tracking:\n  run_name: grid/optim.lr=0.1\n")
    setup = TrialSetup(str(base), [], str(tmp_path / "sw"), str(tmp_path), "tests", "sw")
    cmd = training_command(setup, {"optim.lr": 0.01}, "t1")
    overrides = cmd[cmd.index("--config") + 2 :]
    assert load_config(str(base), overrides).run_name() == "sw/t1"


def test_a_trial_s_cost_counts_the_clips_the_engine_trained_for_every_kind():
    """`cost/clips` is the checkpoint's own count (with keep_effective_batch, config.yaml's grad_accum is not what
    ran); a skeleton trial, whose data section has no num_frames, costs clips and no clip frames."""
    meta = {"step": 3, "samples": 96}
    assert trial_cost(meta, {"dataset": "video", "num_frames": 8}) == {"cost/clips": 96.0, "cost/clip_frames": 768.0}
    assert trial_cost(meta, {"dataset": "skeleton", "window_size": 64}) == {"cost/clips": 96.0}


def test_seeded_sweep_draws_the_same_trials():
    from ray.tune.experiment import Experiment

    from action_launch.sweeps.run import param_space, search_algorithm

    def draws(seed, max_concurrent=0):
        spec = parse_sweep(
            {
                "seed": seed,
                "num_samples": 2,
                "space": {
                    "data.num_frames": {"grid": [4, 8]},
                    "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                    "optim.lr_scaling": {"choice": ["linear", "sqrt", "none"]},
                },
            }
        )
        generator = search_algorithm(spec, max_concurrent)
        generator.add_configurations(
            [Experiment("draws", lambda config: None, config=param_space(spec), num_samples=spec.num_samples)]
        )
        configs = []
        while (trial := generator.next_trial()) is not None:
            configs.append(trial.config)
        return configs

    first = draws(7)
    assert len(first) == 4 and [c["data.num_frames"] for c in first] == [4, 8, 4, 8]
    assert draws(7) == first
    assert [c["optim.lr"] for c in draws(8)] != [c["optim.lr"] for c in first]
    assert draws(7, max_concurrent=2) == first[:2]  # no more trials until one of the running two ends


def test_unknown_swept_key_fails_before_anything_starts(tmp_path, video_set):
    sweep = write_sweep(tmp_path / "s.yaml", {"space": {"optim.lrr": {"grid": [0.1, 0.2]}}})
    proc = subprocess.run(
        tune_cmd(sweep, video_set, tmp_path / "runs"), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "optim.lrr" in proc.stderr and "did you mean optim.lr" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_plan(tmp_path, video_set):
    proc = subprocess.run(
        tune_cmd(REPO / "configs" / "sweeps" / "frames_sampling_lr.yaml", video_set, tmp_path / "runs", "--dry-run"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "9 trials" in proc.stdout and "data.num_frames: grid [4, 8, 16]" in proc.stdout
    assert not (tmp_path / "runs").exists()
    slurm = subprocess.run(
        tune_cmd(
            REPO / "configs" / "sweeps" / "frames_sampling_lr.yaml",
            video_set,
            tmp_path / "runs",
            "--dry-run",
            "--slurm",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert slurm.returncode == 0, slurm.stderr
    assert "#SBATCH --nodes=4" in slurm.stdout and "#SBATCH --gpus-per-node=8" in slurm.stdout
    assert "#SBATCH --ntasks-per-node=1" in slurm.stdout and "submitted" not in slurm.stdout


# ------------------------------------------------------------------------------------ ASHA sweep
ASHA_TRIALS = 7


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, video_set, deepspeed_ready):
    """7 trials (one cannot fill a batch and errors), ASHA on val/loss, 3 epochs, 2 at a time. The 8-frame trial's
    400-class head starts at a loss of ln 400 ~ 6 (the others' at ln 4 ~ 1.4) and starts after four trials ended:
    ASHA stops it at epoch 1 every time. (Which of the others it stops depends on their drawn lr.)"""
    root = tmp_path_factory.mktemp("asha")
    sweep = write_sweep(
        root / "asha.yaml",
        {
            "metric": "val/loss",
            "mode": "min",
            "space": {
                "data.num_frames,train.micro_batch_size,model.num_classes": {
                    "grid": [[2, 8, 4], [3, 8, 4], [4, 8, 4], [5, 8, 4], [6, 8, 4], [8, 8, 400], [4, 1000, 4]]
                },
                "optim.lr": {"loguniform": [5.0e-4, 5.0e-3]},
            },
            "asha": {"grace_period": 1, "reduction_factor": 3},
        },
    )
    proc = run_tune(
        tune_cmd(
            sweep, video_set, root / "runs", "--name", "asha", "--max-concurrent", "2", "--max-failures", "1", epochs=3
        )
    )
    return root, proc


@pytest.mark.slow
def test_asha_sweep_trials_and_stop_reasons(asha_sweep):
    root, proc = asha_sweep
    sweep_dir = root / "runs" / "tests" / "asha"
    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    assert len(rows) == ASHA_TRIALS
    reasons = [r["stop_reason"] for r in rows]
    assert sum(r.startswith("errored") for r in reasons) == 1
    assert any(r.startswith("stopped by asha at epoch") for r in reasons), reasons
    (hopeless,) = [r for r in rows if r["model.num_classes"] == "400"]
    assert hopeless["stop_reason"] == "stopped by asha at epoch 1", rows
    assert any(r == "completed" for r in reasons), reasons
    for row in rows:
        if row["stop_reason"] == "completed":
            assert row["epoch"] == "3"
            # reported once training exited: its final outputs are written before Tune stops the trial
            assert (sweep_dir / row["trial_id"] / "confusion_matrix.png").exists(), row["trial_id"]
        elif row["stop_reason"].startswith("stopped"):
            assert int(float(row["epoch"])) < 3 and row["stop_reason"].endswith(str(int(float(row["epoch"]))))
    errored = next(r for r in rows if r["stop_reason"].startswith("errored"))
    assert errored["train.micro_batch_size"] == "1000"
    assert "exited with code 1: ValueError:" in errored["stop_reason"]
    assert "cannot fill one optimizer step" in errored["stop_reason"]
    # Retried once from scratch (max_failures=1), then given up: two attempts in its log, sweep went on.
    log = (sweep_dir / errored["trial_id"] / "train.log").read_text()
    assert log.count("cannot fill one optimizer step") == 2
    # Cost: a 4x longer clip costs 4x the clip-frames per epoch.
    done = [r for r in rows if not r["stop_reason"].startswith("errored")]
    per_epoch = {int(r["data.num_frames"]): float(r["cost/clip_frames"]) / float(r["epoch"]) for r in done}
    assert per_epoch[8] == pytest.approx(4 * per_epoch[2])
    for png in ("metric_vs_keys.png", "metric_vs_cost.png"):
        assert (sweep_dir / png).stat().st_size > 5000
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["ranking"] == "best val/loss over each run's validations (min), best first"
    assert summary["best"]["val/loss"] == min(float(r["best val/loss"]) for r in done)
    assert summary["best"]["trial_id"] == rows[0]["trial_id"]


@pytest.mark.slow
def test_asha_sweep_in_mlflow(asha_sweep):
    root, proc = asha_sweep
    client, runs = mlflow_runs(root / "runs" / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == ASHA_TRIALS
    assert parent.data.params["space.optim.lr"] == "loguniform [0.0005, 0.005]"
    assert parent.data.tags["sweep.best_trial"] in {c.data.tags["sweep.trial_id"] for c in children}
    assert "best/val/loss" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "metric_vs_keys.png", "metric_vs_cost.png", "sweep.yaml"} <= artifacts
    statuses = {}
    for child in children:
        reason = child.data.tags["sweep.stop_reason"]
        statuses[reason.split(" ")[0]] = child.info.status
        history = client.get_metric_history(child.info.run_id, "val/loss")
        # the wall time the trial reported with each validation, put on its run by the driver after the sweep
        walls = client.get_metric_history(child.info.run_id, "cost/wall_s")
        assert {m.step for m in walls} <= {m.step for m in history}, reason  # one point per reported validation
        if reason == "completed":
            assert len(history) == len(walls) == 3 and child.info.status == "FINISHED"
        elif reason.startswith("stopped"):
            assert child.info.status == "KILLED" and 1 <= len(history) < 3 and len(walls) >= 1
        else:
            assert child.info.status == "FAILED"
        assert child.data.params["data.num_frames"] in {"2", "3", "4", "5", "6", "8"}
    assert set(statuses) == {"completed", "stopped", "errored:"}
    assert "viewStateShareKey=sweep.asha" in proc.stdout  # the sweep's columns in the MLflow UI, at its end


# ---------------------------------------------------------------------------------- kill + resume
@pytest.mark.slow
def test_sweep_killed_halfway_resumes_without_rerunning(tmp_path, video_set, deepspeed_ready):
    sweep = write_sweep(tmp_path / "fifo.yaml", {"space": {"data.num_frames": {"grid": [2, 3, 4, 6]}}})
    cmd = tune_cmd(
        sweep, video_set, tmp_path / "runs", "--name", "fifo", "--scheduler", "fifo", "--max-concurrent", "1"
    )
    sweep_dir = tmp_path / "runs" / "tests" / "fifo"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    with open(tmp_path / "first.log", "w") as log:  # the child keeps its own copy of the descriptor
        driver = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def finished_trials():
        done = []
        for meta in sweep_dir.glob("*/checkpoints/step_*/meta.json"):
            if json.loads(meta.read_text())["epoch"] == 2:
                done.append(meta.parents[2].name)
        return sorted(set(done))

    deadline = time.time() + 600
    while len(finished_trials()) < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(1)
    time.sleep(3)  # let Tune record the finished trial, as it would before any real interruption
    # Ray, its agents, the mlflow server (a session of its own), the trial
    started = {pid: start_time(pid) for pid in descendants(driver.pid)}
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
    driver.wait()
    # nothing it started survives it: trials by their parent-death signal, the rest through the reapers
    assert not still_running(started), subprocess.run(
        ["ps", "-o", "pid,pgid,args", "-p", ",".join(map(str, started.keys()))], capture_output=True, text=True
    ).stdout
    finished = finished_trials()
    assert 2 <= len(finished) < 4, (tmp_path / "first.log").read_text()[-3000:]
    before = {t: (sweep_dir / t / "train.log").read_text() for t in finished}
    ended = [t for t in finished if (sweep_dir / t / "tune_end.json").exists()]  # Tune ended them before the kill
    # Of those, the ends in Tune's own saved trial statuses: Tune launches a save's copy into the sweep folder only
    # once its previous copy is done, so under load the newest end can be missing there a few seconds later
    from ray.tune import ExperimentAnalysis

    saved = {t.trial_id for t in ExperimentAnalysis(str(sweep_dir / "tune")).trials if t.status == "TERMINATED"}
    assert set(ended) & saved, f"no trial had ended in Tune's saved statuses 3 s after its last checkpoint: {ended}"

    proc = run_tune(cmd + ["--resume"])
    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    assert len(rows) == 4 and all(r["stop_reason"] == "completed" for r in rows), rows
    assert sorted(int(r["data.num_frames"]) for r in rows) == [2, 3, 4, 6]
    for trial in finished:  # finished trials did not train again (at most a process that found the run complete)
        after = (sweep_dir / trial / "train.log").read_text()
        assert len(EPOCH_VALIDATION.findall(after)) == len(EPOCH_VALIDATION.findall(before[trial])) == 2
        assert not re.search(r"epoch \d+/\d+ step", after[len(before[trial]) :])
        if trial in saved:  # and those Tune had saved as ended were not even started again (a start costs ~5 s)
            assert after == before[trial], after[len(before[trial]) :]
        elif trial in ended:  # restarted by Tune, it ended on the record of its end, in one line
            added = after[len(before[trial]) :]
            assert re.fullmatch(
                r"\[tune\] \S+ had ended \(epoch 2\) before the sweep was resumed; not trained again\n", added
            )
    client, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    assert len([r for r in runs if r.data.tags.get("sweep.role") == "parent"]) == 1  # the same parent run
    assert len([r for r in runs if r.data.tags.get("sweep.trial_id")]) == 4  # one run per trial
    assert "resuming the sweep" in proc.stderr + proc.stdout
    # Issue 15, item 1: every run ends, the trials finished before the kill too (their folders named the killed
    # sweep's server; the resumed sweep reaches their store), and a resumed trial's new server is no changed param.
    statuses = {r.data.tags.get("sweep.trial_id", "parent"): r.info.status for r in runs}
    assert set(statuses.values()) == {"FINISHED"}, statuses
    trials = [r for r in runs if r.data.tags.get("sweep.trial_id")]
    assert all(r.data.tags.get("sweep.stop_reason") == "completed" for r in trials)
    assert not [r.data.tags["sweep.trial_id"] for r in trials if "changed.tracking.uri" in r.data.tags]
    for state in [sweep_dir / "tracking" / "state.json", *sweep_dir.glob("*/tracking/state.json")]:
        assert json.loads(state.read_text())["store"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    # a later sync goes to that store: both sweeps' servers are gone by now
    synced = subprocess.run(
        [sys.executable, "launch/track.py", "sync", str(sweep_dir / finished[0])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0 and "sent 0 journal events" in synced.stdout, synced.stderr


@pytest.mark.slow
def test_trial_asha_stopped_does_not_train_again_after_a_kill(tmp_path, video_set, deepspeed_ready):
    """Issue 15, item 4: ASHA stops a trial, the driver is killed about a second later (before Tune's own
    save of trial statuses, every 10 s or more), and `--resume` does not train that trial again. The metric is
    the clip-frames cost (min), so the 4-frame trial is stopped at epoch 1 by the 2-frame trial before it,
    every time; with one trial at a time, the 3-frame trial's folder appears only once that stop is done. The stopped
    trial's process trains on while Tune decides (under 0.1 s; on a loaded machine a test epoch of 0.5 s may pass)."""
    sweep = write_sweep(
        tmp_path / "asha.yaml",
        {
            "metric": "cost/clip_frames",
            "mode": "min",
            "space": {"data.num_frames": {"grid": [2, 4, 3]}},
            "asha": {"grace_period": 1, "reduction_factor": 3},
        },
    )
    cmd = tune_cmd(sweep, video_set, tmp_path / "runs", "--name", "asha_kill", "--max-concurrent", "1", epochs=3)
    sweep_dir = tmp_path / "runs" / "tests" / "asha_kill"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    with open(tmp_path / "first.log", "w") as log:  # the child keeps its own copy of the descriptor
        driver = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def trial_dirs():
        return sorted(p.parent for p in sweep_dir.glob("*/command.txt"))  # Tune's ids end in the grid's order

    deadline = time.time() + 600
    while len(trial_dirs()) < 3 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.1)
    started = {pid: start_time(pid) for pid in descendants(driver.pid)}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert len(trial_dirs()) == 3, (tmp_path / "first.log").read_text()[-3000:]
    assert not still_running(started)
    stopped = trial_dirs()[1]
    before = (stopped / "train.log").read_text()
    validated = len(EPOCH_VALIDATION.findall(before))  # 1, or 2 when training ran on while Tune decided the stop
    assert validated in (1, 2), before[-2000:]

    run_tune(cmd + ["--resume"])
    after = (stopped / "train.log").read_text()
    assert len(EPOCH_VALIDATION.findall(after)) == validated and not re.search(
        r"epoch \d+/\d+ step", after[len(before) :]
    ), after[len(before) :][-3000:]
    rows = {r["trial_id"]: r for r in csv.DictReader((sweep_dir / "results.csv").read_text().splitlines())}
    assert len(rows) == 3 and rows[stopped.name]["stop_reason"] == "stopped by asha at epoch 1", rows
    assert rows[trial_dirs()[0].name]["stop_reason"] == "completed"
    _, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    child = next(r for r in runs if r.data.tags.get("sweep.trial_id") == stopped.name)
    assert child.info.status == "KILLED" and child.data.tags["sweep.stop_reason"] == "stopped by asha at epoch 1"


@pytest.mark.slow
def test_ctrl_c_interrupts_the_sweep_and_resume_completes_it(tmp_path, video_set, deepspeed_ready):
    """Issue 15: SIGINT to a local sweep's process group, as a terminal's Ctrl-C sends it (the driver and the
    Ray processes in its group; a driver signalled alone behaves the same), once a trial has validated epoch 1.
    The sweep says it was interrupted and how to resume (exit 130); trials that were training are `interrupted` (not
    `stopped by asha`: ASHA's only rung here is the last epoch) with their runs and the parent run KILLED; the
    trial waiting for a CPU is `not started`. `--resume` then completes all three."""
    sweep = write_sweep(
        tmp_path / "asha.yaml",
        {"space": {"data.num_frames": {"grid": [2, 3, 4]}}, "asha": {"grace_period": 3, "reduction_factor": 3}},
    )
    cmd = tune_cmd(sweep, video_set, tmp_path / "runs", "--name", "ctrl_c", epochs=3)  # 2 CPUs: 2 trials at once
    sweep_dir = tmp_path / "runs" / "tests" / "ctrl_c"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    driver = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 600
    while (
        time.time() < deadline
        and driver.poll() is None
        and not any(EPOCH_VALIDATION.search(log.read_text()) for log in sweep_dir.glob("*/train.log"))
    ):
        time.sleep(0.2)
    started = {pid: start_time(pid) for pid in descendants(driver.pid)}
    os.killpg(driver.pid, signal.SIGINT)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, f"{out[-3000:]}\n{err[-3000:]}"
    said = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(said) == 1 and "ctrl_c" in said[0] and said[0].endswith("--resume"), err[-3000:]
    assert not still_running(started)

    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    trained = {p.parent.name for p in sweep_dir.glob("*/command.txt")}
    assert len(rows) == 3 and 1 <= len(trained) <= 2, rows
    assert {r["trial_id"]: r["stop_reason"] for r in rows if r["trial_id"] in trained} == dict.fromkeys(
        trained, "interrupted"
    )
    assert [r["stop_reason"] for r in rows if r["trial_id"] not in trained] == ["not started"] * (3 - len(trained))
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["unfinished"] == 3
    _, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    children = {r.data.tags["sweep.trial_id"]: r for r in runs if r.data.tags.get("sweep.trial_id")}
    assert parent.info.status == "KILLED" and set(children) == trained
    assert all(
        c.info.status == "KILLED" and c.data.tags["sweep.stop_reason"] == "interrupted" for c in children.values()
    )

    run_tune(cmd + ["--resume"])
    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    assert [r["stop_reason"] for r in rows] == ["completed"] * 3, rows
    _, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 4  # the same parent, one run per trial


# ---------------------------------------------------------------------------------------------- PBT
@pytest.mark.slow
def test_pbt_exploits_a_checkpoint_with_a_perturbed_lr(tmp_path, video_set, deepspeed_ready):
    """Two trials, perturbation every epoch: the worse one continues from the better one's checkpoint with a
    mutated LR, which its optimizer then really uses (the LR in the checkpoint does not win)."""
    sweep = write_sweep(
        tmp_path / "pbt.yaml",
        {
            "metric": "val/loss",
            "mode": "min",
            "num_samples": 2,
            "space": {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
            # synch: every perturbation waits for both trials, so the worse one always exploits (asynchronous PBT
            # does nothing while only one trial has a score, e.g. when the other starts late on a loaded machine)
            "pbt": {"perturbation_interval": 1, "quantile_fraction": 0.5, "resample_probability": 1.0, "synch": True},
        },
    )
    run_tune(
        tune_cmd(
            sweep,
            video_set,
            tmp_path / "runs",
            "--name",
            "pbt",
            "--scheduler",
            "pbt",
            "--max-concurrent",
            "2",
            epochs=3,
        )
        + ["optim.schedule=constant"]
    )
    sweep_dir = tmp_path / "runs" / "tests" / "pbt"
    exploited = [log.parent for log in sorted(sweep_dir.glob("*/train.log")) if "(PBT exploit)" in log.read_text()]
    assert exploited, "no trial was restarted from another trial's checkpoint"
    # a trial can also be exploited after its last epoch (synchronous PBT waits for both at every
    # interval, the last included): it then has nothing left to train; check one that trained on
    after_exploit = {t: (t / "train.log").read_text().split("(PBT exploit)", 1)[1] for t in exploited}
    trained_on = [t for t in exploited if "resumed from" in after_exploit[t]]
    assert trained_on, f"no exploited trial trained after the exploit: {[t.name for t in exploited]}"
    trial = trained_on[0]
    assert "Error" not in after_exploit[trial]
    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    assert sorted(r["trial_id"] for r in rows) == sorted(p.parent.name for p in sweep_dir.glob("*/train.log"))
    client, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    child = next(r for r in runs if r.data.tags.get("sweep.trial_id") == trial.name)
    # The LRs this trial was given: its first (MLflow keeps a param's first value), then the mutated one of
    # each exploit (Ray's PBT policy log: [.., .., .., .., donor's config, new config]).
    policy = [
        json.loads(line) for line in (sweep_dir / "tune" / f"pbt_policy_{trial.name}.txt").read_text().splitlines()
    ]
    given = [float(child.data.params["optim.lr"])] + [entry[5]["optim.lr"] for entry in policy]
    assert "changed.optim.lr" in child.data.tags  # the run's LR changed mid-way, on the record
    # The optimizer ran at the LRs it was given, the mutated ones included (constant schedule, linear rule,
    # batch = base batch), not at the LR saved in the donor's checkpoint.
    used = {round(m.value, 12) for m in client.get_metric_history(child.info.run_id, "train/lr")}
    assert len(used) >= 2
    assert used <= {round(lr, 12) for lr in given}, (used, given)
    # Issue 15: no abandoned branch in MLflow. A PBT trial trains one interval per process (train.py
    # --until-epoch), so nothing is trained past the point where it may take the donor's checkpoint: one value
    # per step and metric (the trained-ahead steps were logged twice, once per branch)
    for run in (r for r in runs if r.data.tags.get("sweep.trial_id")):
        for key in ("train/lr", "train/loss", "val/loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["sweep.trial_id"], key, sorted(steps))
    assert "paused after epoch 1 of 3" in (trial / "train.log").read_text()


@pytest.mark.slow
def test_a_trial_with_two_workers_is_one_two_process_run(tmp_path, video_set, deepspeed_ready):
    """--workers-per-trial 2: the trial trains under torchrun with world size 2 inside its Ray trial."""
    sweep = write_sweep(tmp_path / "w.yaml", {"space": {"data.num_frames": {"grid": [4]}}})
    run_tune(
        tune_cmd(
            sweep,
            video_set,
            tmp_path / "runs",
            "--name",
            "w2",
            "--scheduler",
            "fifo",
            "--workers-per-trial",
            "2",
            "--cpus-per-trial",
            "2",
            epochs=1,
        )
    )
    client, runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    child = next(r for r in runs if r.data.tags.get("sweep.trial_id"))
    assert child.data.tags["world_size"] == "2" and child.data.tags["sweep.stop_reason"] == "completed"
    assert child.data.params["optim.effective_batch_size"] == "16"  # micro 8 x 2 processes
    assert "torch.distributed.run" in next((tmp_path / "runs" / "tests" / "w2").glob("*/command.txt")).read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_the_sweep_in_the_mlflow_ui(asha_sweep, tmp_path):
    """The real ASHA sweep's runs table in headless Chromium against an `mlflow server` started here: every
    trial with its stop reason. With UPDATE_SCREENSHOTS=1 this writes the README's screenshot."""
    from test_mlflow_ui import SCREENSHOT, runs_table

    root, _ = asha_sweep
    client, runs = mlflow_runs(root / "runs" / "mlflow.db")
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    dom, png = runs_table(f"sqlite:///{root / 'runs' / 'mlflow.db'}", "tests", parent.info.run_id, tmp_path)
    for child in children:
        assert child.info.run_name in dom
        assert child.data.tags["sweep.stop_reason"][:25] in dom
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(png, SCREENSHOT)
