"""Launcher overhead: `submit.py` invocation to the first training step on the local Slurm test cluster.

    python bench/launcher.py [--repeats 3] [--skip-cluster]

Splits the time into: python start + imports + config check (submit.py up to a resolved config;
a real submission checks the model section, which imports torch), code snapshot, sbatch (submitit's
pickling + the sbatch call), queue wait (sbatch returned -> the job's task 0 starts, from submitit's
log), and job start -> first optimizer step (from the run's tracking journal). Also times
`submit.py --dry-run` (target: under 2 s). Brings up `slurm/testcluster/cluster.sh` (root) if no
controller answers; `--skip-cluster` times only the dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TINY = [
    "experiment=bench",
    "model.name=timesformer_tiny",
    "model.num_classes=4",
    "model.num_frames=4",
    "data.num_frames=4",
    "data.sampling_rate=6",
    "data.train_short_side=[32,36]",
    "data.test_short_side=32",
    "data.crop_size=32",
    "data.num_workers=1",
    "optim.name=adamw",
    "optim.base_batch_size=8",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.micro_batch_size=8",
    "train.log_every_steps=1",
]


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def time_dry_run(repeats: int) -> list:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "launch/submit.py", "--dry-run", "--nodes", "2"],
            cwd=REPO,
            env=_env(),
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def ensure_cluster() -> None:
    """Use the cluster SLURM_CONF points at if its controller answers, else bring up the test cluster."""
    from shutil import which

    if which("scontrol") and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        return
    subprocess.run(["bash", str(REPO / "slurm/testcluster/cluster.sh"), "up"], check=True)
    os.environ["SLURM_CONF"] = "/tmp/action-launch-slurm/etc/slurm.conf"


def _job_start(log: Path) -> float:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("submitit INFO (") and "Starting with" in line:
            stamp = line[len("submitit INFO (") :].split(")")[0]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise RuntimeError(f"no start line in {log}")


def _first_step(journal: Path) -> float | None:
    if not journal.is_file():
        return None
    for line in journal.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            break
        if event["kind"] == "metrics" and "train/loss" in event["values"]:
            return event["time"] / 1000
    return None


def time_submission(data: Path, out: Path, run: int) -> dict:
    spawn = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "launch/submit.py",
            "--time",
            "00:10:00",
            *TINY,
            f"data.root={data}",
            f"output_dir={out}",
            f"name=run{run}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(li for li in proc.stdout.splitlines() if li.startswith("submitted job "))
    job_id, folder = line.split()[2], Path(line.split("run folder ", 1)[1])
    timing = json.loads((folder / "job.json").read_text())["timing"]
    deadline = time.time() + 600
    while (first := _first_step(folder / "tracking" / "journal.jsonl")) is None:
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id}: no training step after 600 s; see {folder}")
        time.sleep(0.2)
    start = _job_start(folder / f"{job_id}_0_log.out")
    subprocess.run(["scancel", job_id], capture_output=True)
    return {
        "python start + imports + config check": timing["resolved"] - spawn,
        "code snapshot": timing["snapshot_done"] - timing["resolved"],
        "sbatch (submitit pickle + sbatch)": timing["submitted"] - timing["snapshot_done"],
        "launcher total (invocation -> queued)": timing["submitted"] - spawn,
        "queue wait": start - timing["submitted"],
        "job start -> first step": first - start,
        "total: invocation -> first step": first - spawn,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    dry = time_dry_run(args.repeats)
    print(f"--dry-run wall time: median {statistics.median(dry):.2f} s (min {min(dry):.2f}, target < 2 s)")
    if args.skip_cluster:
        return 0
    ensure_cluster()
    from action_launch.datasets.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        data = generate(Path(tmp) / "data", num_train=16, num_val=8, size=32, frames=24)
        rows = [time_submission(data, Path(tmp) / "runs", i) for i in range(args.repeats)]
    print(f"submit.py -> first training step, 1 node, tiny model, median of {args.repeats} (seconds):")
    for key in rows[0]:
        print(f"  {key:<40} {statistics.median(r[key] for r in rows):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
