"""Which code a run runs: the git commit, whether the tree differed from it, and how (the uncommitted diff).

In a checkout the answer comes from git. A Slurm job or sweep runs a code snapshot (`cluster.snapshot`), which is
not a git tree: `record_version` writes the answer into the snapshot at submission (`CODE_VERSION.json`, and the
diff as `code.diff`), and `code_version` reads it back on the node. The diff holds the tracked files' changes
against the commit and the untracked, not ignored files (which a snapshot copies too) as new files.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

VERSION_FILE = "CODE_VERSION.json"
DIFF_FILE = "code.diff"


@dataclass(frozen=True)
class CodeVersion:
    """The commit ("unknown" outside git), whether tracked files differ from it, and the diff if anything does."""

    commit: str
    dirty: bool
    diff: str = ""


def _git(repo: Path, *args: str, ok: tuple = (0,)) -> Optional[str]:
    try:
        proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode in ok else None


def _untracked(repo: Path) -> List[str]:
    listing = _git(repo, "ls-files", "-z", "--others", "--exclude-standard") or ""
    return sorted(f for f in listing.split("\0") if f and (repo / f).is_file())


def git_version(repo: Path) -> Optional[CodeVersion]:
    """The version of a git checkout, or None when `repo` is not one (or git is missing)."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") or ""
    untracked = _untracked(repo)
    diff = _git(repo, "diff", "HEAD") or ""
    # `git diff --no-index` exits 1 when the files differ, which a new file always does
    diff += "".join(_git(repo, "diff", "--no-index", "--", "/dev/null", f, ok=(0, 1)) or "" for f in untracked)
    return CodeVersion(commit.strip(), bool(status.strip()), diff)


def record_version(version: CodeVersion, snapshot: Path) -> None:
    """Write a version into a code snapshot (the JSON, and the diff when there is one)."""
    (snapshot / VERSION_FILE).write_text(json.dumps({k: v for k, v in asdict(version).items() if k != "diff"}))
    if version.diff:
        (snapshot / DIFF_FILE).write_text(version.diff)


def code_version(root: Path) -> CodeVersion:
    """The version of the code at `root`: the recorded one in a snapshot (which may sit inside another checkout,
    whose HEAD has moved on since), git's in a checkout, else unknown."""
    recorded = root / VERSION_FILE
    if recorded.is_file():
        data = json.loads(recorded.read_text())
        diff = root / DIFF_FILE
        return CodeVersion(
            str(data.get("commit", "unknown")), bool(data.get("dirty")), diff.read_text() if diff.is_file() else ""
        )
    return git_version(root) or CodeVersion("unknown", False)
