"""`pyslowfast`: what TimeSformer's PySlowFast code (facebookresearch/TimeSformer, `timesformer/datasets`) feeds its
network, so that its released checkpoints score their published accuracy here.

Which frames (`data.sampling`):
- `dense` (its `Kinetics` loader, `decoder.py`): a clip spans `size = sampling_rate * num_frames / target_fps * fps`
  frames of the file (a float, in that order of operations, fps being the stream's average rate). The clip starts
  at `start` in [0, delta], delta = max(frames - size, 0): uniform in training, `delta * i / n` for test view i of
  n (a single view starts at 0, not in the middle), and ends at `start + size - 1`. A video whose stream states its
  duration is decoded selectively: the frames whose timestamps lie in `[int(start * tb), int(end * tb)]`
  (tb = duration / header frame count), plus the one frame after; the clip then takes `linspace(0, size - 1, T)`
  of those (float32, clamped to the last one, truncated). Otherwise every frame is decoded (those with
  timestamps >= 0) and the clip takes `linspace(start, end, T)` of them. A short video repeats its last frame.
  Frame folders have no timestamps or frame rate: they take the second path with `size = sampling_rate *
  num_frames`.
- `segment` (its `Ssv2` loader): segment i runs from `round(i * (L - 1) / T)` to `round((i + 1) * (L - 1) / T)`
  (numpy's round: half to even); training draws a frame in it (both ends included), test takes the middle
  `(start + end) // 2`, the same frames for every ensemble view.

How they become the input (`utils.spatial_sampling`, `transform.py`): frames are normalised first, as float32
`(x / 255 - mean) / std`, then resized as floats (bilinear, no antialias) so that the short side is `size` and
the long side `floor(long / short * size)`, unless the short side is `size` already. Training: `size` uniform in
`train_short_side` (or its inverse uniform, `scale_sampling: inverse_uniform`), rounded half to even; a random
crop whose offset is drawn only on an axis longer than the crop, below `side - crop` (the last position is never
drawn); a flip with probability 1/2 (`flip`). Draws come in this order: start (or one per segment), size, crop
top, crop left, flip. Test: the short side is the test crop for 3 crops, and for 1 crop `train_short_side[0]`
(dense) or the test crop (segment), which `test_short_side` must state; the crops sit at `ceil((side - crop) / 2)`
and, for 3 crops, at both ends of the long side (left/right, top/bottom for portrait frames). View v is clip
`v // crops`, crop `v % crops`; the views' logits are summed (its `TestMeter`).

Where this differs from upstream, deliberately:
- `val`: PySlowFast validates with its training augmentation (random); here it is one deterministic test view,
  clip 0 of 1 and the centre crop at the 1-crop short side, so that validation scores are comparable.
- Decoding: decord instead of PyAV (bit-identical frames on H.264, bench/pipeline_pyslowfast.py measures it),
  with PyAV's stream metadata (`protocols.stream_timing`) for the timestamp window; frame folders decode with
  Pillow instead of OpenCV, and their BGR order is `data.channel_order`'s business, not this protocol's.
- Randomness: the sample's `np.random.Generator` instead of Python's `random` and numpy's global generator, in
  upstream's order and with upstream's bounds, so that recorded upstream draws replay into the same tensor.
- A video upstream cannot sample (a stated duration without a frame count, or no frame in the window) is a bad
  file (`BadVideoError`), skipped and logged; upstream retries it and then random others.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .decode import BadVideoError
from .protocols import Protocol, Source, StreamTiming


def clip_size(sampling_rate: int, num_frames: int, target_fps: float, fps: Optional[float]) -> float:
    """Frames of the file one dense clip spans, in upstream's order of float operations; without a frame rate
    (frame folders) exactly `sampling_rate * num_frames`."""
    if fps is None:
        return float(sampling_rate * num_frames)
    return sampling_rate * num_frames / target_fps * fps


def start_end(
    video_size: float, size: float, clip_idx: int, num_clips: int, rng: Optional[np.random.Generator] = None
) -> Tuple[float, float]:
    """First and last (float) frame of a clip of `size` frames: random (`clip_idx` -1, one draw from `rng`, even
    when the clip fills the video) or test clip `clip_idx` of `num_clips` (`get_start_end_idx`)."""
    delta = max(video_size - size, 0)
    if clip_idx == -1 and rng is None:
        raise ValueError("start_end: a random clip (clip_idx -1) needs rng")
    start = rng.uniform(0, delta) if rng is not None and clip_idx == -1 else delta * clip_idx / num_clips
    return start, start + size - 1


def spaced(start: float, end: float, num: int, count: int) -> np.ndarray:
    """`num` positions from `start` to `end` among `count` frames: float32 linspace, clamped, truncated
    (`temporal_sampling`)."""
    index = torch.linspace(start, end, num, dtype=torch.float32)
    return torch.clamp(index, 0, count - 1).long().numpy()


def pts_window(timing: StreamTiming, start: float, end: float) -> Tuple[int, int]:
    """(first frame, frame count) that PySlowFast's selective PyAV decode returns for frames `start`..`end`: those
    with timestamps in `[int(start * tb), int(end * tb)]`, tb = duration / header frame count, and the one after
    (`pyav_decode_stream` with no buffer still keeps the frame that ends it)."""
    if timing.duration is None:
        raise ValueError("pts_window: the stream states no duration (PySlowFast decodes all its frames then)")
    if not timing.frames_length:
        raise BadVideoError("the stream states a duration but no frame count: PySlowFast cannot sample it")
    timebase = timing.duration / timing.frames_length
    first = int(np.searchsorted(timing.pts, int(start * timebase), side="left"))
    inside = int(np.searchsorted(timing.pts, int(end * timebase), side="right"))
    count = min(inside + 1, len(timing.pts)) - first
    if count <= 0:
        raise BadVideoError(
            f"no frame in PySlowFast's decoding window from frame {start:.1f} of {timing.frames_length}"
        )
    return first, count


def segment_bounds(length: int, num: int) -> List[Tuple[int, int]]:
    """(start, end) frames of each of the `num` SSv2 segments of a `length`-frame video, both included."""
    seg = float(length - 1) / num
    return [(int(np.round(seg * i)), int(np.round(seg * (i + 1)))) for i in range(num)]


def normalise(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(T, H, W, C) uint8 frames -> the (C, T, H, W) float32 view upstream augments: `tensor_normalize`'s
    operations in its order, then its permute (the layout its resize works on)."""
    x = torch.as_tensor(frames).float() / 255.0
    x = (x - torch.tensor(list(mean))) / torch.tensor(list(std))
    return x.permute(3, 0, 1, 2)


