"""ASHA against FIFO on the same search space, in one run: total compute, wall time, best accuracy.

    python bench/sweep_efficiency.py [--epochs 6] [--train 256] [--val 128] [--keep DIR]

The synthetic clips' motion happens in a window of the video, so the number of frames and their
spacing decide what a clip sees (and 16-frame trials cost 4x 4-frame ones). Both sweeps run the 3 x 3
frames x sampling-rate grid of the tiny TimeSformer, every trial to `--epochs` under FIFO, and under
ASHA (grace 1, reduction 3, ranking by validation loss) only the promising ones. Target: ASHA's best validation top-1 within 2
points of FIFO's at no more than 40% of FIFO's compute (clip-frames processed, summed over trials).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path) -> Path:
    path = folder / "frames_rate.yaml"
    path.write_text(yaml.safe_dump({
        # ASHA ranks trials by validation loss: at the first rungs most trials tie at chance top-1, and ASHA
        # stops only those strictly below its cutoff. The comparison below is on best top-1.
        "metric": "val/loss", "mode": "min",
        "space": {"data.num_frames": {"grid": [4, 8, 16]}, "data.sampling_rate": {"grid": [2, 4, 8]},
                  "model.num_frames": {"same_as": "data.num_frames"}},
        "asha": {"grace_period": 1, "reduction_factor": 3}}, sort_keys=False))
    return path


def run_sweep(scheduler: str, sweep: Path, data: Path, out: Path, epochs: int) -> dict:
    cmd = [sys.executable, "launch/tune.py", "--config", "configs/timesformer/tiny.yaml", "--sweep", str(sweep),
           "--name", scheduler, "--scheduler", scheduler, "--max-concurrent", "2", f"data.root={data}",
           f"output_dir={out}", "experiment=bench_sweep", f"train.epochs={epochs}", "data.num_workers=0",
           "optim.schedule=constant", "train.log_every_steps=50"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{scheduler} sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    sweep_dir = out / "bench_sweep" / scheduler
    summary = json.loads((sweep_dir / "summary.json").read_text())
    best_top1, best_trial = best_top1_over_history(sweep_dir)
    return {"scheduler": scheduler, "wall_s": wall, "clip_frames": summary["total_clip_frames"],
            "best_top1": best_top1, "best_trial": best_trial,
            "epochs_trained": sum(int(r.get("epoch") or 0) for r in summary["rows"])}


def best_top1_over_history(sweep_dir: Path) -> tuple:
    """The highest validation top-1 any trial reported at any epoch, and that trial's frames/rate."""
    best, where = -1.0, {}
    for result_file in (sweep_dir / "tune").glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            result = json.loads(line)
            if result.get("val/top1", -1) > best:
                best = result["val/top1"]
                where = {k: result["config"].get(k) for k in ("data.num_frames", "data.sampling_rate")}
    return best, where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--keep", help="folder to keep data, runs and MLflow store in (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from datasets.synthetic import generate

    data = folder / "data"
    if not (data / "train.txt").exists():
        generate(data, num_train=args.train, num_val=args.val, size=32, frames=48)
    sweep = sweep_file(folder)
    results = [run_sweep(s, sweep, data, folder / "runs", args.epochs) for s in ("fifo", "asha")]
    print(f"{'scheduler':<10} {'wall s':>8} {'clip-frames':>12} {'epochs':>7} {'best top-1':>11}  best trial")
    for r in results:
        print(f"{r['scheduler']:<10} {r['wall_s']:>8.0f} {r['clip_frames']:>12.0f} {r['epochs_trained']:>7} "
              f"{r['best_top1']:>11.2f}  {r['best_trial']}")
    fifo, asha = results
    compute = asha["clip_frames"] / fifo["clip_frames"]
    gap = fifo["best_top1"] - asha["best_top1"]
    print(f"ASHA/FIFO compute {compute:.2f} (target <= 0.40), wall {asha['wall_s'] / fifo['wall_s']:.2f}; "
          f"best top-1 gap {gap:+.2f} points (target <= 2)")
    print(f"runs and MLflow store in {folder}")
    return 0 if compute <= 0.40 and gap <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
