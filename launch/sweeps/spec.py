"""The sweep file of `launch/tune.py`: what to search, what to optimise, how to schedule trials.

A sweep file is YAML; every search-space key is a dotted config key, exactly as on the command line:

    metric: val/top1            # reported at each validation; `mode` says which way is better
    mode: max
    budget: epochs              # ASHA/PBT time unit: epochs (validations) or steps (optimizer steps)
    num_samples: 1              # samples of the random entries per grid point
    seed: 0                     # the random entries draw the same values run after run (default: fresh draws)
    space:
      data.num_frames: {grid: [4, 8, 16]}
      data.sampling_rate: {grid: [2, 4, 8]}
      model.num_frames: {same_as: data.num_frames}
      optim.lr: {loguniform: [3.0e-4, 3.0e-3]}
      optim.lr_scaling: {choice: [linear, sqrt]}
      train.micro_batch_size: {choice: [4, 8]}
      data.num_frames,data.sampling_rate: {choice: [[8, 8], [32, 2]]}   # joint: set together
      optim.warmup_epochs: {depends_on: optim.lr_scaling, cases: {linear: 2, sqrt: 1}, default: 0}
    asha: {grace_period: 1, reduction_factor: 3}
    pbt: {perturbation_interval: 2, mutate: [optim.lr], synch: true}

Entries: `grid` (every value, crossed with the other grids), `choice`, `uniform`, `loguniform`,
`randint` (high exclusive), `same_as` (copy of another key), `depends_on` + `cases` (conditional
on another key's value). The other keys are the fields of `SweepFile`, `AshaSection` and `PbtSection`,
converted by the config validator (`action_launch.config.Validator`). This module only parses and
checks; `launch/tune.py` turns it into Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Literal, NoReturn, Optional, Sequence, Tuple, Union

import yaml

from action_launch.config import ConfigError, Validator, must

KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "same_as", "depends_on")
SCHEDULERS = ("fifo", "asha", "pbt")


class SweepError(ConfigError):
    """A sweep file that cannot be used; the message names the entry, what was expected and the file."""


class _Section(Mapping):
    """A scheduler section that also reads as the mapping of its set fields (None ones left out), as the
    scheduler code reads it: `spec.asha.get("grace_period")`, `"max_t" in spec.asha`."""

    __dataclass_fields__: ClassVar[Dict[str, Field[Any]]]  # each section is a dataclass

    def _set(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __getitem__(self, key: str) -> Any:
        return self._set()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())


@dataclass(frozen=True)
class AshaSection(_Section):
    """`asha:`, Ray's ASHAScheduler, counted in the sweep's `budget` unit."""

    grace_period: int = field(default=1, metadata=must(lambda n: n >= 1, ">= 1"))
    """Budget every trial gets before it may be stopped."""
    reduction_factor: float = field(default=3.0, metadata=must(lambda x: x > 1, "> 1"))
    """Each rung keeps the best 1/reduction_factor of the trials that reach it."""
    max_t: Optional[int] = field(default=None, metadata=must(lambda n: n >= 1, ">= 1"))
    """Budget of a full trial; None: the config's `train.epochs` (a `steps` budget must set it)."""


@dataclass(frozen=True)
class PbtSection(_Section):
    """`pbt:`, Ray's PopulationBasedTraining, counted in the sweep's `budget` unit."""

    perturbation_interval: int = field(default=2, metadata=must(lambda n: n >= 1, ">= 1"))
    """Budget between two exploit/explore steps of a trial."""
    mutate: Optional[List[str]] = None
    """Space entries PBT perturbs (names as in `space:`): a grid or choice entry moves to a neighbouring value
    of its list (or one drawn afresh), a uniform, loguniform or randint one is scaled by 0.8 or 1.2 (or
    drawn afresh); None: the uniform and loguniform ones."""
    quantile_fraction: float = field(default=0.25, metadata=must(lambda x: 0 <= x <= 0.5, "in [0, 0.5]"))
    """Fraction of trials in the bottom quantile that copy one of the top quantile."""
    resample_probability: float = field(default=0.25, metadata=must(lambda x: 0 <= x <= 1, "in [0, 1]"))
    """Chance that a perturbed value is drawn afresh from its entry instead of scaled."""
    synch: bool = True
    """Synchronous PBT: trials exploit together once all of them reached the interval. Asynchronous PBT
    (false) compares a trial with the trials that have reported by then: in a sweep of a few trials, a few
    at a time, that is often none or one, and it may never exploit (0 exploits in `bench/faults.py`'s
    4-trial sweep); use it for large populations, where waiting for the slowest trial costs more."""


