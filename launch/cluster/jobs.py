"""The jobs that run on the cluster's tasks, and what a job folder says about its job.

A job is a small picklable callable (`TrainJob`): submitting it does not import torch or the trainer;
on the cluster every task runs `TrainJob.__call__`, which exports the process-group environment from
Slurm's variables and runs the same `Trainer` as `launch/train.py`.

Preemption and time limits: Slurm signals every task (`--signal=USR2@<slurm.signal_delay_s>`, or
`scancel --signal=USR1`); the handler only sets a flag (`training.signals`), all ranks stop at the same
step boundary and save one DeepSpeed checkpoint together, then rank 0 requeues the job (`scontrol
requeue`: same job id, same folder), at most `slurm.max_requeues` times (`SLURM_RESTART_COUNT`, tagged
in MLflow as `slurm.requeue_count`). The requeued job resumes from the newest complete checkpoint of its
folder and logs into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from action_launch.common.cluster_env import ClusterEnvironment
from action_launch.common.files import atomic_write_text
from action_launch.common.processes import DISTRIBUTED_VARS
from action_launch.training.signals import StopFlag


class TrainJob:
    """What every task of a submitted job runs: `Trainer(cfg).fit()` in the job's own folder.

    Args:
        config: the resolved config as plain values (`launch.config.to_dict`).
        code_dir: snapshot of the suite's code to import from (None: the installed tree).
        workdir: the directory `submit.py` ran in; relative paths of the config are relative to it.
    """

    def __init__(self, config: Dict[str, Any], code_dir: Optional[str] = None, workdir: Optional[str] = None):
        self.config = config
        self.code_dir = code_dir
        self.workdir = workdir

    def __call__(self) -> Dict[str, float]:
        # The job started in the snapshot (submit.py runs sbatch there), so `launch` came from it; keep
        # the snapshot first on sys.path for the lazy imports that follow the chdir to the user's folder.
        if self.code_dir:
            sys.path.insert(0, self.code_dir)
        if self.workdir:
            os.chdir(self.workdir)
        import submitit

        stop = StopFlag()
        stop.install()  # replaces submitit's USR2 handler, which would checkpoint on rank 0 alone
        job_env = submitit.JobEnvironment()
        export_distributed_env(job_env)
        from action_launch.config import from_dict
        from action_launch.training.trainer import Trainer

        cfg = from_dict(self.config, source="submitted config")
        folder = Path(job_env.paths.folder).resolve()  # runs/<experiment>/<name>/<job id> is the run folder
        requeues = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        trainer = Trainer(cfg, resume=True, stop_requested=stop, run_dir=folder)
        trainer.tracker.set_tags(
            {
                "slurm.requeue_count": requeues,  # slurm.job_id: the Trainer's run tags
                "slurm.nodes": job_env.num_nodes,
                "slurm.tasks": job_env.num_tasks,
            }
        )
        metrics = trainer.fit()
        trainer.close()  # every rank ended here together (finished, or stopped after a collective checkpoint)
        if trainer.progress.epoch >= cfg.train.epochs:
            return metrics
        # Stopped early at a step boundary, after a checkpoint that every rank took part in.
        if job_env.global_rank == 0:
            _after_stop(stop, requeues, cfg.slurm.max_requeues, job_env, trainer.progress.epoch)
        sys.exit(0)  # not a result: submitit writes none, and the requeued job writes the real one

    def checkpoint(self) -> Any:
        """submitit's requeue hook: the same job again (it resumes from its folder's newest checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.code_dir, self.workdir))


def _after_stop(stop: StopFlag, requeues: int, max_requeues: int, job_env: Any, epoch: int) -> None:
    """On rank 0 after a collective checkpoint: requeue (bounded), or say why not."""
    where = f"stopped by {stop.signal} in epoch {epoch + 1} after a checkpoint"
    if not stop.requeue:
        print(f"{where}; not requeuing ({stop.signal} means cancel, or Slurm requeues by itself)", flush=True)
        return
    if job_env.cluster != "slurm":
        print(f"{where}; not on Slurm, so nothing to requeue: rerun to resume", flush=True)
        return
    if requeues >= max_requeues:
        raise RuntimeError(
            f"{where}; already requeued {requeues} times (slurm.max_requeues={max_requeues}): "
            f"giving up. Resume by resubmitting the same config."
        )
    job_id = job_env.job_id
    print(f"{where}; requeueing job {job_id} ({requeues + 1}/{max_requeues})", flush=True)
    proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    # Requeueing ends this job's processes with SIGTERM, scontrol itself among them when it is still running.
    if proc.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(
            f"{where}; scontrol requeue {job_id} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}. Resume by resubmitting the same config."
        )


