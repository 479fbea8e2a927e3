"""Signals that ask a run to stop: the handler only sets a flag, the Trainer acts on it at a step boundary.

Slurm signals every task before its time limit or a preemption (`--signal=USR2@...`, `scancel
--signal=USR1`); `scancel` itself sends SIGTERM. A DeepSpeed save is collective, so nothing is saved
inside a handler: the Trainer all-reduces the flag at every optimizer step and all ranks checkpoint
together. Whoever launched the run decides what happens after that (a Slurm job requeues itself).
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable, Optional, Tuple

REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")  # preemption / time-limit warning: checkpoint, then requeue
STOP_SIGNALS = ("SIGTERM",)  # scancel or an external `scontrol requeue`: checkpoint if there is time, no requeue


class StopFlag:
    """Set from signal handlers; read by the Trainer at step boundaries. Setting a flag is all a handler does."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.requeue = False

    def install(self, names: Tuple[str, ...] = REQUEUE_SIGNALS + STOP_SIGNALS) -> "StopFlag":
        """Handle `names` (signal names) by setting this flag; returns self."""
        for name in names:
            signal.signal(getattr(signal, name), self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        self.signal = self.signal or name
        self.requeue = self.requeue or name in REQUEUE_SIGNALS

    def __call__(self) -> bool:
        return self.signal is not None


def stop_flag_in_slurm_step() -> Callable[[], bool]:
    """Inside a Slurm job step (plain sbatch/srun, slurm/train.sbatch), USR1/USR2 set a flag that stops
    training at the next optimizer step after a checkpoint; elsewhere nothing asks a run to stop."""
    if "SLURM_STEP_ID" not in os.environ:
        return lambda: False
    return StopFlag().install(REQUEUE_SIGNALS)
