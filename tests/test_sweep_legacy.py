"""A sweep started before the move to the `action_launch` namespace (commit aa045f1: top-level `launch`,
`models`, `datasets`) resumes with today's code.

For real: the old commit is checked out as a git worktree, its `launch/tune.py` runs a two-trial sweep that
is killed once the first trial has finished, and today's `launch/tune.py --resume` continues it.

What Ray 2.60 keeps in `<sweep>/tune/` names no module of ours: `tuner.pkl` drops the trainable and keeps
only its name (`run_trial`), the trial states and the search state hold Ray, pyarrow and argparse objects,
and the functions of `same_as` / `depends_on` entries are stored as placeholders (`('__fn_ph', id)`) that
only the `param_space` given to `Tuner.restore` resolves. So no alias of the old module names is needed;
what a resume does need is that param_space, or the trials not yet started get the placeholders as values.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import EPOCH_VALIDATION, REPO, tiny_overrides

from action_launch.training.op_builds import environment_build_dir

OLD_COMMIT = "aa045f1"  # the last commit with top-level `launch`, `models`, `datasets`
EPOCHS = 2
SWEEP = {
    "space": {
        "data.num_frames": {"grid": [2, 4]},
        # as the recipe sweeps do: entries Ray draws with a function of another entry
        "model.num_frames": {"same_as": "data.num_frames"},
        "optim.warmup_epochs": {"depends_on": "data.num_frames", "cases": {2: 0, 4: 1}, "default": 0},
    }
}

pytestmark = pytest.mark.slow


def _has_commit(commit: str) -> bool:
    return (
        subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory):
    """The repository at OLD_COMMIT, as a git worktree (removed afterwards)."""
    if shutil.which("git") is None or not _has_commit(OLD_COMMIT):
        pytest.skip(
            f"commit {OLD_COMMIT} (the code before the action_launch namespace) is not in this clone's "
            "history: clone with full history to run this test"
        )
    path = tmp_path_factory.mktemp("old") / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), OLD_COMMIT], cwd=REPO, check=True, capture_output=True
    )
    yield path
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)


def _kill_processes_mentioning(text: str) -> None:
    """Kill the process groups of processes whose command line names `text` (the tracking server that
    tune.py starts in a session of its own outlives a killed driver)."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != os.getpid() and text in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(proc.info["pid"]), signal.SIGKILL)


def _finished_trials(sweep_dir: Path) -> list:
    done = {
        meta.parents[2].name
        for meta in sweep_dir.glob("*/checkpoints/step_*/meta.json")
        if json.loads(meta.read_text())["epoch"] == EPOCHS
    }
    return sorted(done)


def _pickled_modules(blob: bytes) -> set:
    """Top-level packages of every class and function a pickle refers to (exact: the unpickler asks for each)."""
    seen = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module.split(".")[0])
            return super().find_class(module, name)

    Recording(io.BytesIO(blob)).load()
    return seen


@pytest.fixture(scope="module")
def resumed(old_tree, video_set, deepspeed_ready, tmp_path_factory):
    """The old sweep killed after its first trial finished, then resumed by today's tune.py."""
    tmp = tmp_path_factory.mktemp("legacy_sweep")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    out = tmp / "runs"
    overrides = [o for o in tiny_overrides(video_set, out) if not o.startswith(("data.num_workers", "train.epochs"))]
    args = [
        "--config",
        "configs/timesformer/tiny.yaml",
        "--sweep",
        str(sweep),
        "--name",
        "legacy",
        "--scheduler",
        "fifo",
        "--max-concurrent",
        "1",
        *overrides,
        "data.num_workers=0",
        "train.log_every_steps=2",
        f"train.epochs={EPOCHS}",
        "train.max_steps_per_epoch=3",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH")}
    sweep_dir = out / "tests" / "legacy"

    # The old code: its own checkout on the import path, as a sweep started before the move ran.
    # It built DeepSpeed's ops under ~/.cache with the first ninja on PATH: pointed at this venv's build (made by
    # deepspeed_ready) with this venv's ninja, it compiles nothing, so the kill below cannot leave a half-built
    # op's lock behind.
    old_env = {
        **env,
        "PYTHONPATH": str(old_tree),
        "TORCH_EXTENSIONS_DIR": str(environment_build_dir()),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    }
    with open(tmp / "old.log", "w") as log:  # the child keeps its own copy of the descriptor
        driver = subprocess.Popen(
            [sys.executable, "launch/tune.py", *args],
            cwd=old_tree,
            env=old_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 600
    while not _finished_trials(sweep_dir) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # let Tune record the finished trial, as it would before any real interruption
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    _kill_processes_mentioning(str(out))
    finished = _finished_trials(sweep_dir)
    assert len(finished) == 1, (tmp / "old.log").read_text()[-3000:]
    before = {t: (sweep_dir / t / "train.log").read_text() for t in finished}
    state = {p.name: p.read_bytes() for p in (sweep_dir / "tune").iterdir() if p.is_file()}

    # Today's code resumes the same folder.
    proc = subprocess.run(
        [sys.executable, "launch/tune.py", *args, "--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    _kill_processes_mentioning(str(out))
    return {"proc": proc, "sweep_dir": sweep_dir, "finished": finished, "before": before, "state": state}


def test_the_old_sweep_state_names_no_module_of_ours(resumed):
    """Nothing Ray wrote refers to `launch`, `models` or `datasets`: there is no old module path to keep."""
    state = resumed["state"]
    assert "tuner.pkl" in state and any(n.startswith("experiment_state-") for n in state), sorted(state)
    for name, blob in state.items():
        assert b"launch" not in blob, name
        if blob[:1] == b"\x80":  # tuner.pkl and the search state (saved as *.json) are pickles
            assert not _pickled_modules(blob) & {"launch", "models", "datasets", "action_launch"}, name
    # the trainable is kept by name only; Tuner.restore checks today's run_trial against it
    assert b"run_trial" in state["tuner.pkl"]


def test_today_resumes_the_old_sweep_without_rerunning_the_finished_trial(resumed):
    proc, sweep_dir = resumed["proc"], resumed["sweep_dir"]
    output = proc.stdout + proc.stderr
    assert "No module named" not in output, output[-5000:]
    assert "resuming the sweep" in output
    for trial in resumed["finished"]:  # at most a process that found the run complete
        after = (sweep_dir / trial / "train.log").read_text()
        before = resumed["before"][trial]
        assert after.startswith(before)
        assert len(EPOCH_VALIDATION.findall(after)) == len(EPOCH_VALIDATION.findall(before)) == EPOCHS
        assert not re.search(r"epoch \d+/\d+ step", after[len(before) :])


def test_today_completes_the_old_sweep(resumed):
    """The trial the old driver never started runs with its `same_as` / `depends_on` values resolved."""
    proc, sweep_dir = resumed["proc"], resumed["sweep_dir"]
    assert proc.returncode == 0, f"tune.py --resume failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(r["stop_reason"] == "completed" for r in rows), rows
    by_frames = {int(r["data.num_frames"]): r for r in rows}
    assert sorted(by_frames) == [2, 4]
    for frames, warmup in ((2, 0), (4, 1)):
        assert int(by_frames[frames]["model.num_frames"]) == frames
        assert float(by_frames[frames]["optim.warmup_epochs"]) == warmup
