"""Training throughput of every paper preset: a plain PyTorch loop against `training.engine.Engine`, side by side.

    python bench/gpu_throughput.py                           # on a GPU: every paper preset, bf16
    python bench/gpu_throughput.py --presets tiny --steps 3  # on the CPU (the test suite runs this)

For each preset, at its recipe's input size (`bench/models.py` finds the config naming it) and micro
batch: the best plain loop we know (fp32 weights, the forward and loss under `torch.autocast`, fused
AdamW on a GPU, gradients set to None) and the same model, optimizer and LR schedule through the engine
that `launch/train.py` uses, eager and (with --compile) compiled; optionally (--deepspeed-bf16) DeepSpeed's
own bf16 mode, which casts the weights (it fails on every model with BatchNorm). Batches are made on
the device beforehand, so the figures are the training step's, not the data loader's.

The variants take turns round by round (plain, engine, ..., plain, engine, ...) so a drifting clock or a
neighbour on the machine hits them alike; each round is `--steps` optimizer steps after `--warmup`
untimed ones, timed with the device synchronised at both ends; clips/s is the median over rounds.
MFU = clips/s x (forward + backward FLOPs per clip, counted by FlopCounterMode) / the device's dense
peak (bf16 989 TFLOP/s on an H100/H200). Prints one JSON line per preset, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # bench/models.py: presets' input sizes and FLOP counts

import torch  # noqa: E402

from action_launch import models  # noqa: E402
from action_launch.config import load_config  # noqa: E402
from action_launch.training.distributed import resolve_env  # noqa: E402
from action_launch.training.engine import (AUTOCAST_DTYPES, Engine, build_optimizer, build_scheduler,  # noqa: E402
                                           configure_backends, init_distributed, parameter_groups)
from action_launch.training.losses import make_loss  # noqa: E402
from action_launch.training.schedule import scale_lrs  # noqa: E402
from models import clip_shape, count_flops, is_tiny, preset_configs, select  # noqa: E402  bench/models.py, not action_launch.models

# Micro batch per GPU of each paper recipe (the tiny presets use --tiny-batch).
RECIPE_BATCH = {"timesformer_base": 16, "light_timesformer": 4, "stabn_r50": 4, "tsm_r50": 8, "tsm_r50_dyreg": 8,
                "msg3d_ntu60": 16, "msg3d_kinetics": 16, "msg3d_personality": 16, "hiint_cpmt": 32}
# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device name; MFU is reported only where the peak is known.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "V100": 125e12}


def peak_flops(device: torch.device) -> Optional[float]:
    """The dense half-precision peak of `device`, if it is a GPU we know."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
               dtype: Optional[torch.dtype], device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of the plain loop: autocast forward and loss, backward, optimizer and LR step."""
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return step


def _variants(preset: str, args: argparse.Namespace, device: torch.device, steps: int) -> Dict[str, Callable]:
    """name -> builder of each variant's step function, every one on its own copy of the model with the same init."""
    overrides = [f"model.name={preset}", "optim.name=adamw", "optim.schedule=cosine", "train.epochs=100",
                 f"train.precision={args.precision}", "optim.base_batch_size=8"]
    cfg = load_config(None, overrides)
    scaled = scale_lrs(cfg.optim, 8)
    dtype = AUTOCAST_DTYPES.get(args.precision)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return models.build(cfg.model).to(device)

    plain = fresh().train()
    loss_fn = make_loss(plain, cfg.train.loss)
    optimizer = build_optimizer(parameter_groups(plain, cfg.optim.weight_decay), cfg.optim, scaled.lr, device)
    plain_built = plain_step(plain, optimizer, build_scheduler(optimizer, cfg.optim, scaled, 100, steps, 1), loss_fn,
                             dtype, device)
    out: Dict[str, Callable] = {"plain": lambda: plain_built}
    kinds = [("engine", cfg)]
    if args.compile:
        kinds.append(("engine_compiled", load_config(None, [*overrides, "train.compile=true"])))
    if args.channels_last:
        kinds.append(("engine_channels_last", load_config(None, [*overrides, "train.channels_last=true"])))
    for name, c in kinds:
        out[name] = _engine_step(fresh, c, scaled, steps, device)
    if args.deepspeed_bf16:
        out["deepspeed_bf16"] = lambda: _deepspeed_bf16_step(fresh(), cfg, scaled, steps, device)
    return out


def _engine_step(fresh: Callable, cfg: Any, scaled: Any, steps: int, device: torch.device) -> Callable:
    """A builder of the engine's step: built when its variant is first warmed up, so one that fails to build
    is reported on its own."""
    def build() -> Callable:
        model = fresh()
        engine = Engine(model, cfg, scaled, 1, steps, make_loss(model, cfg.train.loss), device)
        return lambda x, y: engine.train_step(x, y)
    return build


def _deepspeed_bf16_step(model: torch.nn.Module, cfg: Any, scaled: Any, steps: int, device: torch.device) -> Callable:
    """DeepSpeed's own bf16 mode (bf16 weights, fp32 master copy in its optimizer): the alternative measured."""
    import deepspeed

    from action_launch.training.engine import deepspeed_config

    ds_cfg = {**deepspeed_config(cfg.train, cfg.optim, 1), "torch_autocast": {"enabled": False}, "bf16": {"enabled": True}}
    optimizer = build_optimizer(parameter_groups(model, cfg.optim.weight_decay), cfg.optim, scaled.lr, device)
    ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    loss_fn = make_loss(model, cfg.train.loss)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(ds(x.to(torch.bfloat16)), y)
        ds.backward(loss)
        ds.step()
    return step


