"""Published checkpoints: recognise an upstream checkpoint format by its keys and map it onto our names.

`load_checkpoint(model, path)` (what `--load-from` calls) reads a file (or one of our DeepSpeed
checkpoint folders), unwraps its container, recognises the layout by its keys, renames every tensor
to the model's name, converts the few whose layout differs (exactly, or by the resize the upstream
code itself does), and loads all of it or nothing.

This module is the generic part: reading, detection across the registered formats, mapping and the
report. Each upstream layout is a `Format` (names, containers, reshapes, detection) declared at the end
of its model's own file and registered in `models._formats` (`registered_formats()` lists them, in the
order they are tried); a layout only the model's own loader can read (inflation, copies) is a
`DelegatedFormat`, reported the same way. A file no format recognises is `native`: our own state dicts
and checkpoint folders, names taken as they are.

Every load ends in a `LoadReport`: per tensor loaded / resized / skipped as another shape / missing
/ unexpected, plus `new` (a component the file's kind of model has none of at all, kept at its
initialisation: parts a model file registers with `register_new_part`, the temporal parts of a video
model initialised from an image model, BatchNorm counters of pre-0.4.1 files) and `ignored` (upstream
tensors with no role in the computation), all grouped by top-level module. The load is refused
(`CheckpointError`, carrying the report) when a tensor outside the classification head is missing,
skipped or unexpected, or nothing loads; a head of another size (a new class count) is the one expected
skip. `partial=True` accepts a partial load (still not an empty one).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from action_launch.models._formats import (
    DelegatedFormat,
    Format,
    Ignored,
    Target,
    classifier,
    head_modules,
    new_parts,
    registered_formats,
    resizes,
    shape_text,
)

__all__ = [
    "CheckpointError",
    "DelegatedFormat",
    "Format",
    "Ignored",
    "LoadReport",
    "NATIVE",
    "Target",
    "detect_format",
    "head_keys",
    "load_checkpoint",
    "map_checkpoint",
    "map_state_dict",
    "mapped_formats",
    "mapped_state_dict",
    "read_checkpoint",
]

# What our DeepSpeed checkpoint folders keep the module weights in (`training.engine.model_state_file`).
DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"
# Containers that hold a state dict, in the order they are looked for.
CONTAINER_KEYS = ("model_state", "state_dict", "module", "model")
# A key prefix every key may share that only wraps the model (DataParallel/DDP/DeepSpeed, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Lines of each list shown in an error message (the written report has all of them).
SHOWN = 12


class CheckpointError(ValueError):
    """A checkpoint that cannot initialise the model as asked; `report` says what mapped and what did not."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# The report


