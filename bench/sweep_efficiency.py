"""ASHA against FIFO on the same search space, in one run: total compute, wall time, best accuracy.

    python bench/sweep_efficiency.py [--config configs/stabn/tiny.yaml] [--classes 2] [--epochs 9]
        [--sweep configs/sweeps/frames_sampling_lr.yaml] [--num-samples 2] [--train 256] [--val 128]
        [--keep DIR]

The synthetic clips' motion happens in a window of the video, so the number of frames and their
spacing decide what a clip sees (and 16-frame trials cost 4x 4-frame ones). Both sweeps run the
default search space (the 3 x 3 frames x sampling-rate grid, dense sampling, with base LR, LR rule
and micro batch drawn per trial, `--num-samples` draws per grid point, seeded so both schedulers get
the same trials) of a tiny model: every trial to `--epochs` under FIFO, and under ASHA (the sweep
file's grace 1, reduction 3, on val/top1) only the promising ones. Target: ASHA's best validation
top-1 within 2 points of FIFO's at no more than 40% of FIFO's compute (clip-frames processed, summed
over trials).

The default model is the tiny ST-ABN (a 3D CNN) on the two-class (up/down) clips: it separates the
trials within the first epochs, which is what early stopping needs. The tiny TimeSformer starts as a
per-frame ViT (zero-initialised temporal_fc, as the paper) and stays at chance for ~4 epochs of
these 256 clips, so rungs that early would rank noise (the 3 x 3 grid alone, 4 classes, 6 epochs:
ASHA/FIFO compute 0.75-0.90, best top-1 equal).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(scheduler: str, sweep: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "launch/tune.py",
        "--config",
        args.config,
        "--sweep",
        str(sweep),
        "--num-samples",
        str(args.num_samples),
        "--name",
        scheduler,
        "--scheduler",
        scheduler,
        "--max-concurrent",
        "2",
        f"data.root={data}",
        f"output_dir={out}",
        "experiment=bench_sweep",
        f"train.epochs={args.epochs}",
        "data.num_workers=0",
        "data.sampling=dense",
        f"model.num_classes={args.classes}",
        "optim.schedule=constant",
        "train.log_every_steps=50",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{scheduler} sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    sweep_dir = out / "bench_sweep" / scheduler
    summary = json.loads((sweep_dir / "summary.json").read_text())
    best_top1, best_trial = best_top1_over_history(sweep_dir)
    return {
        "scheduler": scheduler,
        "wall_s": wall,
        "clip_frames": summary["total_clip_frames"],
        "best_top1": best_top1,
        "best_trial": best_trial,
        "epochs_trained": sum(int(r.get("epoch") or 0) for r in summary["rows"]),
    }


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


def fifo_curves(sweep_dir: Path) -> list:
    """Per FIFO trial, in start order: its per-epoch results (metrics, seconds, clip-frames)."""
    curves = []
    for result_file in (sweep_dir / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines()]
        curves.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows))
    return [rows for _, rows in sorted(curves, key=lambda c: c[0])]


def replay_asha(curves: list, spec, max_t: int, concurrent: int, order: list) -> tuple:
    """Ray's own ASHA rung rule (its `_Bracket`) over the FIFO trials' recorded curves, started in
    `order`, `concurrent` at a time with their recorded epoch times: (compute vs FIFO, best top-1)."""
    import heapq

    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(spec.asha["grace_period"], max_t, spec.asha["reduction_factor"], 0)
    sign = 1 if spec.mode == "max" else -1
    events, queue, reached = [], list(order), {}

    class Trial:  # what _Bracket reads of a trial
        def __init__(self, index: int):
            self.trial_id = str(index)

    def start(i: int, now: float) -> None:
        heapq.heappush(events, (now + curves[i][0]["time_this_iter_s"], i, 1))

    for _ in range(min(concurrent, len(queue))):
        start(queue.pop(0), 0.0)
    while events:
        now, i, epoch = heapq.heappop(events)
        reached[i] = epoch
        result = curves[i][epoch - 1]
        stop = bracket.on_result(Trial(i), epoch, sign * result[spec.metric]) == TrialScheduler.STOP
        if stop or epoch >= min(max_t, len(curves[i])):
            if queue:
                start(queue.pop(0), now)
        else:
            heapq.heappush(events, (now + curves[i][epoch]["time_this_iter_s"], i, epoch + 1))
    cost = sum(curves[i][e - 1]["cost/clip_frames"] for i, e in reached.items())
    full = sum(c[-1]["cost/clip_frames"] for c in curves)
    return cost / full, max(r["val/top1"] for i, e in reached.items() for r in curves[i][:e])


def replay_orders(sweep_dir: Path, spec, max_t: int, orders: int = 200) -> str:
    """ASHA replayed over the FIFO curves in the run's order and in `orders` random arrival orders."""
    import random

    import numpy as np

    curves = fifo_curves(sweep_dir)
    fifo_best = max(r["val/top1"] for c in curves for r in c)
    runs = [replay_asha(curves, spec, max_t, 2, list(range(len(curves))))]
    runs += [
        replay_asha(curves, spec, max_t, 2, random.Random(seed).sample(range(len(curves)), len(curves)))
        for seed in range(orders)
    ]
    ratios = np.array([r[0] for r in runs[1:]])
    gaps = np.array([fifo_best - r[1] for r in runs[1:]])
    return (
        f"ASHA replayed on the FIFO curves (Ray's rung rule, recorded epoch times): in the sweep's order "
        f"compute {runs[0][0]:.2f}, gap {fifo_best - runs[0][1]:+.2f}; over {orders} random arrival orders "
        f"compute median {np.median(ratios):.2f}, 90th percentile {np.percentile(ratios, 90):.2f}, "
        f"<= 0.40 in {np.mean(ratios <= 0.40) * 100:.0f}%, gap > 2 in {np.mean(gaps > 2) * 100:.0f}%"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/stabn/tiny.yaml", help="a tiny model's config")
    parser.add_argument("--classes", type=int, default=2, help="synthetic classes (2: up/down; 4: also grow/shrink)")
    parser.add_argument("--sweep", default="configs/sweeps/frames_sampling_lr.yaml", help="the search space")
    parser.add_argument("--num-samples", type=int, default=2, help="samples of the random entries per grid point")
    parser.add_argument("--epochs", type=int, default=9, help="training length: ASHA's max_t")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--keep", help="folder to keep data, runs and MLflow store in (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from action_launch.datasets.synthetic import generate

    data = folder / f"data_{args.classes}classes"
    generate(data, num_train=args.train, num_val=args.val, size=32, frames=48, classes=args.classes)
    sweep = REPO / args.sweep
    results = [run_sweep(s, sweep, data, folder / "runs", args) for s in ("fifo", "asha")]
    print(f"{'scheduler':<10} {'wall s':>8} {'clip-frames':>12} {'epochs':>7} {'best top-1':>11}  best trial")
    for r in results:
        print(
            f"{r['scheduler']:<10} {r['wall_s']:>8.0f} {r['clip_frames']:>12.0f} {r['epochs_trained']:>7} "
            f"{r['best_top1']:>11.2f}  {r['best_trial']}"
        )
    fifo, asha = results
    compute = asha["clip_frames"] / fifo["clip_frames"]
    gap = fifo["best_top1"] - asha["best_top1"]
    print(
        f"ASHA/FIFO compute {compute:.2f} (target <= 0.40), wall {asha['wall_s'] / fifo['wall_s']:.2f}; "
        f"best top-1 gap {gap:+.2f} points (target <= 2)"
    )
    from action_launch.sweeps.spec import load_sweep

    print(replay_orders(folder / "runs" / "bench_sweep" / "fifo", load_sweep(sweep), args.epochs))
    print(f"runs and MLflow store in {folder}")
    return 0 if compute <= 0.40 and gap <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
