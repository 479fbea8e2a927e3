"""The LR scaling rule and the LR schedule, in one place.

`optim.lr` is tuned for `optim.base_batch_size` clips per optimizer step. The effective batch counts
gradient accumulation (mmaction2's and PySlowFast's rules do not: mmengine issue 894), and the warmup
start and the final LR scale by the same factor as the peak LR (Goyal et al. 2017).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction

from action_launch.config import OptimConfig


def effective_batch_size(micro_batch: int, grad_accum: int, world_size: int) -> int:
    """Clips that contribute to one optimizer step."""
    return micro_batch * grad_accum * world_size


def lr_scale_factor(rule: str, effective_batch: int, base_batch: int) -> float:
    """Multiplier applied to every LR of the schedule under `rule` (linear, sqrt, none)."""
    if base_batch <= 0:
        raise ValueError(f"optim.base_batch_size must be positive, got {base_batch}")
    ratio = effective_batch / base_batch
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    if rule == "none":
        return 1.0
    raise ValueError(f"optim.lr_scaling: unknown rule {rule!r}; expected linear, sqrt or none")


@dataclass(frozen=True)
class ScaledLR:
    """The schedule's anchor LRs after scaling to the effective batch."""

    factor: float
    effective_batch: int
    lr: float
    warmup_start_lr: float
    final_lr: float


def scale_lrs(optim: OptimConfig, effective_batch: int) -> ScaledLR:
    """Apply the scaling rule to the peak, warmup-start and final LRs alike."""
    factor = lr_scale_factor(optim.lr_scaling, effective_batch, optim.base_batch_size)
    return ScaledLR(factor, effective_batch, optim.lr * factor, optim.warmup_start_lr * factor, optim.final_lr * factor)


@dataclass
class ScheduleClock:
    """The fractional epoch the LR schedule stands at after each optimizer step.

    A run counts `steps_per_epoch` steps an epoch from step 0 at epoch 0. A run resumed on another batch layout
    (world size, micro batch, accumulation) takes fewer or more steps an epoch than the run that saved it, so its
    step count no longer tells the epoch: `restart_at` anchors the count at the epoch the checkpoint reached.
    Exact arithmetic: a resume on the same layout gives every step the same float epoch as an uninterrupted run.
    """

    steps_per_epoch: Fraction
    origin_step: int = 0
    origin_epoch: Fraction = Fraction(0)

    def epoch(self, step: int) -> float:
        """The fractional epoch after `step` optimizer steps."""
        return float(self.origin_epoch + (step - self.origin_step) / self.steps_per_epoch)

    def restart_at(self, step: int, epoch: Fraction) -> None:
        """From optimizer step `step` on, count from fractional epoch `epoch`."""
        self.origin_step, self.origin_epoch = step, Fraction(epoch)


def _relative_step_lrs(optim: OptimConfig) -> list:
    if optim.step_lrs:
        if len(optim.step_lrs) != len(optim.step_epochs) + 1:
            raise ValueError(
                f"optim.step_lrs needs len(optim.step_epochs)+1 = {len(optim.step_epochs) + 1} values, "
                f"got {len(optim.step_lrs)}")
        return list(optim.step_lrs)
    return [0.1 ** i for i in range(len(optim.step_epochs) + 1)]


def lr_at(epoch: float, optim: OptimConfig, scaled: ScaledLR, total_epochs: int) -> float:
    """LR at a fractional epoch: warmup, then step / cosine / constant (PySlowFast's shapes)."""

    def main_schedule(e: float) -> float:
        if optim.schedule == "step":
            return scaled.lr * _relative_step_lrs(optim)[bisect.bisect_right(optim.step_epochs, e)]
        if optim.schedule == "cosine":
            return scaled.final_lr + (scaled.lr - scaled.final_lr) * 0.5 * (1 + math.cos(math.pi * min(e / total_epochs, 1.0)))
        return scaled.lr

    if epoch < optim.warmup_epochs:
        end = main_schedule(optim.warmup_epochs)
        return scaled.warmup_start_lr + (end - scaled.warmup_start_lr) * epoch / optim.warmup_epochs
    return main_schedule(epoch)
