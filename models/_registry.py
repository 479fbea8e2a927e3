"""Model registry: a preset is a model class plus constructor kwargs (timm's create_model idea)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from torch import nn

# Skeleton arrays of NTU RGB+D and Kinetics-Skeleton are stored padded to 300 frames.
SKELETON_FRAMES = 300


@dataclass(frozen=True)
class Preset:
    """A named configuration of a model class."""

    name: str
    cls: Type[Any]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    num_params: Optional[int] = None
    """Parameter count the preset is documented to have (tests check it); None: not stated."""
    crop_size: Optional[int] = None
    """Side of the square frames a video preset is made for; None: a ViT's own image size, else 224."""

    def parameters(self) -> Dict[str, inspect.Parameter]:
        """Constructor parameters of the preset's class (what a config may override)."""
        params = inspect.signature(self.cls.__init__).parameters
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {k: p for k, p in params.items() if k != "self" and p.kind in kinds}


_PRESETS: Dict[str, Preset] = {}
_families_imported = False


def import_families() -> None:
    """Import every public module of `action_launch.models` once: a family registers its presets and checkpoint
    formats when imported, so a new family is one new file and nothing lists it. The registries' readers call
    this (not the package's `__init__`), so `python -m action_launch.models.convert` runs its module only once."""
    global _families_imported
    if _families_imported:
        return
    _families_imported = True  # first: a family that asks the registry while being imported sees the others so far
    package = importlib.import_module(__name__.rsplit(".", 1)[0])
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def register_preset(
    name: str, cls: type, *, num_params: Optional[int] = None, crop_size: Optional[int] = None, **kwargs: Any
) -> Preset:
    """Register `name` as `cls(**kwargs)`; a second registration of a name is a bug.

    Args:
        num_params: the parameter count the preset is documented to have, if any.
        crop_size: the frame side a video preset is made for, if not the default (see `input_shape`).
    """
    if name in _PRESETS:
        raise ValueError(f"model preset {name!r} is registered twice")
    _PRESETS[name] = Preset(name, cls, dict(kwargs), num_params, crop_size)
    return _PRESETS[name]


def list_presets() -> List[str]:
    """Names of all registered presets, sorted."""
    import_families()
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name lists the closest and all valid names."""
    import_families()
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Available: {', '.join(list_presets())}")
    return _PRESETS[name]


# --------------------------------------------------------------------------------------------
# The class count has one name across all models: `num_classes`. MS-G3D used to take `num_class` (the
# reference code's name); old calls and configs that still say so are read as `num_classes`.

_num_class_warned = False


def warn_num_class_once(where: str) -> None:
    """One FutureWarning per process that `num_class` (met at `where`) is read as `num_classes`."""
    global _num_class_warned
    if _num_class_warned:
        return
    _num_class_warned = True
    warnings.warn(
        f"{where}: `num_class` is deprecated, use `num_classes` (the class count's one name across all "
        f"models); read as num_classes this time",
        FutureWarning,
        stacklevel=3,
    )


def rename_num_class(kwargs: Mapping[str, Any], where: str = "num_class") -> Dict[str, Any]:
    """`kwargs` with a deprecated `num_class` renamed to `num_classes` (warning once); a copy either way.

    Both given with different values is an error (which one was meant cannot be told); `None` counts as unset.
    """
    out = dict(kwargs)
    if "num_class" not in out:
        return out
    old = out.pop("num_class")
    if old is None:
        return out
    new = out.get("num_classes")
    if new is not None and new != old:
        raise TypeError(f"{where}={old!r} (deprecated) and num_classes={new!r} disagree: give only num_classes")
    warn_num_class_once(where)
    out["num_classes"] = old
    return out


def create(name: str, **overrides: Any) -> nn.Module:
    """Instantiate preset `name`; `None` overrides are dropped so unset options never win.

    A deprecated `num_class` override is taken as `num_classes` (with a warning, once).
    """
    preset = get_preset(name)
    overrides = rename_num_class(overrides, f"models.create({name!r}, num_class=...)")
    kwargs = {**preset.kwargs, **{k: v for k, v in overrides.items() if v is not None}}
    return preset.cls(**kwargs)


def build(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build from a config section: `{'name': preset, **constructor overrides}`."""
    cfg = dict(model_cfg)
    return create(cfg.pop("name"), **cfg)


def input_shape(
    model: nn.Module,
    preset: Optional[str] = None,
    *,
    window: Optional[int] = None,
    frames: Optional[int] = None,
    crop_size: Optional[int] = None,
) -> Tuple[int, ...]:
    """Shape of one input sample (no batch axis) that `model` expects, read from its attributes.

    - skeleton models (`num_point`, `num_person`, `in_channels`): (C, T, V, M); T = `window`, else
      `SKELETON_FRAMES` (the length skeleton arrays are stored at);
    - per-person feature models (`modality_dims`, `num_persons`, `num_frames`): (P, T, sum of dims);
    - video models: (3, T, S, S); T = the model's `num_frames` / `num_segments` (some need exactly that
      length, e.g. ST-ABN's temporal classifier), else `frames`; S = `crop_size`, else the crop size of
      `preset`, else a ViT's own image size, else 224.

    A config's data section supplies `window` (`data.window_size`), `frames` (`data.num_frames`) and
    `crop_size` (`data.crop_size`); without one the model's own sizes are used.
    """
    sizes: Any = model  # plain int attributes, which nn.Module's __getattr__ would type as Tensor | Module
    if all(hasattr(model, a) for a in ("num_point", "num_person", "in_channels")):
        return (sizes.in_channels, window or SKELETON_FRAMES, sizes.num_point, sizes.num_person)
    if all(hasattr(model, a) for a in ("modality_dims", "num_persons", "num_frames")):
        return (sizes.num_persons, sizes.num_frames, sum(sizes.modality_dims))
    length = getattr(model, "num_frames", None) or getattr(model, "num_segments", None) or frames
    if length is None:
        raise ValueError(f"{type(model).__name__} has no num_frames or num_segments attribute: pass frames=")
    size = crop_size or (get_preset(preset).crop_size if preset else None)
    if size is None and hasattr(model, "grid_size") and hasattr(model, "patch_embed"):  # a ViT: its position grid
        size = sizes.grid_size * sizes.patch_embed.proj.kernel_size[0]
    size = size or 224
    return (3, int(length), size, size)
