"""Faults injected for real, and what each leaves behind: the fault bench of issue 15.

    .venv/bin/python bench/faults.py [--only run_killed server_killed sweep_killed dead_rank pbt ctrl_c
        rerun_killed array_names]
        [--keep DIR] [--dead-rank-limit 300]

Every scenario runs the real commands (`train.py`, `tune.py`, `track.py`) as subprocesses on generated
H.264 clips (48 train + 16 val, 32x32) with the tiny TimeSformer, a SQLite MLflow store of its own,
and real signals:

  run_killed      train.py SIGKILLed after its first validation, then `track.py sync` on its folder
  server_killed   the `mlflow server` a run logs to killed after the run's first validation; the run
                  ends offline, the server is restarted on the same store, then `track.py sync`
  sweep_killed    an ASHA sweep (4 trials, 3 epochs, 1 at a time) whose driver is SIGKILLed once a trial
                  was stopped or completed, then `tune.py --resume`
  dead_rank       a 2-rank CPU run (gloo, two train.py processes with torchrun's variables) whose rank 1
                  is SIGKILLed after the first step
  pbt             a PBT sweep with the sweep file's defaults: 4 trials of 4 epochs, 2 at a time
  ctrl_c          train.py sent SIGINT (Ctrl-C, to its process group) after its first validation, then rerun
  rerun_killed    train.py SIGKILLed mid-epoch, between two checkpoints, then rerun to its end
  array_names     submit.py --local with a 2x2 grid (optim.lr x seed): a job array of 4 tiny runs

and prints one table: runs left RUNNING in MLflow (goal 0), results lost (metric points of a run's
journal missing from MLflow, trials without a result; goal 0), trials that trained again after a
resume (goal 0), seconds from the rank's death to the job's end (goal < 120), the exploits PBT
made (goal > 0), metric points logged twice at one step (goal 0), Ctrl-C's exit code and the lines it
printed from the Ctrl-C on (goals 130 and 2: its note and the resume line), and the MLflow names an array's
tasks share (goal 0). A figure that misses its goal is marked with `!`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = "configs/timesformer/tiny.yaml"
STEP_LINE = re.compile(r"epoch \d+/\d+ step")
VALIDATION_LINE = re.compile(r"epoch \d+ validation: ")


def tiny_overrides(data: Path, out: Path, name: str, epochs: int) -> List[str]:
    """A tiny TimeSformer run of a few seconds per epoch on two cores."""
    return [
        f"data.root={data}",
        f"output_dir={out}",
        f"name={name}",
        "experiment=faults",
        "model.num_classes=4",
        "model.num_frames=4",
        "data.num_frames=4",
        "data.sampling_rate=6",
        "data.train_short_side=[32,36]",
        "data.test_short_side=32",
        "data.crop_size=32",
        "data.num_workers=0",
        "optim.name=adamw",
        "optim.lr=0.002",
        "optim.base_batch_size=8",
        "optim.schedule=constant",
        f"train.epochs={epochs}",
        "train.micro_batch_size=8",
        "train.log_every_steps=1",
    ]


def environment(**extra: str) -> Dict[str, str]:
    """This environment without a tracking URI, Ray address or rank variables of the caller's, plus `extra`."""
    drop = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONUNBUFFERED": "1", **extra}


