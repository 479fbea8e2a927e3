"""Where DeepSpeed's JIT-compiled ops are built, and never waiting on a build that died.

torch builds an extension under `TORCH_EXTENSIONS_DIR` behind a `lock` file that the builder deletes when it
finishes. A build that is killed (Ctrl-C during set-up, a job past its time limit) leaves the lock behind,
and every later process then waits on it forever, silently. Two virtual environments sharing the default
`~/.cache/torch_extensions` also rebuild the same op in turn, each one invalidating the other's build.
So the ops are built per environment, and a lock older than any real build is removed with a warning.

A build is also redone, silently and for about a minute, whenever the `ninja` found on PATH is another version
than the one that made it (its build log's format differs): the environment's own pip-installed ninja when the
environment is activated, a system one when `make` runs `.venv/bin/python` without it. So builds always use the
interpreter's own `ninja` when it has one, and every build that happens says in one line what it built and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

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


def use_own_ninja() -> Optional[Path]:
    """Put the folder of this interpreter's `ninja` (a virtual environment's bin/) first on PATH, so that every
    process of the environment builds with the same ninja whether or not it is activated; the ninja, or None."""
    own = Path(sys.executable).parent / "ninja"
    if not os.access(own, os.X_OK):
        return None
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != str(own.parent):
        os.environ["PATH"] = os.pathsep.join([str(own.parent), *(p for p in parts if p != str(own.parent))])
    return own


def built_ops(build_dir: Path) -> Dict[str, float]:
    """{op name: modification time of its built library} under `build_dir` (both layouts of `remove_stale_locks`)."""
    return {lib.parent.name: lib.stat().st_mtime for lib in [*build_dir.glob("*/*.so"), *build_dir.glob("*/*/*.so")]}


@contextlib.contextmanager
def reported_builds(build_dir: Path) -> Iterator[None]:
    """Say in one line each op (re)built while the block runs: what, where, how long, and why (a first build, or a
    rebuild because its sources, flags or build tool changed)."""
    before, start = built_ops(build_dir), time.monotonic()
    yield
    for op, mtime in built_ops(build_dir).items():
        if before.get(op) == mtime:
            continue
        seconds = time.monotonic() - start
        if op in before:
            log.warning(
                "rebuilt DeepSpeed's op %s in %s (%.0f s): torch found its sources, compiler flags or build "
                "tool changed since the last build",
                op,
                build_dir,
                seconds,
            )
        else:
            log.info("built DeepSpeed's op %s in %s (%.0f s; once per environment)", op, build_dir, seconds)


def prepare_op_builds() -> Path:
    """Point torch's extension builds at this environment (unless TORCH_EXTENSIONS_DIR is set), with this
    environment's ninja, and clear stale locks there; returns the directory."""
    use_own_ninja()
    chosen = environment_build_dir()
    if chosen is not None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(chosen))
    build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    remove_stale_locks(build_dir)
    return build_dir
