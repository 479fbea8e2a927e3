"""LR scaling rule and schedule arithmetic."""

import math
from fractions import Fraction

import pytest
import torch

from action_launch.config import OptimConfig
from action_launch.training.schedule import (
    LRSchedule,
    ScheduleClock,
    effective_batch_size,
    lr_at,
    lr_scale_factor,
    scale_lrs,
)


def test_effective_batch_counts_accumulation_and_world():
    assert effective_batch_size(8, 4, 2) == 64
    assert effective_batch_size(8, 1, 1) == 8


@pytest.mark.parametrize("rule,expected", [("linear", 0.25), ("sqrt", 0.5), ("none", 1.0)])
def test_scale_factor_rules(rule, expected):
    assert lr_scale_factor(rule, 16, 64) == pytest.approx(expected)


def test_scaling_applies_to_warmup_start_and_final_lr():
    optim = OptimConfig(lr=0.1, base_batch_size=64, lr_scaling="linear", warmup_start_lr=0.01, final_lr=0.001)
    scaled = scale_lrs(optim, effective_batch_size(16, 2, 4))  # 128 clips -> x2
    assert (scaled.factor, scaled.lr, scaled.warmup_start_lr, scaled.final_lr) == pytest.approx((2, 0.2, 0.02, 0.002))
    assert scale_lrs(optim, 256).lr == pytest.approx(0.4)
    assert scale_lrs(OptimConfig(lr=0.1, base_batch_size=64, lr_scaling="sqrt"), 256).lr == pytest.approx(0.2)


def test_step_schedule_with_relative_lrs():
    optim = OptimConfig(lr=0.005, base_batch_size=64, schedule="step", step_epochs=[11, 14], step_lrs=[1, 0.1, 0.01])
    scaled = scale_lrs(optim, 64)
    assert [lr_at(e, optim, scaled, 15) for e in (0, 10.99, 11, 13.5, 14, 14.9)] == pytest.approx(
        [0.005, 0.005, 0.0005, 0.0005, 0.00005, 0.00005]
    )
    default = OptimConfig(lr=1.0, schedule="step", step_epochs=[2])
    assert lr_at(3, default, scale_lrs(default, 64), 4) == pytest.approx(0.1)
    broken = OptimConfig(step_epochs=[1, 2], step_lrs=[1, 0.1])
    with pytest.raises(ValueError, match="step_lrs needs"):
        lr_at(0, broken, scale_lrs(broken, 64), 3)


def test_cosine_with_linear_warmup():
    optim = OptimConfig(
        lr=0.4, base_batch_size=64, schedule="cosine", warmup_epochs=2, warmup_start_lr=0.0, final_lr=0.0
    )
    scaled = scale_lrs(optim, 64)
    end_of_warmup = 0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 10))
    assert lr_at(0, optim, scaled, 10) == pytest.approx(0.0)
    assert lr_at(1, optim, scaled, 10) == pytest.approx(end_of_warmup / 2)
    assert lr_at(2, optim, scaled, 10) == pytest.approx(end_of_warmup)
    assert lr_at(5, optim, scaled, 10) == pytest.approx(0.2)
    assert lr_at(10, optim, scaled, 10) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------- LRSchedule


def _schedule(lr: float = 0.4, steps_per_epoch: int = 4, epochs: int = 10) -> LRSchedule:
    """A cosine schedule with warmup over two groups: the base one and one at a tenth of the LR (`lr_mult` 0.1)."""
    optim = OptimConfig(
        lr=lr, base_batch_size=64, schedule="cosine", warmup_epochs=2, warmup_start_lr=0.01, final_lr=0.0
    )
    scaled = scale_lrs(optim, 128)
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    groups = [{"params": [params[0]], "lr": scaled.lr}, {"params": [params[1]], "lr": scaled.lr / 10}]
    optimizer = torch.optim.SGD(groups, lr=scaled.lr)
    return LRSchedule(optimizer, optim, scaled, epochs, ScheduleClock(Fraction(steps_per_epoch)))


def test_schedule_sets_each_groups_lr_at_every_step():
    schedule = _schedule()
    for step in range(41):
        expected = lr_at(step / 4, schedule.optim, schedule.scaled, 10)
        assert schedule.get_last_lr() == pytest.approx([expected, expected / 10])
        assert [g["lr"] for g in schedule.optimizer.param_groups] == schedule.get_last_lr()
        schedule.step()
    assert schedule.scaled.lr == pytest.approx(0.8)  # the schedule owns the LR scaled to the effective batch (x2)


def test_resume_continues_the_schedule_from_the_saved_step_with_this_runs_lrs(caplog):
    trained = _schedule()
    for _ in range(13):
        trained.step()
    state = trained.state_dict()
    resumed = _schedule()
    for group in resumed.optimizer.param_groups:
        group["lr"] = 123.0  # what a checkpoint's optimizer state brings back
    resumed.load_state_dict(state)
    assert resumed.step_count == 13 and resumed.get_last_lr() == trained.get_last_lr()
    trained.step(), resumed.step()
    assert resumed.get_last_lr() == trained.get_last_lr()
    lower = _schedule(lr=0.2)  # a resume with another optim.lr (a PBT exploit): this run's LRs from the saved step on
    with caplog.at_level("INFO", logger="action_launch.training.schedule"):
        lower.load_state_dict(state)
    assert lower.step_count == 13
    assert lower.get_last_lr()[0] == pytest.approx(lr_at(13 / 4, lower.optim, lower.scaled, 10))
    assert lower.scaled.lr == pytest.approx(trained.scaled.lr / 2)
    assert "replaced by this run's configured" in caplog.text


def test_a_checkpoint_of_torchs_lambda_lr_resumes_at_its_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.8)
    old = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(7):
        optimizer.step()
        old.step()
    schedule = _schedule()
    schedule.load_state_dict(old.state_dict())
    assert schedule.step_count == 7
    assert schedule.get_last_lr()[0] == pytest.approx(lr_at(7 / 4, schedule.optim, schedule.scaled, 10))


def test_a_restart_on_another_layout_counts_from_the_epoch_reached():
    schedule = _schedule(steps_per_epoch=4)
    for _ in range(6):
        schedule.step()
    schedule.clock.steps_per_epoch = Fraction(2)  # the new layout takes half the steps an epoch
    schedule.restart_at(Fraction(3, 2))
    assert schedule.get_last_lr()[0] == pytest.approx(lr_at(1.5, schedule.optim, schedule.scaled, 10))
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(lr_at(2.0, schedule.optim, schedule.scaled, 10))
