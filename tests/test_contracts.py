"""The written contracts (`models/contract.py`, `datasets/contract.py`) against everything that must meet them.

Every registered model preset (tiny ones built for real, paper ones on the meta device) and every dataset kind of
`datasets.kinds()` (each split, on the configs its own `tests/test_data_<kind>.py` offers) is checked member by member:
a declared capability has the documented signature and returns the documented thing. A deliberately broken model
and dataset, one breach at a time, show that each check fires. The loops may not go around the contracts: no
`hasattr`/`getattr` with a contract member's name is left in launch/.
"""

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
from torch import nn

from action_launch import datasets, models
from action_launch.datasets import contract as dc
from action_launch.datasets.protocols import Protocol as DataProtocol
from action_launch.models import contract as mc
from action_launch.models._registry import input_shape

REPO = Path(__file__).resolve().parents[1]
PRESETS = models.list_presets()
BATCH = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------- models


def _binds(fn: Any, *args: Any) -> bool:
    """Whether `fn` is callable with `args` (positional), by its signature."""
    if not callable(fn):
        return False
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        return False
    return True


def _group_breaches(model: nn.Module) -> List[str]:
    if not _binds(model.parameter_groups):
        return ["parameter_groups: not callable without arguments"]
    groups = list(model.parameter_groups())
    if not all(isinstance(g, dict) and "params" in g for g in groups):
        return ["parameter_groups: every group must be a dict with 'params'"]
    out = []
    for g in groups:
        if g.get("weight_decay") is not None and not isinstance(g["weight_decay"], (int, float)):
            out.append(f"parameter_groups: weight_decay {g['weight_decay']!r} is not a number or None")
        if not isinstance(g.get("lr_mult", 1.0), (int, float)) or g.get("lr_mult", 1.0) <= 0:
            out.append(f"parameter_groups: lr_mult {g.get('lr_mult')!r} is not a positive number")
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    seen = [id(p) for g in groups for p in g["params"]]
    missing = sorted(names[i] for i in set(names) - set(seen))
    twice = sorted({names.get(i, "?") for i in seen if seen.count(i) > 1})
    foreign = [i for i in seen if i not in names]
    if missing:
        out.append(f"parameter_groups: trainable parameters in no group: {missing}")
    if twice:
        out.append(f"parameter_groups: parameters in more than one group: {twice}")
    if foreign:
        out.append(f"parameter_groups: {len(foreign)} tensors that are not trainable parameters of the model")
    return out


def _no_decay_breaches(model: nn.Module) -> List[str]:
    if not _binds(model.no_weight_decay):
        return ["no_weight_decay: not callable without arguments"]
    names = list(model.no_weight_decay())
    params = dict(model.named_parameters())
    unknown = sorted(str(n) for n in names if not isinstance(n, str) or n not in params)
    return [f"no_weight_decay: names no parameter of the model: {unknown}"] if unknown else []


def _checkpointing_breaches(model: nn.Module) -> List[str]:
    if not _binds(model.set_grad_checkpointing, True):
        return ["set_grad_checkpointing: not callable with enable=True"]
    results = [model.set_grad_checkpointing(True), model.set_grad_checkpointing(False)]
    return [] if results == [None, None] else [f"set_grad_checkpointing: returned {results}, not None"]


def _forward(model: nn.Module, inputs: torch.Tensor) -> Any:
    return model.train()(inputs)


