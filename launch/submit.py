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
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.cluster.plan import slurm_flags
from action_launch.cluster.submission import SubmitRequest, submit_training


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: dotted keys parsed as YAML (optim.lr=0.01); a value with "
        "top-level commas is a grid axis (optim.lr=0.01,0.02)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="YAML config; repeat it (--config a.yaml --config b.yaml) to submit one job array",
    )
    for name, (tp, text) in slurm_flags().items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, help=f"slurm.{name}: {text}")
    parser.add_argument("--array", action="store_true", help="submit as a job array even for a single config")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script and resolved config(s); submit nothing"
    )
    parser.add_argument(
        "--local", action="store_true", help="run through submitit's local executor (default without Slurm)"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job(s) to end; exit 1 if any failed")
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the live tree instead of a copy of the code taken at submission",
    )
    parser.add_argument("--status", metavar="RUN_DIR", help="show the state and log tail of a submitted job")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, or key=a,b,c for a grid")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.status:
        from action_launch.cluster.jobs import status_report

        try:
            print(status_report(Path(args.status)))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    return submit_training(
        SubmitRequest(
            configs=args.config,
            overrides=args.overrides,
            slurm={k: getattr(args, k) for k in slurm_flags()},
            array=args.array,
            dry_run=args.dry_run,
            local=args.local,
            wait=args.wait,
            snapshot=args.snapshot,
            started=_STARTED,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
