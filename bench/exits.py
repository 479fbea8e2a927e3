"""Exits of finished multi-process runs: how many abort at interpreter shutdown, how many torchrun calls FAILED.

    .venv/bin/python bench/exits.py [--runs 100] [--load N] [--model tsm_r50_tiny] [--keep DIR]
    .venv/bin/python bench/exits.py --bare [--runs 100] [--load N]

Runs `--runs` consecutive tiny 2-rank trainings (`torchrun --nproc_per_node 2 launch/train.py`, gloo on the
CPU, one epoch of 2 optimizer steps, validation, a checkpoint, MLflow off) on generated H.264 clips (48 train +
16 val, 32x32), while `--load` busy processes (default: one per core) keep the machine loaded, the condition
under which a gloo thread torn down during interpreter shutdown aborted a finished run
(`terminate called without an active exception`, SIGABRT). Prints, per run, torchrun's exit code and seconds,
then the counts: aborts (a rank's SIGABRT or that message), runs torchrun reported FAILED (exit code != 0)
and runs whose rank 0 did not write its final outputs (`final_metrics.json`). The goal is 0 for each.

--bare isolates the exit, in runs of a few seconds: each 2-rank run starts the process group as the trainer does
(`engine.init_distributed`), runs the trainer's host-side collectives (`Collectives.means`, `gather`, `any`) and
ends, run by run in turn, either as a run ended before `Trainer.close` (its groups left to the interpreter's
shutdown) or as it ends now (`Collectives.close`, `engine.shutdown_distributed`); it prints the aborts and FAILED
runs of each ending.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ABORT_MESSAGE = "terminate called without an active exception"
BARE_RUN = '''"""One rank of a bare run of bench/exits.py: ENDING is `left` or `closed`."""
import sys

import torch

from action_launch.training.distributed import Collectives, resolve_env
from action_launch.training.engine import init_distributed, shutdown_distributed

if __name__ == "__main__":
    env = resolve_env()
    init_distributed(env, 60)
    comm = Collectives(env.rank, env.world_size, 60)
    for step in range(10):
        comm.means(torch.full((3,), float(step)), "the training metrics")
    comm.gather({"rng": torch.get_rng_state()}, "the RNG-state gather")
    comm.any(False, "the agreement on unreadable files")
    if sys.argv[1] == "closed":
        comm.close()
        shutdown_distributed()
'''
ENDINGS = ("left", "closed")


def free_port() -> int:
    """A TCP port free on this host now (each run gets its own rendezvous port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def overrides(data: Path, out: Path, name: str, model: str) -> List[str]:
    """A tiny run of a few seconds: one epoch of 2 optimizer steps per rank, then validation and a checkpoint."""
    return [
        f"data.root={data}",
        f"output_dir={out}",
        f"name={name}",
        "experiment=exits",
        f"model.name={model}",
        "model.num_classes=4",
        "data.num_frames=4",
        "data.sampling_rate=6",
        "data.train_short_side=[32,36]",
        "data.test_short_side=32",
        "data.crop_size=32",
        "data.num_workers=1",
        "optim.name=adamw",
        "optim.lr=0.002",
        "optim.base_batch_size=8",
        "optim.schedule=constant",
        "train.epochs=1",
        "train.micro_batch_size=4",
        "train.max_steps_per_epoch=2",
        "train.log_every_steps=1",
        "tracking.enabled=false",
    ]


def start_load(count: int) -> List[subprocess.Popen]:
    """`count` processes that each keep one core busy until ended."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def torchrun(args: List[str], log: Path) -> Dict[str, object]:
    """`args` on 2 ranks under torchrun from the checkout: exit code, seconds and whether a rank aborted."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        *args,
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600
    )
    said = proc.stdout + proc.stderr
    log.write_text(said)
    return {
        "rc": proc.returncode,
        "seconds": time.monotonic() - start,
        "aborted": ABORT_MESSAGE in said or "Signal 6 (SIGABRT)" in said or "exitcode  : -6" in said,
    }


def training_runs(root: Path, runs: int, model: str) -> int:
    """`runs` tiny trainings; prints each and the counts; 1 if any aborted, FAILED or lacks its final outputs."""
    from action_launch.datasets.synthetic import generate

    data = generate(root / "clips", num_train=48, num_val=16, size=32, frames=24)
    out = root / "runs"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(runs):
        name = f"run{i:03d}"
        result = torchrun(["launch/train.py", *overrides(data, out, name, model)], out / f"{name}.log")
        result["final"] = (out / "exits" / name / "final_metrics.json").is_file()
        results.append(result)
        print(
            f"run {i + 1:3d}/{runs}: exit {result['rc']}, {result['seconds']:.1f} s"
            f"{', ABORT' if result['aborted'] else ''}{'' if result['final'] else ', no final outputs'}",
            flush=True,
        )
    aborts = sum(bool(r["aborted"]) for r in results)
    failed = sum(r["rc"] != 0 for r in results)
    missing = sum(not r["final"] for r in results)
    seconds = sorted(float(r["seconds"]) for r in results)
    print(
        f"{len(results)} runs of 2 ranks: {aborts} aborted, {failed} FAILED, {missing} without final outputs "
        f"(goal 0 each); median {seconds[len(seconds) // 2]:.1f} s a run"
    )
    return 1 if aborts or failed or missing else 0


def bare_runs(root: Path, runs: int) -> int:
    """`runs` bare runs, the two endings in turn; prints the counts of each; 1 if a closed run aborted or FAILED."""
    script = root / "bare_run.py"
    script.write_text(BARE_RUN)
    counts = {ending: {"runs": 0, "aborted": 0, "failed": 0} for ending in ENDINGS}
    for i in range(runs):
        ending = ENDINGS[i % 2]
        result = torchrun([str(script), ending], root / f"bare{i:03d}_{ending}.log")
        count = counts[ending]
        count["runs"] += 1
        count["aborted"] += bool(result["aborted"])
        count["failed"] += result["rc"] != 0
        print(
            f"run {i + 1:3d}/{runs} ({ending}): exit {result['rc']}, {result['seconds']:.1f} s"
            f"{', ABORT' if result['aborted'] else ''}",
            flush=True,
        )
    for ending, count in counts.items():
        print(
            f"groups {ending:6s}: {count['runs']} runs of 2 ranks, {count['aborted']} aborted, {count['failed']} FAILED"
        )
    return 1 if counts["closed"]["aborted"] or counts["closed"]["failed"] else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="consecutive 2-rank runs")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes loading the machine")
    parser.add_argument("--model", default="tsm_r50_tiny", help="tiny preset to train")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="runs of the process group's start, the trainer's host-side collectives and the end alone, both endings",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="folder for the clips, runs and each run's output (default: a temporary folder, removed)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill ends the load processes too (`finally`)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        load = start_load(args.load)
        try:
            code = bare_runs(root, args.runs) if args.bare else training_runs(root, args.runs, args.model)
        finally:
            for proc in load:
                proc.kill()
                proc.wait()
        print(f"under {args.load} busy processes; logs: {root}/" if args.keep else f"under {args.load} busy processes")
        return code


if __name__ == "__main__":
    sys.exit(main())