def export_distributed_env(job_env: Any) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for this task: on Slurm from its variables
    (`common.cluster_env`: the first node's NodeAddr, the port of the job id), on submitit's local executor from its
    job environment (this machine). CUDA_VISIBLE_DEVICES is left alone: DeepSpeed picks the GPU from LOCAL_RANK."""
    for key in DISTRIBUTED_VARS:
        os.environ.pop(key, None)  # the submitting shell's values must not leak into the job
    env = ClusterEnvironment.from_slurm() if job_env.cluster == "slurm" else None
    if env is None:
        env = ClusterEnvironment(
            job_id=str(job_env.job_id),
            hostnames=(job_env.hostname,),
            rank=job_env.global_rank,
            world_size=job_env.num_tasks,
            local_rank=job_env.local_rank,
            node_rank=job_env.node,
        )
    os.environ.update(env.torch_variables(None if job_env.cluster == "slurm" else job_env.hostname))


# ------------------------------------------------------------------------------------------ status


def submitted_job(run_dir: Path, info: Dict[str, Any]) -> Any:
    """submitit's own job object (all its tasks) for a job folder and its job.json."""
    import submitit

    job_class = submitit.SlurmJob if info.get("cluster", "slurm") == "slurm" else submitit.LocalJob
    tasks = int(info.get("nodes") or 1) * int(info.get("tasks_per_node") or 1)
    return job_class(run_dir, str(info["job_id"]), tasks=tuple(range(tasks)))


def _outcome(job: Any) -> List[str]:
    """What the tasks' result files say: the first failure's traceback, else task 0's result.

    Only tasks whose result file exists are asked: for them submitit's `exception()` and `result()`
    return at once, where for a running job they would wait for its end.
    """
    finished = [job.task(t) for t in range(job.num_tasks) if job.task(t).paths.result_pickle.exists()]
    try:
        error = next((e for e in (task.exception() for task in finished) if e is not None), None)
        if error is not None:
            return ["", "job failed:", str(error).rstrip()]
        if finished and finished[0].task_id == 0:
            return [f"result: {finished[0].result()}"]
    except Exception as err:
        return [f"(unreadable result file in {job.paths.folder}: {err})"]
    return ["result: none yet (running, stopped to be requeued, or killed)"]


def _tail(path: Path, lines: int) -> List[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def failure_tail(job: Any, lines: int = 15) -> Tuple[Optional[Path], List[str]]:
    """(log, its last `lines` lines) that show why an ended job failed: the stderr of the first task that
    holds a traceback, else task 0's stderr, else its stdout; (None, []) when no log was written."""
    tasks = [job.task(t) for t in range(job.num_tasks)]
    with_traceback = [
        p
        for p in (t.paths.stderr for t in tasks)
        if p.is_file() and "Traceback (most recent call last)" in p.read_text(errors="replace")
    ]
    for path in with_traceback[:1] + [tasks[0].paths.stderr, tasks[0].paths.stdout]:
        tail = _tail(path, lines)
        if tail:
            return path, tail
    return None, []


def status_report(run_dir: Path, lines: int = 40) -> str:
    """State, checkpoints, result or error, and the tails of the logs of a submitted job (`submit.py --status`)."""
    run_dir = Path(run_dir).resolve()
    info_path = run_dir / "job.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no job.json (expected a job folder runs/<experiment>/<name>/<job id>)")
    info = json.loads(info_path.read_text())
    job = submitted_job(run_dir, info)
    # A local job rebuilt here has no process to poll: submitit calls it FINISHED once it wrote a result.
    out = [
        f"job {job.job_id} on {info.get('cluster', 'slurm')}: {info.get('nodes')} node(s) x "
        f"{info.get('tasks_per_node', 1)} task(s)",
        f"state: {job.state}",
    ]
    ckpts = (
        sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []
    )
    out.append(f"checkpoints: {', '.join(ckpts) if ckpts else 'none'}")
    out += _outcome(job)
    tasks = [job.task(t) for t in range(job.num_tasks)]
    for path in [t.paths.stderr for t in tasks] + [t.paths.stdout for t in tasks]:
        tail = _tail(path, lines)
        if tail:
            out += ["", f"--- {path.name} (last {len(tail)} lines)", *tail]
    return "\n".join(out)


def write_job_json(folder: Path, info: Dict[str, Any]) -> None:
    """Record how a job was submitted, next to its logs and checkpoints."""
    atomic_write_text(
        folder / "job.json", json.dumps({**info, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2)
    )
