"""LR scaling rule and schedule arithmetic."""
import math

import pytest

from action_launch.config import OptimConfig
from action_launch.training.schedule import effective_batch_size, lr_at, lr_scale_factor, scale_lrs


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
        [0.005, 0.005, 0.0005, 0.0005, 0.00005, 0.00005])
    default = OptimConfig(lr=1.0, schedule="step", step_epochs=[2])
    assert lr_at(3, default, scale_lrs(default, 64), 4) == pytest.approx(0.1)
    broken = OptimConfig(step_epochs=[1, 2], step_lrs=[1, 0.1])
    with pytest.raises(ValueError, match="step_lrs needs"):
        lr_at(0, broken, scale_lrs(broken, 64), 3)


def test_cosine_with_linear_warmup():
    optim = OptimConfig(lr=0.4, base_batch_size=64, schedule="cosine", warmup_epochs=2, warmup_start_lr=0.0, final_lr=0.0)
    scaled = scale_lrs(optim, 64)
    end_of_warmup = 0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 10))
    assert lr_at(0, optim, scaled, 10) == pytest.approx(0.0)
    assert lr_at(1, optim, scaled, 10) == pytest.approx(end_of_warmup / 2)
    assert lr_at(2, optim, scaled, 10) == pytest.approx(end_of_warmup)
    assert lr_at(5, optim, scaled, 10) == pytest.approx(0.2)
    assert lr_at(10, optim, scaled, 10) == pytest.approx(0.0)