def start(cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """A command of the suite, run from the repository root, its output in `log`."""
    return subprocess.Popen(
        cmd, cwd=REPO, env=env or environment(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, proc: Optional[subprocess.Popen] = None
) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after `timeout_s` (or once `proc` ended)."""
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            raise TimeoutError(f"{what}: not seen within {timeout_s:.0f} s")
        time.sleep(0.5)


def count(pattern: re.Pattern, path: Path) -> int:
    return len(pattern.findall(path.read_text())) if path.exists() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ MLflow
def client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store}")


def runs(store: Path) -> list:
    """Every run of the store's `faults` experiment."""
    mlflow = client(store)
    exp = mlflow.get_experiment_by_name("faults")
    return [] if exp is None else mlflow.search_runs([exp.experiment_id], max_results=1000)


def left_running(store: Path) -> int:
    return sum(r.info.status == "RUNNING" for r in runs(store))


def lost_points(run_dir: Path, store: Path) -> int:
    """Metric points (key, step) of the run's journal that its MLflow run does not hold."""
    journal = run_dir / "tracking" / "journal.jsonl"
    state = run_dir / "tracking" / "state.json"
    events = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    wanted = {(k, e["step"]) for e in events if e["kind"] == "metrics" for k in e["values"]}
    run_id = json.loads(state.read_text()).get("run_id") if state.exists() else None
    if not run_id:
        return len(wanted)
    mlflow = client(store)
    held = {(k, m.step) for k in {k for k, _ in wanted} for m in mlflow.get_metric_history(run_id, k)}
    return len(wanted - held)


# --------------------------------------------------------------------------------------- scenarios
def run_killed(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    run_dir = out / "faults" / "killed"
    proc = start(
        [sys.executable, "launch/train.py", "--config", CONFIG, *tiny_overrides(data, out, "killed", 20)],
        work / "train.log",
    )
    wait_for(lambda: count(VALIDATION_LINE, work / "train.log") >= 1, 600, "the run's first validation", proc)
    os.kill(proc.pid, signal.SIGKILL)  # in its second epoch
    proc.wait()
    subprocess.run(
        [sys.executable, "launch/track.py", "sync", str(run_dir)],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        timeout=300,
    )
    store = out / "mlflow.db"
    return {
        "running": left_running(store),
        "lost": lost_points(run_dir, store),
        "status": "/".join(r.info.status for r in runs(store)),
    }


def server_killed(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    store = out / "mlflow.db"
    out.mkdir(parents=True)
    port = free_port()
    server_cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--default-artifact-root",
        str(out / "artifacts"),
        "--workers",
        "1",
    ]
    server = start(server_cmd, work / "server.log")
    uri = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(uri), 120, "the mlflow server", server)
    run_dir = out / "faults" / "outage"
    proc = start(
        [sys.executable, "launch/train.py", "--config", CONFIG, *tiny_overrides(data, out, "outage", 6)],
        work / "train.log",
        environment(MLFLOW_TRACKING_URI=uri),
    )
    wait_for(lambda: count(VALIDATION_LINE, work / "train.log") >= 1, 600, "the run's first validation", proc)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    code = proc.wait(timeout=900)
    server = start(server_cmd, work / "server2.log")
    try:
        wait_for(lambda: _answers(uri), 120, "the restarted mlflow server", server)
        subprocess.run(
            [sys.executable, "launch/track.py", "sync", str(run_dir)],
            cwd=REPO,
            env=environment(),
            capture_output=True,
            timeout=300,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {
        "running": left_running(store),
        "lost": lost_points(run_dir, store),
        "run_exit": code,
        "status": "/".join(r.info.status for r in runs(store)),
    }


def _answers(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def sweep_killed(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    sweep = work / "asha.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {"space": {"data.num_frames": {"grid": [2, 3, 4, 6]}}, "asha": {"grace_period": 1, "reduction_factor": 2}}
        )
    )
    cmd = [
        sys.executable,
        "launch/tune.py",
        "--config",
        CONFIG,
        "--sweep",
        str(sweep),
        "--name",
        "asha",
        "--scheduler",
        "asha",
        "--max-concurrent",
        "1",
        *tiny_overrides(data, out, "asha", 3),
    ]
    sweep_dir = out / "faults" / "asha"
    driver = start(cmd, work / "first.log")
    store = out / "mlflow.db"
    wait_for(lambda: bool(_ended_trials(sweep_dir, store)), 900, "a trial that ended", driver)
    time.sleep(1)
    ended = _ended_trials(sweep_dir, store)
    logs = {t: (sweep_dir / t / "train.log").read_text() for t in ended}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(5)  # the reaper ends what the driver started
    resumed = subprocess.run(
        cmd + ["--resume"], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1800
    )
    (work / "resume.log").write_text(resumed.stdout + resumed.stderr)
    rerun = sum(bool(STEP_LINE.search((sweep_dir / t / "train.log").read_text()[len(logs[t]) :])) for t in ended)
    rows = []
    if (sweep_dir / "results.csv").exists():
        import csv

        rows = list(csv.DictReader((sweep_dir / "results.csv").read_text().splitlines()))
    without = sum(not r.get("stop_reason") or r["stop_reason"].startswith("errored") for r in rows)
    return {
        "running": left_running(store),
        "lost": (4 - len(rows)) + without,
        "rerun": rerun,
        "ended_before_kill": len(ended),
    }


def _ended_trials(sweep_dir: Path, store: Path) -> List[str]:
    """Trials whose training has ended (completed, or stopped by ASHA): their MLflow run is no longer RUNNING."""
    if not store.exists():
        return []
    try:
        ended = [r.data.tags.get("sweep.trial_id") for r in runs(store) if r.info.status != "RUNNING"]
    except Exception:
        return []
    return sorted(t for t in ended if t and (sweep_dir / t / "train.log").exists())


def dead_rank(work: Path, data: Path, limit_s: float) -> Dict[str, object]:
    out = work / "runs"
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = environment(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            start(
                [sys.executable, "launch/train.py", "--config", CONFIG, *tiny_overrides(data, out, "ranks", 3)],
                work / f"rank{rank}.log",
                env,
            )
        )
    wait_for(lambda: bool(STEP_LINE.search((work / "rank0.log").read_text())), 600, "the first step", procs[0])
    os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.time()
    try:
        code = procs[0].wait(timeout=limit_s)
        detected = time.time() - killed
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        code, detected = None, float("inf")
    return {"running": left_running(out / "mlflow.db"), "dead_rank_s": detected, "rank0_exit": code}


def pbt(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    sweep = work / "pbt.yaml"
    sweep.write_text(yaml.safe_dump({"num_samples": 4, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}))
    cmd = [
        sys.executable,
        "launch/tune.py",
        "--config",
        CONFIG,
        "--sweep",
        str(sweep),
        "--name",
        "pbt",
        "--scheduler",
        "pbt",
        "--max-concurrent",
        "2",
        *tiny_overrides(data, out, "pbt", 4),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1800)
    (work / "pbt.log").write_text(proc.stdout + proc.stderr)
    sweep_dir = out / "faults" / "pbt"
    exploits = sum(p.read_text().count("(PBT exploit)") for p in sweep_dir.glob("*/train.log"))
    return {"running": left_running(out / "mlflow.db"), "exploits": exploits, "exit": proc.returncode}


def duplicate_points(run_dir: Path, store: Path) -> int:
    """Metric points of the run's MLflow run at a (key, step) that another of its points already has."""
    state = run_dir / "tracking" / "state.json"
    run_id = json.loads(state.read_text()).get("run_id") if state.exists() else None
    if not run_id:
        return 0
    mlflow = client(store)
    keys = mlflow.get_run(run_id).data.metrics
    return sum(
        len(steps) - len(set(steps)) for steps in ([m.step for m in mlflow.get_metric_history(run_id, k)] for k in keys)
    )


def ctrl_c(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    run_dir = out / "faults" / "interrupted"
    cmd = [sys.executable, "launch/train.py", "--config", CONFIG, *tiny_overrides(data, out, "interrupted", 20)]
    log = work / "train.log"
    proc = start(cmd, log)
    wait_for(lambda: count(VALIDATION_LINE, log) >= 1, 600, "the run's first validation", proc)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the run and its data workers
    code = proc.wait(timeout=300)
    said = log.read_text().split("Ctrl-C: stopping", 1)[-1].splitlines()[1:]  # after the note the Ctrl-C printed
    lines = 1 + sum(not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", line) for line in said if line.strip())
    status = "/".join(r.info.status for r in runs(out / "mlflow.db"))
    again = subprocess.run(
        cmd[:-1] + ["train.epochs=2"], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600
    )  # a continuation key: the same run goes on to its end
    return {
        "running": left_running(out / "mlflow.db"),
        "ctrl_c_exit": code,
        "ctrl_c_lines": lines,
        "dup": duplicate_points(run_dir, out / "mlflow.db"),
        "status": status,
        "resume_exit": again.returncode,
    }


def rerun_killed(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    run_dir = out / "faults" / "rerun"
    # 6 steps an epoch; checkpoints at steps 5, 6 (the epoch's end), 10, 12, ...
    cmd = [
        sys.executable,
        "launch/train.py",
        "--config",
        CONFIG,
        *tiny_overrides(data, out, "rerun", 3),
        "checkpoint.every_steps=5",
    ]
    journal = run_dir / "tracking" / "journal.jsonl"
    proc = start(cmd, work / "train.log")
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:  # killed once step 7 is logged: 7.. are replayed
        if journal.exists() and '"step": 7,' in journal.read_text():
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    (work / "rerun.log").write_text(again.stdout + again.stderr)
    store = out / "mlflow.db"
    return {
        "running": left_running(store),
        "lost": lost_points(run_dir, store),
        "dup": duplicate_points(run_dir, store),
        "replayed_from": "step " + (re.findall(r"optimizer step (\d+)", again.stdout + again.stderr) or ["?"])[0],
        "rerun_exit": again.returncode,
    }


def array_names(work: Path, data: Path) -> Dict[str, object]:
    out = work / "runs"
    cmd = [
        sys.executable,
        "launch/submit.py",
        "--local",
        "--config",
        CONFIG,
        *tiny_overrides(data, out, "grid", 1),
        "optim.lr=0.002,0.001",
        "seed=0,1",
        "train.max_steps_per_epoch=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1200)
    (work / "submit.log").write_text(proc.stdout + proc.stderr)
    names = [r.info.run_name for r in runs(out / "mlflow.db")]
    return {
        "running": left_running(out / "mlflow.db"),
        "shared_names": len(names) - len(set(names)),
        "tasks": len(names),
        "names": ";".join(sorted(names)),
        "exit": proc.returncode,
    }


# ------------------------------------------------------------------------------------------- table
GOALS = {
    "running": lambda v: v == 0,
    "lost": lambda v: v == 0,
    "rerun": lambda v: v == 0,
    "dead_rank_s": lambda v: v < 120,
    "exploits": lambda v: v > 0,
    "dup": lambda v: v == 0,
    "ctrl_c_exit": lambda v: v == 130,
    "ctrl_c_lines": lambda v: v == 2,
    "shared_names": lambda v: v == 0,
}


def show(results: Dict[str, Dict[str, object]]) -> None:
    columns = [
        "running",
        "lost",
        "rerun",
        "dead_rank_s",
        "exploits",
        "dup",
        "ctrl_c_exit",
        "ctrl_c_lines",
        "shared_names",
    ]
    heads = [
        "scenario",
        "left RUNNING",
        "results lost",
        "trials rerun",
        "dead rank (s)",
        "PBT exploits",
        "points twice",
        "Ctrl-C exit",
        "Ctrl-C lines",
        "shared names",
        "notes",
    ]
    rows = []
    for name, result in results.items():
        cells = [name]
        for c in columns:
            value = result.get(c)
            text = "" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))
            cells.append(text + ("" if value is None or GOALS[c](value) else " !"))
        cells.append(", ".join(f"{k}={v}" for k, v in result.items() if k not in columns))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    for row in [heads, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ["run_killed", "server_killed", "sweep_killed", "dead_rank", "pbt", "ctrl_c", "rerun_killed", "array_names"]
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="scenarios to run")
    parser.add_argument("--keep", help="folder to keep each scenario's files in (default: a temporary one)")
    parser.add_argument("--dead-rank-limit", type=float, default=300.0, help="seconds to wait for rank 0 to end")
    args = parser.parse_args(argv)
    from action_launch.datasets.synthetic import generate

    base = Path(args.keep or tempfile.mkdtemp(prefix="faults_"))
    data = generate(base / "data", num_train=48, num_val=16, size=32, frames=24)
    results: Dict[str, Dict[str, object]] = {}
    for name in args.only:
        work = base / name
        work.mkdir(parents=True, exist_ok=True)
        began = time.time()
        try:
            if name == "dead_rank":
                results[name] = dead_rank(work, data, args.dead_rank_limit)
            else:
                results[name] = globals()[name](work, data)
        except (TimeoutError, subprocess.TimeoutExpired, OSError) as err:
            results[name] = {"error": str(err).splitlines()[0]}
        results[name]["took_s"] = round(time.time() - began)
        print(f"{name}: {results[name]} (files in {work})", flush=True)
    show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
