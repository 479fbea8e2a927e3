"""DeepSpeed's JIT-built ops: built per environment with its own ninja, never waited on behind a killed build's
lock, and
never built without a line saying so."""

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from action_launch.training.op_builds import STALE_LOCK_SECONDS, environment_build_dir, remove_stale_locks

REPO = Path(__file__).resolve().parents[1]


def _lock(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_locks_older_than_any_build_are_removed(tmp_path, caplog):
    old_set = _lock(tmp_path / "deepspeed_shm_comm" / "lock", STALE_LOCK_SECONDS + 60)  # TORCH_EXTENSIONS_DIR layout
    old_default = _lock(tmp_path / "py311_cpu" / "cpu_adam" / "lock", 3 * STALE_LOCK_SECONDS)  # torch's default
    building = _lock(tmp_path / "fused_adam" / "lock", 30)
    assert sorted(remove_stale_locks(tmp_path)) == sorted([old_set, old_default])
    assert not old_set.exists() and not old_default.exists() and building.exists()
    assert "killed op build" in caplog.text and "fused_adam" not in caplog.text
    assert remove_stale_locks(tmp_path / "absent") == []


def test_ops_are_built_inside_the_virtual_environment():
    assert sys.prefix != sys.base_prefix, "the suite runs from the project's .venv"
    assert environment_build_dir() == Path(sys.prefix) / "torch_extensions"


@pytest.mark.slow
def test_a_killed_builds_lock_does_not_hang_the_next_start(tmp_path, deepspeed_ready):
    """The lock a killed build leaves behind made every later start wait forever (CI hung in set-up)."""
    built = Path(sys.prefix) / "torch_extensions"
    shutil.copytree(built, tmp_path / "ext")
    lock = _lock(tmp_path / "ext" / "deepspeed_shm_comm" / "lock", 2 * STALE_LOCK_SECONDS)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    done = subprocess.run(
        [sys.executable, "-c", "from action_launch.training.engine import warm_up; warm_up()"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "killed op build" in done.stdout + done.stderr and not lock.exists()


@pytest.mark.slow
def test_a_start_without_the_environment_on_path_does_not_rebuild_what_set_up_built(tmp_path, deepspeed_ready):
    """`make` runs .venv/bin/python with the system's ninja first on PATH, an activated environment has its own:
    each rebuilt the op the other had built (47-112 s, silently). Builds now always use the environment's ninja."""
    system = shutil.which("ninja", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no system ninja to start with instead of the environment's")
    # set-up's own build (a copy elsewhere would be rebuilt for its new paths alone)
    library = environment_build_dir() / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built = library.stat().st_mtime
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    for path in ("/usr/bin:/bin", f"{Path(sys.executable).parent}:/usr/bin:/bin"):  # as make, then as activated
        done = subprocess.run(
            [sys.executable, "-c", "from action_launch.training.engine import warm_up; warm_up()"],
            cwd=REPO,
            env={**env, "RANK": "0", "WORLD_SIZE": "1", "PATH": path},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert library.stat().st_mtime == built and "built DeepSpeed's op" not in done.stdout + done.stderr, path


def test_every_build_says_what_it_built_and_why(tmp_path, caplog):
    from action_launch.training.op_builds import reported_builds

    caplog.set_level(logging.INFO, logger="action_launch.training.op_builds")
    with reported_builds(tmp_path):
        (tmp_path / "op_a").mkdir()
        (tmp_path / "op_a" / "op_a.so").write_bytes(b"first")
    with reported_builds(tmp_path):
        pass  # nothing built: nothing said
    with reported_builds(tmp_path):
        os.utime(tmp_path / "op_a" / "op_a.so", (time.time() + 5, time.time() + 5))
    lines = [r.getMessage() for r in caplog.records]
    assert (
        len(lines) == 2 and lines[0].startswith("built DeepSpeed's op op_a in ") and "once per environment" in lines[0]
    )
    assert lines[1].startswith("rebuilt DeepSpeed's op op_a") and "build tool changed" in lines[1]
