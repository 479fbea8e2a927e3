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
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

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
        trainer.tracker.set_tags({"slurm.job_id": job_env.job_id, "slurm.requeue_count": requeues,
                                  "slurm.nodes": job_env.num_nodes, "slurm.tasks": job_env.num_tasks})
        metrics = trainer.fit()
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
        raise RuntimeError(f"{where}; already requeued {requeues} times (slurm.max_requeues={max_requeues}): "
                           f"giving up. Resume by resubmitting the same config.")
    job_id = job_env.job_id
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    print(f"{where}; requeued job {job_id} ({requeues + 1}/{max_requeues})", flush=True)


def export_distributed_env(job_env: Any) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for this task, from submitit's job environment.

    The master is the first node of the allocation, addressed by its Slurm NodeAddr (a NodeName need
    not resolve as a host name); the port is derived from the job id, so every task agrees without
    talking. CUDA_VISIBLE_DEVICES is left alone: DeepSpeed picks the GPU from LOCAL_RANK.
    """
    import submitit

    for key in DISTRIBUTED_VARS:
        os.environ.pop(key, None)  # the submitting shell's values must not leak into the job
    dist_env = submitit.helpers.TorchDistributedEnvironment()
    if job_env.cluster == "slurm":
        dist_env.master_addr = node_address(dist_env.master_addr)
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)


def node_address(node: str) -> str:
    """Slurm's NodeAddr of `node` (a NodeName need not resolve as a host name); `node` itself if unknown."""
    try:
        out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True,
                             timeout=30).stdout
        match = re.search(r"\bNodeAddr=(\S+)", out)
        return match.group(1) if match else node
    except (OSError, subprocess.SubprocessError):
        return node


# ------------------------------------------------------------------------------------------ status

def job_state(job_id: str, cluster: str, run_dir: Path) -> str:
    """Slurm's accounting state of a job; for a local job, what its result file says."""
    if cluster != "slurm":
        result = run_dir / f"{job_id}_0_result.pkl"
        if not result.is_file():
            return "RUNNING (or killed: no result yet)"
        import pickle

        return "COMPLETED" if pickle.loads(result.read_bytes())[0] == "success" else "FAILED"
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"UNKNOWN (sacct: {err})"
    for line in out.splitlines():
        jid, state, code = (line.split("|") + ["", ""])[:3]
        if jid == job_id:
            return f"{state} (exit code {code})"
    return "UNKNOWN (not in sacct yet)"


def _tail(path: Path, lines: int) -> List[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def status_report(run_dir: Path, lines: int = 40) -> str:
    """State, checkpoints and the tail of the logs of a submitted job (`submit.py --status RUN_DIR`)."""
    run_dir = Path(run_dir)
    info_path = run_dir / "job.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no job.json (expected a job folder runs/<experiment>/<name>/<job id>)")
    info = json.loads(info_path.read_text())
    job_id, cluster = info["job_id"], info.get("cluster", "slurm")
    out = [f"job {job_id} on {cluster}: {info.get('nodes')} node(s) x {info.get('tasks_per_node')} task(s)",
           f"state: {job_state(job_id, cluster, run_dir)}"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []
    out.append(f"checkpoints: {', '.join(ckpts) if ckpts else 'none'}")
    result = run_dir / f"{job_id}_0_result.pkl"
    if result.is_file():
        import pickle

        try:
            kind, value = pickle.loads(result.read_bytes())
            if kind == "error":
                out += ["", "job failed:", str(value).rstrip()]
            else:
                out.append(f"result: {value}")
        except Exception as err:  # noqa: BLE001 - a status command must not fail on a bad result file
            out.append(f"(unreadable result file {result}: {err})")
    for path in sorted(run_dir.glob(f"{job_id}_*_log.err")) + sorted(run_dir.glob(f"{job_id}_*_log.out")):
        tail = _tail(path, lines)
        if tail:
            out += ["", f"--- {path.name} (last {len(tail)} lines)", *tail]
    return "\n".join(out)


def write_job_json(folder: Path, info: Dict[str, Any]) -> None:
    """Record how a job was submitted, next to its logs and checkpoints."""
    atomic_write_text(folder / "job.json",
                      json.dumps({**info, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))


