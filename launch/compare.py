"""Compare MLflow runs: `python launch/compare.py --experiment E [--parent SWEEP] [--metric val/top1] [--params k1,k2]`.

Prints a table of the experiment's runs, or with --parent (a sweep name or parent run id) of one
sweep's trials: the key params, the best value of the metric over each run's validations (the rule the
sweep's results.csv ranks by), the stop reason and the cost (clip-frames, wall time) of each, best
first. The same table is written as CSV and PNG under --out, and the last line is the `mlflow ui`
command (or URL) that shows the runs; for a sweep, the URL opens a view of its trials with their
metric, cost, stop reason and swept params as columns. By default the columns are the params that
differ between the runs; for a sweep the metric and mode default to the sweep's own (`sweep.metric`,
`sweep.mode`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.tracking.compare import compare_runs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (a config's `experiment`)")
    parser.add_argument(
        "--parent",
        help="a sweep: its name (tag sweep.name) or its parent run id; "
        "omitted: every run of the experiment except sweep parents",
    )
    parser.add_argument(
        "--tracking-uri",
        help="default: $MLFLOW_TRACKING_URI, else sqlite:///<--output-dir>/mlflow.db as launch/train.py uses",
    )
    parser.add_argument("--output-dir", default="runs", help="the configs' output_dir, for the default store (runs)")
    parser.add_argument("--metric", help="metric to sort by (default: the sweep's sweep.metric, else val/top1)")
    parser.add_argument(
        "--mode", choices=("max", "min"), help="best is the max or the min (default: the sweep's sweep.mode, else max)"
    )
    parser.add_argument("--params", help="comma-separated param keys to show (default: those that differ between runs)")
    parser.add_argument("--out", type=Path, help="folder for the CSV and PNG (default: <--output-dir>/compare)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return compare_runs(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