def _loss_breaches(model: nn.Module, inputs: torch.Tensor) -> List[str]:
    targets = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    outputs = _forward(model, inputs)
    if not _binds(model.compute_loss, outputs, targets):
        return ["compute_loss: not callable with (outputs, targets)"]
    loss = model.compute_loss(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        return [f"compute_loss: returned {type(loss).__name__}, not a 0-dim tensor"]
    return []


def _memory_breaches(model: nn.Module, inputs: torch.Tensor) -> List[str]:
    if not isinstance(model.carries_memory, bool):
        return [f"carries_memory: {model.carries_memory!r} is not a bool"]
    if not model.carries_memory:
        return []
    try:
        inspect.signature(model.forward).bind(inputs, memory=None, carry=None)
    except TypeError:
        return ["carries_memory: forward takes no memory= and carry="]
    outputs = _forward(model, inputs)
    return [] if isinstance(outputs, dict) and "memory" in outputs else ["carries_memory: forward returns no 'memory'"]


def model_breaches(model: nn.Module, inputs: torch.Tensor) -> List[str]:
    """Every way `model` breaks `models.contract`, one line each; [] when it keeps it. `inputs`: one batch."""
    out = [] if isinstance(getattr(model, "num_classes", None), int) else ["num_classes: no int attribute"]
    if isinstance(model, mc.HasParameterGroups):
        out += _group_breaches(model)
    if isinstance(model, mc.HasNoWeightDecay):
        out += _no_decay_breaches(model)
    if isinstance(model, mc.SupportsGradCheckpointing):
        out += _checkpointing_breaches(model)
    if isinstance(model, mc.HasOwnLoss):
        out += _loss_breaches(model, inputs)
    if isinstance(model, mc.CarriesMemory):
        out += _memory_breaches(model, inputs)
    if isinstance(model, mc.HasTask) and model.task not in mc.TASKS:
        out.append(f"task: {model.task!r} is not one of {mc.TASKS}")
    if isinstance(model, mc.FixesClipLength) and model.clip_length_arg not in inspect.signature(type(model)).parameters:
        out.append(f"clip_length_arg: {model.clip_length_arg!r} is not a constructor argument")
    return out


def _preset(name: str):
    """(model, one input batch): a tiny preset for real, a paper-size one on the meta device (shapes only)."""
    device = torch.device("cpu" if name.endswith("_tiny") else "meta")
    with device:
        model = models.create(name)
        return model, torch.randn(BATCH, *input_shape(model, name))


@pytest.mark.parametrize("name", PRESETS)
def test_every_registered_preset_keeps_the_model_contract(name):
    model, inputs = _preset(name)
    assert model_breaches(model, inputs) == []


def test_every_model_capability_is_declared_by_a_registered_model():
    """A capability nobody declares is dead, or a family renamed its member: the loop would silently skip it."""
    declared = {cap for name in PRESETS for cap in mc.model_capabilities(_preset(name)[0])}
    assert declared == {cap.__name__ for cap in mc.MODEL_CAPABILITIES}


def test_model_capabilities_lists_what_a_family_declares():
    assert mc.model_capabilities(_preset("timesformer_tiny")[0]) == ["HasNoWeightDecay", "SupportsGradCheckpointing"]
    assert mc.model_capabilities(_preset("tsm_r50_tiny")[0]) == ["HasParameterGroups"]
    assert mc.model_capabilities(nn.Linear(2, 2)) == []


class Keeper(nn.Module):
    """A tiny model that declares every capability and keeps each promise."""

    carries_memory = True
    task = "classification"
    clip_length_arg = "num_frames"

    def __init__(self, num_frames: int = 8) -> None:
        super().__init__()
        self.num_classes = 3
        self.fc = nn.Linear(4, 3)
        self.memory_init = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor, memory: Any = None, carry: Any = None) -> Dict[str, torch.Tensor]:
        return {"logits": self.fc(x + self.memory_init), "memory": x.detach()}

    def parameter_groups(self) -> List[Dict[str, Any]]:
        return [
            {"params": [self.fc.weight], "lr_mult": 2.0},
            {"params": [self.fc.bias, self.memory_init], "weight_decay": 0.0},
        ]

    def no_weight_decay(self) -> set:
        return {"memory_init"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.checkpointing = enable

    def compute_loss(self, outputs: Dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs["logits"], targets)


def _breach(**members: Any) -> type:
    """A Keeper with `members` replaced: one broken promise."""
    return type("Breaker", (Keeper,), members)


BROKEN_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "no_weight_decay: names no parameter": _breach(no_weight_decay=lambda self: {"pos_embed"}),
    "no_weight_decay: not callable": _breach(no_weight_decay={"memory_init"}),
    "parameter_groups: trainable parameters in no group: ['memory_init']": _breach(
        parameter_groups=lambda self: [{"params": [self.fc.weight, self.fc.bias]}]
    ),
    "parameter_groups: parameters in more than one group: ['fc.weight']": _breach(
        parameter_groups=lambda self: [{"params": [self.fc.weight]}, {"params": list(self.parameters())}]
    ),
    "parameter_groups: every group must be a dict": _breach(parameter_groups=lambda self: [list(self.parameters())]),
    "parameter_groups: lr_mult": _breach(
        parameter_groups=lambda self: [{"params": list(self.parameters()), "lr_mult": 0}]
    ),
    "set_grad_checkpointing: not callable with enable=True": _breach(set_grad_checkpointing=lambda self: None),
    "compute_loss: returned float": _breach(compute_loss=lambda self, outputs, targets: 0.5),
    "compute_loss: not callable with (outputs, targets)": _breach(compute_loss=lambda self, outputs: outputs),
    "carries_memory: 'yes' is not a bool": _breach(carries_memory="yes"),
    "carries_memory: forward returns no 'memory'": _breach(
        forward=lambda self, x, memory=None, carry=None: {"logits": self.fc(x)}
    ),
    "carries_memory: forward takes no memory=": _breach(forward=lambda self, x: {"logits": self.fc(x), "memory": x}),
    "task: 'regresion' is not one of": _breach(task="regresion"),
    "clip_length_arg: 'frames' is not a constructor argument": _breach(clip_length_arg="frames"),
}


