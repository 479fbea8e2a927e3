"""Ray Tune sweeps of ordinary training runs: `python launch/tune.py --config X.yaml --sweep S.yaml`.

Every trial is `launch/train.py` with the trial's overrides, in `<output_dir>/<experiment>/<sweep>/<trial
id>/`. ASHA stops weak trials early, PBT perturbs and resumes from trial checkpoints, FIFO runs all to
the end. MLflow gets one parent run per sweep and one nested child run per trial; with the embedded
SQLite store, trials log through an `mlflow server` on 127.0.0.1 that this command starts and stops.
`--resume` continues an interrupted sweep (Tuner.restore) without rerunning finished trials.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # run as a script: import the suite, not launch/ siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from launch.config import Config, ConfigError, load_config  # noqa: E402
from launch.sweep_spec import SCHEDULERS, SweepError, SweepSpec, example_overrides, load_sweep  # noqa: E402

log = logging.getLogger("launch.tune")
REPO = Path(__file__).resolve().parents[1]
TUNE_DIR = "tune"  # Ray's experiment folder inside the sweep folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base training config (YAML); omitted: embedded defaults")
    parser.add_argument("--sweep", default=str(REPO / "configs" / "sweeps" / "frames_sampling_lr.yaml"),
                        help="sweep file: search space, metric, scheduler settings (default: %(default)s)")
    parser.add_argument("--name", help="sweep name (folder and MLflow parent run); default: the sweep file's name")
    parser.add_argument("--num-samples", type=int, help="samples per grid point (overrides the sweep file)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="asha")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--gpus-per-trial", type=float, default=0)
    parser.add_argument("--workers-per-trial", type=int,
                        help="training processes per trial (default: GPUs per trial, at least 1)")
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial from its checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--dry-run", action="store_true", help="check config and sweep, print the plan, run nothing")
    parser.add_argument("--slurm", action="store_true",
                        help="run the whole sweep as one Slurm job (Ray head + workers across its nodes)")
    parser.add_argument("--nodes", type=int, help="with --slurm: nodes of the job")
    parser.add_argument("--gpus-per-node", type=int, help="with --slurm: GPUs per node")
    parser.add_argument("--partition", help="with --slurm")
    parser.add_argument("--time", help="with --slurm: HH:MM:SS")
    parser.add_argument("--local", action="store_true", help="with --slurm: submitit's local executor (no Slurm)")
    parser.add_argument("--wait", action="store_true", help="with --slurm: wait for the sweep job to end")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to every trial")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def check_inputs(args: argparse.Namespace) -> tuple[Config, SweepSpec]:
    """Load the base config and the sweep; every swept key and value must make a valid config."""
    cfg = load_config(args.config, args.overrides)
    spec = load_sweep(args.sweep)
    for extra in example_overrides(spec):
        try:
            load_config(args.config, [*args.overrides, *extra])
        except ConfigError as err:
            raise SweepError(f"{spec.source}: {' '.join(extra)}: {err}") from None
    return cfg, spec


def sweep_dir_of(cfg: Config, name: str) -> Path:
    """`<output_dir>/<experiment>/<sweep name>`: sweep file, Ray state, trial folders, results."""
    return (Path(cfg.output_dir) / cfg.experiment / name).resolve()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


def plan_text(args: argparse.Namespace, cfg: Config, spec: SweepSpec, sweep_dir: Path) -> str:
    """What the sweep will do, in words (printed before it starts and by --dry-run)."""
    samples = args.num_samples or spec.num_samples
    lines = [f"sweep {sweep_dir.name}: {spec.grid_size() * samples} trials ({spec.grid_size()} grid points x "
             f"{samples} samples), scheduler {args.scheduler}, metric {spec.metric} ({spec.mode}), budget "
             f"{spec.budget} up to {max_budget(spec, cfg)}",
             f"each trial: {args.cpus_per_trial} CPU, {args.gpus_per_trial} GPU, "
             f"{workers_per_trial(args)} process(es); folder {sweep_dir}"]
    lines += [f"  {p.name}: {p.describe()}" for p in spec.params]
    return "\n".join(lines)


def workers_per_trial(args: argparse.Namespace) -> int:
    return args.workers_per_trial or max(1, int(args.gpus_per_trial))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, spec = check_inputs(args)
        name = args.name or Path(args.sweep).stem
        sweep_dir = sweep_dir_of(cfg, name)
        print(plan_text(args, cfg, spec, sweep_dir), flush=True)
    except (ConfigError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.slurm:
        from launch.tune_slurm import submit_sweep

        return submit_sweep(args, cfg, sweep_dir)
    if args.dry_run:
        return 0
    state = sweep_dir / TUNE_DIR
    if state.exists() and not args.resume:
        print(f"error: {sweep_dir} already holds a sweep; continue it with --resume, or start another with "
              f"--name <new name>", file=sys.stderr)
        return 2
    if args.resume and not state.exists():
        print(f"error: --resume: no sweep to resume in {sweep_dir}", file=sys.stderr)
        return 2
    if not os.environ.get("RAY_ADDRESS"):
        # Read when Ray is imported: a one-machine Ray then binds only loopback addresses.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from launch.tune_run import run_sweep

    summary = run_sweep(args, cfg, spec, sweep_dir)
    return 0 if summary["completed_or_stopped"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
