"""`launch/submit.py`'s work: resolve the configs into plans, print them, submit them as one job or one
array through submitit (local executor without Slurm), and wait for them when asked."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from action_launch import ROOT
from action_launch.cluster.executor import choose_cluster, make_executor, sbatch_script, slurm_refusal, working_dir
from action_launch.cluster.jobs import TrainJob, failure_tail, write_job_json
from action_launch.cluster.plan import (
    Plan,
    check_script_values,
    describe,
    job_folder_template,
    parse_time_minutes,
    resolve,
    safe_component,
    script_values,
)
from action_launch.cluster.snapshot import snapshot_code
from action_launch.common.console import last_exception_line
from action_launch.config import ConfigError, dump_config, to_dict


@dataclass
class SubmitRequest:
    """What `launch/submit.py` was asked to do."""

    configs: List[str] = field(default_factory=list)
    """Config files (several: one job array)."""
    overrides: List[str] = field(default_factory=list)
    """key=value overrides; key=a,b,c is a grid axis."""
    slurm: Dict[str, Any] = field(default_factory=dict)
    """`slurm.<field>` values given as flags (None: not given)."""
    array: bool = False
    """Submit as a job array even for a single config."""
    dry_run: bool = False
    """Print the sbatch script and the resolved configs; submit nothing."""
    local: bool = False
    """submitit's local executor even where Slurm answers."""
    wait: bool = False
    """Wait for the jobs to end."""
    snapshot: bool = True
    """Run a copy of the code taken now (False: the live tree)."""
    command: List[str] = field(default_factory=lambda: [sys.executable, *sys.argv])
    """The command line, recorded in each job.json."""
    started: float = field(default_factory=time.time)
    """When the command started (job.json's timing)."""


def _executor(plans: List[Plan], folder: Path, cluster: str) -> Any:
    """The executor of a job or an array: the layout and resources of its first plan (arrays share one)."""
    first = plans[0]
    for other in plans[1:]:
        if (other.nodes, other.tasks_per_node) != (first.nodes, first.tasks_per_node):
            raise ConfigError(
                "a job array needs one layout: every config must ask for the same slurm.nodes and slurm.gpus_per_node"
            )
    s = first.cfg.slurm
    return make_executor(
        folder,
        cluster,
        s,
        name=s.job_name or safe_component(f"{first.cfg.experiment}/{first.cfg.name}"),
        nodes=first.nodes,
        tasks_per_node=first.tasks_per_node,
    )


def submit_plans(plans: List[Plan], request: SubmitRequest, cluster: str) -> List[Tuple[Any, Path]]:
    """Submit every plan (one job, or one array); returns (submitit job, run folder) pairs."""
    first = plans[0].cfg
    template = job_folder_template(first.output_dir, first.experiment, first.name)
    timing_resolved = time.time()
    executor = _executor(plans, template, cluster)
    code_dir = None
    if request.snapshot:
        try:
            code_dir = snapshot_code(ROOT, Path(first.output_dir).resolve() / ".code")
        except Exception as err:
            print(f"warning: no code snapshot ({err}); the job runs the live tree", file=sys.stderr)
    workdir = os.getcwd()
    jobs = [TrainJob(to_dict(p.cfg), str(code_dir) if code_dir else None, workdir) for p in plans]
    timing = {"process": request.started, "resolved": timing_resolved, "snapshot_done": time.time()}
    with working_dir(code_dir):
        if len(jobs) > 1 or request.array:
            with executor.batch():
                submitted = [executor.submit(job) for job in jobs]
        else:
            submitted = [executor.submit(jobs[0])]
    timing["submitted"] = time.time()
    with contextlib.suppress(OSError):  # submitit's local executor leaves an empty literal "%j" folder
        template.rmdir()
    out = []
    for plan, job in zip(plans, submitted):
        folder = Path(str(template).replace("%j", str(job.job_id)))
        dump_config(plan.cfg, folder / "config.yaml")
        write_job_json(
            folder,
            {
                "command": request.command,
                "job_id": str(job.job_id),
                "cluster": cluster,
                "nodes": plan.nodes,
                "tasks_per_node": plan.tasks_per_node,
                "world_size": plan.world_size,
                "effective_batch": plan.effective_batch,
                "lr": plan.lr,
                "scaled_lr": plan.scaled_lr,
                "grad_accum": plan.cfg.train.grad_accum,
                "grid_point": plan.grid_point,
                "run_dir": str(folder),
                "code_snapshot": str(code_dir) if code_dir else None,
                "experiment": plan.cfg.experiment,
                "name": plan.cfg.name,
                "run_name": plan.cfg.run_name(),
                "timing": timing,
            },
        )
        out.append((job, folder))
    return out