def _batch(model: torch.nn.Module, preset: str, batch: int, data: Any, device: torch.device):
    shape = clip_shape(model, preset, data, 300)
    x = torch.randn(batch, *shape, device=device)
    regression = getattr(model, "task", None) == "regression"
    with torch.no_grad():
        out = model.eval()(x[:1])
    logits = out["logits"] if isinstance(out, dict) else out
    y = (torch.randn(batch, *logits.shape[1:], device=device) if regression
         else torch.randint(0, logits.shape[-1], (batch,), device=device))
    return shape, x, y, regression


def bench_preset(preset: str, args: argparse.Namespace, device: torch.device, data: Any, config: str) -> Dict[str, Any]:
    """Time every variant of `preset`; a dict of the results (one JSON line)."""
    tiny = is_tiny(preset)
    batch = args.tiny_batch if tiny else args.batch or RECIPE_BATCH.get(preset, 8)
    torch.manual_seed(0)
    shape, x, y, regression = _batch(models.create(preset).to(device), preset, batch, data, device)
    fwd, bwd = count_flops(preset, shape, batch, regression)
    flops_per_clip = (fwd + bwd) / batch
    row: Dict[str, Any] = {"preset": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "precision": args.precision, "batch": batch, "input": list(shape), "config": config,
                           "gflops_train_per_clip": round(flops_per_clip / 1e9, 3)}
    try:
        steps = _variants(preset, args, device, args.steps * (args.rounds + 1) + args.warmup)
    except Exception as err:  # noqa: BLE001 - one preset that cannot be built must not end the whole run
        row["error"] = f"{type(err).__name__}: {err}"[:300]
        return row
    times: Dict[str, List[float]] = {name: [] for name in steps}
    peak_mem: Dict[str, float] = {}
    for name, build in list(steps.items()):  # build, then warm up (and compile) each variant once
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            steps[name] = step = build()
            for _ in range(args.warmup):
                step(x, y)
            _sync(device)
        except Exception as err:  # noqa: BLE001 - e.g. DeepSpeed's bf16 mode on a BatchNorm model
            row[f"{name}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            times.pop(name)
            steps.pop(name)
            continue
        if device.type == "cuda":
            peak_mem[name] = torch.cuda.max_memory_allocated(device) / 2**30
    for _ in range(args.rounds):
        for name in times:
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name](x, y)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    if args.profile:
        for name in times:
            _profile(steps[name], x, y, device, args.profile / f"profile_{preset}_{name}.txt")
    peak = peak_flops(device) if args.precision != "fp32" else None
    for name, spans in times.items():
        clips_s = batch * args.steps / statistics.median(spans)
        row[f"{name}_clips_s"] = round(clips_s, 2)
        if peak:
            row[f"{name}_mfu"] = round(clips_s * flops_per_clip / peak, 4)
        if name in peak_mem:
            row[f"{name}_peak_mem_gib"] = round(peak_mem[name], 2)
    for name in times:
        if name != "plain" and "plain" in times:
            row[f"{name}_vs_plain"] = round(row[f"{name}_clips_s"] / row["plain_clips_s"], 3)
    return row


def _profile(step: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device, path: Path, steps: int = 5) -> None:
    """torch.profiler over `steps` steps: the operators by their own device time (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


def table(rows: List[Dict[str, Any]]) -> str:
    """A Markdown table: clips/s, MFU and the engine/plain ratio of each preset."""
    names = [n for n in ("plain", "engine", "engine_compiled", "engine_channels_last", "deepspeed_bf16")
             if any(f"{n}_clips_s" in r or f"{n}_error" in r for r in rows)]
    head = "| preset | batch | " + " | ".join(f"{n} clips/s (MFU)" for n in names) + " | engine/plain |"
    lines = [head, "|---|---:|" + "---:|" * (len(names) + 1)]
    for r in rows:
        cells = []
        for n in names:
            if f"{n}_clips_s" in r:
                mfu = f" ({100 * r[f'{n}_mfu']:.1f}%)" if f"{n}_mfu" in r else ""
                cells.append(f"{r[f'{n}_clips_s']}{mfu}")
            else:
                cells.append(r.get(f"{n}_error", r.get("error", "-"))[:40])
        lines.append(f"| {r['preset']} | {r['batch']} | " + " | ".join(cells) + f" | {r.get('engine_vs_plain', '-')} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", help="tiny, paper, all, or names (default: paper on a GPU, tiny on the CPU)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--batch", type=int, help="micro batch of every paper preset (default: its recipe's)")
    parser.add_argument("--tiny-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--compile", action="store_true", help="also the engine with train.compile=true")
    parser.add_argument("--channels-last", action="store_true", help="also the engine with train.channels_last=true")
    parser.add_argument("--deepspeed-bf16", action="store_true", help="also DeepSpeed's own bf16 mode")
    parser.add_argument("--json-out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--profile", type=Path, help="folder for a torch.profiler table of each variant (5 steps)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    configure_backends(deterministic=False)
    device = init_distributed(resolve_env())
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    configs = preset_configs()
    rows = []
    for preset in select(args.presets or ("paper" if device.type == "cuda" else "tiny")):
        config, data = configs.get(preset, ("-", None))
        row = bench_preset(preset, args, device, data, config)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as fh:
                fh.write(line + "\n")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{rows[0]['device'] if rows else device}, {args.precision}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps (median)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
