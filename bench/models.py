"""Forward + backward speed of every model preset on CPU, with parameter counts and FLOPs per clip.

    python bench/models.py [--presets tiny|paper|all|NAME,NAME,...] [--iters 3] [--tiny-batch 8]

Each preset is built with `models.create`, run in training mode on random input of the shape its
model attributes and its config give (the first `configs/**/*.yaml` that names it: `data.crop_size`,
`data.window_size`; a preset no config names borrows the config of a sibling, see
`preset_configs`), and timed over `--iters` forward + loss + backward passes (no optimizer step) after `--warmup`
untimed ones. Paper presets run at batch 1, tiny ones at `--tiny-batch`. FLOPs come from one
pass under `torch.utils.flop_counter.FlopCounterMode` on the meta device (shapes only, so a paper
preset costs seconds) and are reported per clip, forward alone and forward + backward (GFLOPs,
one multiply-add = 2 FLOPs; the counter counts matrix products and convolutions only).

Input layout by model kind: the registry's `models._registry.input_shape` (the tests use it too), given
the config's sizes:
- skeleton models: (C, T, V, M), T = `data.window_size` (0 in a config means "keep the arrays' length":
  `--skeleton-frames`, 300 for NTU and Kinetics);
- per-person feature models: (P, T, sum of modality dims);
- video models: (3, T, S, S), T = the model's `num_frames` / `num_segments` (else `data.num_frames`),
  S = `data.crop_size` (no config: the preset's crop size, a ViT's own image size, else 224).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from action_launch import models  # noqa: E402
from action_launch.config import load_config, load_yaml_with_bases  # noqa: E402
from action_launch.datasets.config import ClipConfig, DataConfig, SkeletonStreamConfig  # noqa: E402
from action_launch.models._registry import input_shape  # noqa: E402
from action_launch.training.losses import logits_of, make_loss  # noqa: E402


def is_tiny(preset: str) -> bool:
    """Tiny presets end in `_tiny`; every other preset is a paper preset."""
    return preset.endswith("_tiny")


def preset_configs(root: Path = REPO / "configs") -> Dict[str, Tuple[str, DataConfig]]:
    """preset name -> (config file, its resolved `data:` section) for the first config naming it.

    Files are taken in sorted order with `_base_` files and top-level ones (`demo.yaml`) last, so a
    system's recipe (`timesformer/k400_8x32.yaml`) wins over the base it inherits from; a config
    that fails to load is skipped. A preset no config names borrows the data section of a preset
    of the same model class and size (tiny or paper) that has one, e.g. `msg3d_kinetics_tiny`
    takes the window of `msg3d/tiny.yaml`.
    """
    found: Dict[str, Tuple[str, DataConfig]] = {}
    files = sorted(root.rglob("*.yaml"), key=lambda p: (p.stem.startswith("_"), p.parent == root, str(p)))
    for path in files:
        try:
            name = (load_yaml_with_bases(path).get("model") or {}).get("name")
            if name and name not in found:
                found[name] = (str(path.relative_to(root)), load_config(path).data)
        except Exception:
            continue
    for name in models.list_presets():
        if name not in found:
            cls = models.get_preset(name).cls
            kin = [n for n in found if models.get_preset(n).cls is cls and is_tiny(n) == is_tiny(name)]
            if kin:
                found[name] = (f"{found[kin[0]][0]} (of {kin[0]})", found[kin[0]][1])
    return found


def clip_shape(model: nn.Module, preset: str, data: Optional[DataConfig], skeleton_frames: int) -> Tuple[int, ...]:
    """Input shape of one sample (no batch axis): the registry's `input_shape` with the config's sizes."""
    window = data.window_size if isinstance(data, SkeletonStreamConfig) else 0  # each from the kind that has it
    clip = data if isinstance(data, ClipConfig) else None
    return input_shape(
        model,
        preset,
        window=window or skeleton_frames,
        frames=clip.num_frames if clip else None,
        crop_size=clip.crop_size if clip else None,
    )


def _targets(outputs, batch: int, regression: bool) -> torch.Tensor:
    """Random targets that fit the model's output: values for regression, class indices otherwise."""
    logits = logits_of(outputs)
    if regression:
        return torch.randn(batch, *logits.shape[1:], device=logits.device)
    return torch.randint(0, logits.shape[-1], (batch,), device=logits.device)


