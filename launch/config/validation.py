"""The one validator of every file a user writes: plain values (a loaded YAML, parsed overrides) become the
typed dataclasses of a schema, or fail with the dotted key, what was expected, the closest valid choice
and where the value came from."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key and where it came from."""


def must(test: Callable[[Any], bool], text: str) -> Dict[str, Any]:
    """Field metadata: besides its type, a value must pass `test`; `text` says what it must be (e.g. `>= 1`)."""
    return {"must": (test, text)}


def did_you_mean(word: Any, choices: Iterable[Any]) -> Optional[Any]:
    """The choice closest to `word` as text (difflib), else the one choice it abbreviates, else None."""
    by_text = {str(c): c for c in choices}
    close = difflib.get_close_matches(str(word), list(by_text), n=1, cutoff=0.6)
    # difflib finds `grace` too short for `grace_period`; a unique prefix is a clear enough hint.
    close = close or [t for t in by_text if str(word) and t.startswith(str(word))]
    return by_text[close[0]] if len(close) == 1 else None


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _prefixes(keys: Iterable[str]) -> set:
    # `trian.epochs=2` fails at `trian` (unknown key): every prefix of an override key came from the command line.
    parts = [key.split(".") for key in keys]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


class Validator:
    """Converts plain values to typed ones, failing with the dotted path, the expectation and the source.

    `source` names the file (or `defaults`); a path under one of `override_keys` is reported as a
    command-line override instead. `error` is the exception raised (a sweep file raises its own).
    """

    def __init__(self, source: str, override_keys: Iterable[str] = (), error: Type[ConfigError] = ConfigError):
        self.source = source
        self.override_keys = _prefixes(override_keys)
        self.error = error

    def fail(self, path: str, message: str) -> typing.NoReturn:
        """Raise `message` with the origin of `path` (`data.mean[1]` came from wherever `data.mean` did)."""
        origin = "command-line override" if path.split("[", 1)[0] in self.override_keys else self.source
        raise self.error(f"{message} (in {origin})")

    def convert(self, value: Any, tp: Any, path: str = "") -> Any:
        """`value` as type `tp` (a schema dataclass, a typing construct or a plain type) at dotted `path`."""
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._dataclass(value, tp, path)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin is Union:
            return self._union(value, tp, args, path)
        if origin is Literal:
            return self._literal(value, args, path)
        if origin in (list, List):
            if not isinstance(value, (list, tuple)):
                self._type_error(path, tp, value)
            return [self.convert(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin in (tuple, Tuple):
            return self._tuple(value, tp, args, path)
        if origin in (dict, Dict):
            if not isinstance(value, Mapping):
                self._type_error(path, tp, value)
            return dict(value)
        return self._scalar(value, tp, path)

    def _union(self, value: Any, tp: Any, args: Tuple[Any, ...], path: str) -> Any:
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own error says more than "expected Optional[X]"
            return self.convert(value, candidates[0], path)
        for candidate in candidates:
            try:
                return self.convert(value, candidate, path)
            except ConfigError:
                continue
        self._type_error(path, tp, value)

    def _literal(self, value: Any, choices: Tuple[Any, ...], path: str) -> Any:
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        close = did_you_mean(value, choices)
        hint = f"; did you mean {close!r}?" if close is not None else ""
        self.fail(path, f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}{hint}")

    def _tuple(self, value: Any, tp: Any, args: Tuple[Any, ...], path: str) -> Tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            self._type_error(path, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            self.fail(path, f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
        types = args or [Any] * len(value)
        return tuple(self.convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, types)))

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
        cls = self._kind_class(value, cls, path)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if key not in fields and self._other_kinds_default(cls, key, item, path):
                continue
            if key not in fields:
                self._unknown(dotted, key, list(fields), path)
            default = fields[key].default_factory
            if isinstance(item, Mapping) and default is not dataclasses.MISSING:
                base = default()
                # A free-form mapping (e.g. `model:`) overrides its (flat) default entry by entry.
                item = {**base, **item} if isinstance(base, dict) else item
            kwargs[key] = self._checked(self.convert(item, hints[key], dotted), fields[key], dotted)
        return cls(**kwargs)

    def _kind_class(self, value: Mapping, cls: type, path: str) -> type:
        """A section of several kinds (a dataclass with `kinds()`, {value: class}, and `kind_key`: `data:` by
        `data.dataset`) is read as the class of the kind its `kind_key` names; any other dataclass as itself."""
        if not hasattr(cls, "kinds"):
            return cls
        section: Any = cls
        key = section.kind_key
        default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
        kinds = section.kinds()
        kind = self._literal(value.get(key, default), tuple(kinds), f"{path}.{key}" if path else key)
        return kinds[kind]

    def _other_kinds_default(self, cls: type, key: Any, item: Any, path: str) -> bool:
        """Whether `key`, not one of kind `cls`'s, is another kind's at that kind's default: then it is dropped (a
        run's config.yaml written before the kinds had their own keys holds every kind's); set to anything else it
        fails naming the kinds it belongs to. False for a key of no kind (the caller reports it unknown)."""
        section: Any = cls
        kinds = section.kinds() if hasattr(section, "kinds") else {}
        owners = [name for name, kind in kinds.items() if key in {f.name for f in dataclasses.fields(kind)}]
        owners.sort(key=lambda name: (len(dataclasses.fields(kinds[name])), name))  # the plainest kind first
        if not owners:
            return False
        dotted, owner = f"{path}.{key}" if path else str(key), kinds[owners[0]]
        spec = next(f for f in dataclasses.fields(owner) if f.name == key)
        default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        if self.convert(item, typing.get_type_hints(owner)[key], dotted) == default:
            return True
        selector = f"{path}.{section.kind_key}" if path else section.kind_key
        this = next(name for name, kind in kinds.items() if kind is cls)
        kinds_text = " or ".join(filter(None, [", ".join(owners[:-1]), owners[-1]]))
        self.fail(
            dotted,
            f"{dotted} is a key of {selector}={kinds_text}, not of {selector}={this}; remove it, or set "
            f"{selector}={owners[0]}",
        )

    def _checked(self, value: Any, field: dataclasses.Field, path: str) -> Any:
        test, text = field.metadata.get("must", (None, None))
        if test is not None and value is not None and not test(value):
            self.fail(path, f"{path}: expected a value {text}, got {value!r}")
        return value

    def _unknown(self, dotted: str, key: Any, valid: Sequence[str], parent: str) -> typing.NoReturn:
        close = did_you_mean(key, valid)
        prefix = f"{parent}." if parent else ""
        hint = f"; did you mean {prefix}{close}?" if close else f"; valid keys: {', '.join(valid)}"
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
        if "num_class" in section and "num_class" not in params:
            section = self._num_class_renamed(section)
        out: Dict[str, Any] = {"name": name}
        for key, value in section.items():
            if key == "name":
                continue
            dotted = f"model.{key}"
            from_cli = dotted in self.override_keys
            renamed = "model.name" in self.override_keys and not from_cli
            if key not in params and (renamed or (from_cli and value is None)):
                # a preset changed on the command line under inherited keys, or `model.key=null` meant as a deletion
                self.fail(
                    dotted,
                    f"{dotted}: {name} takes no {key} (it takes {', '.join(params)}); delete the "
                    f"inherited key with ~{dotted} on the command line or `_delete_: true` in the file",
                )
            if key not in params:
                self._unknown(dotted, key, list(params), "model")
            out[key] = self.convert(value, hints.get(key, Any), dotted) if value is not None else None
        return out

    def _num_class_renamed(self, section: Dict[str, Any]) -> Dict[str, Any]:
        """`model.num_class` (MS-G3D's old name of the class count) read as `model.num_classes`, warning once.

        Both set to different values: the one given on the command line wins (an override of an old
        file); from the same place, the config is ambiguous and fails.
        """
        old, new = section.get("num_class"), section.get("num_classes")
        if old is not None and new is not None and old != new:
            from_cli = [k for k in ("model.num_class", "model.num_classes") if k in self.override_keys]
            if len(from_cli) != 1:
                self.fail(
                    "model.num_class",
                    f"model.num_class={old!r} (deprecated) and model.num_classes={new!r} "
                    f"disagree; keep only model.num_classes",
                )
            section = dict(section)
            section.pop("num_class" if from_cli == ["model.num_classes"] else "num_classes")
        from action_launch.models._registry import rename_num_class

        origin = "command-line override" if "model.num_class" in self.override_keys else self.source
        return rename_num_class(section, f"model.num_class (in {origin})")
