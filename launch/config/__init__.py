"""Typed run configuration: YAML files with `_base_` inheritance, `key.sub=value` overrides, strict validation.

Every section is a dataclass with a default for each field; the `data:` section is owned by the data
layer (`datasets.config.DataConfig`) and the `model:` section is validated against the constructor of
the chosen model preset, so a config can set any constructor argument and nothing else.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from action_launch.common.files import atomic_write_text
from action_launch.datasets.config import DataConfig


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key and where it came from."""


@dataclass
class OptimConfig:
    """Optimizer, learning-rate scaling and schedule."""

    name: Literal["sgd", "adamw"] = "sgd"
    """Optimizer: SGD (momentum, optional Nesterov) or AdamW."""
    lr: float = 0.005
    """Base learning rate, valid for `base_batch_size` clips per optimizer step."""
    base_batch_size: int = 64
    """Batch size that `lr` (and `warmup_start_lr`, `final_lr`) were tuned for."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """How the LR follows the effective batch (micro x accumulation x world size)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum for SGD."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-4
    """L2 weight decay for weights; norms, biases and embeddings get none."""
    clip_grad: float = 0.0
    """Clip the global gradient L2 norm to this value (0 disables)."""
    schedule: Literal["step", "cosine", "constant"] = "step"
    """LR schedule over epochs (fractional: the LR changes every optimizer step)."""
    step_epochs: List[float] = field(default_factory=list)
    """`step` schedule: epochs at which the LR changes."""
    step_lrs: List[float] = field(default_factory=list)
    """`step` schedule: relative LR of each interval (len(step_epochs)+1); empty means 1, 0.1, 0.01, ..."""
    warmup_epochs: float = 0.0
    """Linear warmup length in epochs."""
    warmup_start_lr: float = 0.0
    """LR at the start of the warmup, for `base_batch_size` (scaled like `lr`)."""
    final_lr: float = 0.0
    """LR at the end of the cosine schedule, for `base_batch_size` (scaled like `lr`)."""
    keep_effective_batch: bool = False
    """On more devices (`submit.py --nodes N`), lower `train.grad_accum` to keep the effective batch (and LR)."""


@dataclass
class TrainConfig:
    """Loop length, batch layout, precision and logging cadence."""

    epochs: int = 15
    """Training epochs."""
    micro_batch_size: int = 8
    """Clips per device per forward/backward."""
    grad_accum: int = 1
    """Micro batches accumulated per optimizer step."""
    max_steps_per_epoch: Optional[int] = None
    """Cap on micro batches per epoch (smoke tests, quick sweeps); None uses the whole set."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Numeric precision of the DeepSpeed engine (fp16 needs a GPU)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage."""
    loss: Literal["cross_entropy", "mse", "bce"] = "cross_entropy"
    """Loss for models without their own `compute_loss`."""
    eval_every_epochs: int = 1
    """Validate every N epochs (and always after the last)."""
    log_every_steps: int = 10
    """Log training metrics every N optimizer steps."""


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 0
    """Also save every N optimizer steps (0: only at epoch ends)."""
    keep_last: int = 3
    """Step checkpoints kept besides the best one."""
    best_metric: str = "val/top1"
    """Validation metric that selects the `best` checkpoint."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or smaller `best_metric` is better."""


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    """Log to MLflow (the run folder keeps a local copy of every metric either way)."""
    uri: Optional[str] = None
    """Tracking URI; default `$MLFLOW_TRACKING_URI` or `sqlite:///<output_dir>/mlflow.db`."""
    experiment: Optional[str] = None
    """MLflow experiment name; default the run's `experiment`."""
    tags: Dict[str, str] = field(default_factory=dict)
    """Extra run tags, e.g. `mlflow.parentRunId` (set by `launch/tune.py` to nest a trial under its sweep)."""


@dataclass
class SlurmConfig:
    """Slurm resources of `launch/submit.py`; each field can be overridden by the flag of the same name."""

    nodes: int = 1
    """Nodes of the job (`--nodes`)."""
    gpus_per_node: int = 0
    """GPUs per node; one task per GPU, or one task per node when 0 (CPU)."""
    cpus_per_task: int = 1
    """CPU cores per task (data loader workers run on these)."""
    mem_gb: Optional[float] = None
    """Memory per node in GB; None leaves the partition's default."""
    partition: Optional[str] = None
    """Slurm partition; None uses the cluster's default."""
    account: Optional[str] = None
    """Slurm account to charge."""
    qos: Optional[str] = None
    """Quality of service."""
    constraint: Optional[str] = None
    """Node feature constraint (e.g. `a100`)."""
    time: str = "01:00:00"
    """Time limit per allocation, [D-]HH:MM:SS or minutes; a requeued job gets it again."""
    job_name: Optional[str] = None
    """Job name; default `<experiment>/<name>`."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which Slurm signals the job to checkpoint and requeue."""
    max_requeues: int = 3
    """Requeues after preemption or time limit before the job gives up."""
    array_parallelism: int = 16
    """Jobs of an array (grid) that may run at the same time."""