def count_flops(preset: str, shape: Tuple[int, ...], batch: int, regression: bool) -> Tuple[float, float]:
    """(forward, backward) FLOPs of one training pass of `preset` on a batch of `shape` clips.

    Counted on the meta device (shapes only, no arithmetic), so paper presets cost seconds.
    """
    with torch.device("meta"):
        model = models.create(preset).train()
        x = torch.empty(batch, *shape)
    loss_fn = make_loss(model, "mse" if regression else "cross_entropy")
    with FlopCounterMode(display=False) as fwd_count:
        outputs = model(x)
    loss = loss_fn(outputs, _targets(outputs, batch, regression))
    with FlopCounterMode(display=False) as bwd_count:
        loss.backward()
    return float(fwd_count.get_total_flops()), float(bwd_count.get_total_flops())


@dataclass
class Result:
    preset: str
    shape: Tuple[int, ...]
    batch: int
    params: int
    gflops_fwd: float
    gflops_train: float
    clips_per_s: float
    s_per_iter: float
    config: str


def bench_preset(
    preset: str, batch: int, iters: int, warmup: int, data: Optional[DataConfig], config: str, skeleton_frames: int
) -> Result:
    """Build `preset`, count its FLOPs (meta device), then time `iters` forward + backward passes."""
    torch.manual_seed(0)
    model = models.create(preset).train()
    shape = clip_shape(model, preset, data, skeleton_frames)
    x = torch.randn(batch, *shape)
    regression = getattr(model, "task", None) == "regression"
    loss_fn = make_loss(model, "mse" if regression else "cross_entropy")

    fwd, bwd = count_flops(preset, shape, batch, regression)
    y = _targets(model(x[:1]), batch, regression)

    for _ in range(warmup):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    start = time.perf_counter()
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return Result(
        preset,
        shape,
        batch,
        params,
        fwd / batch / 1e9,
        (fwd + bwd) / batch / 1e9,
        batch * iters / elapsed,
        elapsed / iters,
        config,
    )


def select(spec: str) -> List[str]:
    """Presets named by `--presets`: `tiny`, `paper`, `all` or a comma-separated list of names."""
    names = models.list_presets()
    if spec in ("all", "tiny", "paper"):
        return [n for n in names if spec == "all" or is_tiny(n) == (spec == "tiny")]
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    for name in chosen:
        models.get_preset(name)  # an unknown name lists the valid ones
    return chosen


def table(results: List[Result]) -> str:
    """A Markdown table of the results."""
    head = (
        "| preset | input per clip | from config | batch | params | GFLOPs fwd/clip | GFLOPs fwd+bwd/clip | clips/s "
        "| s/iter |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {r.preset} | {'x'.join(map(str, r.shape))} | {r.config} | {r.batch} | {r.params:,} | "
        f"{_num(r.gflops_fwd)} | {_num(r.gflops_train)} | {_num(r.clips_per_s)} | {_num(r.s_per_iter)} |"
        for r in results
    ]
    return "\n".join([head, *rows])


def _num(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{min(digits, 4)}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="all", help="tiny, paper, all, or a comma-separated list of preset names")
    parser.add_argument("--iters", type=int, default=3, help="timed forward+backward passes per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before timing (tiny presets)")
    parser.add_argument("--paper-warmup", type=int, default=0, help="untimed passes before timing (paper presets)")
    parser.add_argument("--tiny-batch", type=int, default=8, help="batch of the tiny presets (paper presets: 1)")
    parser.add_argument(
        "--skeleton-frames",
        type=int,
        default=300,
        help="T of skeleton input when the config keeps the arrays' length (window_size 0)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = preset_configs()
    results = []
    for name in select(args.presets):
        tiny = is_tiny(name)
        config, data = configs.get(name, (None, None))
        result = bench_preset(
            name,
            args.tiny_batch if tiny else 1,
            args.iters,
            args.warmup if tiny else args.paper_warmup,
            data,
            config or "-",
            args.skeleton_frames,
        )
        results.append(result)
        print(
            f"{name}: {result.clips_per_s:.3g} clips/s ({result.s_per_iter:.3g} s/iter, input "
            f"{'x'.join(map(str, result.shape))} from {result.config})",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, forward + backward, "
        f"{args.iters} timed iterations each"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