@dataclass(eq=False)
class LoadReport(dict):
    """What a load did. As a mapping it is the short form older callers read: `missing` (model
    tensors not loaded, for whatever reason), `unexpected` (file tensors with no home) and
    `mismatched` (model tensors skipped for another shape). The attributes have the detail."""

    source: str = ""
    format: str = ""
    description: str = ""
    container: str = ""
    model_keys: List[str] = field(default_factory=list)
    head: Set[str] = field(default_factory=set)
    loaded: Dict[str, str] = field(default_factory=dict)  # model name -> file name
    resized: Dict[str, str] = field(default_factory=dict)  # model name -> how
    reshaped: Dict[str, str] = field(default_factory=dict)  # model name -> how (exact, same numbers)
    skipped: Dict[str, str] = field(default_factory=dict)  # model name -> why (file shape vs model shape)
    missing: List[str] = field(default_factory=list)  # model names the file has nothing for
    new: Dict[str, str] = field(default_factory=dict)  # model name -> why it is expected to be absent
    unexpected: List[str] = field(default_factory=list)  # file names with no home
    ignored: Dict[str, str] = field(default_factory=dict)  # file name -> why
    conflicts: List[str] = field(default_factory=list)  # file constants that contradict the model
    read_error: str = ""
    file_prefix: str = ""  # the wrapper prefix (`module.`) removed from every file name before mapping

    def __post_init__(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Refresh the short mapping form from the detail."""
        self.clear()
        self["missing"] = [k for k in self.model_keys if k not in self.loaded]
        self["unexpected"] = list(self.unexpected)
        self["mismatched"] = list(self.skipped)

    def finish(self) -> None:
        """`missing`: the model tensors neither loaded nor skipped (after the mapping or a model's loader)."""
        self.missing = [k for k in self.model_keys if k not in self.loaded and k not in self.skipped]

    def counters_new(self, state_keys: Iterable[str]) -> None:
        """BatchNorm step counters a file saved before PyTorch 0.4.1 (e.g. torchvision's ImageNet ResNets)
        lacks: `new`, not missing."""
        if not any(k.endswith("num_batches_tracked") for k in state_keys):
            for key in self.missing:
                if key.endswith("num_batches_tracked"):
                    self.new[key] = (
                        "the file has no BatchNorm step counters (saved before PyTorch 0.4.1); unused by eval"
                    )
        self.missing = [k for k in self.missing if k not in self.new]

    # ---------------------------------------------------------------------------- verdict
    def problems(self) -> List[str]:
        """What makes the load partial: non-head tensors missing or skipped, unexpected file tensors, conflicts."""
        out = []
        missing = [k for k in self.missing if k not in self.head]
        skipped = [k for k in self.skipped if k not in self.head]
        if self.read_error:
            out.append(f"the file could not be read ({self.read_error})")
        if missing:
            out.append(f"{len(missing)} model tensor(s) outside the head missing from the file ({_few(missing)})")
        if skipped:
            out.append(f"{len(skipped)} model tensor(s) outside the head of another shape ({_few(skipped)})")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} file tensor(s) with no place in the model ({_few(self.unexpected)})")
        if self.conflicts:
            first = self.conflicts[0] if len(self.conflicts[0]) <= 160 else self.conflicts[0][:157] + "..."
            out.append(f"{len(self.conflicts)} conflict(s) ({first}{'; ...' if len(self.conflicts) > 1 else ''})")
        return out

    @property
    def complete(self) -> bool:
        """Everything but (at most) a head of another size or absent."""
        return not self.problems() and bool(self.loaded)

    # ------------------------------------------------------------------------------ text
    def counts(self) -> Dict[str, int]:
        return {
            "loaded": len(self.loaded),
            "resized": len(self.resized),
            "skipped": len(self.skipped),
            "missing": len(self.missing),
            "new": len(self.new),
            "unexpected": len(self.unexpected),
            "ignored": len(self.ignored),
        }

    def summary(self) -> str:
        """One line: where from, which format, how much loaded."""
        c = self.counts()
        head = f"{self.source}: {self.description or self.format}"
        if self.read_error:
            return f"{head}: unreadable ({self.read_error})"
        return (
            f"{head}: loaded {c['loaded']} of {len(self.model_keys)} model tensors ({c['resized']} resized, "
            f"{len(self.reshaped)} reshaped), skipped {c['skipped']} of another shape, {c['missing']} missing, "
            f"{c['new']} new (kept at initialisation), {c['unexpected']} unexpected, {c['ignored']} ignored"
        )

    def groups(self) -> Dict[str, Dict[str, int]]:
        """Counts per top-level module (model names), plus the file's own groups for unexpected/ignored."""
        table: Dict[str, Dict[str, int]] = {}

        def add(group: str, column: str) -> None:
            row = table.setdefault(
                group, dict.fromkeys(("loaded", "resized", "skipped", "missing", "new", "unexpected", "ignored"), 0)
            )
            row[column] += 1

        for key in self.model_keys:
            group = key.split(".")[0] + (" (head)" if key in self.head else "")
            if key in self.loaded:
                add(group, "loaded")
                if key in self.resized:
                    add(group, "resized")
            elif key in self.skipped:
                add(group, "skipped")
            elif key in self.new:
                add(group, "new")
            else:
                add(group, "missing")
        for key in self.unexpected:
            add("file: " + _file_group(key), "unexpected")
        for key in self.ignored:
            add("file: " + _file_group(key), "ignored")
        return table

    def text(self, limit: Optional[int] = None) -> str:
        """The whole report: summary, the per-group table, then every non-plain entry (`limit` per list)."""
        lines = [self.summary()]
        if self.container:
            lines.append(f"container: {self.container}")
        table = self.groups()
        if table:
            columns = ("loaded", "resized", "skipped", "missing", "new", "unexpected", "ignored")
            width = max(len(g) for g in table) + 2
            lines.append("group".ljust(width) + " ".join(c.rjust(10) for c in columns))
            for group, row in table.items():
                lines.append(group.ljust(width) + " ".join(str(row[c]).rjust(10) for c in columns))

        def block(title: str, items: Sequence[str]) -> None:
            if not items:
                return
            shown = items if limit is None else items[:limit]
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in shown)
            if len(items) > len(shown):
                lines.append(f"  ... and {len(items) - len(shown)} more")

        block("conflicts", self.conflicts)
        block(
            "skipped as another shape",
            [f"{k}{' [head]' if k in self.head else ''}: {v}" for k, v in self.skipped.items()],
        )
        block("missing", [f"{k}{' [head]' if k in self.head else ''}" for k in self.missing])
        block("unexpected", self.unexpected)
        block("resized", [f"{k}: {v}" for k, v in self.resized.items()])
        block("reshaped", [f"{k}: {v}" for k, v in self.reshaped.items()])
        block("new (kept at initialisation)", [f"{k}: {v}" for k, v in self.new.items()])
        block("ignored", [f"{k}: {v}" for k, v in self.ignored.items()])
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "description": self.description,
            "container": self.container,
            "complete": self.complete,
            "problems": self.problems(),
            "counts": self.counts(),
            "groups": self.groups(),
            "loaded": self.loaded,
            "resized": self.resized,
            "reshaped": self.reshaped,
            "skipped": self.skipped,
            "missing": self.missing,
            "new": self.new,
            "unexpected": self.unexpected,
            "ignored": self.ignored,
            "conflicts": self.conflicts,
            "read_error": self.read_error,
        }

    def write(self, folder: Path, stem: str = "load_report") -> Tuple[Path, Path]:
        """`<stem>.txt` (the text) and `<stem>.json` in `folder`; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        txt, js = folder / f"{stem}.txt", folder / f"{stem}.json"
        txt.write_text(self.text() + "\n")
        js.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return txt, js


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _file_group(key: str) -> str:
    parts = key.split(".")
    wrappers = {"module"}.union(*(f.wrappers for f in mapped_formats()))
    depth = 1
    while depth < len(parts) - 1 and parts[depth - 1] in wrappers:
        depth += 1
    return ".".join(parts[:depth])


# --------------------------------------------------------------------------------------------
# Reading a file


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str]:
    """The flat state dict in `path` (a file, or a DeepSpeed checkpoint folder) and how it was wrapped.

    Containers `model_state` / `state_dict` / `module` / `model` are unwrapped (nested ones too), and
    a `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile) prefix that every key shares is
    removed. Raises FileNotFoundError, or ValueError for a file that is not a PyTorch state dict.
    """
    state, container, _ = _read(path)
    return state, container


def _read(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """`read_checkpoint`, plus the wrapper prefix it removed from every key."""
    path = Path(path)
    file = path / DEEPSPEED_MODEL_FILE if path.is_dir() else path
    if not file.exists():
        where = f" (no {DEEPSPEED_MODEL_FILE})" if path.is_dir() else ""
        raise FileNotFoundError(f"--load-from: no weights at {path}{where}")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, ModuleNotFoundError, TypeError):
        # Not a weights-only pickle (an optimizer with numpy scalars, a config object): the file is the
        # user's own choice, read it in full as the upstream loaders do.
        try:
            blob = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as err:  # any failure to unpickle is "not readable"
            raise ValueError(f"{type(err).__name__}: {err}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    trail = []
    while isinstance(blob, Mapping) and not _is_state_dict(blob):
        key = next((k for k in CONTAINER_KEYS if isinstance(blob.get(k), (Mapping, nn.Module))), None)
        if key is None:
            raise ValueError(f"no state dict inside (top-level keys: {_few([str(k) for k in blob], 8)})")
        trail.append(key)
        blob = blob[key].state_dict() if isinstance(blob[key], nn.Module) else blob[key]
    if not isinstance(blob, Mapping):
        raise ValueError(f"holds a {type(blob).__name__}, not a state dict")
    state = dict(blob)
    stripped = []
    for prefix in WRAPPER_PREFIXES:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            stripped.append(prefix)
    container = "".join(f"[{k!r}]" for k in trail) + ("" if not stripped else f" minus {''.join(stripped)!r}")
    return state, container.strip(), "".join(stripped)


def _is_state_dict(blob: Mapping[str, Any]) -> bool:
    return bool(blob) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items())


# --------------------------------------------------------------------------------------------
# The model's head


def head_keys(model: nn.Module) -> Set[str]:
    """Names of the model's tensors that belong to its classification head(s) (`_formats.head_modules`)."""
    modules = head_modules(model)
    return {k for k in model.state_dict() if any(k.startswith(m + ".") for m in modules)}


# --------------------------------------------------------------------------------------------
# Formats


NATIVE = Format(
    "native", "state dict in this project's names", lambda keys, model: True, lambda key, model: (key, None)
)


def _formats() -> List[Union[Format, DelegatedFormat]]:
    """The registered formats, in the order they are tried."""
    import action_launch.models  # noqa: F401 - the package imports every model file, registering its formats

    return registered_formats()


def mapped_formats() -> List[Format]:
    """The registered formats that rename (not `DelegatedFormat`s), in the order `detect_format` tries them."""
    return [f for f in _formats() if isinstance(f, Format)]


def detect_format(state: Mapping[str, Any], model: nn.Module) -> Format:
    """The first registered `Format` that recognises the keys; else `native` (names taken as they are)."""
    keys = list(state)
    for fmt in mapped_formats():
        if fmt.detect(keys, model):
            return fmt
    return NATIVE


def _delegated(state: Mapping[str, Any], model: nn.Module, found: Format) -> Optional[Tuple[DelegatedFormat, str]]:
    """The first `DelegatedFormat` that takes the file (the model's own loader reads it), with its description."""
    for fmt in _formats():
        if isinstance(fmt, DelegatedFormat):
            description = fmt.detect(state, model, found)
            if description is not None:
                return fmt, description
    return None


def _resize(key: str, value: torch.Tensor, shape: torch.Size, model: nn.Module) -> Optional[Tuple[torch.Tensor, str]]:
    """A tensor of another length, resized as its upstream does (the first registered resize that applies)."""
    for resize in resizes():
        out = resize(key, value, shape, model)
        if out is not None:
            return out
    return None


# --------------------------------------------------------------------------------------------
# Mapping


def map_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], fmt: Format, report: LoadReport
) -> Dict[str, torch.Tensor]:
    """Rename and convert `state` (format `fmt`) onto `model`'s names; fills `report`; returns what to load."""
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    joined: Dict[str, str] = {}
    if fmt.join is not None:
        state, joined = fmt.join(state)
    for key, value in state.items():
        target = fmt.rename(key, model)
        named = report.file_prefix + key  # as the file spells it
        if isinstance(target, Ignored):
            report.ignored[named] = target.reason
            continue
        if target is not None and target[0] not in own and _headless(model, target[0]):
            report.ignored[named] = "a classifier tensor, and the model has no classifier (features out)"
            continue
        if target is None or target[0] not in own:
            report.unexpected.append(named)
            continue
        name, how = target
        if name in out:
            report.conflicts.append(f"{name} would come from two file tensors ({report.loaded[name]}, {named})")
            continue
        want = own[name].shape
        if value.shape != want:
            if how is not None and (converted := how.apply(value, want)) is not None:
                report.reshaped[name] = f"{shape_text(value)} -> {shape_text(want)}: {how.note}"
                value = converted
            else:
                resized = _resize(name, value, want, model)
                if resized is None:
                    report.skipped[name] = f"file {named} {shape_text(value)}, model {shape_text(want)}"
                    continue
                value, note = resized
                report.resized[name] = f"{shape_text(state[key])} -> {shape_text(want)}: {note}"
        out[name] = value.to(own[name].dtype) if value.is_floating_point() else value
        report.loaded[name] = named
        if key in joined:
            report.reshaped[name] = joined[key]
    if fmt.conflicts is not None:
        report.conflicts.extend(fmt.conflicts(model, state, report.file_prefix))
    return out


def _headless(model: nn.Module, name: str) -> bool:
    """Whether `name` would be a tensor of the model's classifier, and the model has none (num_classes=0)."""
    prefix = classifier(model) + "."
    return name.startswith(prefix) and not any(k.startswith(prefix) for k in model.state_dict())


def _expected_new(report: LoadReport, state_keys: Iterable[str]) -> None:
    """Move the model tensors a file of this kind cannot have from `missing` to `new`."""
    for rule in new_parts():
        report.new.update(rule(list(report.missing), set(report.loaded)))
    report.counters_new(state_keys)


# --------------------------------------------------------------------------------------------
# Loading


def map_checkpoint(model: nn.Module, path: Union[str, Path]) -> Tuple[Optional[Dict[str, torch.Tensor]], LoadReport]:
    """Read `path` and map it onto `model`'s names without loading anything.

    Returns (state dict to load, report); the state dict is None where the model's own loader has to do
    the work (a `DelegatedFormat`: see `load_checkpoint`). Unreadable files give (None, a report with
    `read_error`). FileNotFoundError propagates.
    """
    own = model.state_dict()
    report = LoadReport(source=str(path), model_keys=list(own), head=head_keys(model))
    try:
        state, report.container, report.file_prefix = _read(path)
    except ValueError as err:
        report.format, report.description, report.read_error = "unreadable", "not a readable checkpoint", str(err)
        report.finish()
        report.sync()
        return None, report
    fmt = detect_format(state, model)
    delegated = _delegated(state, model, fmt)
    if delegated is not None:
        report.format, report.description = delegated[0].name, delegated[1]
        return None, report
    report.format, report.description = fmt.name, fmt.description
    out = map_state_dict(model, state, fmt, report)
    report.finish()
    _expected_new(report, state)
    report.sync()
    return out, report


def load_checkpoint(model: nn.Module, path: Union[str, Path], partial: bool = False) -> LoadReport:
    """Load `path` into `model` (all of it or nothing) and return the report.

    Raises CheckpointError (with `.report`) and leaves the model untouched when the load would be
    partial (see `LoadReport.problems`) and `partial` is False, or when nothing at all would load.
    """
    out, report = map_checkpoint(model, path)
    delegated = out is None and not report.read_error
    backup = None
    if delegated:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state, _ = read_checkpoint(path)
        fmt = next(f for f in _formats() if isinstance(f, DelegatedFormat) and f.name == report.format)
        try:
            fmt.load(model, state, report)
        except (ValueError, RuntimeError, KeyError) as err:  # the model's own loader refused the file
            model.load_state_dict(backup)
            report.finish()
            report.sync()
            raise CheckpointError(
                f"--load-from {path}: {type(model).__name__}'s loader for a {report.description} "
                f"refused it: {err}\n{report.text(limit=SHOWN)}",
                report,
            ) from err
        report.sync()
    problems = report.problems()
    refuse = None
    if report.read_error:
        refuse = f"cannot read the file ({report.read_error}): nothing loaded"
    elif not report.loaded:
        refuse = "nothing in the file maps onto the model"
    elif problems and not partial:
        refuse = "partial load refused: " + "; ".join(problems)
    if refuse is not None:
        if backup is not None:
            model.load_state_dict(backup)
        hint = "" if partial or not report.loaded else " (--load-from-partial or train.load_partial=true accepts it)"
        raise CheckpointError(f"--load-from {path}: {refuse}{hint}\n{report.text(limit=SHOWN)}", report)
    if out is not None:
        model.load_state_dict(out, strict=False)
    return report


def mapped_state_dict(
    model: nn.Module, path: Union[str, Path], partial: bool = False
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """What `load_checkpoint` would load, in our names (for `models.convert`): only the tensors that came
    from the file (converted and resized for `model`), not the model's own initialisation."""
    report = load_checkpoint(model, path, partial=partial)
    own = model.state_dict()
    return {k: own[k].detach().clone() for k in report.loaded}, report