def test_a_model_that_keeps_every_promise_passes():
    assert model_breaches(Keeper(), torch.randn(BATCH, 4)) == []
    assert mc.model_capabilities(Keeper()) == [cap.__name__ for cap in mc.MODEL_CAPABILITIES]


@pytest.mark.parametrize("breach", BROKEN_MODELS)
def test_a_model_that_breaks_a_promise_is_caught(breach):
    found = model_breaches(BROKEN_MODELS[breach](), torch.randn(BATCH, 4))
    assert len(found) == 1 and found[0].startswith(breach), found


# ----------------------------------------------------------------------------------------------- datasets


def _is_names(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(v, str) for v in value)


def _recording_breaches(ds: Any) -> List[str]:
    ids = ds.interactions
    if not _is_names(ids, len(ids)) or not _binds(ds.windows, ids[0] if ids else ""):
        return ["recordings: interactions must be a list of str and windows(id) callable with one"]
    indices = [i for rec in ids for i in ds.windows(rec)]
    if sorted(indices) != list(range(len(ds))):
        return [f"recordings: windows() must give every index of 0..{len(ds) - 1} once, gave {indices}"]
    return []


def _sample_breaches(ds: Any) -> List[str]:
    sample = ds[(0, 0)]
    meta_ok = len(sample) != 3 or isinstance(sample[2], dict) if isinstance(sample, tuple) else False
    if not isinstance(sample, tuple) or len(sample) not in (2, 3) or not meta_ok:
        return ["__getitem__: must return (inputs, target) or (inputs, target, meta dict)"]
    names = dc.output_names_of(ds)
    size = torch.as_tensor(sample[1]).numel()
    if names is not None and size != len(names):
        return [f"output_names: {len(names)} names for a target of {size} values"]
    return []


