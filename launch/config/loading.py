"""Loading a run config: YAML files with `_base_` inheritance, `key.sub=value` overrides, then the validator."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import yaml

from action_launch.common.files import atomic_write_text
from action_launch.config.schema import Config
from action_launch.config.validation import ConfigError, Validator
from action_launch.datasets.config import ListedClipConfig


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


DELETE_KEY = "_delete_"
"""In a YAML mapping, `_delete_: true` makes the mapping replace the one it inherits instead of merging into it."""


class _Deleted:
    """The value of a `~key` override: the key is removed from the config it merges into."""

    def __repr__(self) -> str:
        return "<deleted>"


DELETED = _Deleted()


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], _path: str = "") -> Dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings recursively, everything else replaced.

    A mapping of `update` holding `_delete_: true` replaces the mapping of `base` instead of merging into it (as
    mmengine's configs); a value `DELETED` (a `~key` override) removes the key, which `base` must have.
    """
    replace = update.get(DELETE_KEY, False)
    if not isinstance(replace, bool):
        raise ConfigError(f"{_path}{DELETE_KEY}: expected true or false, got {replace!r}")
    out = {} if replace else dict(base)
    for key, value in update.items():
        dotted = f"{_path}{key}"
        if key == DELETE_KEY:
            continue
        if value is DELETED:
            if key not in out:
                raise ConfigError(
                    f"~{dotted}: {dotted} is not set, so there is nothing to delete (an unset key takes its default)"
                )
            del out[key]
        elif isinstance(value, Mapping):
            inherited = out.get(key)
            out[key] = deep_merge(inherited if isinstance(inherited, Mapping) else {}, value, f"{dotted}.")
        else:
            out[key] = value
    return out


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """Turn `a.b=value` strings into a nested dict; values are parsed as YAML scalars. `~a.b` deletes the key
    `a.b` (its value in the tree is `DELETED`); `a._delete_=true` makes the overrides of `a` replace it."""
    nested: Dict[str, Any] = {}
    for item in overrides:
        deleting = item.startswith("~")
        key, sep, text = item[1:].partition("=") if deleting else item.partition("=")
        if deleting and sep:
            raise ConfigError(f"bad override {item!r}: ~key deletes a key and takes no value")
        if (not sep and not deleting) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.sub=value, or ~key.sub to delete a key")
        if deleting:
            value: Any = DELETED
        else:
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


def from_dict(
    raw: Mapping[str, Any], source: str = "config", override_keys: Iterable[str] = (), check_model: bool = True
) -> Config:
    """Validate a plain dict (e.g. a loaded YAML) into a `Config`.

    `check_model=False` skips the `model:` check against the preset's constructor, which imports torch
    (`submit.py --dry-run` stays fast; the job checks it when it starts).
    """
    validator = Validator(source, override_keys)
    cfg = validator.convert(dict(raw), Config)
    _check_schedule(cfg, validator)
    if check_model:
        cfg.model = validator.model_section(cfg.model)
        _check_clip_length(cfg, validator)
    return cfg


def _check_clip_length(cfg: Config, validator: Validator) -> None:
    """A model built for one clip length names the constructor argument that fixes it (`clip_length_arg`, ST-ABN:
    its temporal attention is T x T); fed clips of `data.num_frames` frames, both must agree, or the run would fail at
    its first forward, after DeepSpeed started. Models that read T from their input (TSM) or resize their time
    embedding to it (TimeSformer) declare nothing and take any length."""
    from action_launch import models
    from action_launch.models.contract import FixesClipLength

    preset = models.get_preset(cfg.model["name"])
    arg = preset.cls.clip_length_arg if isinstance(preset.cls, FixesClipLength) else None
    if arg is None or not isinstance(cfg.data, ListedClipConfig):  # the kinds whose clips have data.num_frames frames
        return
    length = cfg.model.get(arg)
    length = preset.kwargs.get(arg, preset.parameters()[arg].default) if length is None else length
    if length != cfg.data.num_frames:
        key = "data.num_frames" if "data.num_frames" in validator.override_keys else f"model.{arg}"
        validator.fail(
            key,
            f"data.num_frames={cfg.data.num_frames} but model.{arg}={length}: {cfg.model['name']} is "
            f"built for clips of exactly model.{arg} frames; set both to the same value",
        )


def _check_schedule(cfg: Config, validator: Validator) -> None:
    """A cosine warmup ramps toward the schedule's value where the warmup ends; ending at the last epoch, that
    is `final_lr` (0 by default), and the run would train at an LR near it from the first step to the last."""
    o, epochs = cfg.optim, cfg.train.epochs
    if o.schedule == "cosine" and o.warmup_epochs >= epochs:
        key = "optim.warmup_epochs" if "optim.warmup_epochs" in validator.override_keys else "train.epochs"
        validator.fail(
            key,
            f"optim.warmup_epochs={o.warmup_epochs:g} >= train.epochs={epochs} with the cosine "
            f"schedule: the warmup would ramp to the schedule's end (optim.final_lr={o.final_lr:g}) and "
            f"train at about that LR throughout; lower optim.warmup_epochs or raise train.epochs",
        )


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
