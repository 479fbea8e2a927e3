"""A sweep request and its plan: what `launch/tune.py` was asked for, checked against the base config and
the sweep file before Ray (or Slurm) is touched."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from action_launch import ROOT
from action_launch.config import Config, ConfigError, load_config
from action_launch.sweeps.spec import SweepError, SweepSpec, example_overrides, load_sweep

TUNE_DIR = "tune"  # Ray's experiment folder inside the sweep folder
DEFAULT_SWEEP = ROOT / "configs" / "sweeps" / "frames_sampling_lr.yaml"


@dataclass
class SweepRequest:
    """Everything `launch/tune.py` takes; the Slurm sweep job carries it to the node that runs the sweep."""

    config: Optional[str] = None
    """Base training config (None: embedded defaults)."""
    sweep: str = str(DEFAULT_SWEEP)
    """Sweep file: search space, metric, scheduler settings."""
    overrides: List[str] = field(default_factory=list)
    """key=value applied to every trial."""
    name: Optional[str] = None
    """Sweep name (folder and MLflow parent run); None: the sweep file's name."""
    num_samples: Optional[int] = None
    """Samples per grid point (None: the sweep file's)."""
    scheduler: str = "asha"
    """fifo, asha or pbt."""
    max_concurrent: int = 0
    """Trials at once (0: as resources allow)."""
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    workers_per_trial: Optional[int] = None
    """Training processes per trial (None: GPUs per trial, at least 1)."""
    max_failures: int = 1
    """Retries of a crashed trial from its checkpoint."""
    resume: bool = False
    """Continue an interrupted sweep of the same name."""
    dry_run: bool = False
    """Check config and sweep, print the plan, run nothing."""
    slurm: bool = False
    """Run the whole sweep as one Slurm job."""
    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    partition: Optional[str] = None
    time: Optional[str] = None
    local: bool = False
    """With `slurm`: submitit's local executor."""
    wait: bool = False
    """With `slurm`: wait for the sweep job to end."""

    @property
    def workers(self) -> int:
        """Training processes per trial."""
        return self.workers_per_trial or max(1, int(self.gpus_per_trial))


@dataclass
class SweepPlan:
    """A checked request: the base config, the parsed sweep file and the sweep's folder."""

    request: SweepRequest
    cfg: Config
    spec: SweepSpec
    sweep_dir: Path

    @property
    def num_samples(self) -> int:
        return self.request.num_samples or self.spec.num_samples


def check_inputs(request: SweepRequest) -> Tuple[Config, SweepSpec]:
    """Load the base config and the sweep; every swept key and value must make a valid config."""
    cfg = load_config(request.config, request.overrides)
    spec = load_sweep(request.sweep)
    for extra in example_overrides(spec):
        try:
            load_config(request.config, [*request.overrides, *extra])
        except ConfigError as err:
            raise SweepError(f"{spec.source}: {' '.join(extra)}: {err}") from None
    return cfg, spec


def sweep_dir_of(cfg: Config, name: str) -> Path:
    """`<output_dir>/<experiment>/<sweep name>`: sweep file, Ray state, trial folders, results."""
    return (Path(cfg.output_dir) / cfg.experiment / name).resolve()


def budget_attr(spec: SweepSpec) -> str:
    """The result key Tune's schedulers count in: validations (epochs) or optimizer steps."""
    return "epoch" if spec.budget == "epochs" else "step"


def max_budget(spec: SweepSpec, cfg: Config) -> int:
    """ASHA's max_t: the config's epochs, or `asha.max_t` (required for a step budget)."""
    if "max_t" in spec.asha:
        return int(spec.asha["max_t"])
    if spec.budget == "steps":
        raise SweepError(f"{spec.source}: a steps budget needs asha.max_t (optimizer steps of a full trial)")
    return cfg.train.epochs


def plan_text(plan: SweepPlan) -> str:
    """What the sweep will do, in words (printed before it starts and by --dry-run)."""
    r, spec, samples = plan.request, plan.spec, plan.num_samples
    lines = [
        f"sweep {plan.sweep_dir.name}: {spec.grid_size() * samples} trials ({spec.grid_size()} grid points x "
        f"{samples} samples), scheduler {r.scheduler}, metric {spec.metric} ({spec.mode}), budget "
        f"{spec.budget} up to {max_budget(spec, plan.cfg)}",
        f"each trial: {r.cpus_per_trial} CPU, {r.gpus_per_trial} GPU, {r.workers} process(es); folder {plan.sweep_dir}",
    ]
    lines += [f"  {p.name}: {p.describe()}" for p in spec.params]
    return "\n".join(lines)


def make_plan(request: SweepRequest) -> Optional[SweepPlan]:
    """Check the request and print its plan; None (after one error line) when it cannot run."""
    try:
        cfg, spec = check_inputs(request)
        plan = SweepPlan(request, cfg, spec, sweep_dir_of(cfg, request.name or Path(request.sweep).stem))
        print(plan_text(plan), flush=True)
        return plan
    except (ConfigError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def local_ray_environment() -> None:
    """Before Ray is imported for a sweep on this machine: its Ray runtime binds only loopback addresses
    (inside a Slurm sweep job `RAY_ADDRESS` points at the allocation's cluster instead)."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
