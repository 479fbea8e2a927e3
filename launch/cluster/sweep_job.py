"""A whole sweep as one Slurm job: `python launch/tune.py ... --slurm --nodes N [--gpus-per-node G]`.

submitit starts one task per node. Task 0 starts a Ray head on its node, the others start Ray workers
that join it (each `ray start --block`, stopped by this code, never by `ray stop`, which would kill
every Ray process of the user on the machine). When all nodes have joined, task 0 runs the Tuner
against that cluster (`sweeps.run.sweep`, the same code as a local sweep); at the end it writes a
marker, the workers stop their Ray processes, then the head stops its own, and the job ends (in a few
seconds: a head stopped first, or a whole process group signalled at once, made Ray wait out a 30 s drain).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from action_launch import ROOT, child_python_env
from action_launch.cluster.executor import choose_cluster, make_executor, sbatch_script, slurm_refusal, working_dir
from action_launch.cluster.jobs import write_job_json
from action_launch.cluster.plan import check_script_values, safe_component, script_values
from action_launch.cluster.snapshot import snapshot_code
from action_launch.common.cluster_env import ClusterEnvironment, job_port, node_address
from action_launch.common.processes import stop_process_group
from action_launch.config import ConfigError
from action_launch.sweeps.plan import SweepRequest, make_plan
from action_launch.sweeps.ray_cluster import wait_for_nodes

DONE = "sweep_done"
STOPPED = "ray_stopped_node"  # + the node's index: a worker node has stopped its Ray


def ray_addresses(job_env: Any) -> Tuple[str, str, int]:
    """(head address, this node's address, head port) of the job's Ray cluster. The head listens where a training
    job's rank 0 would (`common.cluster_env`): the first node's Slurm NodeAddr (a node name need not resolve as a host
    name) and the port of the job id, so every task agrees without talking; 127.0.0.1 on submitit's local executor."""
    slurm = ClusterEnvironment.from_slurm() if job_env.cluster == "slurm" else None
    if slurm is None:
        return "127.0.0.1", "127.0.0.1", job_port(job_env.job_id)
    return slurm.main_address(), node_address(os.environ.get("SLURMD_NODENAME", job_env.hostname)), slurm.main_port


def _ray_environment(token: str) -> None:
    """Set before anything imports Ray: a multi-node cluster that only holders of this job's token may join."""
    os.environ.update(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
        }
    )
    os.environ.update(child_python_env())  # Ray's workers import the trial function from this same code
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


def _ray_start(args: List[str], log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen(
        [ray, "start", "--block", "--disable-usage-stats", *args],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class SweepJob:
    """What every task of the sweep job runs.

    Args:
        request: the sweep as `launch/tune.py` was asked for it (run here without `slurm`).
        code_dir: code snapshot to import from (None: the installed tree).
        workdir: the directory tune.py ran in; relative paths of the request are relative to it.
        cpus, gpus: what each node's Ray process offers to trials.
    """

    def __init__(self, request: SweepRequest, code_dir: Optional[str], workdir: str, cpus: int, gpus: int):
        self.request, self.code_dir, self.workdir, self.cpus, self.gpus = request, code_dir, workdir, cpus, gpus
        self.token = secrets.token_hex(32)  # Ray's token auth; the job's pickle is readable by its owner only

    def __call__(self) -> Optional[Dict[str, Any]]:
        if self.code_dir:
            sys.path.insert(0, self.code_dir)
        os.chdir(self.workdir)
        import submitit

        _ray_environment(self.token)
        job_env = submitit.JobEnvironment()
        from action_launch.sweeps.run import interrupt_on_sigterm  # imports Ray: after its environment is set

        interrupt_on_sigterm()  # scancel: submitit's own handler only says "Bypassing signal SIGTERM"
        folder = Path(job_env.paths.folder).resolve()
        head, own, port = ray_addresses(job_env)
        address = f"{head}:{port}"
        resources = [f"--num-cpus={self.cpus}", f"--num-gpus={self.gpus}", f"--node-ip-address={own}"]
        log = folder / f"ray_node{job_env.node}.log"
        if job_env.global_rank == 0:
            proc = _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir=/tmp/ray_{job_env.job_id}",
                    *resources,
                ],
                log,
            )
            try:
                wait_for_nodes(address, job_env.num_nodes, timeout_s=300)
                from action_launch.sweeps.run import sweep

                return {"exit_code": sweep(self.request)}
            finally:
                (folder / DONE).write_text("done")
                _wait_for_workers_stopped(folder, job_env.num_nodes, timeout_s=30.0)
                _stop_ray(proc, job_env.node)
        joined: Optional[subprocess.Popen] = None
        try:
            deadline = time.time() + 300
            while joined is None or joined.poll() is not None:  # the head may not be up yet: retry joining
                if time.time() > deadline:
                    raise TimeoutError(f"could not join the Ray head at {address}; see {log}")
                joined = _ray_start([f"--address={address}", *resources], log)
                time.sleep(5)
            while not (folder / DONE).exists():
                time.sleep(1)
            return None
        finally:
            if joined is not None:
                _stop_ray(joined, job_env.node)
            (folder / f"{STOPPED}{job_env.node}").write_text("stopped")