@dataclass
class Config:
    """A whole run."""

    experiment: str = "default"
    """Experiment name: groups runs in `output_dir/<experiment>/` and in MLflow."""
    name: str = "run"
    """Run name: the run folder is `output_dir/<experiment>/<name>/`."""
    output_dir: str = "runs"
    """Root folder of all runs (and of the default SQLite MLflow store)."""
    seed: int = 0
    """Seed of every random number generator of the run."""
    deterministic: bool = False
    """Use deterministic torch algorithms (slower; makes CPU runs bit-reproducible)."""
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "timesformer_tiny"})
    """`name`: a preset of `models.list_presets()`; other keys override the preset's constructor arguments."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def run_dir(self) -> Path:
        """Folder holding this run's config, checkpoints and local metrics."""
        return Path(self.output_dir) / self.experiment / self.name


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """The docstring under each field of a config dataclass, as one line (`{}` where the source is not at hand)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


# ----------------------------------------------------------------------------------------- loading

def load_yaml_with_bases(path: Union[str, Path], _seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a YAML config, merging the files named by `_base_` (relative to it) underneath it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(map(str, _seen + (resolved,)))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_yaml_with_bases(path.parent / base, _seen + (resolved,)))
    return deep_merge(merged, raw)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings recursively, everything else replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """Turn `a.b=value` strings into a nested dict; values are parsed as YAML scalars."""
    nested: Dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets inside {part!r}, which another override set to a value")
        node[leaf] = value
    return nested


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Load, merge overrides, and validate a config. Without a path, the embedded defaults are used."""
    raw = load_yaml_with_bases(path) if path else {}
    source = str(path) if path else "defaults"
    override_tree = parse_overrides(overrides)
    merged = deep_merge(raw, override_tree)
    return from_dict(merged, source=source, override_keys=set(flatten(override_tree)))


def from_dict(raw: Mapping[str, Any], source: str = "config", override_keys: frozenset | set = frozenset(),
              check_model: bool = True) -> Config:
    """Validate a plain dict (e.g. a loaded YAML) into a `Config`.

    `check_model=False` skips the `model:` check against the preset's constructor, which imports torch
    (`submit.py --dry-run` stays fast; the job checks it when it starts).
    """
    validator = _Validator(source, set(override_keys))
    cfg = validator.convert(dict(raw), Config, "")
    if check_model:
        cfg.model = validator.model_section(cfg.model)
    return cfg


def to_dict(cfg: Config) -> Dict[str, Any]:
    """The config as plain YAML-able values (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the fully resolved config; `--config` on this file reproduces the run."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`; lists stay values."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -------------------------------------------------------------------------------------- validation

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _Validator:
    """Converts plain values to typed ones, failing with the dotted path, the expectation and the source."""

    def __init__(self, source: str, override_keys: set):
        self.source = source
        self.override_keys = override_keys

    def fail(self, path: str, message: str) -> typing.NoReturn:
        origin = "command-line override" if path in self.override_keys else self.source
        raise ConfigError(f"{message} (in {origin})")

    def convert(self, value: Any, tp: Any, path: str) -> Any:
        if dataclasses.is_dataclass(tp):
            return self._dataclass(value, tp, path)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin is Union:
            if value is None and type(None) in args:
                return None
            candidates = [a for a in args if a is not type(None)]
            for candidate in candidates:
                try:
                    return self.convert(value, candidate, path)
                except ConfigError:
                    continue
            self._type_error(path, tp, value)
        if origin is Literal:
            if value in args and type(value) in {type(a) for a in args}:
                return value
            self.fail(path, f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        if origin in (list, List):
            if not isinstance(value, (list, tuple)):
                self._type_error(path, tp, value)
            return [self.convert(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin in (tuple, Tuple):
            if not isinstance(value, (list, tuple)):
                self._type_error(path, tp, value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
            if args and len(value) != len(args):
                self.fail(path, f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(self.convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
        if origin in (dict, Dict):
            if not isinstance(value, Mapping):
                self._type_error(path, tp, value)
            return dict(value)
        return self._scalar(value, tp, path)

    def _scalar(self, value: Any, tp: Any, path: str) -> Any:
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it means.
            if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
                return float(value)
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                return int(value)
        elif tp in (bool, str):
            if isinstance(value, tp):
                return value
        elif isinstance(tp, type) and isinstance(value, tp):
            return value
        self._type_error(path, tp, value)

    def _type_error(self, path: str, tp: Any, value: Any) -> typing.NoReturn:
        name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        self.fail(path, f"{path}: expected {name}, got {value!r} ({type(value).__name__})")

    def _dataclass(self, value: Any, cls: type, path: str) -> Any:
        if not isinstance(value, Mapping):
            self._type_error(path or "config", cls, value)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self._unknown(dotted, key, list(fields), path)
            default = fields[key].default_factory
            if isinstance(item, Mapping) and default is not dataclasses.MISSING:
                # A free-form mapping (e.g. `model:`) overrides its default entry by entry.
                base = default()
                item = deep_merge(base, item) if isinstance(base, Mapping) else item
            kwargs[key] = self.convert(item, hints[key], dotted)
        return cls(**kwargs)

    def _unknown(self, dotted: str, key: Any, valid: Sequence[str], parent: str) -> typing.NoReturn:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        prefix = f"{parent}." if parent else ""
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
        self.fail(dotted, f"unknown key {dotted}{hint}")

    def model_section(self, section: Mapping[str, Any]) -> Dict[str, Any]:
        """Check `model:` against the preset's constructor: known name, known arguments, right types."""
        from action_launch import models  # the registry is only needed once a config names a model

        section = dict(section)
        name = section.get("name")
        if not isinstance(name, str):
            self.fail("model.name", f"model.name: expected a preset name (str), got {name!r}")
        try:
            preset = models.get_preset(name)
        except KeyError as err:
            self.fail("model.name", f"model.name: {err.args[0]}")
        params = preset.parameters()
        hints = typing.get_type_hints(preset.cls.__init__)
        out = {"name": name}
        for key, value in section.items():
            if key == "name":
                continue
            dotted = f"model.{key}"
            if key not in params:
                self._unknown(dotted, key, list(params), "model")
            out[key] = self.convert(value, hints.get(key, Any), dotted) if value is not None else None
        return out