def jitter_size(low: int, high: int, inverse: bool, rng: np.random.Generator) -> int:
    """The training short side: uniform in [low, high], or its inverse uniform in [1/high, 1/low]; rounded half to
    even (`random_short_side_scale_jitter`)."""
    if inverse:
        return int(round(1.0 / rng.uniform(1.0 / high, 1.0 / low)))
    return int(round(rng.uniform(low, high)))


def scale_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """(C, T, H, W) float clip with its short side resized to `size` and its long side to floor(long / short *
    size): bilinear on floats, no antialias; untouched when the short side is `size` already."""
    h, w = clip.shape[2], clip.shape[3]
    if min(h, w) == size:
        return clip
    if w < h:
        h, w = int(math.floor(float(h) / w * size)), size
    else:
        h, w = size, int(math.floor(float(w) / h * size))
    return F.interpolate(clip, size=(h, w), mode="bilinear", align_corners=False)


def random_crop(clip: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A `size` square at a random offset: drawn in [0, side - size), so never the last position, and only on an
    axis longer than `size` (top, then left)."""
    h, w = clip.shape[2], clip.shape[3]
    top = int(rng.integers(0, h - size)) if h > size else 0
    left = int(rng.integers(0, w - size)) if w > size else 0
    return clip[:, :, top : top + size, left : left + size]


def uniform_crop(clip: torch.Tensor, size: int, index: int) -> torch.Tensor:
    """Test crop `index` (0, 1 = centre, 2) of a (C, T, H, W) clip: centred at ceil((side - size) / 2) on both
    axes, 0 and 2 moved to the ends of the long side (left/right; top/bottom when taller than wide)."""
    h, w = clip.shape[2], clip.shape[3]
    top, left = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if h > w:
        top = (0, top, h - size)[index]
    else:
        left = (0, left, w - size)[index]
    return clip[:, :, top : top + size, left : left + size]


class PySlowFastProtocol(Protocol):
    """TimeSformer's PySlowFast loaders; see the module docstring."""

    name = "pyslowfast"
    aggregate = "sum"
    crops = (1, 3)

    @property
    def val_short_side(self) -> int:
        """Short side of the val view and of 1-crop test views: `train_short_side[0]` (dense), the test crop
        (segment)."""
        return self.cfg.train_short_side[0] if self.cfg.sampling == "dense" else self.test_crop_size

    def test_scale(self) -> Tuple[int, str]:
        """(the short side PySlowFast resizes test frames to with the configured crops, the key it comes from)."""
        cfg = self.cfg
        if cfg.test_num_crops == 1 and cfg.sampling == "dense":
            return cfg.train_short_side[0], "data.train_short_side[0]"
        return self.test_crop_size, "data.test_crop_size" if cfg.test_crop_size else "data.crop_size"

    def check(self) -> None:
        super().check()
        cfg = self.cfg
        scales = cfg.train_short_side
        if len(scales) != 2 or scales[0] > scales[1]:
            raise ValueError(f"data.train_short_side must be [min, max] (TRAIN_JITTER_SCALES), got {scales}")
        if cfg.crop_size > scales[0]:
            raise ValueError(
                f"data.crop_size={cfg.crop_size} is larger than data.train_short_side[0]={scales[0]}, "
                "the smallest training short side it is cut from"
            )
        want, key = self.test_scale()
        if cfg.test_short_side != want:
            raise ValueError(
                f"data.test_short_side={cfg.test_short_side}: pyslowfast resizes {cfg.sampling} test "
                f"frames with {cfg.test_num_crops} crop(s) to {key}={want}; set it to {want}"
            )
        if self.test_crop_size > self.val_short_side:
            raise ValueError(
                f"data.test_crop_size={self.test_crop_size} is larger than data.train_short_side[0]="
                f"{self.val_short_side}, the short side of the val view"
            )
        if cfg.sampling == "segment" and cfg.test_num_clips > 1:
            raise ValueError(
                f"data.test_num_clips={cfg.test_num_clips} with data.sampling=segment: PySlowFast's "
                "SSv2 loader gives every ensemble view the same frames; use 1"
            )

    def span(self, fps: Optional[float]) -> float:
        cfg = self.cfg
        if cfg.sampling == "segment":
            return float(cfg.num_frames)
        return clip_size(cfg.sampling_rate, cfg.num_frames, cfg.target_fps, fps)

    def _dense(
        self, source: Source, clip_ids: Sequence[int], num_clips: int, rng: Optional[np.random.Generator] = None
    ) -> np.ndarray:
        """(clips, T) frame indices of dense clips `clip_ids` of `num_clips` (-1: random), see the module
        docstring."""
        timing = source.timing() if source.timing is not None else None  # once: it reads the whole container
        return np.stack([self._dense_clip(source.num_frames, timing, c, num_clips, rng) for c in clip_ids])

    def _dense_clip(
        self,
        num_frames: int,
        timing: Optional[StreamTiming],
        clip_idx: int,
        num_clips: int,
        rng: Optional[np.random.Generator],
    ) -> np.ndarray:
        """(T,) frame indices of one dense clip of a source of `num_frames` frames described by `timing`."""
        if timing is None:  # a frame folder: every frame, no frame rate
            first, count, size = 0, num_frames, self.span(None)
        elif timing.duration is None:  # every frame is decoded, but PyAV's loop skips those stamped before 0
            first, size = int(np.count_nonzero(timing.pts < 0)), self.span(timing.fps)
            count = len(timing.pts) - first
            if count <= 0:
                raise BadVideoError("every frame is stamped before 0: PySlowFast's decoder keeps none")
        else:
            size = self.span(timing.fps)
            first, count = pts_window(timing, *start_end(timing.frames_length, size, clip_idx, num_clips, rng))
            # the decoded window is then sampled as a whole video's clip 0 of 1: from its first frame
            return first + spaced(*start_end(count, size, 0, 1), self.cfg.num_frames, count)
        start, end = start_end(count, size, clip_idx, num_clips, rng)
        return first + spaced(start, end, self.cfg.num_frames, count)

    def _segments(self, source: Source, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """SSv2 frame indices: a random frame of each segment (with `rng`, in segment order), else the middles."""
        bounds = segment_bounds(source.num_frames, self.cfg.num_frames)
        if rng is None:
            return np.array([(s + e) // 2 for s, e in bounds], dtype=np.int64)
        return np.array([rng.integers(s, e + 1) for s, e in bounds], dtype=np.int64)

    def train_indices(self, source, rng):
        return self._segments(source, rng) if self.cfg.sampling == "segment" else self._dense(source, [-1], 1, rng)[0]

    def val_indices(self, source):
        return self._segments(source) if self.cfg.sampling == "segment" else self._dense(source, [0], 1)[0]

    def test_indices(self, source):
        if self.cfg.sampling == "segment":
            return self._segments(source)[None]
        return self._dense(source, range(self.cfg.test_num_clips), self.cfg.test_num_clips)

    def train_clip(self, frames, rng):
        cfg = self.cfg
        clip = normalise(frames, cfg.mean, cfg.std)
        low, high = cfg.train_short_side
        clip = scale_short_side(clip, jitter_size(low, high, cfg.scale_sampling == "inverse_uniform", rng))
        clip = random_crop(clip, cfg.crop_size, rng)
        if cfg.flip and rng.uniform() < 0.5:
            clip = clip.flip(-1)
        return clip.contiguous()

    def val_clip(self, frames):
        clip = scale_short_side(normalise(frames, self.cfg.mean, self.cfg.std), self.val_short_side)
        return uniform_crop(clip, self.test_crop_size, 1).contiguous()

    def test_views(self, frames):
        """Each clip normalised and resized once to `test_short_side`, then its crops (1: centre; 3: both ends of
        the long side and the centre, in upstream's order 0, 1, 2), clip-major."""
        cfg, size = self.cfg, self.test_crop_size
        indices = (0, 1, 2) if cfg.test_num_crops == 3 else (1,)
        views = []
        for clip in frames:
            resized = scale_short_side(normalise(clip, cfg.mean, cfg.std), cfg.test_short_side)
            views += [uniform_crop(resized, size, i) for i in indices]
        return torch.stack(views)

    def describe(self) -> Dict[str, str]:
        cfg = self.cfg
        if cfg.sampling == "segment":
            temporal = "SSv2 segments round(i*(L-1)/T)..round((i+1)*(L-1)/T), middles at test, one clip"
        else:
            temporal = (
                f"{cfg.num_frames} frames over {cfg.sampling_rate}*{cfg.num_frames}/{cfg.target_fps:g}*fps "
                "frames; view i of n starts at delta*i/n (one view: 0); PyAV timestamp window + 1 frame"
            )
        return {
            **super().describe(),
            "temporal": temporal,
            "resize": "normalise, then float bilinear: short side to size, long side floor(long/short*size)",
            "crop": "ceil((side-crop)/2), 3 crops at both ends of the long side",
            "val": f"clip 0 of 1, centre crop at short side {self.val_short_side}",
        }