def dataset_breaches(ds: Any) -> List[str]:
    """Every way `ds` breaks `datasets.contract`, one line each; [] when it keeps it."""
    if not isinstance(ds, dc.MapDataset):
        return ["not a map-style dataset with num_classes, __len__ and __getitem__"]
    n, classes = len(ds), ds.num_classes
    out = [] if n > 0 else ["__len__: an empty dataset"]
    if classes is not None and (not isinstance(classes, int) or classes < 1):
        out.append(f"num_classes: {classes!r} is not a positive int or None")
    if dc.class_names_of(ds) is not None and not _is_names(ds.class_names, classes):
        out.append(f"class_names: must be num_classes={classes} names, got {ds.class_names!r}")
    if dc.output_names_of(ds) is not None and not _is_names(ds.output_names, len(ds.output_names)):
        out.append(f"output_names: must be a list of str, got {ds.output_names!r}")
    if dc.participants_of(ds) is not None and not _is_names(ds.participants, n):
        out.append(f"participants: must be {n} ids (one a sample), got {ds.participants!r}")
    views = dc.num_views_of(ds)
    if views is not None and (not isinstance(views, int) or views < 1):
        out.append(f"num_views: {views!r} is not a positive int or None")
    if isinstance(ds, dc.HasDataProtocol) and not isinstance(ds.protocol, DataProtocol):
        out.append(f"protocol: {ds.protocol!r} is not a datasets.protocols.Protocol")
    if isinstance(ds, dc.SkipsBadFiles):
        if not isinstance(ds.noun, str) or not ds.noun:
            out.append(f"noun: {ds.noun!r} is not a word")
        if not _binds(ds.ceiling_error) or ds.ceiling_error() is not None:
            out.append("ceiling_error: must be callable without arguments and None on readable data")
    if isinstance(ds, dc.HasRecordings):
        out += _recording_breaches(ds)
    for cap, member in ((dc.HasIds, "ids"), (dc.HasSampleNames, "sample_names"), (dc.HasListItems, "items")):
        value = getattr(ds, member) if isinstance(ds, cap) else None
        if value is not None and len(value) != n:
            out.append(f"{member}: {len(value)} entries for {n} samples")
    return out + (_sample_breaches(ds) if n > 0 else [])


def _class_names(root: Path, n: int = 4) -> None:
    (root / "classes.txt").write_text("".join(f"class{k}\n" for k in range(n)))


def contract_configs(kind: str, root: Path) -> Dict[str, Any]:
    """The configs a kind's own test file offers for the contract check, by variant: `contract_configs(root)` in
    tests/test_data_<kind>.py, on `root` (which holds a classes.txt of 4 names)."""
    try:
        module = importlib.import_module(f"test_data_{kind}")
    except ModuleNotFoundError as err:
        if err.name != f"test_data_{kind}":
            raise
        pytest.fail(f"data.dataset={kind} has no tests/test_data_{kind}.py: write it, with contract_configs(root)")
    if not hasattr(module, "contract_configs"):
        pytest.fail(
            f"tests/test_data_{kind}.py has no contract_configs(root) -> {{variant: config}} to check {kind} on"
        )
    return module.contract_configs(root)


KINDS = list(datasets.kinds())


@pytest.fixture(scope="module")
def kind_configs(tmp_path_factory) -> Callable[[str], Dict[str, Any]]:
    """kind -> its test file's configs by variant, each kind's data generated once, on a classes.txt of 4 names."""
    made: Dict[str, Dict[str, Any]] = {}

    def configs(kind: str) -> Dict[str, Any]:
        if kind not in made:
            root = tmp_path_factory.mktemp(kind)
            _class_names(root)
            made[kind] = contract_configs(kind, root)
        return made[kind]

    return configs


@pytest.fixture(scope="module")
def data_configs(kind_configs) -> Dict[str, Any]:
    """Every kind's configs by variant name."""
    return {variant: cfg for kind in KINDS for variant, cfg in kind_configs(kind).items()}


