"""Tracking chores: `python launch/track.py sync RUN_DIR [--uri URI]` pushes metrics kept while MLflow was down."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.tracking.tracker import sync  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sync_cmd = sub.add_parser("sync", help="send a run folder's unsent journal lines to MLflow")
    sync_cmd.add_argument("run_dirs", nargs="+", type=Path)
    sync_cmd.add_argument("--uri", help="tracking URI (default: the one the run used)")
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.run_dirs:
        try:
            sent = sync(run_dir, args.uri)
            print(f"{run_dir}: sent {sent} journal events")
        except (FileNotFoundError, ConnectionError) as err:
            print(f"{run_dir}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
