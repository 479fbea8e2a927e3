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
@pytest.mark.parametrize("problem, expected", [
    (["data.root=/nonexistent/clips"], "data.root=/nonexistent/clips: no such folder"),
    (["model.num_classes=2"], "model.num_classes=2, but the lists of data.root="),
    (["data.train_list=missing.txt"], "data.train_list=missing.txt: list file not found"),
    (["data.crop_size=40"], "data.crop_size=40 is larger than data.test_short_side=32"),
    (["data.short_video=clamp", "data.sampling_rate=32"], "data.num_frames=4 x data.sampling_rate=32 (at "
     "data.target_fps=30): a clip spans 128 frames, more than every video of "),
])
def test_a_run_that_cannot_start_says_why_in_one_line(video_set, tmp_path, script, problem, expected):
    start = time.time()
    local = ["--local"] if script.endswith("submit.py") else []
    proc = _cmd(script, *tiny_overrides(video_set, tmp_path), *problem, *local)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], \
        proc.stderr[-2000:]
    assert time.time() - start < 60 and not (tmp_path / "tests").exists()  # nothing started, nothing written


def test_a_missing_resume_from_is_one_line(video_set, tmp_path):
    proc = _cmd("launch/train.py", *tiny_overrides(video_set, tmp_path), "--resume-from", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --resume-from {tmp_path / 'nope'}: not a complete checkpoint folder (no meta.json); give a folder "
        f"runs/<experiment>/<name>/checkpoints/step_N"]


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
