"""Which frames of a video make a clip. Pure functions on integers and numpy, no decoding.

Two schemes:
- `clip_indices`: a dense clip of `num_frames` frames `sampling_rate` apart (PySlowFast /
  TimeSformer), the stride being defined at `target_fps` and rescaled by the file's own fps.
- `segment_indices`: TSN sampling: the video is cut into `num_segments` equal segments and
  one frame is taken per segment (ST-ABN, TSM/DyReg, Something-Something style TimeSformer).

Randomness comes only from the `np.random.Generator` passed in, so a seeded generator gives the
same indices on any machine and in any worker.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

MODES = ("train", "test")
SHORT_VIDEO = ("loop", "clamp")


def _check(num_video_frames: int, count: int, mode: str, count_name: str) -> None:
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames; need at least 1")
    if count < 1:
        raise ValueError(f"{count_name} must be >= 1, got {count}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def frame_stride(sampling_rate: float, fps: Optional[float], target_fps: float = 30.0) -> float:
    """Stride in source frames: `sampling_rate` is defined at `target_fps`; a 60 fps file
    doubles it so that a clip covers the same seconds. A missing or bogus fps (0, NaN: some
    containers) leaves the stride unchanged."""
    if fps is None or not math.isfinite(fps) or fps <= 0:
        return float(sampling_rate)
    return float(sampling_rate) * float(fps) / float(target_fps)


def loops_short_videos(sampling: str, short_video: str) -> bool:
    """Whether a video shorter than its clip is read by design, not by mistake: dense clips with
    `data.short_video=loop` wrap around it (`clip_indices`). The one rule the datasets, the run's
    preflight and `datasets.check` share."""
    return sampling == "dense" and short_video == "loop"


def clip_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: float,
    fps: Optional[float] = None,
    target_fps: float = 30.0,
    mode: str = "train",
    rng: Optional[np.random.Generator] = None,
    clip_idx: int = 0,
    num_clips: int = 1,
    short_video: str = "loop",
) -> np.ndarray:
    """Frame indices of one dense clip, shape (num_frames,), dtype int64, all in range.

    The clip spans `num_frames * stride` frames (stride from `frame_stride`); frame i is
    `start + floor(i * stride)`.
    - train: `start` is uniform in [0, len - span] (drawn from `rng`).
    - test: `num_clips` starts evenly spaced from 0 to len - span, this is clip `clip_idx`;
      a single clip is centred (PySlowFast's offset variant).
    A video shorter than the span either loops (indices wrap modulo its length; the start
    is drawn over the whole video in train, is 0 for a single test clip and evenly spaced
    around the loop for several) or clamps (start 0, indices past the end repeat the last
    frame).
    """
    _check(num_video_frames, num_frames, mode, "num_frames")
    if short_video not in SHORT_VIDEO:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO}, got {short_video!r}")
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx must be in [0, {num_clips}), got {clip_idx}")
    stride = frame_stride(sampling_rate, fps, target_fps)
    offsets = np.floor(np.arange(num_frames) * stride).astype(np.int64)
    span = num_frames * stride
    room = num_video_frames - span  # how far the start may move and keep the clip inside

    if room >= 0:
        max_start = int(math.floor(room))
    elif short_video == "loop":
        max_start = num_video_frames - 1  # any start; indices wrap below
    else:
        max_start = 0

    if mode == "train":
        if rng is None:
            rng = np.random.default_rng()
        start = int(rng.integers(0, max_start + 1))
    elif room < 0 and short_video == "loop":
        # no "centre" on a loop: start at frame 0 (the natural order), several clips
        # evenly spaced around the loop
        start = num_video_frames * clip_idx // num_clips
    elif num_clips == 1:
        start = max_start // 2
    else:
        start = int(math.floor(max_start * clip_idx / (num_clips - 1)))

    idx = start + offsets
    if short_video == "loop":
        idx = idx % num_video_frames
    else:
        idx = np.minimum(idx, num_video_frames - 1)
    return idx


def segment_indices(
    num_video_frames: int,
    num_segments: int,
    mode: str = "train",
    rng: Optional[np.random.Generator] = None,
    twice: bool = False,
) -> np.ndarray:
    """TSN indices: one frame per equal segment, shape (num_segments,) dtype int64.

    Segment i covers frames [floor(i*L/n), floor((i+1)*L/n)).
    - train: a uniformly random frame of each segment (an empty segment, when the video
      has fewer frames than segments, takes its start frame).
    - test: the segment centres `floor((i + 0.5) * L / n)` (TSM's `_get_test_indices`).
    - `twice` (test only, DyReg's 2 temporal views): shape (2, num_segments), row 0 the
      centres, row 1 the segment starts.
    """
    _check(num_video_frames, num_segments, mode, "num_segments")
    seg = num_video_frames / num_segments
    starts = np.floor(np.arange(num_segments) * seg).astype(np.int64)
    if mode == "train":
        if twice:
            raise ValueError("twice=True is a test-time view; use mode='test'")
        if rng is None:
            rng = np.random.default_rng()
        ends = np.floor(np.arange(1, num_segments + 1) * seg).astype(np.int64)
        widths = np.maximum(ends - starts, 1)
        # one draw per segment, always num_segments draws, so the generator advances the
        # same way whatever the video length
        idx = starts + np.floor(rng.random(num_segments) * widths).astype(np.int64)
        return np.minimum(idx, num_video_frames - 1)
    centres = np.floor((np.arange(num_segments) + 0.5) * seg).astype(np.int64)
    centres = np.minimum(centres, num_video_frames - 1)
    if twice:
        return np.stack([centres, np.minimum(starts, num_video_frames - 1)])
    return centres
