"""Protocols: how a system's upstream code feeds its network, one class per upstream code base.

A published number holds only with the published input. A protocol decides, for the video and
frame-folder datasets (`ClipDataset`), everything between the decoded frames and the model:

- which frames: `train_indices` (random), `val_indices` (one deterministic clip), `test_indices`
  (`(clips, T)`, every temporal view);
- how they become a clip: `train_clip` (resize, crop, flip, colour: the training augmentation),
  `val_clip` (one centred view) and `test_views` (`(V, C, T, H, W)`, every clip x crop);
- how the test views are combined into one score (`aggregate`: `sum` or `mean` of logits, or
  `mean_softmax`), and a one-line `describe()` that test.py prints and logs.

`data.protocol` names one of `PROTOCOLS`: `native` (this project's own rules), `pyslowfast`
(TimeSformer's PySlowFast loaders), `tsn` (TSM's and DyReg-GNN's TSNDataSet and test scripts),
`mmaction` (ST-ABN's MMAction 0.x RawFramesDataset). A protocol's `check()` refuses, in one line
naming the key, a setting its upstream cannot run; it runs when the protocol is made, before anything
starts (`training.preflight`).

Randomness comes only from the `np.random.Generator` passed in: one generator per sample, so a
sample is reproducible from its seed alone. Frames come as (T, H, W, C) uint8 in the model's
channel order; every clip leaves as contiguous float32 (C, T, H, W).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .config import ClipConfig
from .decode import BadVideoError

# data.protocol -> "module:Class"; each class is constructed as Class(cfg: ClipConfig)
PROTOCOLS = {
    "native": ".native:NativeProtocol",
    "pyslowfast": ".pyslowfast:PySlowFastProtocol",
    "tsn": ".tsn:TSNProtocol",
    "mmaction": ".mmaction:MMActionProtocol",
}


@dataclass(frozen=True)
class StreamTiming:
    """A video stream as PyAV describes it, which PySlowFast's decoder samples by: the container's frame count
    (`stream.frames`, 0 when the container does not say), the stream's duration in time-base units (None when
    it does not say), its average frame rate, and the presentation timestamps of the frames in display order."""

    frames_length: int
    duration: Optional[int]
    fps: float
    pts: np.ndarray


@dataclass
class Source:
    """One item to sample from: its frame count and fps (None for frame folders), and for video files a
    function that gives its `StreamTiming` (read only by the protocols that need it)."""

    num_frames: int
    fps: Optional[float] = None
    timing: Optional[Callable[[], StreamTiming]] = None


class Protocol:
    """The interface every protocol implements; see the module docstring."""

    name = "base"
    aggregate = "mean_softmax"
    crops: Tuple[int, ...] = (1, 3)

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self.check()

    @property
    def test_crop_size(self) -> int:
        """Side of the val/test crops."""
        return self.cfg.test_crop_size or self.cfg.crop_size

    @property
    def num_views(self) -> int:
        """Views per test sample: clips x crops."""
        return self.cfg.test_num_clips * self.cfg.test_num_crops

    def check(self) -> None:
        """ValueError, naming the key, for a setting this protocol cannot run."""
        cfg = self.cfg
        if cfg.test_num_crops not in self.crops:
            raise ValueError(
                f"data.test_num_crops={cfg.test_num_crops}: data.protocol={self.name} takes "
                f"{', '.join(map(str, self.crops))}"
            )
        if cfg.test_num_clips < 1:
            raise ValueError(f"data.test_num_clips must be >= 1, got {cfg.test_num_clips}")
        if len(cfg.mean) != 3 or len(cfg.std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values, got {cfg.mean} and {cfg.std}")
        if self.test_crop_size > cfg.test_short_side:
            key = "data.test_crop_size" if cfg.test_crop_size else "data.crop_size"
            raise ValueError(f"{key}={self.test_crop_size} is larger than data.test_short_side={cfg.test_short_side}")

    def span(self, fps: Optional[float]) -> float:
        """Frames of a source at `fps` that one clip covers (a source shorter than this repeats frames)."""
        return float(self.cfg.num_frames)

    @property
    def loops_short_clips(self) -> bool:
        """Whether a source shorter than the clip is meant to repeat (loop) by design, not by mistake."""
        return False

    def train_indices(self, source: Source, rng: np.random.Generator) -> np.ndarray:
        """(T,) frame indices of a training clip."""
        raise NotImplementedError

    def val_indices(self, source: Source) -> np.ndarray:
        """(T,) frame indices of the validation clip."""
        raise NotImplementedError

    def test_indices(self, source: Source) -> np.ndarray:
        """(clips, T) frame indices of the test clips."""
        raise NotImplementedError

    def train_clip(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """(T, H, W, C) uint8 frames -> the augmented float32 (C, T, H, W) training clip."""
        raise NotImplementedError

    def val_clip(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, C) uint8 frames -> the float32 (C, T, H, W) validation clip."""
        raise NotImplementedError

    def test_views(self, frames: np.ndarray) -> torch.Tensor:
        """(clips, T, H, W, C) uint8 frames -> float32 (clips x crops, C, T, H, W) views, clip-major."""
        raise NotImplementedError

    def describe(self) -> Dict[str, str]:
        """What a test run uses, for the log and MLflow: protocol, clips, crops, view sizes, aggregation."""
        cfg = self.cfg
        return {
            "protocol": self.name,
            "num_clips": str(cfg.test_num_clips),
            "num_crops": str(cfg.test_num_crops),
            "views": str(self.num_views),
            "short_side": str(cfg.test_short_side),
            "crop_size": str(self.test_crop_size),
            "aggregate": self.aggregate,
        }


def protocol_class(name: str) -> type:
    """The class of `data.protocol`."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown data.protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    module, cls = PROTOCOLS[name].split(":")
    return getattr(importlib.import_module(module, __package__), cls)


def make_protocol(cfg: ClipConfig) -> Protocol:
    """The protocol `cfg.protocol` names, checked against `cfg` (ValueError naming the key)."""
    return protocol_class(cfg.protocol)(cfg)


def stream_timing(path: str, vr) -> StreamTiming:
    """`StreamTiming` of a video file, read with PyAV without decoding (the header's counts, the packets'
    timestamps), for the frames of the decord reader `vr` that decodes them. Where the packets do not match
    decord's frames one to one, decord's own (float32) timestamps stand in for them."""
    import av  # PyAV reads the container metadata PySlowFast's decoder samples by

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            time_base = float(stream.time_base) if stream.time_base else None
            frames_length, duration = int(stream.frames or 0), stream.duration
            fps = float(stream.average_rate) if stream.average_rate else float(vr.get_avg_fps())
            pts = np.sort(
                np.array([p.pts for p in container.demux(stream) if p.pts is not None and p.size], dtype=np.int64)
            )
    except (av.FFmpegError, OSError, IndexError) as e:
        raise BadVideoError(f"container metadata: {e}") from None
    if len(pts) != len(vr) and time_base:
        pts = np.rint(vr.get_frame_timestamp(np.arange(len(vr)))[:, 0] / time_base).astype(np.int64)
    elif len(pts) != len(vr):
        pts = np.arange(len(vr), dtype=np.int64)
    return StreamTiming(frames_length, None if duration is None else int(duration), fps, pts)
