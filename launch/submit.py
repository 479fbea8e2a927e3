"""Submit training to Slurm through submitit: `python launch/submit.py --config X.yaml --nodes 4 [key=value ...]`.

One task per GPU (one per node on CPU); every task runs the same Trainer as `launch/train.py`, with
rank/world/master taken from Slurm. Slurm settings come from the config's `slurm:` section, and the
flags below override them. `key=a,b,c` (or a `grid:` section, or several --config files) submits one
job array. Without Slurm (or with --local) the same job runs through submitit's local executor.
Each job lives in `<output_dir>/<experiment>/<name>/<job id>/`: logs, resolved config, checkpoints,
job.json. `--status THAT_FOLDER` shows its state and the tail of its logs.
"""
from __future__ import annotations

import time

_STARTED = time.time()  # before the imports below: bench/launcher.py splits the launcher's own time with it

import argparse
import contextlib
import itertools
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and __package__ is None:  # run as a script: import the suite, not launch/ siblings
    sys.path[0] = str(REPO)

from launch.config import (ConfigError, Config, deep_merge, dump_config, flatten, from_dict,  # noqa: E402
                           load_yaml_with_bases, parse_overrides, to_dict)
from launch import slurm as slurm_job  # noqa: E402  (imports submitit only inside functions)

# Flags that override `slurm.<field>`: name -> (type, help). One table, so flags and fields cannot drift.
SLURM_FLAGS: Dict[str, Tuple[type, str]] = {
    "nodes": (int, "nodes (one task per GPU on each, or one per node on CPU)"),
    "gpus_per_node": (int, "GPUs per node (0: CPU, gloo)"),
    "cpus_per_task": (int, "CPU cores per task"),
    "mem_gb": (float, "memory per node in GB"),
    "partition": (str, "Slurm partition"),
    "account": (str, "Slurm account"),
    "qos": (str, "quality of service"),
    "constraint": (str, "node feature constraint"),
    "time": (str, "time limit per allocation, HH:MM:SS or D-HH:MM:SS"),
    "job_name": (str, "job name (default <experiment>/<name>)"),
    "signal_delay_s": (int, "seconds before the time limit at which the job checkpoints and requeues"),
    "max_requeues": (int, "requeues after preemption/time limit before giving up"),
    "array_parallelism": (int, "jobs of an array running at once"),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Overrides: dotted keys parsed as YAML (optim.lr=0.01); a value with "
                                            "top-level commas is a grid axis (optim.lr=0.01,0.02)")
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config; repeat it (--config a.yaml --config b.yaml) to submit one job array")
    for name, (tp, text) in SLURM_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, help=f"{text} (slurm.{name})")
    parser.add_argument("--array", action="store_true", help="submit as a job array even for a single config")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and resolved config(s); submit nothing")
    parser.add_argument("--local", action="store_true", help="run through submitit's local executor (default without Slurm)")
    parser.add_argument("--wait", action="store_true", help="wait for the job(s) to end; exit 1 if any failed")
    parser.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                        help="run the live tree instead of a copy of the code taken at submission")
    parser.add_argument("--status", metavar="RUN_DIR", help="show the state and log tail of a submitted job")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, or key=a,b,c for a grid")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


# ------------------------------------------------------------------------------- resolving configs

