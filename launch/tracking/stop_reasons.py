"""Why a sweep trial ended, in words: `completed`, `stopped by <scheduler> at <budget> <k>`, or
`errored: <message>`; in an interrupted sweep (Ctrl-C) also `interrupted` (it was training; `--resume`
continues it) and `not started`. Sweeps write it (tag `sweep.stop_reason`), tracking reads it back."""

from __future__ import annotations

from typing import Any, Dict

COMPLETED = "completed"
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
ERROR_CHARS = 300  # of an error message kept in the tag (MLflow tags hold 5000, the table shows 40)


def stopped_by(scheduler: str, budget_key: str, reached: Any) -> str:
    """The reason of a trial a scheduler stopped before the full budget."""
    return f"stopped by {scheduler} at {budget_key} {reached}"


def errored(message: str) -> str:
    """The reason of a trial that failed, with (the start of) its error message."""
    return f"errored: {message[:ERROR_CHARS]}"


def outcome(reason: str) -> str:
    """`errored`, `stopped`, `completed`, `unfinished` (an interrupted sweep's trial) or `other` for a stop
    reason or a lower-case MLflow status."""
    if reason in (INTERRUPTED, NOT_STARTED):
        return "unfinished"
    if reason.startswith(("errored", "failed", "killed")):
        return "errored"
    if reason.startswith("stopped"):
        return "stopped"
    if reason in (COMPLETED, "finished"):
        return "completed"
    return "other"


def mlflow_status(reason: str) -> str:
    """The MLflow run status a trial's run ends with: FAILED, KILLED (stopped early or interrupted) or FINISHED."""
    return {"errored": "FAILED", "stopped": "KILLED", "unfinished": "KILLED"}.get(outcome(reason), "FINISHED")


def run_stop_reason(run: Dict[str, Any]) -> str:
    """A run's `sweep.stop_reason` tag, else its MLflow status in lower case (a run outside a sweep)."""
    return run["tags"].get("sweep.stop_reason") or run["status"].lower()
