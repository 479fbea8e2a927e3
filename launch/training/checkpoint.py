"""Checkpoint folders: atomic commit, discovery of the newest complete one, pruning, the `best` link.

Every checkpoint is written under a temporary name (`.tmp-step_00000042`) and renamed to
`step_00000042` only after every rank has finished writing and `meta.json` is on disk. A process
killed mid-save therefore leaves only a `.tmp-*` folder, which resume ignores and the next run
removes. Knows nothing of DeepSpeed: the engine writes the files, this module names and commits them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from action_launch.common.files import atomic_write_text

_TAG = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"
META = "meta.json"
BEST = "best"


def tag_for(step: int) -> str:
    """Folder name of the checkpoint taken after `step` optimizer steps."""
    return f"step_{step:08d}"


def tmp_tag_for(step: int) -> str:
    """Folder name used while that checkpoint is being written."""
    return TMP_PREFIX + tag_for(step)


def _step_of(path: Path) -> int:
    """The optimizer step in a checkpoint folder's name (`tag_for`)."""
    match = _TAG.match(path.name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint folder (step_NNNNNNNN)")
    return int(match.group(1))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, step: int, meta: Dict[str, Any]) -> Path:
    """Make the temporary checkpoint of `step` complete: write meta.json, then rename (rank 0 only)."""
    tmp, final = root / tmp_tag_for(step), root / tag_for(step)
    meta_tmp = tmp / (META + ".part")
    with open(meta_tmp, "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    meta_tmp.replace(tmp / META)
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step (e.g. after a resume) replaces the old copy
        shutil.rmtree(final)
    tmp.replace(final)
    _fsync_dir(root)
    return final


def complete_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _TAG.match(p.name) and (p / META).is_file()
    ]
    return sorted(found, key=_step_of)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_meta(ckpt: Path) -> Dict[str, Any]:
    """The metadata written when `ckpt` was committed."""
    return json.loads((ckpt / META).read_text())


def remove_incomplete(root: Path) -> List[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def best_checkpoint(root: Path) -> Optional[Path]:
    """Target of the `best` link, if it points at a complete checkpoint."""
    link = root / BEST
    if not link.is_symlink():
        return None
    target = root / os.readlink(link)
    return target if (target / META).is_file() else None


def mark_best(root: Path, ckpt: Path) -> None:
    """Point `best` at `ckpt` atomically (a relative symlink swapped in with one rename)."""
    tmp = root / (TMP_PREFIX + BEST)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(ckpt.name)
    tmp.replace(root / BEST)


# Written by a sweep trial's watcher (`sweeps.trial`): the step of the last checkpoint handed to Tune.
REPORTED = "tune_reported_step"


def hold_unreported(root: Path, reported_step: int) -> None:
    """Keep every checkpoint after `reported_step` from `prune` until it is reported (a sweep trial: Tune
    must see each validation's checkpoint, however fast training runs ahead of its watcher)."""
    atomic_write_text(root / REPORTED, f"{reported_step}\n")


def prune(root: Path, keep_last: int) -> List[Path]:
    """Delete all but the newest `keep_last` (at least one) complete checkpoints, never the `best` one, nor
    one a sweep trial has not reported yet (`hold_unreported`)."""
    found = complete_checkpoints(root)
    best = best_checkpoint(root)
    marker = root / REPORTED
    held_after = int(marker.read_text()) if marker.is_file() else None
    doomed = [p for p in found[: -max(keep_last, 1)] if p != best and (held_after is None or _step_of(p) <= held_after)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