def split_top_level(text: str) -> List[str]:
    """`0.1,0.2` -> two values; commas inside [], {} or quotes do not split (`[32,36]` is one value)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


@dataclass
class Plan:
    """One job: its config and the layout it will run with."""

    cfg: Config
    grid_point: Dict[str, Any] = field(default_factory=dict)
    nodes: int = 1
    tasks_per_node: int = 1
    effective_batch: int = 0
    lr: float = 0.0
    scaled_lr: float = 0.0

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def resolve(config_paths: Sequence[str], overrides: Sequence[str], flags: Dict[str, Any],
            check_model: bool = True) -> List[Plan]:
    """The one place where config files, grid axes, overrides and Slurm flags become job configs.

    `check_model=False` leaves the `model:` section to the job (checking it imports torch).
    """
    fixed, cli_axes = [], []
    for item in overrides:
        key, sep, text = item.partition("=")
        values = split_top_level(text) if sep else [text]
        if len(values) > 1:
            cli_axes.append((key, values))
        else:
            fixed.append(item)
    flag_tree = {"slurm": {k: v for k, v in flags.items() if v is not None}}
    plans = []
    for path in config_paths or [None]:
        raw = load_yaml_with_bases(path) if path else {}
        grid = raw.pop("grid", None) or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"grid: expected a mapping of dotted keys to non-empty lists (in {path})")
        axes = [(k, [json.dumps(v) for v in values]) for k, values in grid.items()] + cli_axes
        for combo in itertools.product(*[values for _, values in axes]):
            point = dict(zip([k for k, _ in axes], combo))
            tree = parse_overrides([*fixed, *(f"{k}={v}" for k, v in point.items())])
            merged = deep_merge(raw, tree)
            written = merged.get("slurm", {}) if isinstance(merged.get("slurm"), dict) else {}
            cfg = from_dict(deep_merge(merged, flag_tree), source=str(path) if path else "defaults",
                            override_keys=set(flatten(tree)) | {f"slurm.{k}" for k in flag_tree["slurm"]},
                            check_model=check_model)
            plans.append(_layout(cfg, written, {k: parse_overrides([f"x={v}"])["x"] for k, v in point.items()}))
    return plans


def _layout(cfg: Config, written_slurm: Dict[str, Any], point: Dict[str, Any]) -> Plan:
    """Tasks, effective batch and scaled LR; `optim.keep_effective_batch` trades accumulation for devices."""
    from launch.schedule import effective_batch_size, scale_lrs

    s, t = cfg.slurm, cfg.train
    tasks_per_node = max(1, s.gpus_per_node)
    world = s.nodes * tasks_per_node
    if cfg.optim.keep_effective_batch:
        written_world = int(written_slurm.get("nodes", 1)) * max(1, int(written_slurm.get("gpus_per_node", 0)))
        target = effective_batch_size(t.micro_batch_size, t.grad_accum, written_world)
        if target % (t.micro_batch_size * world):
            raise ConfigError(
                f"optim.keep_effective_batch: the config's effective batch {target} (micro {t.micro_batch_size} x "
                f"accumulation {t.grad_accum} x world {written_world}) is not a multiple of micro "
                f"{t.micro_batch_size} x world {world}; change train.micro_batch_size or --nodes")
        t.grad_accum = target // (t.micro_batch_size * world)
    effective = effective_batch_size(t.micro_batch_size, t.grad_accum, world)
    scaled = scale_lrs(cfg.optim, effective)
    return Plan(cfg, point, s.nodes, tasks_per_node, effective, cfg.optim.lr, scaled.lr)


def describe(plan: Plan, index: int, total: int) -> str:
    cfg = plan.cfg
    device = f"{cfg.slurm.gpus_per_node} GPU(s)/node, nccl" if cfg.slurm.gpus_per_node else "CPU, gloo"
    head = f"job {index + 1}/{total}" + (f" {plan.grid_point}" if plan.grid_point else "")
    return (f"{head}: {cfg.experiment}/{cfg.name}\n"
            f"  {plan.nodes} node(s) x {plan.tasks_per_node} task(s) = world size {plan.world_size} ({device})\n"
            f"  effective batch {plan.effective_batch} = micro {cfg.train.micro_batch_size} x accumulation "
            f"{cfg.train.grad_accum} x world {plan.world_size}\n"
            f"  lr {plan.lr:g} -> {plan.scaled_lr:g} ({cfg.optim.lr_scaling} rule, base batch {cfg.optim.base_batch_size})")


# ---------------------------------------------------------------------------------------- executor

def make_executor(plans: List[Plan], folder: Path, cluster: str) -> Any:
    """A submitit AutoExecutor with the Slurm parameters of the (first) plan; arrays share one layout."""
    import submitit

    first = plans[0]
    s = first.cfg.slurm
    for other in plans[1:]:
        if (other.nodes, other.tasks_per_node) != (first.nodes, first.tasks_per_node):
            raise ConfigError("a job array needs one layout: every config must ask for the same slurm.nodes and "
                              "slurm.gpus_per_node")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: Dict[str, Any] = {
        "name": s.job_name or slurm_job.safe_component(f"{first.cfg.experiment}/{first.cfg.name}"),
        "timeout_min": slurm_job.parse_time_minutes(s.time),
        "cpus_per_task": s.cpus_per_task,
    }
    if cluster == "slurm":
        params.update(nodes=first.nodes, tasks_per_node=first.tasks_per_node,
                      slurm_signal_delay_s=s.signal_delay_s, slurm_array_parallelism=s.array_parallelism,
                      slurm_setup=["export PYTHONUNBUFFERED=1"])
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(s, key):
                params[f"slurm_{key}"] = getattr(s, key)
    else:  # one machine: the same number of processes, all here
        params.update(nodes=1, tasks_per_node=first.world_size)
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor: Any, n_jobs: int) -> str:
    """The exact sbatch file submitit would submit (with the array line for more than one job)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor
    params = dict(inner.parameters)
    if n_jobs > 1:
        params["map_count"] = n_jobs
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, **params)


