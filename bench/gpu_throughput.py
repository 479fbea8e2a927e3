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

Next to each video preset's step, what feeds it: the clips/s ONE DataLoader worker delivers, i.e. the preset's
recipe dataset (`datasets.build(cfg.data, "train")`, clips of the model's length) `__getitem__` in this
process with torch on one thread, as in a worker, timed as one more contender in the same rounds
(--data-clips clips a round, median), and `workers_to_feed` = engine clips/s / that, rounded up: the
DataLoader workers per GPU that keep the step from waiting (`train/data_wait_frac` in the training log is the
share of step time spent waiting). The clips come from --data-videos generated H.264 videos
(`bench/data_pipeline.py`'s panning texture with grain, --data-frames frames at 30 fps, square) prepared by
`datasets.prepare` as a user would: re-encoded (keyframe every 16 frames, fastdecode, short side = the
recipe's largest train short side or --data-size) for video recipes, JPEG frame folders in the recipe's
`frame_template` for rawframes recipes. Square frames have fewer pixels than 4:3 or 16:9 footage, and
collation and the hand-over to the main process come on top of `__getitem__`, so the per-worker rate is an
upper bound and `workers_to_feed` a lower one. Skeleton and feature presets decode no video: both fields
are null.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # bench/models.py: presets' input sizes and FLOP counts

import torch  # noqa: E402

from models import clip_shape, count_flops, is_tiny, preset_configs, select  # noqa: E402  bench/models.py

# isort: split
# after bench/models.py, not before: data_pipeline puts the repository first on sys.path, where `models` is ours
from data_pipeline import make_videos  # noqa: E402

from action_launch import datasets, models  # noqa: E402
from action_launch.config import load_config  # noqa: E402
from action_launch.datasets import DataConfig  # noqa: E402
from action_launch.datasets.config import ListedClipConfig  # noqa: E402  video files and frame folders
from action_launch.datasets.rawframes import RawFramesConfig  # noqa: E402
from action_launch.training.distributed import resolve_env  # noqa: E402
from action_launch.training.engine import (  # noqa: E402
    AUTOCAST_DTYPES,
    Engine,
    build_optimizer,
    build_scheduler,
    configure_backends,
    init_distributed,
    parameter_groups,
)
from action_launch.training.losses import make_loss  # noqa: E402
from action_launch.training.schedule import scale_lrs  # noqa: E402

# Micro batch per GPU of each paper recipe (the tiny presets use --tiny-batch).
RECIPE_BATCH = {
    "timesformer_base": 16,
    "light_timesformer": 4,
    "stabn_r50": 4,
    "tsm_r50": 8,
    "tsm_r50_dyreg": 8,
    "msg3d_ntu60": 16,
    "msg3d_kinetics": 16,
    "msg3d_personality": 16,
    "hiint_cpmt": 32,
}
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


def plain_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: Callable,
    dtype: Optional[torch.dtype],
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of the plain loop: autocast forward and loss, backward, optimizer and LR step."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    return step


def _variants(
    preset: str, args: argparse.Namespace, device: torch.device, steps: int, frames: Optional[int] = None
) -> Dict[str, Callable]:
    """name -> builder of each variant's step function, every one on its own copy of the model with the same init.
    `frames`: the clip length of the batches of a video preset, which its config's `data.num_frames` says too (a
    model built for one clip length refuses a config that says another)."""
    overrides = [
        f"model.name={preset}",
        "optim.name=adamw",
        "optim.schedule=cosine",
        "train.epochs=100",
        f"train.precision={args.precision}",
        "optim.base_batch_size=8",
    ]
    overrides += [f"data.num_frames={frames}"] if frames else []
    cfg = load_config(None, overrides)
    scaled = scale_lrs(cfg.optim, 8)
    dtype = AUTOCAST_DTYPES.get(args.precision)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return models.build(cfg.model).to(device)

    plain = fresh().train()
    loss_fn = make_loss(plain, cfg.train.loss)
    optimizer = build_optimizer(parameter_groups(plain, cfg.optim.weight_decay), cfg.optim, scaled.lr, device)
    plain_built = plain_step(
        plain, optimizer, build_scheduler(optimizer, cfg.optim, scaled, 100, steps, 1), loss_fn, dtype, device
    )
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

    ds_cfg = {
        **deepspeed_config(cfg.train, cfg.optim, 1),
        "torch_autocast": {"enabled": False},
        "bf16": {"enabled": True},
    }
    optimizer = build_optimizer(parameter_groups(model, cfg.optim.weight_decay), cfg.optim, scaled.lr, device)
    ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    loss_fn = make_loss(model, cfg.train.loss)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(ds(x.to(torch.bfloat16)), y)
        ds.backward(loss)
        ds.step()

    return step


def prepared_data(
    data: Optional[DataConfig], tiny: bool, args: argparse.Namespace, folder: str, made: Dict[Tuple, str]
) -> Optional[Tuple[DataConfig, str]]:
    """The recipe's `data:` section pointed at generated videos prepared by `datasets.prepare` for it (see the
    module docstring) and a few words on them; None for a preset that decodes no video. `made` maps what was
    already generated or prepared in `folder` to its folder, so presets with the same needs share their videos."""
    from action_launch.datasets.prepare import PrepareOptions, prepare_list

    if not isinstance(data, ListedClipConfig):
        return None
    side = args.data_size or max(data.train_short_side)
    side += side % 2  # yuv420p
    frames = args.data_frames or (48 if tiny else 300)
    raw = isinstance(data, RawFramesConfig)
    key = (side, frames)
    if key not in made:
        made[key] = os.path.join(folder, f"sources_{side}_{frames}")
        os.makedirs(made[key], exist_ok=True)
        make_videos(made[key], args.data_videos, side, frames)
    opts = PrepareOptions(short_side=side, frames=raw, **({"template": data.frame_template} if raw else {}))
    out_key = (side, frames, raw, opts.template)
    if out_key not in made:
        kind = "frames_" + re.sub(r"\W", "", opts.template) if raw else "video"  # one folder per template
        out = os.path.join(folder, f"prepared_{side}_{frames}_{kind}")
        start = time.perf_counter()
        report = prepare_list(
            os.path.join(made[key], "train.txt"),
            out,
            opts,
            workers=min(os.cpu_count() or 1, args.data_videos),
            progress=False,
        )
        if report.failed:
            raise RuntimeError(f"datasets.prepare failed on {report.failed[0][1]}: {report.failed[0][2]}")
        print(
            f"data: {args.data_videos} videos of {frames} frames, {side}x{side}, prepared as "
            f"{'JPEG folders' if raw else 'H.264 (gop 16, fastdecode)'} in {time.perf_counter() - start:.1f}s: {out}",
            file=sys.stderr,
            flush=True,
        )
        made[out_key] = out
    cfg = dataclasses.replace(
        data,
        root=made[out_key],
        train_list="train.txt",
        separator=" ",
        path_prefix="",
        list_format="rawframes" if raw else "video",
        bad_files_log=None,
        **({"frame_start_index": 1} if raw else {}),
    )
    return cfg, f"{args.data_videos} {'JPEG folders' if raw else 'videos'}, {side}x{side}, {frames} frames"


def _data_round(dataset: Any, clips: int, first_seed: int) -> float:
    """Seconds for `clips` train clips of `dataset`, in this process with torch on one thread as in a
    DataLoader worker; each seed draws its own frames, scale, crop and flip."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for k in range(clips):
            dataset[(k % len(dataset), first_seed + k)]
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def _batch(model: torch.nn.Module, preset: str, batch: int, data: Any, device: torch.device):
    shape = clip_shape(model, preset, data, 300)
    x = torch.randn(batch, *shape, device=device)
    regression = getattr(model, "task", None) == "regression"
    with torch.no_grad():
        out = model.eval()(x[:1])
    logits = out["logits"] if isinstance(out, dict) else out
    y = (
        torch.randn(batch, *logits.shape[1:], device=device)
        if regression
        else torch.randint(0, logits.shape[-1], (batch,), device=device)
    )
    return shape, x, y, regression


def bench_preset(
    preset: str,
    args: argparse.Namespace,
    device: torch.device,
    data: Any,
    config: str,
    prepared: Optional[Tuple[DataConfig, str]] = None,
) -> Dict[str, Any]:
    """Time every variant of `preset`, and one DataLoader worker's clips of `prepared` (the recipe's data on
    prepared videos; None: no video decode); a dict of the results (one JSON line)."""
    tiny = is_tiny(preset)
    batch = args.tiny_batch if tiny else args.batch or RECIPE_BATCH.get(preset, 8)
    torch.manual_seed(0)
    shape, x, y, regression = _batch(models.create(preset).to(device), preset, batch, data, device)
    fwd, bwd = count_flops(preset, shape, batch, regression)
    flops_per_clip = (fwd + bwd) / batch
    row: Dict[str, Any] = {
        "preset": preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "batch": batch,
        "input": list(shape),
        "config": config,
        "gflops_train_per_clip": round(flops_per_clip / 1e9, 3),
    }
    try:
        frames = shape[1] if isinstance(data, ListedClipConfig) else None
        steps = _variants(preset, args, device, args.steps * (args.rounds + 1) + args.warmup, frames)
    except Exception as err:
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
        except Exception as err:
            row[f"{name}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            times.pop(name)
            steps.pop(name)
            continue
        if device.type == "cuda":
            peak_mem[name] = torch.cuda.max_memory_allocated(device) / 2**30
    dataset, data_times = _data_contender(prepared, shape[1], row)
    for r in range(args.rounds):
        for name in times:
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name](x, y)
            _sync(device)
            times[name].append(time.perf_counter() - start)
        if dataset is not None:
            data_times.append(_data_round(dataset, args.data_clips, (r + 1) * args.data_clips))
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
    if data_times:
        per_worker = args.data_clips / statistics.median(data_times)
        row["data_clips_s_per_worker"] = round(per_worker, 2)
        if "engine_clips_s" in row:
            row["workers_to_feed"] = math.ceil(row["engine_clips_s"] / per_worker)
    return row


def _data_contender(
    prepared: Optional[Tuple[DataConfig, str]], frames: int, row: Dict[str, Any]
) -> Tuple[Any, List[float]]:
    """The train dataset of `prepared` giving clips of `frames` frames (the model's: a preset that borrows a
    sibling's config may take more), warmed by one untimed clip of each video (page cache, first-use costs),
    and the list its rounds' times go to; (None, []) where there is none. Sets the row's data fields."""
    row["data_clips_s_per_worker"] = row["workers_to_feed"] = None
    if prepared is None:
        return None, []
    cfg, row["data_input"] = prepared
    row["recipe_workers"] = cfg.num_workers
    try:
        dataset = datasets.build(dataclasses.replace(cfg, num_frames=frames), "train")
        _data_round(dataset, len(dataset), 0)
    except Exception as err:
        row["data_error"] = f"{type(err).__name__}: {err}"[:300]
        return None, []
    return dataset, []


def _profile(
    step: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device, path: Path, steps: int = 5
) -> None:
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
    """A Markdown table: clips/s, MFU and the engine/plain ratio of each preset, then one data worker's clips/s
    and the workers that feed the engine (the recipe's data.num_workers in brackets)."""
    names = [
        n
        for n in ("plain", "engine", "engine_compiled", "engine_channels_last", "deepspeed_bf16")
        if any(f"{n}_clips_s" in r or f"{n}_error" in r for r in rows)
    ]
    head = (
        "| preset | batch | "
        + " | ".join(f"{n} clips/s (MFU)" for n in names)
        + " | engine/plain | data clips/s per worker | workers to feed (recipe) |"
    )
    lines = [head, "|---|---:|" + "---:|" * (len(names) + 3)]
    for r in rows:
        cells = []
        for n in names:
            if f"{n}_clips_s" in r:
                mfu = f" ({100 * r[f'{n}_mfu']:.1f}%)" if f"{n}_mfu" in r else ""
                cells.append(f"{r[f'{n}_clips_s']}{mfu}")
            else:
                cells.append(r.get(f"{n}_error", r.get("error", "-"))[:40])
        data = r.get("data_clips_s_per_worker") or r.get("data_error", "-")[:40]
        feed = r.get("workers_to_feed")
        feed = "-" if feed is None else f"{feed} ({r['recipe_workers']})"
        lines.append(
            f"| {r['preset']} | {r['batch']} | "
            + " | ".join(cells)
            + f" | {r.get('engine_vs_plain', '-')} | {data} | {feed} |"
        )
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
    parser.add_argument("--data-videos", type=int, default=8, help="generated videos each data set is prepared from")
    parser.add_argument("--data-clips", type=int, default=16, help="clips one data worker decodes per timed round")
    parser.add_argument("--data-frames", type=int, help="frames per generated video (default 300; 48 for tiny presets)")
    parser.add_argument(
        "--data-size",
        type=int,
        help="side of the generated and prepared videos (default: the recipe's largest data.train_short_side)",
    )
    parser.add_argument(
        "--data-dir", help="folder for the generated and prepared videos, kept and reused (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    cuda = torch.cuda.is_available()
    presets = select(args.presets or ("paper" if cuda else "tiny"))
    configs = preset_configs()
    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench_gpu_data_")
    folder = args.data_dir or tmp.name
    made: Dict[Tuple, str] = {}
    data_sets: Dict[str, Any] = {}
    for preset in presets:  # before any model: prepare's worker processes fork from a process without CUDA
        try:
            data_sets[preset] = prepared_data(configs.get(preset, ("-", None))[1], is_tiny(preset), args, folder, made)
        except Exception as err:
            data_sets[preset] = err
    configure_backends(deterministic=False)
    device = init_distributed(resolve_env())
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    rows = []
    for preset in presets:
        config, data = configs.get(preset, ("-", None))
        prepared = data_sets[preset]
        row = bench_preset(preset, args, device, data, config, None if isinstance(prepared, Exception) else prepared)
        if isinstance(prepared, Exception):
            row["data_error"] = f"{type(prepared).__name__}: {prepared}"[:300]
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as fh:
                fh.write(line + "\n")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(
        f"\n{rows[0]['device'] if rows else device}, {args.precision}, torch {torch.__version__}, "
        f"{args.rounds} rounds x {args.steps} steps (median)"
    )
    print(table(rows))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
