"""BatchNorm across ranks: running statistics that every rank shares, and `train.sync_bn`.

Plain BatchNorm under several ranks normalises each rank's micro batch with its own batch statistics and
updates its own running statistics from them, so after a few steps the ranks hold different running means and
variances (the tiny TSM: up to 0.6 apart after 24 steps). A validation would then score each rank's shard with
another model, and the checkpoint would keep rank 0's statistics only. `average_running_stats` replaces every
rank's statistics by their mean over the ranks (timm's `distribute_bn(reduce=True)`), on the device, at the
points where they are read (before each validation and each checkpoint), not at every step.

`train.sync_bn` turns the model's BatchNorms into `torch.nn.SyncBatchNorm`, whose batch statistics are those of
the global batch (what one process with the whole batch computes). torch runs it on GPUs only: on a CPU tensor
its forward raises, with one process as with several, so a CPU run is refused up front (`SYNC_BN_NEEDS_GPU`).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

SYNC_BN_NEEDS_GPU = (
    "train.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm refuses CPU tensors (with one "
    "process too); set train.sync_bn=false for a run on the CPU"
)
"""The refusal of `train.sync_bn` on a run without CUDA, one line naming the key."""

# the norms that may keep running statistics (track_running_stats); their Lazy variants derive from them
_NORM_WITH_STATS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def running_stats(model: nn.Module) -> List[torch.Tensor]:
    """The running statistics buffers of every normalisation layer of `model` that tracks them, in module order."""
    stats: List[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, _NORM_WITH_STATS) and module.track_running_stats:
            stats.extend(buf for name in STAT_NAMES if (buf := getattr(module, name, None)) is not None)
    return stats


def average_running_stats(model: nn.Module, world_size: int, group: object = None) -> int:
    """Replace every rank's BatchNorm running statistics by their mean over the ranks, in place; returns how many
    tensors were averaged (0 for a model without them, or one process).

    Collective: every rank of `group` (default: the world group, NCCL on GPUs, gloo on the CPU) calls it. The
    buffers stay on their device: one all-reduce per dtype over a flat copy, no read back to the host. Means and
    variances get the mean over ranks; the step counters (`num_batches_tracked`, equal on every rank, since the
    ranks take the same steps) their integer mean, which keeps them equal.
    """
    stats = running_stats(model)
    if world_size == 1 or not stats:
        return 0
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for buf in stats:
        by_dtype.setdefault(buf.dtype, []).append(buf)
    for dtype, bufs in by_dtype.items():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        torch.distributed.all_reduce(flat, group=group)
        if dtype.is_floating_point:
            flat /= world_size
        else:
            flat //= world_size
        for buf, mean in zip(bufs, flat.split([b.numel() for b in bufs])):
            buf.copy_(mean.view_as(buf))
    return len(stats)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm a `torch.nn.SyncBatchNorm` over the world group (`train.sync_bn`).

    The parameters and buffers stay the same tensors (a parameter group or optimizer built before still holds
    them) and the state dict keeps its names, so checkpoints load either way. Raises ValueError with
    `SYNC_BN_NEEDS_GPU` on a device other than CUDA.
    """
    if device.type != "cuda":
        raise ValueError(SYNC_BN_NEEDS_GPU)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