@pytest.mark.parametrize("split", datasets.SPLITS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_keeps_the_dataset_contract(kind_configs, kind, split):
    configs = kind_configs(kind)
    assert configs and {cfg.dataset for cfg in configs.values()} == {kind}
    breaches = {variant: dataset_breaches(datasets.build(cfg, split)) for variant, cfg in configs.items()}
    assert breaches == {variant: [] for variant in configs}


def test_every_dataset_capability_is_declared_by_a_kind(data_configs):
    """As for models: a capability no kind declares is dead or renamed. `ids` is the exception: no registered kind
    has it; the evaluation takes it first from a dataset outside the registry (a test's, a user's)."""
    declared = {
        cap
        for cfg in data_configs.values()
        for split in datasets.SPLITS
        for cap in dc.dataset_capabilities(datasets.build(cfg, split))
    }
    assert declared == {cap.__name__ for cap in dc.DATASET_CAPABILITIES} - {"HasIds"}


def test_regression_and_recordings_are_declared_where_they_exist(data_configs):
    regression = datasets.build(data_configs["skeleton regression"], "val")
    assert dc.output_names_of(regression) == [
        "openness",
        "conscientiousness",
        "extraversion",
        "agreeableness",
        "neuroticism",
    ]
    assert dc.participants_of(regression) == ["P00", "P01", "P02"] and dc.class_names_of(regression) == [
        f"class{k}" for k in range(4)
    ]
    assert dc.sample_ids(regression) == ["P00_chunk0", "P01_chunk1", "P02_chunk2"]
    people = datasets.build(data_configs["multiperson"], "train")
    assert "HasRecordings" in dc.dataset_capabilities(people) and dc.noun_of(people) == "person file"
    assert dc.num_views_of(datasets.build(data_configs["multiperson skeletons"], "test")) is None
    assert dc.num_views_of(object()) is None and dc.noun_of(object()) == "file" and dc.sample_ids(object()) is None


class Listed(torch.utils.data.Dataset):
    """A tiny dataset that declares most capabilities and keeps each promise."""

    noun = "clip"

    def __init__(self) -> None:
        self.num_classes = 2
        self.class_names = ["left", "right"]
        self.output_names = None
        self.participants = ["p", "p", "q"]
        self.num_views = 1
        self.sample_names = ["a", "b", "c"]
        self._recordings = {"p": [0, 1], "q": [2]}

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key: Any):
        return torch.zeros(2), 0, {"interaction": "p", "window": 0}

    def ceiling_error(self):
        return None

    @property
    def interactions(self) -> List[str]:
        return list(self._recordings)

    def windows(self, interaction: str) -> List[int]:
        return self._recordings[interaction]


def _set(**values: Any) -> Callable[[], Any]:
    def make() -> Any:
        ds = Listed()
        for k, v in values.items():
            setattr(ds, k, v)
        return ds

    return make


BROKEN_DATASETS: Dict[str, Callable[[], Any]] = {
    "class_names: must be num_classes=2 names": _set(class_names=["left", "right", "up"]),
    "participants: must be 3 ids": _set(participants=["p", "q"]),
    "num_views: 0 is not a positive int": _set(num_views=0),
    "num_classes: 'two' is not a positive int": _set(num_classes="two", class_names=None),
    "noun: '' is not a word": _set(noun=""),
    "ceiling_error: must be callable without arguments": _set(ceiling_error=lambda: "3 of 3 clips unreadable"),
    "recordings: windows() must give every index": _set(_recordings={"p": [0, 1], "q": [1]}),
    "sample_names: 2 entries for 3 samples": _set(sample_names=["a", "b"]),
    "output_names: 5 names for a target of 1 values": _set(output_names=["o", "c", "e", "a", "n"]),
    "protocol: 'tsn' is not a datasets.protocols.Protocol": _set(protocol="tsn"),
    "not a map-style dataset": lambda: object(),
}


def test_a_dataset_that_keeps_every_promise_passes():
    assert dataset_breaches(Listed()) == []


@pytest.mark.parametrize("breach", BROKEN_DATASETS)
def test_a_dataset_that_breaks_a_promise_is_caught(breach):
    found = dataset_breaches(BROKEN_DATASETS[breach]())
    assert len(found) == 1 and found[0].startswith(breach), found


# ---------------------------------------------------------------------------------------- the call sites


def _members(capabilities) -> set:
    return {name for cap in capabilities for name in cap.__dict__.get("__annotations__", {})} | {
        name
        for cap in capabilities
        for name, value in vars(cap).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


MEMBERS = _members(mc.MODEL_CAPABILITIES) | _members(dc.DATASET_CAPABILITIES)


def test_the_loops_ask_through_the_contracts_not_by_name():
    """`hasattr(x, "task")` or `getattr(ds, "class_names", None)` in launch/ would bypass the contract: a renamed
    member would then be missed there in silence."""
    assert {"parameter_groups", "carries_memory", "class_names", "interactions", "windows", "ceiling_error"} <= MEMBERS
    found = []
    for path in sorted((REPO / "launch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            by_name = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2
            if (
                by_name
                and node.func.id in ("hasattr", "getattr")
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in MEMBERS
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not found, "ask through models/contract.py or datasets/contract.py instead:\n" + "\n".join(found)