@contextlib.contextmanager
def _working_dir(path: Optional[Path]) -> Iterator[None]:
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


def submit(plans: List[Plan], args: argparse.Namespace, cluster: str) -> List[Tuple[Any, Path]]:
    first = plans[0].cfg
    template = slurm_job.job_folder_template(first.output_dir, first.experiment, first.name)
    timing_resolved = time.time()
    executor = make_executor(plans, template, cluster)
    code_dir = None
    if args.snapshot:
        try:
            code_dir = slurm_job.snapshot_code(REPO, Path(first.output_dir).resolve() / ".code")
        except Exception as err:  # noqa: BLE001 - e.g. not a git checkout, or git missing
            print(f"warning: no code snapshot ({err}); the job runs the live tree", file=sys.stderr)
    workdir = os.getcwd()
    jobs = [slurm_job.TrainJob(to_dict(p.cfg), str(code_dir) if code_dir else None, workdir) for p in plans]
    timing = {"process": _STARTED, "resolved": timing_resolved, "snapshot_done": time.time()}
    with _working_dir(code_dir):
        if len(jobs) > 1 or args.array:
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
        slurm_job.write_job_json(folder, {
            "command": [sys.executable, *sys.argv], "job_id": str(job.job_id), "cluster": cluster,
            "nodes": plan.nodes, "tasks_per_node": plan.tasks_per_node, "world_size": plan.world_size,
            "effective_batch": plan.effective_batch, "lr": plan.lr, "scaled_lr": plan.scaled_lr,
            "grad_accum": plan.cfg.train.grad_accum, "grid_point": plan.grid_point, "run_dir": str(folder),
            "code_snapshot": str(code_dir) if code_dir else None, "experiment": plan.cfg.experiment,
            "name": plan.cfg.name, "timing": timing})
        out.append((job, folder))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.status:
        try:
            print(slurm_job.status_report(Path(args.status)))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        # A real submission checks the model section now (imports torch: a typo fails here, not after
        # hours in the queue); --dry-run skips that to stay fast and says so.
        plans = resolve(args.config, args.overrides, {k: getattr(args, k) for k in SLURM_FLAGS},
                        check_model=not args.dry_run)
        for plan in plans:
            slurm_job.parse_time_minutes(plan.cfg.slurm.time)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    for i, plan in enumerate(plans):
        print(describe(plan, i, len(plans)))
    if args.dry_run:
        import yaml

        first = plans[0].cfg
        executor = make_executor(plans, slurm_job.job_folder_template(first.output_dir, first.experiment, first.name),
                                 "slurm")
        print("\n(model section not checked against its preset in --dry-run; a real submission checks it)")
        print("\n# ---- sbatch script " + "-" * 60)
        print(sbatch_script(executor, len(plans) if len(plans) > 1 or args.array else 1), end="")
        for i, plan in enumerate(plans):
            print(f"\n# ---- resolved config {i + 1}/{len(plans)} " + "-" * 52)
            print(yaml.safe_dump(to_dict(plan.cfg), sort_keys=False), end="")
        return 0
    cluster = "local" if args.local or not slurm_job.slurm_available() else "slurm"
    if cluster == "local" and not args.local:
        print("no Slurm controller found (sbatch/scontrol ping): running through submitit's local executor")
    submitted = submit(plans, args, cluster)
    for job, folder in submitted:
        print(f"submitted job {job.job_id} ({cluster}); run folder {folder}")
        print(f"  status: python launch/submit.py --status {shlex.quote(str(folder))}")
    if args.wait or cluster == "local":
        failed = 0
        for job, folder in submitted:
            try:
                job.results()  # one result per task; raises if any task failed
                print(f"job {job.job_id} finished")
            except Exception as err:  # noqa: BLE001 - report every job, then fail once
                failed += 1
                print(f"job {job.job_id} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}\n"
                      f"  details: python launch/submit.py --status {shlex.quote(str(folder))}", file=sys.stderr)
        for _, folder in submitted:  # the local executor makes an empty literal "%j" folder while it waits
            with contextlib.suppress(OSError):
                (folder.parent / "%j").rmdir()
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
