"""Where DeepSpeed's JIT-compiled ops are built, and never waiting on a build that died.

torch builds an extension under `TORCH_EXTENSIONS_DIR` behind a `lock` file that the builder deletes when it
finishes. A build that is killed (Ctrl-C during set-up, a job past its time limit) leaves the lock behind,
and every later process then waits on it forever, silently. Two virtual environments sharing the default
`~/.cache/torch_extensions` also rebuild the same op in turn, each one invalidating the other's build.
So the ops are built per environment, and a lock older than any real build is removed with a warning.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

# A CPU op builds in about a minute on 2 loaded cores; a lock this old belongs to a build that was killed.
STALE_LOCK_SECONDS = 600.0


def environment_build_dir() -> Optional[Path]:
    """`<venv>/torch_extensions` when this interpreter runs from a writable virtual environment, else None
    (torch's default, `~/.cache/torch_extensions`)."""
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        return None
    return Path(sys.prefix) / "torch_extensions"


def remove_stale_locks(build_dir: Path, max_age_s: float = STALE_LOCK_SECONDS) -> List[Path]:
    """Delete the build locks under `build_dir` older than `max_age_s`; returns them (each one logged)."""
    removed = []
    now = time.time()
    # <dir>/<op>/lock under TORCH_EXTENSIONS_DIR, <dir>/py311_cpu/<op>/lock under torch's default
    for lock in [*build_dir.glob("*/lock"), *build_dir.glob("*/*/lock")]:
        try:
            age = now - lock.stat().st_mtime
            if age <= max_age_s:
                continue
            lock.unlink()
        except FileNotFoundError:  # its build just finished
            continue
        log.warning("removed the lock of a killed op build (%s, %.0f min old); the op is rebuilt", lock, age / 60)
        removed.append(lock)
    return removed


def prepare_op_builds() -> Path:
    """Point torch's extension builds at this environment (unless TORCH_EXTENSIONS_DIR is set) and clear
    stale locks there; returns the directory."""
    chosen = environment_build_dir()
    if chosen is not None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(chosen))
    build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    remove_stale_locks(build_dir)
    return build_dir
