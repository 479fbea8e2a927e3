"""What the training and evaluation loops may ask of a model beyond `forward`: the model contract.

Every model is a plain `nn.Module` whose constructor takes `num_classes` and keeps it as an attribute. Everything
else is optional: a model declares a capability by having the member of its protocol below, and the loops test
for it with `isinstance(model, Capability)` (the protocols are runtime-checkable), never by a member's name in a
string. A renamed member is then one edit here, and `tests/test_contracts.py` checks every registered preset
against these protocols (signatures and what each member returns).

| capability | member | called by |
|---|---|---|
| `HasParameterGroups` | `parameter_groups()` | `training.engine.parameter_groups` (the optimiser's groups) |
| `HasNoWeightDecay` | `no_weight_decay()` | `training.engine.parameter_groups` (when there are no own groups) |
| `SupportsGradCheckpointing` | `set_grad_checkpointing(enable)` | the engine, for `train.activation_checkpointing` |
| `HasOwnLoss` | `compute_loss(outputs, targets)` | `training.losses.make_loss` |
| `CarriesMemory` | `carries_memory` | `training.memory.carries_memory` (trainer and evaluation) |
| `HasTask` | `task` | `training.metrics.is_regression` |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Protocol, Tuple, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the contract stays cheap (the metrics import it)
    import torch

TASKS = ("classification", "regression")
"""The values `task` may take."""


@runtime_checkable
class HasParameterGroups(Protocol):
    """A model that makes its own optimiser groups (TSM: biases and the classifier at other rates)."""

    def parameter_groups(self) -> List[Dict[str, Any]]:
        """Engine, called without arguments: dicts with `params` (every trainable parameter in exactly one group),
        optional `weight_decay` (None: the config's) and optional `lr_mult` (default 1.0)."""
        ...


@runtime_checkable
class HasNoWeightDecay(Protocol):
    """A model that keeps named parameters (embeddings, tokens) out of weight decay (timm's convention)."""

    def no_weight_decay(self) -> Iterable[str]:
        """Engine, when the model has no own groups: names (as `named_parameters()` gives them) kept from decay."""
        ...


@runtime_checkable
class SupportsGradCheckpointing(Protocol):
    """A model that can recompute activations in the backward pass (timm's switch)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Engine, with True when `train.activation_checkpointing` is set: turns recomputation on or off; None."""
        ...


@runtime_checkable
class HasOwnLoss(Protocol):
    """A model whose training loss is not the config's `train.loss` on its logits (ST-ABN's two heads)."""

    def compute_loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Training step, with the model's own forward output and the batch's targets: a scalar (0-dim) tensor."""
        ...


@runtime_checkable
class CarriesMemory(Protocol):
    """A model that carries memory from window to window of a recording (HIINT)."""

    carries_memory: bool
    """Trainer and evaluation: when True, forward takes `memory=` and `carry=` and returns a dict with "memory"."""


@runtime_checkable
class HasTask(Protocol):
    """A model that says whether it classifies or regresses (MS-G3D's personality regression)."""

    task: str
    """Metrics (`is_regression`): one of `TASKS`; "regression" means MSE metrics on raw outputs."""


@runtime_checkable
class FixesClipLength(Protocol):
    """A model built for one clip length (ST-ABN: its temporal attention is T x T)."""

    clip_length_arg: str
    """Config loading: the constructor argument that fixes the clip length; `data.num_frames` must equal it."""


MODEL_CAPABILITIES: Tuple[type, ...] = (
    HasParameterGroups,
    HasNoWeightDecay,
    SupportsGradCheckpointing,
    HasOwnLoss,
    CarriesMemory,
    HasTask,
    FixesClipLength,
)
"""Every optional capability of the model contract."""


def model_capabilities(model: Any) -> List[str]:
    """Names of the capabilities `model` declares (e.g. `["HasNoWeightDecay", "SupportsGradCheckpointing"]`)."""
    return [cap.__name__ for cap in MODEL_CAPABILITIES if isinstance(model, cap)]