@dataclass(frozen=True)
class SweepFile:
    """The keys of a sweep file."""

    metric: str = "val/top1"
    """Validation metric the schedulers and the result compare."""
    mode: Literal["max", "min"] = "max"
    """Whether a larger or a smaller `metric` is better."""
    budget: Literal["epochs", "steps"] = "epochs"
    """ASHA/PBT time unit: validations (epochs) or optimizer steps."""
    num_samples: int = field(default=1, metadata=must(lambda n: n >= 1, ">= 1"))
    """Samples of the random entries per grid point."""
    seed: Optional[int] = field(default=None, metadata=must(lambda n: n >= 0, ">= 0"))
    """Seed of the random entries' draws: the same trials every run (None: new draws each sweep)."""
    space: Dict[str, Any] = field(default_factory=dict)
    """Dotted config key (or keys joined by commas) -> search entry; parsed by `parse_param`."""
    asha: AshaSection = field(default_factory=AshaSection)
    """Settings of `--scheduler asha`."""
    pbt: PbtSection = field(default_factory=PbtSection)
    """Settings of `--scheduler pbt`."""


@dataclass(frozen=True)
class Param:
    """One search-space entry: `keys` (one, or several set together) and how their value is drawn."""

    keys: Tuple[str, ...]
    kind: str
    values: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    source: Optional[str] = None
    cases: Mapping[Any, Any] = field(default_factory=dict)
    default: Any = None

    @property
    def name(self) -> str:
        """The entry's name in the sweep file (keys joined by commas)."""
        return ",".join(self.keys)

    @property
    def bounds(self) -> Tuple[float, float]:
        """`(low, high)` of a uniform, loguniform or randint entry."""
        if self.low is None or self.high is None:
            raise SweepError(f"{self.name}: a {self.kind} entry needs low and high")
        return self.low, self.high

    def describe(self) -> str:
        """Short text of the entry (logged as a parameter of the sweep's parent run)."""
        if self.kind in ("grid", "choice"):
            return f"{self.kind} {list(self.values)}"
        if self.kind in ("uniform", "loguniform", "randint"):
            return f"{self.kind} [{self.low}, {self.high}]"
        if self.kind == "same_as":
            return f"same as {self.source}"
        return f"depends on {self.source}: {dict(self.cases)} else {self.default}"

    def example_values(self) -> List[Tuple[Any, ...]]:
        """Values (one tuple per entry of `keys`) that a trial may get; used to check keys and types."""
        if self.kind in ("grid", "choice"):
            return [v if len(self.keys) > 1 else (v,) for v in self.values]
        if self.kind == "randint":
            return [(int(self.bounds[0]),)]
        if self.kind in ("uniform", "loguniform"):
            return [(float(self.bounds[0]),)]
        if self.kind == "depends_on":
            return [(v,) for v in [*self.cases.values(), self.default] if v is not None]
        return []


@dataclass(frozen=True)
class SweepSpec(SweepFile):
    """A parsed sweep file: its keys, its `space:` as entries, and the file it came from."""

    params: Tuple[Param, ...] = ()
    source: str = "sweep"

    def swept_keys(self) -> List[str]:
        """Config keys the sweep sets, in file order."""
        return [k for p in self.params for k in p.keys]

    def grid_size(self) -> int:
        """Trials per sample (the product of the grid entries)."""
        size = 1
        for p in self.params:
            if p.kind == "grid":
                size *= len(p.values)
        return size

    def pbt_mutations(self) -> List[Param]:
        """The entries PBT perturbs: `pbt.mutate`, default the continuous ones."""
        if self.pbt.mutate is None:
            return [p for p in self.params if p.kind in ("uniform", "loguniform")]
        by_name = {p.name: p for p in self.params}
        return [by_name[n] for n in self.pbt.mutate]


def _fail(source: str, entry: str, message: str) -> NoReturn:
    raise SweepError(f"space.{entry}: {message} (in {source})")


