"""Resuming on another world size or ZeRO stage ("many processes give what one gives"): a checkpoint saved by 2
processes continues on 1 (a job requeued on fewer nodes), one saved by 1 on 2; real gloo processes under torchrun.

The runs train the tiny TimeSformer (the tiny TSM where BatchNorm matters) on `video_set` (48 clips) for one
epoch under a cosine schedule with half an epoch of warmup, so the LR differs at every step. What is checked: ZeRO
partitions are converted (or the resume refused in one line, exit 2), the epoch continues after the clips it used,
and the LR at each step after the resume is the schedule's at the epoch the clips reached, scaled for the new
effective batch, as an uninterrupted run has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import REPO, final_weights, free_port, run_train, tiny_overrides

SCHEDULE = ["optim.schedule=cosine", "optim.warmup_epochs=0.5", "train.epochs=1", "train.micro_batch_size=4"]


def torchrun(args: List[str], script: str = "launch/train.py", nproc: int = 2):
    """`script` under torchrun, `nproc` gloo processes on this machine."""
    return run_train(
        ["torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()), script, *args],
        script="-m",
    )


def stopped(overrides: List[str], after_step: int, nproc: int) -> Path:
    """A run stopped (as by a preemption) after optimizer step `after_step`; returns that step's checkpoint."""
    args = ["--config", "configs/demo.yaml", "--stop-after-step", str(after_step), *overrides]
    if nproc == 1:
        run_train(args, script="tests/helpers/faulty_train.py")
    else:
        torchrun(args, script="tests/helpers/faulty_train.py", nproc=nproc)
    out = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")))
    return out / "tests" / "run" / "checkpoints" / f"step_{after_step:08d}"


def lr_points(run_dir: Path) -> Dict[int, Dict[str, float]]:
    """The journal's training metrics by optimizer step."""
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    return {e["step"]: e["values"] for e in events if e["kind"] == "metrics" and "train/lr" in e["values"]}


def scheduled_lr(overrides: List[str], epoch: float, effective_batch: int) -> float:
    """The LR the configured schedule gives at fractional `epoch` for `effective_batch` clips per step."""
    from action_launch.config import load_config
    from action_launch.training.schedule import lr_at, scale_lrs

    cfg = load_config(str(REPO / "configs/demo.yaml"), overrides)
    return lr_at(epoch, cfg.optim, scale_lrs(cfg.optim, effective_batch), cfg.train.epochs)


