"""The LR scaling rule and the LR schedule, in one place: `LRSchedule` owns the scaled LRs, the schedule and its resume
state, and sets the optimizer's LRs.

`optim.lr` is tuned for `optim.base_batch_size` clips per optimizer step. The effective batch counts
gradient accumulation (mmaction2's and PySlowFast's rules do not: mmengine issue 894), and the warmup
start and the final LR scale by the same factor as the peak LR (Goyal et al. 2017).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from action_launch.config import Config, ConfigError, OptimConfig

if TYPE_CHECKING:  # torch stays out of `submit.py --dry-run`, which imports the scaling rule
    import torch

log = logging.getLogger(__name__)


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


def kept_accumulation(cfg: Config, world: int, written_world: Optional[int] = None) -> Optional[Tuple[int, str]]:
    """`optim.keep_effective_batch` on `world` processes: the `train.grad_accum` that keeps the config's effective batch
    (micro x accumulation x `written_world`, by default the world its `slurm:` section describes: nodes x GPUs per node,
    one per node without GPUs), and the line that says so; None when the option is off. The one rule of `submit.py`
    (`cluster.plan`) and of every start where the world size is known (`Trainer`: torchrun, Slurm, one process).
    Raises ConfigError, in one line, where no whole accumulation keeps it."""
    if not cfg.optim.keep_effective_batch:
        return None
    t = cfg.train
    if written_world is None:
        written_world = cfg.slurm.nodes * max(1, cfg.slurm.gpus_per_node)
    target = effective_batch_size(t.micro_batch_size, t.grad_accum, written_world)
    if target % (t.micro_batch_size * world):
        raise ConfigError(
            f"optim.keep_effective_batch: the config's effective batch {target} (micro {t.micro_batch_size} x "
            f"accumulation {t.grad_accum} x world {written_world}) is not a multiple of micro {t.micro_batch_size} x "
            f"world {world}; change train.micro_batch_size or the number of processes (--nodes, --nproc_per_node)"
        )
    accum = target // (t.micro_batch_size * world)
    return accum, (
        f"optim.keep_effective_batch: train.grad_accum {t.grad_accum} -> {accum} on world size {world} "
        f"keeps the config's effective batch {target} (micro {t.micro_batch_size} x accumulation "
        f"{t.grad_accum} x world {written_world}) and its LR"
    )


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
                f"got {len(optim.step_lrs)}"
            )
        return list(optim.step_lrs)
    return [0.1**i for i in range(len(optim.step_epochs) + 1)]


def lr_at(epoch: float, optim: OptimConfig, scaled: ScaledLR, total_epochs: int) -> float:
    """LR at a fractional epoch: warmup, then step / cosine / constant (PySlowFast's shapes)."""

    def main_schedule(e: float) -> float:
        if optim.schedule == "step":
            return scaled.lr * _relative_step_lrs(optim)[bisect.bisect_right(optim.step_epochs, e)]
        if optim.schedule == "cosine":
            return scaled.final_lr + (scaled.lr - scaled.final_lr) * 0.5 * (
                1 + math.cos(math.pi * min(e / total_epochs, 1.0))
            )
        return scaled.lr

    if epoch < optim.warmup_epochs:
        end = main_schedule(optim.warmup_epochs)
        return scaled.warmup_start_lr + (end - scaled.warmup_start_lr) * epoch / optim.warmup_epochs
    return main_schedule(epoch)


class LRSchedule:
    """The run's LR schedule, the one owner of its LRs: the scaled anchor LRs (`scaled`), the shape (`optim`), where it
    stands (`step`, on `clock`) and its resume state. It sets the optimizer's param-group LRs itself.

    Each group follows `lr_at` times its share of the peak LR as built (`lr_mult`: group LR / `scaled.lr`). DeepSpeed
    calls `step()` once per optimizer step and saves and loads `state_dict()` with its checkpoints; the state is the
    step alone, so a resume follows this run's configured LRs, whatever LRs trained the checkpoint.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        optim: OptimConfig,
        scaled: ScaledLR,
        total_epochs: int,
        clock: ScheduleClock,
    ):
        self.optimizer, self.optim, self.scaled, self.clock = optimizer, optim, scaled, clock
        self.total_epochs = total_epochs
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # the groups' LRs at the peak
        self.step_count = 0
        self.apply()

    def factor(self, step: int) -> float:
        """The schedule's LR after `step` optimizer steps, as a fraction of the peak LR."""
        return lr_at(self.clock.epoch(step), self.optim, self.scaled, self.total_epochs) / (self.scaled.lr or 1.0)

    def apply(self) -> None:
        """Set every group's LR to the schedule's at the current step (after a checkpoint's optimizer state brought
        the LRs it trained with)."""
        factor = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self) -> None:
        """One optimizer step was taken: move to the next step's LRs."""
        self.step_count += 1
        self.apply()

    def get_last_lr(self) -> List[float]:
        """The LR of every group, as set for the next optimizer step."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def restart_at(self, epoch: Fraction) -> None:
        """Continue from fractional `epoch` at the current step (a resume on another batch layout, `training.layout`,
        whose steps per epoch differ) and set the LRs of the next step from it."""
        self.clock.restart_at(self.step_count, epoch)
        self.apply()

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint keeps: the step, and the groups' peak LRs it trained with (for the log of a change)."""
        return {"step": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's step (`last_epoch` in those saved by torch's `LambdaLR`) with this run's LRs."""
        self.step_count = int(state["step"] if "step" in state else state["last_epoch"])
        saved = list(state.get("base_lrs") or self.base_lrs)
        if saved != self.base_lrs:
            log.info("checkpoint LRs %s replaced by this run's configured %s", saved, self.base_lrs)
        self.apply()
