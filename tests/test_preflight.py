"""Errors a run can know before it starts: one line, exit code 2, before DeepSpeed, MLflow or Slurm is touched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import REPO, run_train, tiny_overrides


def _cmd(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["launch/train.py", "launch/submit.py"])
@pytest.mark.parametrize(
    "problem, expected",
    [
        (["data.root=/nonexistent/clips"], "data.root=/nonexistent/clips: no such folder"),
        (["model.num_classes=2"], "model.num_classes=2, but the lists of data.root="),
        (["data.train_list=missing.txt"], "data.train_list=missing.txt: list file not found"),
        (["data.crop_size=40"], "data.crop_size=40 is larger than data.test_short_side=32"),
        (
            ["data.short_video=clamp", "data.sampling_rate=32"],
            "data.num_frames=4 x data.sampling_rate=32 (at "
            "data.target_fps=30): a clip spans 128 frames, more than every video of ",
        ),
    ],
)
def test_a_run_that_cannot_start_says_why_in_one_line(video_set, tmp_path, script, problem, expected):
    start = time.time()
    local = ["--local"] if script.endswith("submit.py") else []
    proc = _cmd(script, *tiny_overrides(video_set, tmp_path), *problem, *local)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        proc.stderr[-2000:]
    )
    assert time.time() - start < 60 and not (tmp_path / "tests").exists()  # nothing started, nothing written


def test_a_missing_resume_from_is_one_line(video_set, tmp_path):
    proc = _cmd("launch/train.py", *tiny_overrides(video_set, tmp_path), "--resume-from", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --resume-from {tmp_path / 'nope'}: not a complete checkpoint folder (no meta.json); give a folder "
        f"runs/<experiment>/<name>/checkpoints/step_N"
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_a_finished_run_says_so_and_every_run_ends_with_a_summary(video_set, tmp_path):
    args = [*tiny_overrides(video_set, tmp_path), "train.epochs=1", "train.max_steps_per_epoch=2"]
    first = run_train(args)
    run_dir = tmp_path / "tests" / "run"
    assert f"run {run_dir}: 1 of 1 epochs" in first.stdout and "best val/top1" in first.stdout
    assert "compare runs: python launch/compare.py --experiment tests" in first.stdout
    said = first.stdout + first.stderr  # a start says what the run does, not what its libraries did
    assert "Setting accelerator to CPU" not in said and "built successfully" not in said and " gcc " not in said
    assert "torch threads " in said
    again = run_train(args)
    assert f"{run_dir} is already complete (1 of 1 epochs): nothing to train" in again.stdout + again.stderr
    assert "1 of 1 epochs done" in again.stdout + again.stderr  # the resume line no longer says epoch 2


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_a_trained_runs_config_never_changes(video_set, tmp_path):
    """A rerun of a trained run with another config is refused in one line naming the keys and the ways out; a
    continuation key (train.epochs) is accepted and recorded, not written into config.yaml; --restart keeps the
    trained folder beside the new one."""
    from mlflow.tracking import MlflowClient

    args = [*tiny_overrides(video_set, tmp_path), "train.epochs=1", "train.max_steps_per_epoch=2"]
    run_train(args)
    run_dir = tmp_path / "tests" / "run"
    saved = (run_dir / "config.yaml").read_text()
    for change, said in (
        (["optim.lr=0.0001"], "optim.lr: 0.002 -> 0.0001"),
        (
            ["model.num_classes=5", "optim.schedule=cosine"],
            "model.num_classes: 4 -> 5, optim.schedule: constant -> cosine",
        ),
    ):
        proc = _cmd("launch/train.py", *args, *change)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"error: {run_dir} has trained with another config ({said}) and its config.yaml never changes: start a "
            f"new run with name=<new name>, continue this one with the change on the record with --amend-config, or "
            f"start it over with --restart (the trained folder is kept beside it)"
        ], proc.stderr[-2000:]
        assert (run_dir / "config.yaml").read_text() == saved
    longer = run_train([*args, "train.epochs=2"])  # a continuation: trains on
    assert "this start changes train.epochs: 1 -> 2" in longer.stdout + longer.stderr
    assert "2 of 2 epochs" in longer.stdout and (run_dir / "config.yaml").read_text() == saved
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.params["train.epochs"] == "1" and run.data.tags["changed.train.epochs"] == "2"
    over = run_train([*args, "optim.lr=0.0001", "--restart"])
    assert f"--restart: {run_dir} kept as {run_dir}.replaced-1; the run starts over" in over.stdout
    assert (run_dir.parent / "run.replaced-1" / "config.yaml").read_text() == saved
    assert "lr: 0.0001" in (run_dir / "config.yaml").read_text() and "1 of 1 epochs" in over.stdout
