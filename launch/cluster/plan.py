"""What a submission will run: configs, grid points, Slurm layout, effective batch and LR, before anything is submitted.

`resolve` is the one place where config files, grid axes, overrides and Slurm flags become job configs;
the Slurm flags of `launch/submit.py` are derived from the `slurm:` section's fields (`slurm_flags`),
so a flag and its field cannot drift apart. Nothing here imports submitit or torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from action_launch.config import (
    Config,
    ConfigError,
    SlurmConfig,
    deep_merge,
    field_docs,
    flatten,
    from_dict,
    load_yaml_with_bases,
    parse_overrides,
)
from action_launch.training.schedule import effective_batch_size, kept_accumulation, scale_lrs


def safe_component(text: str) -> str:
    """A folder-name-safe form of a config value (the value itself stays untouched in the config)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "_"


def job_folder_template(output_dir: str, experiment: str, name: str) -> Path:
    """`<output_dir>/<experiment>/<name>/%j`: submitit puts the job id in place of %j."""
    return Path(output_dir).resolve() / safe_component(experiment) / safe_component(name) / "%j"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_script_values(values: Mapping[str, Any]) -> None:
    """Refuse a value with a control character (newline, tab, NUL, ...) in it: these values reach the sbatch
    script, which sbatch then refuses (or reads as a new line). `values`: option name -> value; one
    error line names the first bad option and shows its value with repr()."""
    for option, value in values.items():
        if isinstance(value, str) and _CONTROL.search(value):
            raise ConfigError(
                f"{option}: {value!r} contains a control character; a value that reaches the sbatch script may not"
            )


def script_values(cfg: Config, flags: Iterable[str] = ()) -> Dict[str, Any]:
    """What of `cfg` reaches a job's sbatch script (directly, or as its job name and folder), by option name:
    every `slurm.<field>` (`--<field>` where that field was given as one of `flags`), `output_dir`,
    `experiment` and `name`."""
    given = set(flags)
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(SlurmConfig):
        option = "--" + f.name.replace("_", "-") if f.name in given else f"slurm.{f.name}"
        out[option] = getattr(cfg.slurm, f.name)
    out.update(output_dir=cfg.output_dir, experiment=cfg.experiment, name=cfg.name)
    return out


