"""Tracking chores: `python launch/track.py sync RUN_DIR [--uri URI] [--killed]` pushes metrics kept while MLflow
was down, to the run's store (a sweep's server is gone with its sweep), and closes as KILLED a run whose
process died without ending it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.tracking.tracker import sync


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sync_cmd = sub.add_parser("sync", help="send a run folder's unsent journal lines to MLflow")
    sync_cmd.add_argument("run_dirs", nargs="+", type=Path)
    sync_cmd.add_argument("--uri", help="tracking URI (default: the run's store, else the URI it logged to)")
    sync_cmd.add_argument(
        "--killed",
        action="store_true",
        help="the run's processes are known to be gone (e.g. a cancelled job on another host): "
        "close a run that never ended as KILLED (on the run's own host this is checked)",
    )
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.run_dirs:
        try:
            sent = sync(run_dir, args.uri, killed=args.killed)
            print(f"{run_dir}: sent {sent} journal events")
        except (FileNotFoundError, ConnectionError) as err:
            print(f"{run_dir}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