def _stop_ray(proc: subprocess.Popen, node: int) -> None:
    """Stop this node's `ray start --block` the way it shuts down quickly: a SIGTERM to it alone (it drains
    the node through the head's GCS, so workers stop before the head), and say how long it took."""
    began = time.monotonic()
    stop_process_group(proc, grace_s=60.0, leader_first=True)
    print(f"ray on node {node} stopped in {time.monotonic() - began:.1f} s", flush=True)


def _wait_for_workers_stopped(folder: Path, nodes: int, timeout_s: float) -> None:
    """Wait (at most `timeout_s`) until every worker node has stopped its Ray: a worker whose head is gone
    first waits out its own drain timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all((folder / f"{STOPPED}{n}").exists() for n in range(1, nodes)):
        time.sleep(0.5)


def submit_sweep(request: SweepRequest) -> int:
    """Check the sweep, then submit it as one job (with `dry_run`, print its sbatch script); with `wait`,
    wait for it and return the sweep's exit code."""
    plan = make_plan(request)
    if plan is None:
        return 2
    given: Dict[str, Any] = {  # SlurmConfig fields (of different types) the request sets, None where it does not
        "nodes": request.nodes,
        "gpus_per_node": request.gpus_per_node,
        "partition": request.partition,
        "time": request.time,
    }
    s = dataclasses.replace(plan.cfg.slurm, **{k: v for k, v in given.items() if v is not None})
    try:  # before anything is written or submitted
        check_script_values(
            {
                **script_values(dataclasses.replace(plan.cfg, slurm=s), [k for k, v in given.items() if v is not None]),
                "--name": request.name,
            }
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = plan.sweep_dir / "slurm" / "%j"
    # --dry-run shows the Slurm script even where no Slurm is installed
    cluster = "slurm" if request.dry_run else choose_cluster(request.local)
    executor = make_executor(
        folder,
        cluster,
        s,
        name=safe_component(f"tune/{plan.sweep_dir.name}"),
        nodes=s.nodes,
        tasks_per_node=1,
        local_tasks=1,
        requeue_signal=False,
    )
    print(
        f"one Slurm job: {s.nodes} node(s), Ray head on the first, {s.cpus_per_task} CPU(s) and "
        f"{s.gpus_per_node} GPU(s) per node"
    )
    if request.dry_run:
        print(sbatch_script(executor, 1))
        return 0
    if cluster == "slurm" and (refusal := slurm_refusal(sbatch_script(executor, 1))):
        print(f"error: Slurm would refuse this job: {refusal}", file=sys.stderr)
        return 2
    code_dir = snapshot_code(ROOT, Path(plan.cfg.output_dir).resolve() / ".code")
    on_node = dataclasses.replace(request, slurm=False, wait=False, local=False, dry_run=False)
    job_spec = SweepJob(on_node, str(code_dir), os.getcwd(), s.cpus_per_task, s.gpus_per_node)
    with working_dir(code_dir):  # the job starts in the snapshot and imports action_launch from it
        job = executor.submit(job_spec)
    job_folder = Path(str(folder).replace("%j", str(job.job_id)))
    write_job_json(
        job_folder,
        {
            "command": [sys.executable, *sys.argv],
            "job_id": str(job.job_id),
            "cluster": cluster,
            "nodes": s.nodes,
            "sweep_dir": str(plan.sweep_dir),
            "code_snapshot": str(code_dir),
        },
    )
    print(
        f"submitted sweep job {job.job_id}; logs in {job_folder}; status: python launch/submit.py --status {job_folder}"
    )
    if not request.wait:
        return 0
    head = job.results()[0]  # one result per task; the head's carries the sweep's exit code
    return int((head or {}).get("exit_code", 1))
