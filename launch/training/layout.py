"""A run's batch layout, and where a checkpoint's place in its epoch lands on another layout.

"Many processes give what one gives": a run resumed on another world size (a job requeued on fewer nodes)
continues the epoch it was in and the LR schedule where it stood. Within an epoch, the training sampler
deals one shuffled order of the whole set (`training.loaders.ResumableDistributedSampler`: the order depends
on the seed and the epoch, not on the world size) to the ranks in turn, so after each rank took k micro
batches of m clips on W ranks the epoch has used exactly the first k x m x W clips of that order. On
another layout the epoch continues after the same clips, as long as they fill whole optimizer steps of the
new layout; otherwise it restarts at the last whole step before them, and the clips after that point are
seen twice (never skipped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class Layout:
    """How a run deals an epoch: processes, clips per micro batch and per rank, micro batches per optimizer step and
    per epoch (per rank), and the ZeRO stage that partitions its optimizer state."""

    world_size: int
    micro_batch_size: int
    grad_accum: int
    micro_per_epoch: int
    zero_stage: int

    @property
    def clips_per_step(self) -> int:
        """Clips of one optimizer step over all ranks (the effective batch)."""
        return self.micro_batch_size * self.grad_accum * self.world_size

    def to_meta(self) -> dict:
        """The layout as a checkpoint's meta.json records it."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Optional[Layout]:
        """The layout a checkpoint was saved with; None for a checkpoint written before layouts were recorded."""
        saved = meta.get("layout")
        return cls(**saved) if saved else None

    def describe(self) -> str:
        """`2 processes x micro batch 4 x accumulation 1 (ZeRO-1)`, for log lines."""
        noun = "process" if self.world_size == 1 else "processes"
        return (
            f"{self.world_size} {noun} x micro batch {self.micro_batch_size} x accumulation {self.grad_accum} "
            f"(ZeRO-{self.zero_stage})"
        )


@dataclass(frozen=True)
class Position:
    """Where a resumed run stands on its own layout."""

    micro_in_epoch: int
    """Micro batches per rank already taken in the current epoch (the sampler skips them)."""
    epoch: Fraction
    """The fractional epoch reached: the LR schedule's position."""
    repeated: int
    """Clips of the current epoch that the saved run had used and that this run uses again."""


def map_position(epoch: int, micro_in_epoch: int, saved: Layout, now: Layout, same_order: bool = True) -> Position:
    """Where a checkpoint taken `micro_in_epoch` micro batches (per rank, on `saved`) into `epoch` continues on `now`.

    `same_order`: the sampler deals one order of the set whatever the layout (see the module's docstring). A
    sampler whose order depends on the layout (`SequenceStreamSampler`: recordings cut into one stream per batch
    slot of every rank) continues at the same fraction of the epoch instead (rounded down to a whole step); the
    windows it then deals are not matched against those used, so some may be seen twice or not at all.
    """
    if micro_in_epoch == 0 or saved == now:
        return Position(micro_in_epoch, epoch + Fraction(micro_in_epoch, now.micro_per_epoch), 0)
    steps_per_epoch = now.micro_per_epoch // now.grad_accum
    if same_order:
        used = micro_in_epoch * saved.micro_batch_size * saved.world_size  # the first clips of the epoch's order
        steps = used // now.clips_per_step  # whole steps of this layout, rounded down: nothing skipped
        if steps >= steps_per_epoch:  # this layout's epoch is no longer than what was used: it is over
            return Position(now.micro_per_epoch, Fraction(epoch + 1), 0)
        repeated = used - steps * now.clips_per_step
    else:
        steps = min(int(Fraction(micro_in_epoch, saved.micro_per_epoch) * steps_per_epoch), steps_per_epoch)
        repeated = 0
    micro = steps * now.grad_accum
    return Position(micro, epoch + Fraction(micro, now.micro_per_epoch), repeated)