def error_lines(stderr: str) -> List[str]:
    """The `error: ...` lines a command printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


KEEP_EVERY_STEP = ["checkpoint.every_steps=1", "checkpoint.keep_last=20"]


def checkpoint_of(run_dir: Path, step: int) -> Path:
    """The checkpoint a run saved after optimizer step `step`."""
    return run_dir / "checkpoints" / f"step_{step:08d}"


@pytest.fixture(scope="module")
def two_processes(video_set, tmp_path_factory) -> Path:
    """An uninterrupted ZeRO-0 run on 2 processes (micro batch 4: effective batch 8, 6 steps), checkpoints each step."""
    out = tmp_path_factory.mktemp("two")
    torchrun(["--config", "configs/demo.yaml", *tiny_overrides(video_set, out), *SCHEDULE, *KEEP_EVERY_STEP])
    return out / "tests" / "run"


@pytest.fixture(scope="module")
def one_process(video_set, tmp_path_factory) -> Path:
    """An uninterrupted ZeRO-0 run on 1 process (micro batch 4: effective batch 4, 12 steps), a checkpoint each step."""
    out = tmp_path_factory.mktemp("one")
    run_train(["--config", "configs/demo.yaml", *tiny_overrides(video_set, out), *SCHEDULE, *KEEP_EVERY_STEP])
    return out / "tests" / "run"


@pytest.fixture(scope="module")
def zero1_on_two(video_set, tmp_path_factory) -> Path:
    """The checkpoint after optimizer step 3 of 6 (24 of 48 clips) of a ZeRO-1 run on 2 processes, saved by a stop."""
    out = tmp_path_factory.mktemp("zero1")
    return stopped([*tiny_overrides(video_set, out), *SCHEDULE, "train.zero_stage=1"], 3, nproc=2)


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_zero1_saved_by_two_processes_resumes_on_one_as_two_would_have_trained(
    video_set, tmp_path, zero1_on_two, two_processes
):
    """Same effective batch (4 x accumulation 2 x 1 = 4 x 2): the ZeRO-1 partitions are converted in one log line, and
    the resumed run trains the uninterrupted run's steps: its LRs, and its weights to float rounding."""
    overrides = [*tiny_overrides(video_set, tmp_path), *SCHEDULE, "train.zero_stage=1", "train.grad_accum=2"]
    proc = run_train(["--config", "configs/demo.yaml", *overrides, "--resume-from", str(zero1_on_two)])
    converted = [line for line in proc.stdout.splitlines() if "DeepSpeed's universal checkpoint" in line]
    assert len(converted) == 1 and "saved by 2 processes" in converted[0] and "converted for 1 process" in converted[0]
    assert "epoch 1 continues at micro batch 6 of 12 per rank" in proc.stdout
    run_dir = tmp_path / "tests" / "run"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the converted copy is gone once loaded
    resumed, uninterrupted = lr_points(run_dir), lr_points(two_processes)
    assert sorted(resumed) == [4, 5, 6]
    for step, values in resumed.items():
        assert values["train/lr"] == uninterrupted[step]["train/lr"], step
    expected, got = final_weights(two_processes), final_weights(run_dir)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_zero1_checkpoint_into_zero0_refuses_in_one_line(video_set, tmp_path, zero1_on_two):
    """No DeepSpeed loads ZeRO partitions into ZeRO-0 (universal or not): one line with the way out, exit 2."""
    overrides = [*tiny_overrides(video_set, tmp_path), *SCHEDULE, "train.zero_stage=0"]
    proc = run_train(["--config", "configs/demo.yaml", *overrides, "--resume-from", str(zero1_on_two)], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "train.zero_stage=1" in line and f"--load-from {zero1_on_two} name=" in line


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_zero0_saved_by_two_resumes_on_one_with_half_the_batch_at_the_schedule_of_the_clips_seen(
    video_set, tmp_path, two_processes, one_process
):
    """Effective batch 8 -> 4: the LR of every step after the resume is the schedule's (scaled for 4 clips) at the
    epoch the clips seen reached, as the uninterrupted run with batch 4 has it at that epoch."""
    ckpt = checkpoint_of(two_processes, 3)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["samples"] == 24 and meta["layout"]["world_size"] == 2
    overrides = [*tiny_overrides(video_set, tmp_path), *SCHEDULE]
    proc = run_train(["--config", "configs/demo.yaml", *overrides, "--resume-from", str(ckpt)])
    assert "epoch 1 continues at micro batch 6 of 12 per rank" in proc.stdout
    resumed = lr_points(tmp_path / "tests" / "run")
    first = resumed[min(resumed)]
    assert first["train/epoch"] == pytest.approx((24 + 4) / 48)  # 24 clips before the stop, then one step of 4
    assert first["train/lr"] == pytest.approx(scheduled_lr(overrides, (24 + 4) / 48, 4), rel=1e-12)
    by_epoch = {round(v["train/epoch"], 9): v["train/lr"] for v in lr_points(one_process).values()}
    assert len(resumed) == 6
    for values in resumed.values():
        assert values["train/lr"] == pytest.approx(scheduled_lr(overrides, values["train/epoch"], 4), rel=1e-12)
        assert values["train/lr"] == pytest.approx(by_epoch[round(values["train/epoch"], 9)], rel=1e-12)


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_zero0_saved_by_one_resumes_on_two_after_the_clips_it_used(video_set, tmp_path, one_process, two_processes):
    """Effective batch 4 -> 8: 4 steps of 4 clips on one process are 2 steps of 8 on two; the run continues there,
    with the LRs of the uninterrupted two-process run from its step 3 on."""
    proc = torchrun(
        [
            "--config",
            "configs/demo.yaml",
            *tiny_overrides(video_set, tmp_path),
            *SCHEDULE,
            "--resume-from",
            str(checkpoint_of(one_process, 4)),
        ]
    )
    assert "epoch 1 continues at micro batch 2 of 6 per rank (4 of 12 on the saved layout)" in proc.stdout
    assert "no clip of the epoch repeats or is left out" in proc.stdout
    resumed, uninterrupted = lr_points(tmp_path / "tests" / "run"), lr_points(two_processes)
    by_epoch = {round(v["train/epoch"], 9): v["train/lr"] for v in uninterrupted.values()}
    assert sorted(round(v["train/epoch"], 9) for v in resumed.values()) == [0.5, 0.666666667, 0.833333333, 1.0]
    for values in resumed.values():
        assert values["train/lr"] == pytest.approx(by_epoch[round(values["train/epoch"], 9)], rel=1e-12)


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_converted_checkpoint_keeps_batchnorm_statistics(video_set, tmp_path_factory):
    """DeepSpeed's universal load restores parameters only; the running statistics of the tiny TSM's BatchNorms must
    come back too when one process's ZeRO-1 checkpoint is resumed on two."""
    saved_out, resumed_out = tmp_path_factory.mktemp("bn_saved"), tmp_path_factory.mktemp("bn_resumed")
    tsm = [o for o in tiny_overrides(video_set, saved_out) if not o.startswith("model.num_frames")]
    tsm += [*SCHEDULE, "model.name=tsm_r50_tiny", "train.zero_stage=1"]
    ckpt = stopped(tsm, 2, nproc=1)
    out = resumed_out / "restored.pt"
    proc = torchrun(
        [
            "--out",
            str(out),
            "--resume-from",
            str(ckpt),
            "--config",
            "configs/demo.yaml",
            *tsm,
            f"output_dir={resumed_out}",
        ],
        script="tests/helpers/restored_state.py",
    )
    assert "converted for 2 processes" in proc.stdout
    from action_launch.training.engine import model_state_file

    saved = torch.load(model_state_file(ckpt), map_location="cpu", weights_only=False)["module"]
    restored = torch.load(out, weights_only=False)["module"]
    assert any("running_mean" in key for key in saved)
    for key, value in saved.items():
        assert torch.equal(restored[key], value), key


@pytest.mark.parametrize(
    "saved_world, saved_micro, now_world, now_micro, now_accum, taken, repeated",
    [
        (2, 4, 1, 4, 1, 3, 0),  # 24 clips = 6 steps of 4
        (2, 4, 1, 4, 2, 3, 0),  # = 3 steps of 8 (accumulated)
        (1, 4, 2, 4, 1, 3, 4),  # 12 clips: 1 step of 8, then the last 4 again
        (1, 4, 3, 2, 1, 5, 2),  # 20 clips: 3 steps of 6, then the last 2 again
    ],
)
def test_the_epoch_continues_after_the_clips_used_on_any_world_size(
    saved_world, saved_micro, now_world, now_micro, now_accum, taken, repeated
):
    """With the samplers themselves: the clips the saved ranks took and those the new ranks take after the mapped
    position make the whole epoch, overlapping only in the clips `map_position` says are used again."""
    from fractions import Fraction

    from action_launch.training.layout import Layout, map_position
    from action_launch.training.loaders import ResumableDistributedSampler

    clips, epoch = list(range(48)), 1

    def layout(world: int, micro: int, accum: int) -> Layout:
        return Layout(world, micro, accum, len(clips) // world // micro // accum * accum, zero_stage=0)

    def taken_by(lay: Layout, start: int, stop: int) -> List[int]:
        """Clips that every rank of `lay` takes from its micro batch `start` to `stop`."""
        out = []
        for rank in range(lay.world_size):
            sampler = ResumableDistributedSampler(
                clips, lay.world_size, rank, seed=0, length=lay.micro_per_epoch * lay.micro_batch_size
            )
            sampler.set_epoch(epoch, start=start * lay.micro_batch_size)
            out += [index for index, _ in sampler][: (stop - start) * lay.micro_batch_size]
        return out

    saved, now = layout(saved_world, saved_micro, 1), layout(now_world, now_micro, now_accum)
    position = map_position(epoch, taken, saved, now)
    used, rest = taken_by(saved, 0, taken), taken_by(now, position.micro_in_epoch, now.micro_per_epoch)
    assert position.repeated == repeated == len(set(used) & set(rest))
    assert sorted(set(used) | set(rest)) == clips and len(rest) == len(set(rest))
    assert position.epoch == epoch + Fraction(position.micro_in_epoch, now.micro_per_epoch)
    assert position.micro_in_epoch % now_accum == 0  # the epoch goes on at an optimizer step