def _script(plans: List[Plan], request: SubmitRequest) -> str:
    """The sbatch file of this submission (one job, or one array)."""
    first = plans[0].cfg
    executor = _executor(plans, job_folder_template(first.output_dir, first.experiment, first.name), "slurm")
    return sbatch_script(executor, len(plans) if len(plans) > 1 or request.array else 1)


def _slurm_refusal(plans: List[Plan], request: SubmitRequest) -> Optional[str]:
    """What `sbatch --test-only` refuses in this submission (a partition that does not exist, more nodes than
    it has, ...), before any folder, snapshot or job exists; None if Slurm would queue it."""
    return slurm_refusal(_script(plans, request))


def _print_dry_run(plans: List[Plan], request: SubmitRequest) -> None:
    import yaml

    print("\n(model section not checked against its preset in --dry-run; a real submission checks it)")
    print("\n# ---- sbatch script " + "-" * 60)
    print(_script(plans, request), end="")
    for i, plan in enumerate(plans):
        print(f"\n# ---- resolved config {i + 1}/{len(plans)} " + "-" * 52)
        print(yaml.safe_dump(to_dict(plan.cfg), sort_keys=False), end="")


def _wait(submitted: Sequence[Tuple[Any, Path]]) -> int:
    """Wait for every job; report each failure with the end of its log and where to look; 1 if any failed."""
    failed = 0
    for job, folder in submitted:
        try:
            job.results()  # one result per task; raises if any task failed
            print(f"job {job.job_id} finished")
        except Exception as err:
            failed += 1
            log, tail = failure_tail(job)
            # the error itself, from the log (submitit's exception ends with the log paths)
            reason = last_exception_line("\n".join(tail)) or last_exception_line(str(err)) or type(err).__name__
            lines = [f"job {job.job_id} failed: {reason}"]
            if tail:
                lines += [f"  last {len(tail)} lines of {log}:", *(f"    {line}" for line in tail)]
            lines.append(f"  details: python launch/submit.py --status {shlex.quote(str(folder))}")
            print("\n".join(lines), file=sys.stderr)
    for _, folder in submitted:  # the local executor makes an empty literal "%j" folder while it waits
        with contextlib.suppress(OSError):
            (folder.parent / "%j").rmdir()
    return 1 if failed else 0


def submit_training(request: SubmitRequest) -> int:
    """Resolve, print and submit (or with `dry_run`, only print); the command's exit code."""
    try:
        # A real submission checks the model section now (imports torch: a typo fails here, not after
        # hours in the queue); --dry-run skips that to stay fast and says so.
        plans = resolve(request.configs, request.overrides, request.slurm, check_model=not request.dry_run)
        given = [k for k, v in request.slurm.items() if v is not None]
        for plan in plans:
            check_script_values(script_values(plan.cfg, given))
            parse_time_minutes(plan.cfg.slurm.time)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    for i, plan in enumerate(plans):
        print(describe(plan, i, len(plans)))
    if request.dry_run:
        _print_dry_run(plans, request)
        return 0
    from action_launch.training.preflight import PreflightError, check_run

    try:  # what fails the job on the node fails here, before anything is submitted
        for plan in plans:
            # gpus: the job's tasks', not this machine's;
            # amend: the job trains in a folder of its own (`<name>/<job id>`)
            check_run(plan.cfg, gpus=plan.cfg.slurm.gpus_per_node > 0, amend=True)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cluster = choose_cluster(request.local)
    if cluster == "local" and not request.local:
        print("no Slurm controller found (sbatch/scontrol ping): running through submitit's local executor")
    if cluster == "slurm" and (refusal := _slurm_refusal(plans, request)):
        print(f"error: Slurm would refuse this job: {refusal}", file=sys.stderr)
        return 2
    submitted = submit_plans(plans, request, cluster)
    for job, folder in submitted:
        print(f"submitted job {job.job_id} ({cluster}); run folder {folder}")
        print(f"  status: python launch/submit.py --status {shlex.quote(str(folder))}")
    if request.wait or cluster == "local":
        return _wait(submitted)
    return 0
