"""`optim.keep_effective_batch` wherever the world size is known: one rule (`training.schedule.kept_accumulation`) for
`submit.py` and for every start of the trainer (torchrun here: 2 gloo ranks on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port, run_train, tiny_overrides

from action_launch.config import ConfigError, load_config
from action_launch.training import checkpoint as ckpt
from action_launch.training.layout import Layout
from action_launch.training.schedule import kept_accumulation


def test_the_rule_trades_accumulation_for_processes():
    cfg = load_config(None, ["train.micro_batch_size=8", "train.grad_accum=4", "optim.keep_effective_batch=true"])
    assert kept_accumulation(cfg, 2)[0] == 2 and kept_accumulation(cfg, 4)[0] == 1 and kept_accumulation(cfg, 1)[0] == 4
    assert (
        "train.grad_accum 4 -> 2 on world size 2 keeps the config's effective batch 32" in kept_accumulation(cfg, 2)[1]
    )
    cfg.slurm.gpus_per_node = 2  # the config describes 2 processes: on 1 the accumulation doubles
    assert kept_accumulation(cfg, 1)[0] == 8 and kept_accumulation(cfg, 4, written_world=4)[0] == 4
    with pytest.raises(ConfigError, match=r"optim.keep_effective_batch: .* not a multiple of micro 8 x world 3"):
        kept_accumulation(cfg, 3)
    assert kept_accumulation(load_config(None, ["train.grad_accum=4"]), 2) is None  # off: the LR follows the rule


def _params(run_dir: Path) -> dict:
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    return next(e["values"] for e in events if e["kind"] == "params")


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_two_torchrun_ranks_lower_the_accumulation_and_keep_batch_and_lr(video_set, tmp_path):
    """A config written for one process (micro 4 x accumulation 2 = 8 clips, LR 0.002 at base batch 8) on two ranks:
    accumulation 1, so the effective batch stays 8 and the LR 0.002, as logged, tracked and checkpointed."""
    args = [
        *tiny_overrides(video_set, tmp_path, "kept"),
        "train.micro_batch_size=4",
        "train.grad_accum=2",
        "optim.keep_effective_batch=true",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
    ]
    proc = run_train(
        ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "launch/train.py", *args],
        script="-m",
    )
    out = proc.stdout + proc.stderr
    assert (
        "optim.keep_effective_batch: train.grad_accum 2 -> 1 on world size 2 keeps the config's effective batch 8"
        in out
    )
    assert "effective batch 8 = micro 4 x accumulation 1 x world 2; lr 0.002 -> 0.002" in out
    run_dir = tmp_path / "tests" / "kept"
    params = _params(run_dir)
    assert (params["train.grad_accum"], params["optim.effective_batch_size"]) == (1, 8)
    assert params["optim.scaled_lr"] == pytest.approx(0.002)
    layout = Layout.from_meta(ckpt.read_meta(ckpt.latest_checkpoint(run_dir / "checkpoints")))
    assert (layout.world_size, layout.grad_accum, layout.clips_per_step) == (2, 1, 8)
