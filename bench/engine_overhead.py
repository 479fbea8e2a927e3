"""Engine overhead: the same model and batches through a plain PyTorch loop and through our DeepSpeed engine.

    python bench/engine_overhead.py [--model timesformer_tiny] [--batch 16] [--steps 30] [--rounds 5]

Steps alternate between the two paths so that load from other processes hits both alike; the
reported figure is the median of the per-round ratios. Target: engine / plain >= 0.95 (at most 5% overhead).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from action_launch import models  # noqa: E402
from action_launch.config import load_config  # noqa: E402
from action_launch.training.distributed import resolve_env  # noqa: E402
from action_launch.training.engine import Engine, build_optimizer, build_scheduler, init_distributed, parameter_groups  # noqa: E402
from action_launch.training.losses import make_loss  # noqa: E402
from action_launch.training.schedule import scale_lrs  # noqa: E402


def make_batches(args, num_classes: int):
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    return [(torch.randn(shape, generator=g), torch.randint(0, num_classes, (args.batch,), generator=g))
            for _ in range(args.steps)]


def plain_step(model, optimizer, scheduler, inputs, targets) -> None:
    """What a hand-written loop does per step."""
    model.train()
    loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    loss.detach()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timesformer_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    cfg = load_config(None, [f"model.name={args.model}", f"model.num_frames={args.frames}", "optim.name=adamw",
                             f"train.micro_batch_size={args.batch}", "optim.schedule=cosine", "train.epochs=100",
                             f"optim.base_batch_size={args.batch}"])
    init_distributed(resolve_env().backend)
    scaled = scale_lrs(cfg.optim, args.batch)
    torch.manual_seed(0)
    plain_model = models.build(cfg.model)
    torch.manual_seed(0)
    engine_model = models.build(cfg.model)
    engine = Engine(engine_model, cfg, scaled, 1, args.steps, make_loss(engine_model, cfg.train.loss))
    optimizer = build_optimizer(parameter_groups(plain_model, cfg.optim.weight_decay), cfg.optim, scaled.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, scaled, cfg.train.epochs, args.steps, 1)
    batches = make_batches(args, plain_model.head.out_features if hasattr(plain_model, "head") else 4)

    for inputs, targets in batches[:3]:  # warm-up both paths
        plain_step(plain_model, optimizer, scheduler, inputs, targets)
        engine.train_step(inputs, targets)
    # Steps alternate between the two paths, so noise from other processes hits both alike.
    plain, ours = [], []
    for _ in range(args.rounds):
        plain_time = engine_time = 0.0
        for inputs, targets in batches:
            plain_time += timed(plain_step, plain_model, optimizer, scheduler, inputs, targets)
            engine_time += timed(engine.train_step, inputs, targets)
        plain.append(len(batches) / plain_time)
        ours.append(len(batches) / engine_time)
    p, e = statistics.median(plain), statistics.median(ours)
    print(f"model {args.model}, batch {args.batch}x{args.frames}x{args.size}^2, {args.steps} steps x {args.rounds} rounds,"
          f" torch threads {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {p:8.2f} steps/s   (rounds: {', '.join(f'{x:.2f}' for x in plain)})")
    print(f"DeepSpeed engine   : {e:8.2f} steps/s   (rounds: {', '.join(f'{x:.2f}' for x in ours)})")
    ratios = sorted(o / q for o, q in zip(ours, plain))
    print(f"engine / plain     : {statistics.median(ratios):8.3f}   median of per-round ratios "
          f"({', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.95)")


if __name__ == "__main__":
    main()
