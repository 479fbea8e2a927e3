"""Code snapshots: the job runs a copy of the code taken at submission, so editing the tree while the job
waits in the queue changes nothing (submitit's RsyncSnapshot idea). The copy records the commit, the dirty flag
and the uncommitted diff it was taken from (`common.code_version`), which the job's run is tagged with.

The copy is laid out as the installed distribution is: `launch/` becomes `action_launch/`, `models/` and
`datasets/` go inside it, everything else (configs, slurm/) keeps its place. A job started in the copy
imports `action_launch` from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from action_launch.common.code_version import CodeVersion, git_version, record_version

# checkout folder -> its place in the importable copy
IMPORT_LAYOUT = {"launch": "action_launch", "models": "action_launch/models", "datasets": "action_launch/datasets"}


def snapshot_path(rel: str) -> str:
    """Where the checkout file `rel` goes in a snapshot."""
    top, sep, rest = rel.partition("/")
    return f"{IMPORT_LAYOUT[top]}/{rest}" if sep and top in IMPORT_LAYOUT else rel


def snapshot_code(repo: Path, root: Path) -> Path:
    """Copy the tracked (and untracked, not ignored) files of `repo` to `root/<content hash>`.

    The job imports the suite from this copy, so editing the tree while the job waits in the queue
    changes nothing (submitit's RsyncSnapshot idea). Identical trees of one commit share one copy.
    """
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = sorted({f for f in listing.split("\0") if f and (repo / f).is_file()})
    version = git_version(repo) or CodeVersion("unknown", False)
    digest = hashlib.sha256(repr(IMPORT_LAYOUT).encode())  # a copy of another layout is another copy
    digest.update(version.commit.encode() + b"\0")  # the same files on another commit record another version
    for rel in files:
        digest.update(rel.encode() + b"\0" + (repo / rel).read_bytes() + b"\0")
    target = root / digest.hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    tmp = root / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        dest = tmp / snapshot_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest)
    record_version(version, tmp)
    (tmp / ".complete").write_text("\n".join(files) + "\n")
    try:
        tmp.rename(target)
    except OSError:  # another submission made the same copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
