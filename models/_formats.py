"""Published checkpoint formats: the types a model file declares its upstream's layout with, and their registry.

A model family whose upstream published weights registers, at the end of its own file, one `Format`
per upstream layout: how to recognise it by its keys and where each tensor goes (`register_format`).
What else the generic loader (`models.checkpoints`) has to know about a family is registered beside it:
its class-sized modules (`register_head_modules`), a resize for tensors of another length
(`register_resize`), parts a file may lack by design (`register_new_part`). This module imports torch and
`_registry` only, so family files import it without a cycle; `models.checkpoints` reads the registry (its readers
import the families first, `_registry.import_families`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from action_launch.models._registry import import_families


@dataclass(frozen=True)
class Ignored:
    """An upstream tensor deliberately not loaded, and why."""

    reason: str


@dataclass(frozen=True)
class Reshape:
    """An exact re-layout (the same numbers) of a file tensor whose shape is not the model's."""

    note: str
    """How, as the report says it (after `file shape -> model shape: `)."""
    apply: Callable[[torch.Tensor, torch.Size], Optional[torch.Tensor]]
    """(file tensor, model shape) -> the tensor in the model's shape, or None where it does not fit."""


# A rename result: None (no home: unexpected), Ignored, or (model name, the reshape it needs or None).
Target = Union[None, Ignored, Tuple[str, Optional[Reshape]]]


def _squeeze(value: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    if value.numel() == math.prod(shape) and [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return None


SQUEEZE = Reshape("singleton axes dropped", _squeeze)
"""A per-channel affine stored with singleton axes, (1, C, 1, 1) or (1, 1, 1, C) -> (C,)."""


@dataclass(frozen=True)
class Format:
    """An upstream layout: how to recognise it, where each tensor goes."""

    name: str
    description: str
    detect: Callable[[Sequence[str], nn.Module], bool]
    """(the file's keys, wrapper prefix removed; the model) -> whether the file is in this layout."""
    rename: Callable[[str, nn.Module], Target]
    join: Optional[Callable[[Mapping[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], Dict[str, str]]]] = None
    """Joins file tensors that become one of ours, before renaming: (state, {joined file name: how})."""
    conflicts: Optional[Callable[[nn.Module, Mapping[str, torch.Tensor], str], List[str]]] = None
    """(model, file state, wrapper prefix) -> file constants that contradict the model (they refuse the load)."""
    wrappers: Tuple[str, ...] = ()
    """Top-level names of the file that only wrap modules (the report groups their keys one level deeper)."""
    priority: int = 0
    """Formats are tried from the highest priority down: a layout whose keys narrow another's goes above it."""


@dataclass(frozen=True)
class DelegatedFormat:
    """A layout the model's own loader reads (it inflates or copies what no rename can), reported the same way."""

    name: str
    detect: Callable[[Mapping[str, torch.Tensor], nn.Module, Format], Optional[str]]
    """(file state, model, the `Format` the keys matched, else the native one) -> the description, or None."""
    load: Callable[[nn.Module, Mapping[str, torch.Tensor], Any], None]
    """(model, file state, `checkpoints.LoadReport`): load through the model's loader and fill the report."""
    priority: int = 0
    """Tried from the highest priority down, before the mapped formats load."""


_FORMATS: Dict[str, Union[Format, DelegatedFormat]] = {}
_RESIZES: List[Callable[[str, torch.Tensor, torch.Size, nn.Module], Optional[Tuple[torch.Tensor, str]]]] = []
_NEW_PARTS: List[Callable[[Sequence[str], Collection[str]], Dict[str, str]]] = []
_HEADS: Dict[type, Tuple[str, ...]] = {}


def register_format(fmt: Union[Format, DelegatedFormat]) -> Union[Format, DelegatedFormat]:
    """Register an upstream layout (from its model's file); a second format of the same name is a bug."""
    if fmt.name in _FORMATS or fmt.name == "native":
        raise ValueError(f"checkpoint format {fmt.name!r} is registered twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def registered_formats() -> List[Union[Format, DelegatedFormat]]:
    """Every registered format, in the order they are tried (priority, then registration)."""
    import_families()
    return sorted(_FORMATS.values(), key=lambda f: -f.priority)


def register_resize(
    fn: Callable[[str, torch.Tensor, torch.Size, nn.Module], Optional[Tuple[torch.Tensor, str]]],
) -> Callable[[str, torch.Tensor, torch.Size, nn.Module], Optional[Tuple[torch.Tensor, str]]]:
    """Decorator: `fn(model name, file tensor, model shape, model)` -> (resized tensor, how) or None, tried
    for a tensor of another shape (any format) after the format's own reshape."""
    _RESIZES.append(fn)
    return fn


def resizes() -> List[Callable[[str, torch.Tensor, torch.Size, nn.Module], Optional[Tuple[torch.Tensor, str]]]]:
    """The registered resizes, in registration order."""
    import_families()
    return list(_RESIZES)


def register_new_part(
    fn: Callable[[Sequence[str], Collection[str]], Dict[str, str]],
) -> Callable[[Sequence[str], Collection[str]], Dict[str, str]]:
    """Decorator: `fn(missing model names, loaded model names)` -> {name: why} for the tensors of a part the
    file's kind of model has none of (kept at initialisation, reported as `new` instead of missing)."""
    _NEW_PARTS.append(fn)
    return fn


def new_parts() -> List[Callable[[Sequence[str], Collection[str]], Dict[str, str]]]:
    """The registered new-part rules, in registration order."""
    import_families()
    return list(_NEW_PARTS)


def register_head_modules(cls: type, modules: Tuple[str, ...]) -> None:
    """The top-level modules of `cls` sized by the class count, the classifier first (default: `head_modules`)."""
    _HEADS[cls] = tuple(modules)


def head_modules(model: nn.Module) -> Tuple[str, ...]:
    """Top-level modules whose tensors are sized by the class count (the first is the classifier): the
    registered ones of the model's class, else `head`, `fc` or `classifier`, else the last Linear."""
    for cls in type(model).__mro__:
        if cls in _HEADS:
            return _HEADS[cls]
    for attr in ("head", "fc", "classifier"):
        if isinstance(getattr(model, attr, None), nn.Module):  # nn.Identity (no classes): no head tensors
            return (attr,)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linears[-1],) if linears else ()


def classifier(model: nn.Module) -> str:
    """The model's classifier module, where an upstream classifier's tensors go."""
    modules = head_modules(model)
    return modules[0] if modules else "fc"


def shape_text(t: Any) -> str:
    """A tensor's (or a shape's) shape as the report writes it: `(2, 3)`."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else str(tuple(t))