def parse_time_minutes(text: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    text = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"slurm.time: {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, b, c = (int(g) if g else None for g in match.group(1, 3, 4))
    a = int(match.group(2))  # the one number the pattern requires
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif b is not None and c is not None:  # H:M:S (the pattern fills the third number only after the second)
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    return max(1, -(-seconds // 60))


def split_top_level(text: str) -> List[str]:
    """`0.1,0.2` -> two values; commas inside [], {} or quotes do not split (`[32,36]` is one value)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


@dataclass
class Plan:
    """One job: its config and the layout it will run with."""

    cfg: Config
    grid_point: Dict[str, Any] = field(default_factory=dict)
    nodes: int = 1
    tasks_per_node: int = 1
    effective_batch: int = 0
    lr: float = 0.0
    scaled_lr: float = 0.0

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def resolve(
    config_paths: Sequence[str], overrides: Sequence[str], flags: Dict[str, Any], check_model: bool = True
) -> List[Plan]:
    """The one place where config files, grid axes, overrides and Slurm flags become job configs.

    `check_model=False` leaves the `model:` section to the job (checking it imports torch).
    """
    fixed, cli_axes = [], []
    for item in overrides:
        key, sep, text = item.partition("=")
        values = split_top_level(text) if sep else [text]
        if len(values) > 1:
            cli_axes.append((key, values))
        else:
            fixed.append(item)
    flag_tree = {"slurm": {k: v for k, v in flags.items() if v is not None}}
    plans = []
    paths: Sequence[Optional[str]] = config_paths or [None]  # no config file: the defaults alone
    for path in paths:
        raw = load_yaml_with_bases(path) if path else {}
        grid = raw.pop("grid", None) or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"grid: expected a mapping of dotted keys to non-empty lists (in {path})")
        axes = [(k, [json.dumps(v) for v in values]) for k, values in grid.items()] + cli_axes
        for combo in itertools.product(*[values for _, values in axes]):
            point = dict(zip([k for k, _ in axes], combo))
            tree = parse_overrides([*fixed, *(f"{k}={v}" for k, v in point.items())])
            merged = deep_merge(raw, tree)
            written = merged.get("slurm", {}) if isinstance(merged.get("slurm"), dict) else {}
            cfg = from_dict(
                deep_merge(merged, flag_tree),
                source=str(path) if path else "defaults",
                override_keys=set(flatten(tree)) | {f"slurm.{k}" for k in flag_tree["slurm"]},
                check_model=check_model,
            )
            plans.append(_layout(cfg, written, {k: parse_overrides([f"x={v}"])["x"] for k, v in point.items()}))
    name_array_tasks(plans)
    return plans


# keys whose value is already the run name's base: a grid over them needs no `key=value` suffix
_NAME_KEYS = ("name", "tracking.run_name")


def _value_text(value: Any) -> str:
    """A grid value as written in an override: strings as they are, the rest as compact JSON (`[32,36]`, `true`)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def grid_point_text(point: Mapping[str, Any]) -> str:
    """A grid point in Hydra's `key=value,key=value` form (`optim.lr=0.1,seed=0`), the run's name keys left out."""
    return ",".join(f"{key}={_value_text(value)}" for key, value in point.items() if key not in _NAME_KEYS)


def name_array_tasks(plans: Sequence[Plan]) -> None:
    """Give each task of a job array its own MLflow run name (`tracking.run_name`): `<name>/<grid point>`, with the
    task index appended where that would repeat (e.g. several configs of one name without a grid). The run folders
    keep `<name>/<job id>`: the job id (`<array id>_<task>`) already tells them apart, and a requeue finds its folder
    by it."""
    if len(plans) < 2:
        return
    labels = []
    for plan in plans:
        point = grid_point_text(plan.grid_point)
        labels.append(f"{plan.cfg.run_name()}/{point}" if point else plan.cfg.run_name())
    for index, (plan, label) in enumerate(zip(plans, labels)):
        label = label if labels.count(label) == 1 else f"{label}/{index}"
        if label != plan.cfg.name:
            plan.cfg.tracking.run_name = label


def _layout(cfg: Config, written_slurm: Dict[str, Any], point: Dict[str, Any]) -> Plan:
    """Tasks, effective batch and scaled LR; `optim.keep_effective_batch` trades accumulation for devices."""
    s, t = cfg.slurm, cfg.train
    tasks_per_node = max(1, s.gpus_per_node)
    world = s.nodes * tasks_per_node
    written_world = int(written_slurm.get("nodes", 1)) * max(1, int(written_slurm.get("gpus_per_node", 0)))
    kept = kept_accumulation(cfg, world, written_world)  # the config's slurm: section as written, before the flags
    if kept is not None:
        t.grad_accum = kept[0]
    effective = effective_batch_size(t.micro_batch_size, t.grad_accum, world)
    scaled = scale_lrs(cfg.optim, effective)
    return Plan(cfg, point, s.nodes, tasks_per_node, effective, cfg.optim.lr, scaled.lr)


def describe(plan: Plan, index: int, total: int) -> str:
    cfg = plan.cfg
    device = f"{cfg.slurm.gpus_per_node} GPU(s)/node, nccl" if cfg.slurm.gpus_per_node else "CPU, gloo"
    head = f"job {index + 1}/{total}" + (f" {plan.grid_point}" if plan.grid_point else "")
    run = f" (MLflow run {cfg.run_name()})" if cfg.run_name() != cfg.name else ""
    return (
        f"{head}: {cfg.experiment}/{cfg.name}{run}\n"
        f"  {plan.nodes} node(s) x {plan.tasks_per_node} task(s) = world size {plan.world_size} ({device})\n"
        f"  effective batch {plan.effective_batch} = micro {cfg.train.micro_batch_size} x accumulation "
        f"{cfg.train.grad_accum} x world {plan.world_size}\n"
        f"  lr {plan.lr:g} -> {plan.scaled_lr:g} ({cfg.optim.lr_scaling} rule, base batch {cfg.optim.base_batch_size})"
    )


def slurm_flags() -> Dict[str, Tuple[type, str]]:
    """`--<field>` flags of `launch/submit.py`: each `slurm.<field>` with its type and its docstring as help."""
    hints = typing.get_type_hints(SlurmConfig)
    docs = field_docs(SlurmConfig)
    out = {}
    for f in dataclasses.fields(SlurmConfig):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        out[f.name] = (args[0] if args else tp, docs[f.name])
    return out
