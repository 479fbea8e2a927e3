"""Memory carried across the consecutive windows of a recording, for models with `carries_memory = True` (HIINT).

Such a model keeps no state: it takes `memory=` (B, ...) and `carry=` (B,) bool as keyword inputs
(rows where `carry` is False start from the model's initial memory) and returns a dict whose
"memory" is its memory after each window, detached (truncated back-propagation of one window).

`WindowMemory` holds the state for one loop (a training epoch, a validation or test pass): the
memory each window of the previous batch left behind. A window receives the memory of the latest
earlier window of its own recording in the previous batch; any other window (the first of a
recording, or one whose predecessor was not in the previous batch) starts afresh. Batches come
from `launch.data.SequenceStreamSampler`, which walks each recording's windows in successive
batches, so memory flows through a whole recording and is reset at a new one. Keying on the
recording rather than on the batch position keeps this correct whatever the batch layout (slots
that finish early, a recording split between two streams): a wrong carry is impossible, a missed
one only restarts the memory.

The state is not checkpointed: a run resumed mid-epoch restarts every slot's memory at the resume
point (one window without history per slot), so such a resume is not bit-identical.

Windows are named by the meta a sequence dataset returns with each sample (`datasets.multiperson`:
{"interaction": [str, ...], "window": tensor} after collation). Nothing here knows DeepSpeed: the
engine passes the keyword inputs through (`Engine.train_step(..., **model_kwargs)`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from action_launch.models.contract import CarriesMemory


def carries_memory(model: nn.Module) -> bool:
    """Whether the model wants its memory carried from window to window (`models.contract.CarriesMemory`, True)."""
    return isinstance(model, CarriesMemory) and bool(model.carries_memory)


def _windows(meta: Optional[Mapping[str, Any]]) -> Tuple[List[str], List[int]]:
    if meta is None or "interaction" not in meta or "window" not in meta:
        raise ValueError(
            "a model that carries memory needs batches that name their windows: the dataset must "
            "return (inputs, label, {'interaction': id, 'window': index}) (data.dataset=multiperson)"
        )
    windows = meta["window"]
    windows = windows.tolist() if isinstance(windows, torch.Tensor) else [int(w) for w in windows]
    return [str(i) for i in meta["interaction"]], windows


class WindowMemory:
    """The memory that the windows of the last batch left, handed to the next windows of their recordings."""

    def __init__(self) -> None:
        self._last: Dict[str, List[Tuple[int, torch.Tensor]]] = {}

    def reset(self) -> None:
        """Forget everything (a new epoch or evaluation pass)."""
        self._last = {}

    def _previous(self, recording: str, window: int) -> Optional[torch.Tensor]:
        earlier = [(w, m) for w, m in self._last.get(recording, ()) if w < window]
        return max(earlier, key=lambda e: e[0])[1] if earlier else None

    def model_kwargs(self, meta: Optional[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        """`memory` and `carry` for a batch; {} when no window continues a recording (all start afresh). A batch
        without meta (None, as `loaders.split_batch` gives it) raises ValueError, which says what is missing."""
        rows = [self._previous(rec, w) for rec, w in zip(*_windows(meta))]
        template = next((m for m in rows if m is not None), None)
        if template is None:
            return {}
        memory = torch.stack([m if m is not None else torch.zeros_like(template) for m in rows])
        return {"memory": memory, "carry": torch.tensor([m is not None for m in rows], device=memory.device)}

    def update(self, meta: Optional[Mapping[str, Any]], outputs: Any) -> None:
        """Remember the memory each window of this batch left (the model's `outputs["memory"]`); meta as in
        `model_kwargs`."""
        if not isinstance(outputs, Mapping) or "memory" not in outputs:
            raise TypeError("a model with carries_memory = True must return a dict with its new 'memory'")
        memory = outputs["memory"].detach()
        last: Dict[str, List[Tuple[int, torch.Tensor]]] = {}
        for row, (rec, w) in enumerate(zip(*_windows(meta))):
            last.setdefault(rec, []).append((w, memory[row]))
        self._last = last
