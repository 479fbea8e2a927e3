"""The one place where submitit executors are made: a training job (`launch/submit.py`) and a sweep job
(`launch/tune.py --slurm`) get their Slurm parameters from the same `slurm:` section the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from action_launch.cluster.plan import check_script_values, parse_time_minutes
from action_launch.config import SlurmConfig


def slurm_available() -> bool:
    """Whether sbatch exists and a controller answers."""
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose_cluster(local: bool) -> str:
    """`local` when asked for or when no Slurm controller answers, else `slurm`."""
    return "local" if local or not slurm_available() else "slurm"


def make_executor(
    folder: Path,
    cluster: str,
    slurm: SlurmConfig,
    *,
    name: str,
    nodes: int,
    tasks_per_node: int,
    local_tasks: Optional[int] = None,
    requeue_signal: bool = True,
) -> Any:
    """A submitit AutoExecutor for `nodes` x `tasks_per_node` tasks with the resources of `slurm`.

    On the local executor everything runs on this machine: `local_tasks` processes (default all the
    tasks). `requeue_signal`: Slurm's time-limit warning (`--signal`), which makes a training job
    checkpoint and requeue itself, comes `slurm.signal_delay_s` before the limit; without it submitit still
    asks for one at 90 s, which ends a job that has no `checkpoint()` ("timed-out and not checkpointable").
    """
    import submitit

    params: Dict[str, Any] = {
        "name": name,
        "timeout_min": parse_time_minutes(slurm.time),
        "cpus_per_task": slurm.cpus_per_task,
    }
    if cluster == "slurm":
        params.update(
            nodes=nodes,
            tasks_per_node=tasks_per_node,
            slurm_array_parallelism=slurm.array_parallelism,
            slurm_setup=["export PYTHONUNBUFFERED=1"],
        )
        if requeue_signal:
            params["slurm_signal_delay_s"] = slurm.signal_delay_s
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(slurm, key):
                params[f"slurm_{key}"] = getattr(slurm, key)
    else:  # one machine: the processes all run here
        params.update(nodes=1, tasks_per_node=local_tasks or nodes * tasks_per_node)
    if slurm.gpus_per_node:
        params["gpus_per_node"] = slurm.gpus_per_node
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    # the callers check the user's values first, with their option names; this catches anything they missed
    check_script_values({"job folder": str(folder), **{k: v for k, v in params.items() if k != "slurm_setup"}})
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor: Any, n_jobs: int) -> str:
    """The exact sbatch file submitit would submit (with the array line for more than one job).

    submitit has no public call for this text (its own tests build it the same way), so the three private names below
    are this project's only hold on submitit's internals; `tests/test_slurm_launcher.py` prints the script through them.
    """
    # private API: submitit writes its sbatch file only inside submit(); this is the function that renders it
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor  # private API: AutoExecutor has no public getter of its SlurmExecutor
    params = dict(inner.parameters)
    if n_jobs > 1:
        params["map_count"] = n_jobs
    # private API: the command line the job runs (python -m submitit.core._submit <folder>), known only to submitit
    command = inner._submitit_command_str
    return _make_sbatch_string(command=command, folder=inner.folder, **params)


def slurm_refusal(script: str, timeout_s: float = 60.0) -> Optional[str]:
    """Why Slurm would refuse `script` (`sbatch --test-only`: partition, node count, time limit, account,
    ...), in Slurm's words; None if it would queue it. Nothing is submitted and nothing written here."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as f:
        f.write(script)
        f.flush()
        try:
            done = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"sbatch --test-only gave no answer in {timeout_s:g} s (is slurmctld reachable?)"
    if done.returncode == 0:
        return None
    said = [line.strip().removeprefix("sbatch: error: ") for line in done.stderr.splitlines() if line.strip()]
    return "; ".join(said) or f"sbatch --test-only exited {done.returncode}"


@contextlib.contextmanager
def working_dir(path: Optional[Path]) -> Iterator[None]:
    """sbatch (and the local executor) start the job in the current directory: the code snapshot."""
    if path is None:
        yield
        return
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
