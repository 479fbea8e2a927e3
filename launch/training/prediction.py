"""The one prediction loop: every batch of a loader through a forward function, memory carried across the
windows of each recording for models that keep memory (`training.memory`). Validation during training
and checkpoint evaluation (`launch/test.py`) both walk their loaders with it."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

import torch

from action_launch.training.loaders import split_batch
from action_launch.training.memory import WindowMemory


def predictions(
    loader: Iterable[Any], forward: Callable[..., Any], memory: Optional[WindowMemory], device: torch.device
) -> Iterator[Tuple[torch.Tensor, Any, Any]]:
    """Yield `(inputs, outputs, targets)` for each batch of `loader`, in order, where outputs is
    `forward(inputs, **memory_kwargs)`. With a `memory`, each window gets the memory its recording's
    previous window left (on `device`), and its own is kept for the next; None runs plain batches."""
    for batch in loader:
        inputs, targets, meta = split_batch(batch)
        kwargs = {k: v.to(device) for k, v in memory.model_kwargs(meta).items()} if memory is not None else {}
        outputs = forward(inputs, **kwargs)
        if memory is not None:
            memory.update(meta, outputs)
        yield inputs, outputs, targets
