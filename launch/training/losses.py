"""Training losses. A model may bring its own `compute_loss(outputs, targets)` (ST-ABN's two heads: `HasOwnLoss`)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from action_launch.models.contract import HasOwnLoss


def logits_of(outputs: Any) -> torch.Tensor:
    """The main prediction of a model's output: the tensor itself, or `outputs['logits']`."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def make_loss(model: nn.Module, kind: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The model's own `compute_loss` when it has one, else cross-entropy, MSE or BCE on the logits."""
    if isinstance(model, HasOwnLoss):
        return model.compute_loss
    if kind == "cross_entropy":
        return lambda out, y: F.cross_entropy(logits_of(out).float(), y)
    if kind == "mse":
        return lambda out, y: F.mse_loss(logits_of(out).float(), y.float())
    if kind == "bce":
        return lambda out, y: F.binary_cross_entropy_with_logits(logits_of(out).float(), y.float())
    raise ValueError(f"train.loss: unknown loss {kind!r}; expected cross_entropy, mse or bce")
