"""The dataset kinds: each value of `data.dataset` with its `data:` section class and its dataset class.

A kind is one module of this package holding both: the section, a `DataConfig` subclass (usually over `ClipConfig`
or `SkeletonStreamConfig`) whose `dataset` field defaults to the kind's name, and the dataset class, made as
`Dataset(section, split)` and marked `@register_kind(Section)`. The first question asked of the registry imports
every public module of the package, so a new kind is one new file plus its test: no list elsewhere names it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable, Dict, NamedTuple, TypeVar

Cls = TypeVar("Cls", bound=type)


class Kind(NamedTuple):
    """One value of `data.dataset`."""

    name: str
    section: type
    """The class its `data:` section is read as (a `DataConfig`)."""
    dataset: type
    """The dataset class, made as `dataset(section, split)`; it meets `datasets.contract`."""


_KINDS: Dict[str, Kind] = {}
_discovered = False


def kind_name(section: type) -> str:
    """The `data.dataset` value a section class is read for: the default of its `dataset` field."""
    name = next(f.default for f in dataclasses.fields(section) if f.name == "dataset")
    if not isinstance(name, str):
        raise TypeError(f"{section.__name__}.dataset must default to the name of its kind, got {name!r}")
    return name


def register_kind(section: type) -> Callable[[Cls], Cls]:
    """Class decorator: the decorated dataset class reads sections of class `section`, for `data.dataset` =
    `section`'s `dataset` default. A name registered twice with other classes is a bug."""

    def register(dataset: Cls) -> Cls:
        name = kind_name(section)
        known = _KINDS.get(name)
        if known is not None and (known.section, known.dataset) != (section, dataset):
            raise ValueError(
                f"data.dataset {name!r} is registered twice: {known.dataset.__module__}.{known.dataset.__name__} "
                f"and {dataset.__module__}.{dataset.__name__}"
            )
        _KINDS[name] = Kind(name, section, dataset)
        return dataset

    return register


def kinds() -> Dict[str, Kind]:
    """Every kind by name, sorted; the first call imports the package's modules, whose dataset classes register."""
    global _discovered
    if not _discovered:
        package = importlib.import_module(__package__ or "action_launch.datasets")
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True
    return dict(sorted(_KINDS.items()))
