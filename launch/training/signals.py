"""Signals that ask a run to stop: the handler only sets a flag, the Trainer acts on it at a step boundary.

Slurm signals every task before its time limit or a preemption (`--signal=USR2@...`, `scancel
--signal=USR1`); `scancel` itself sends SIGTERM. Ctrl-C (SIGINT) stops a run the same way, and a second Ctrl-C
stops it at once (after a write to the tracking store in progress, `common.interrupts`; a third one does not wait
for that). A DeepSpeed save is collective, so nothing is saved
inside a handler: the Trainer all-reduces the flag at every optimizer step and all ranks checkpoint
together. Whoever launched the run decides what happens after that (a Slurm job requeues itself).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from action_launch.common.interrupts import interrupt

REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")  # preemption / time-limit warning: checkpoint, then requeue
STOP_SIGNALS = ("SIGTERM",)  # scancel or an external `scontrol requeue`: checkpoint if there is time, no requeue
INTERRUPT_SIGNALS = ("SIGINT",)  # Ctrl-C: checkpoint at the next optimizer step and stop; a second one stops at once
HELPER_IGNORED = REQUEUE_SIGNALS + INTERRUPT_SIGNALS  # a run's helper processes leave these to the training process


class StopFlag:
    """Set from signal handlers; read by the Trainer at step boundaries. Setting a flag is all a handler does."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.requeue = False
        self._waiting = False  # a second Ctrl-C waits for a write to the tracking store

    def install(self, names: Tuple[str, ...] = REQUEUE_SIGNALS + STOP_SIGNALS) -> StopFlag:
        """Handle `names` (signal names) by setting this flag; returns self."""
        for name in names:
            signal.signal(getattr(signal, name), self._handle)
        return self

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C (SIGINT) asked for the stop."""
        return self.signal in INTERRUPT_SIGNALS

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if name in INTERRUPT_SIGNALS:
            if self.interrupted:  # the second Ctrl-C: now, without the checkpoint; a third: even inside a write
                self._waiting = interrupt(force=self._waiting)
                _say("Ctrl-C: stopping once the write to the tracking store in progress ends (Ctrl-C again: now)")
                return
            _say(
                "Ctrl-C: stopping after a checkpoint at the next optimizer step (Ctrl-C again stops at once, losing "
                "the steps since the last checkpoint)"
            )
        self.signal = self.signal or name
        self.requeue = self.requeue or name in REQUEUE_SIGNALS

    def __call__(self) -> bool:
        return self.signal is not None


def _say(line: str) -> None:
    """One line on rank 0's stderr, from a signal handler."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"\n{line}\n")


def stop_flag_in_slurm_step() -> Callable[[], bool]:
    """Inside a Slurm job step (plain sbatch/srun, slurm/train.sbatch), USR1/USR2 set a flag that stops
    training at the next optimizer step after a checkpoint; elsewhere nothing asks a run to stop."""
    if "SLURM_STEP_ID" not in os.environ:
        return lambda: False
    return StopFlag().install(REQUEUE_SIGNALS)


def stop_flag_for_run() -> StopFlag:
    """The stop flag of a `launch/train.py` run: Ctrl-C, and inside a Slurm job step USR1/USR2 too
    (`stop_flag_in_slurm_step`)."""
    return StopFlag().install(INTERRUPT_SIGNALS + (REQUEUE_SIGNALS if "SLURM_STEP_ID" in os.environ else ()))


def interrupted_line(run_dir: Path) -> str:
    """The one line a run stopped by Ctrl-C ends with: where it stands and the command that resumes it."""
    command = shlex.join(["python", *sys.argv])
    return f"interrupted (Ctrl-C): {run_dir} resumes from its newest checkpoint with the same command: {command}"
