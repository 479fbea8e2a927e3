"""A whole sweep as one Slurm job: `python launch/tune.py ... --slurm --nodes N [--gpus-per-node G]`.

submitit starts one task per node. Task 0 starts a Ray head on its node, the others start Ray workers
that join it (each `ray start --block`, stopped by this code, never by `ray stop`, which would kill
every Ray process of the user on the machine). When all nodes have joined, task 0 runs the Tuner
against that cluster (`launch/tune_run.py`, the same code as a local sweep); at the end it writes a
marker, every task stops its own Ray process, and the job ends.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from launch import slurm as slurm_job
from launch.config import Config

REPO = Path(__file__).resolve().parents[1]
DONE = "sweep_done"


def ray_port(job_id: str) -> int:
    """The head's GCS port, derived from the job id so every task agrees without talking."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _ray_environment(token: str) -> None:
    """Set before anything imports Ray: a multi-node cluster that only holders of this job's token may join."""
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


def _ray_start(args: List[str], log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", *args], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def _wait_for_nodes(address: str, count: int, timeout_s: float) -> None:
    import ray

    os.environ["RAY_ADDRESS"] = address
    deadline = time.time() + timeout_s
    ray.init(address=address, log_to_driver=False)
    try:
        while time.time() < deadline:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            if len(alive) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"only {len(alive)} of {count} Ray nodes joined {address} within {timeout_s:.0f} s")
    finally:
        ray.shutdown()


class SweepJob:
    """What every task of the sweep job runs. Args: tune.py's argv, code snapshot, the user's folder."""

    def __init__(self, argv: List[str], code_dir: Optional[str], workdir: str, cpus: int, gpus: int):
        self.argv, self.code_dir, self.workdir, self.cpus, self.gpus = argv, code_dir, workdir, cpus, gpus
        self.token = secrets.token_hex(32)  # Ray's token auth; the job's pickle is readable by its owner only

    def __call__(self) -> Optional[Dict[str, Any]]:
        if self.code_dir:
            sys.path.insert(0, self.code_dir)
        os.chdir(self.workdir)
        import submitit

        _ray_environment(self.token)
        job_env = submitit.JobEnvironment()
        folder = Path(job_env.paths.folder).resolve()
        on_slurm = job_env.cluster == "slurm"
        # Slurm's NodeAddr of each node (a node name need not resolve as a host name).
        head = slurm_job._node_address(job_env.hostnames[0]) if on_slurm else "127.0.0.1"
        own = slurm_job._node_address(os.environ.get("SLURMD_NODENAME", job_env.hostname)) if on_slurm else "127.0.0.1"
        address = f"{head}:{ray_port(job_env.job_id)}"
        resources = [f"--num-cpus={self.cpus}", f"--num-gpus={self.gpus}", f"--node-ip-address={own}"]
        log = folder / f"ray_node{job_env.node}.log"
        if job_env.global_rank == 0:
            proc = _ray_start(["--head", f"--port={ray_port(job_env.job_id)}", "--include-dashboard=false",
                               f"--temp-dir=/tmp/ray_{job_env.job_id}", *resources], log)
            try:
                _wait_for_nodes(address, job_env.num_nodes, timeout_s=300)
                from launch.tune import main as tune_main

                code = tune_main([a for a in self.argv if a not in ("--slurm", "--wait", "--local")])
                return {"exit_code": code}
            finally:
                (folder / DONE).write_text("done")
                _stop(proc)
        proc = None
        try:
            deadline = time.time() + 300
            while proc is None or proc.poll() is not None:  # the head may not be up yet: retry joining
                if time.time() > deadline:
                    raise TimeoutError(f"could not join the Ray head at {address}; see {log}")
                proc = _ray_start([f"--address={address}", *resources], log)
                time.sleep(5)
            while not (folder / DONE).exists():
                time.sleep(2)
            return None
        finally:
            if proc is not None:
                _stop(proc)


def submit_sweep(args: argparse.Namespace, cfg: Config, sweep_dir: Path) -> int:
    """Submit (or with --dry-run, print) the sweep job; with --wait, wait for it and return its exit code."""
    import submitit

    from launch.submit import sbatch_script

    s = cfg.slurm
    nodes = args.nodes or s.nodes
    gpus = args.gpus_per_node if args.gpus_per_node is not None else s.gpus_per_node
    folder = sweep_dir / "slurm" / "%j"
    # --dry-run shows the Slurm script even where no Slurm is installed
    cluster = "slurm" if args.dry_run else "local" if args.local or not slurm_job.slurm_available() else "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else "local")
    params: Dict[str, Any] = {"name": slurm_job.safe_component(f"tune/{sweep_dir.name}"),
                              "timeout_min": slurm_job.parse_time_minutes(args.time or s.time),
                              "cpus_per_task": s.cpus_per_task, "nodes": nodes if cluster == "slurm" else 1,
                              "tasks_per_node": 1}
    if cluster == "slurm":
        params["slurm_setup"] = ["export PYTHONUNBUFFERED=1"]
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(args, key, None) or getattr(s, key)
            if value:
                params[f"slurm_{key}"] = value
    if gpus:
        params["gpus_per_node"] = gpus
    executor.update_parameters(**params)
    argv = [a for a in sys.argv[1:] if a != "--dry-run"]
    print(f"one Slurm job: {nodes} node(s), Ray head on the first, {s.cpus_per_task} CPU(s) and {gpus} GPU(s) per node")
    if args.dry_run:
        print(sbatch_script(executor, 1))
        return 0
    code_dir = slurm_job.snapshot_code(REPO, Path(cfg.output_dir).resolve() / ".code")
    job = executor.submit(SweepJob(argv, str(code_dir), os.getcwd(), s.cpus_per_task, gpus))
    job_folder = Path(str(folder).replace("%j", str(job.job_id)))
    slurm_job.write_job_json(job_folder, {"command": [sys.executable, *sys.argv], "job_id": str(job.job_id),
                                          "cluster": cluster, "nodes": nodes, "sweep_dir": str(sweep_dir),
                                          "code_snapshot": str(code_dir)})
    print(f"submitted sweep job {job.job_id}; logs in {job_folder}; status: python launch/submit.py --status {job_folder}")
    if not getattr(args, "wait", False):
        return 0
    head = job.results()[0]  # one result per task; the head's carries the sweep's exit code
    return int((head or {}).get("exit_code", 1))
