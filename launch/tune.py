"""Ray Tune sweeps of ordinary training runs: `python launch/tune.py --config X.yaml --sweep S.yaml`.

Every trial is `launch/train.py` with the trial's overrides, in `<output_dir>/<experiment>/<sweep>/<trial
id>/`. ASHA stops weak trials early, PBT perturbs and resumes from trial checkpoints, FIFO runs all to
the end. MLflow gets one parent run per sweep and one nested child run per trial; with the embedded
SQLite store, trials log through an `mlflow server` on 127.0.0.1 that this command starts and stops.
`--resume` continues an interrupted sweep (Tuner.restore) without rerunning finished trials. Ctrl-C stops
a local sweep (exit 130): trials that were training are marked `interrupted`, those not begun `not started`.
"""

from __future__ import annotations

import argparse
import logging
import sys

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.sweeps.plan import DEFAULT_SWEEP, SweepRequest, local_ray_environment
from action_launch.sweeps.spec import SCHEDULERS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base training config (YAML); omitted: embedded defaults")
    parser.add_argument(
        "--sweep",
        default=str(DEFAULT_SWEEP),
        help="sweep file: search space, metric, scheduler settings (default: %(default)s)",
    )
    parser.add_argument("--name", help="sweep name (folder and MLflow parent run); default: the sweep file's name")
    parser.add_argument("--num-samples", type=int, help="samples per grid point (overrides the sweep file)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="asha")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--gpus-per-trial", type=float, default=0)
    parser.add_argument(
        "--workers-per-trial", type=int, help="training processes per trial (default: GPUs per trial, at least 1)"
    )
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial from its checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--dry-run", action="store_true", help="check config and sweep, print the plan, run nothing")
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="run the whole sweep as one Slurm job (Ray head + workers across its nodes)",
    )
    parser.add_argument("--nodes", type=int, help="with --slurm: nodes of the job")
    parser.add_argument("--gpus-per-node", type=int, help="with --slurm: GPUs per node")
    parser.add_argument("--partition", help="with --slurm")
    parser.add_argument("--time", help="with --slurm: HH:MM:SS")
    parser.add_argument("--local", action="store_true", help="with --slurm: submitit's local executor (no Slurm)")
    parser.add_argument("--wait", action="store_true", help="with --slurm: wait for the sweep job to end")
    parser.add_argument("overrides", nargs="*", help="key.sub=value applied to every trial")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def main(argv=None) -> int:
    request = SweepRequest(**vars(parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if request.slurm:
        from action_launch.cluster.sweep_job import submit_sweep

        return submit_sweep(request)
    local_ray_environment()
    from action_launch.sweeps.run import resume_command, sweep

    try:
        return sweep(request)
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune was stopping after the first
        print(f"interrupted: continue the sweep with: {resume_command()}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