def _pair(source: str, key: str, kind: str, value: Any) -> Tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        _fail(source, key, f"{kind} expects [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not low < high:
        _fail(source, key, f"{kind}: low must be below high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        _fail(source, key, f"loguniform needs positive bounds, got [{low}, {high}]")
    return low, high


def parse_param(name: str, entry: Any, source: str = "sweep") -> Param:
    """One `space:` entry; `name` may join several keys with commas (a joint entry)."""
    keys = tuple(k.strip() for k in name.split(","))
    if any(not k for k in keys):
        _fail(source, name, "empty key")
    if not isinstance(entry, Mapping):
        # A bare list is a grid, a bare scalar a constant: what a reader of the file would guess.
        entry = {"grid": entry} if isinstance(entry, list) else {"choice": [entry]}
    kinds = [k for k in entry if k in KINDS]
    unknown = [k for k in entry if k not in KINDS + ("cases", "default")]
    if len(kinds) != 1 or unknown:
        _fail(source, name, f"expected exactly one of {', '.join(KINDS)}; got {sorted(entry)}")
    kind = kinds[0]
    value = entry[kind]
    if len(keys) > 1 and kind not in ("grid", "choice"):
        _fail(source, name, "a joint entry (several keys) takes grid or choice of value lists")
    if kind in ("grid", "choice"):
        if not isinstance(value, list) or not value:
            _fail(source, name, f"{kind} expects a non-empty list, got {value!r}")
        if len(keys) > 1 and any(not isinstance(v, list) or len(v) != len(keys) for v in value):
            _fail(source, name, f"each value of a joint entry is a list of {len(keys)} values, got {value!r}")
        return Param(keys, kind, values=tuple(tuple(v) if isinstance(v, list) and len(keys) > 1 else v for v in value))
    if kind in ("uniform", "loguniform", "randint"):
        low, high = _pair(source, name, kind, value)
        if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
            _fail(source, name, f"randint expects integer bounds, got {value!r}")
        return Param(keys, kind, low=low, high=high)
    if not isinstance(value, str):
        _fail(source, name, f"{kind} expects a config key, got {value!r}")
    if kind == "same_as":
        return Param(keys, kind, source=value)
    cases = entry.get("cases")
    if not isinstance(cases, Mapping) or not cases:
        _fail(source, name, "depends_on needs `cases: {value of the other key: value of this key, ...}`")
    return Param(keys, kind, source=value, cases=dict(cases), default=entry.get("default"))


def _check_references(params: Sequence[Param], source: str) -> None:
    seen: Dict[str, Param] = {}
    for p in params:
        for key in p.keys:
            if key in seen:
                _fail(source, p.name, f"{key} is already set by entry {seen[key].name}")
            seen[key] = p
    for p in params:
        if p.source is not None:
            ref = seen.get(p.source)
            if ref is None:
                _fail(source, p.name, f"refers to {p.source}, which the space does not set")
            if ref.kind in ("same_as", "depends_on"):
                _fail(source, p.name, f"refers to {p.source}, itself derived; refer to a sampled key")


def parse_sweep(raw: Mapping[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a loaded sweep file into a `SweepSpec`."""
    file = Validator(source, error=SweepError).convert(raw, SweepFile)
    if not file.space:
        raise SweepError(f"space: expected a mapping of config keys to search entries (in {source})")
    params = tuple(parse_param(str(name), entry, source) for name, entry in file.space.items())
    _check_references(params, source)
    _check_mutations(file.pbt.mutate or [], params, source)
    return SweepSpec(**vars(file), params=params, source=source)


def _check_mutations(mutate: List[str], params: Tuple[Param, ...], source: str) -> None:
    """`pbt.mutate` names sampled entries of the space that no derived entry follows: PBT changes a value in
    the middle of a trial, and a `same_as`/`depends_on` entry would keep the value derived at its start."""
    by_name = {p.name: p for p in params}
    for name in mutate:
        if name not in by_name:
            raise SweepError(f"pbt.mutate: {name!r} is not an entry of space (in {source})")
        if by_name[name].kind in ("same_as", "depends_on"):
            raise SweepError(
                f"pbt.mutate: {name} is derived from {by_name[name].source}; mutate that entry instead (in {source})"
            )
        followers = [p.name for p in params if p.source in by_name[name].keys]
        if followers:
            raise SweepError(
                f"pbt.mutate: {name} is followed by {', '.join(followers)}, which a mutation would leave "
                f"at the trial's first value (in {source})"
            )


def load_sweep(path: Union[str, Path]) -> SweepSpec:
    """Read and validate a sweep file."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    return parse_sweep(raw, str(path))


def example_overrides(spec: SweepSpec) -> List[List[str]]:
    """Override lists covering every listed value of every entry, to check keys and types up front."""
    out = []
    for p in spec.params:
        for values in p.example_values():
            out.append([f"{k}={to_override_text(v)}" for k, v in zip(p.keys, values)])
    return out


def to_override_text(value: Any) -> str:
    """A value as command-line override text (a YAML scalar or flow collection)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def trial_overrides(config: Mapping[str, Any]) -> List[str]:
    """A trial's sampled values (keys as in the sweep file, joint keys comma-joined) as overrides."""
    out: List[str] = []
    for name, value in config.items():
        keys = name.split(",")
        values = list(value) if len(keys) > 1 else [value]
        out.extend(f"{k}={to_override_text(v)}" for k, v in zip(keys, values))
    return out


def flat_trial_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A trial's sampled values with joint entries split into their keys."""
    out: Dict[str, Any] = {}
    for name, value in config.items():
        keys = name.split(",")
        out.update(zip(keys, list(value) if len(keys) > 1 else [value]))
    return out
