"""Model registry: a preset is a model class plus constructor kwargs (timm's create_model idea)."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from torch import nn


@dataclass(frozen=True)
class Preset:
    """A named configuration of a model class."""

    name: str
    cls: type
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> Dict[str, inspect.Parameter]:
        """Constructor parameters of the preset's class (what a config may override)."""
        params = inspect.signature(self.cls.__init__).parameters
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {k: p for k, p in params.items() if k != "self" and p.kind in kinds}


_PRESETS: Dict[str, Preset] = {}


def register_preset(name: str, cls: type, **kwargs: Any) -> Preset:
    """Register `name` as `cls(**kwargs)`; a second registration of a name is a bug."""
    if name in _PRESETS:
        raise ValueError(f"model preset {name!r} is registered twice")
    _PRESETS[name] = Preset(name, cls, dict(kwargs))
    return _PRESETS[name]


def list_presets() -> List[str]:
    """Names of all registered presets, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name lists the closest and all valid names."""
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Available: {', '.join(list_presets())}")
    return _PRESETS[name]


def create(name: str, **overrides: Any) -> nn.Module:
    """Instantiate preset `name`; `None` overrides are dropped so unset options never win."""
    preset = get_preset(name)
    kwargs = {**preset.kwargs, **{k: v for k, v in overrides.items() if v is not None}}
    return preset.cls(**kwargs)


def build(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build from a config section: `{'name': preset, **constructor overrides}`."""
    cfg = dict(model_cfg)
    return create(cfg.pop("name"), **cfg)
