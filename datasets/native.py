"""`native`: this project's own sampling and augmentation (`datasets.sampling`, `datasets.transforms`).

- Dense clips: `num_frames` frames, `sampling_rate` apart at `target_fps` (`start + floor(i * stride)`);
  training starts anywhere the clip fits, a single test clip is centred, several are evenly spaced;
  a video shorter than the clip loops (or clamps: `data.short_video`).
- Segments: one frame per equal segment, random in training, the segment centres at test (and the
  segment starts as a second clip).
- Training: short-side jitter in `train_short_side`, random crop (or TSM's multi-scale crop with
  `multi_scale_crop`), flip; val and test: short side `test_short_side`, centre crop (3 crops: left,
  centre, right). Views are combined by the mean of their softmax by default.

Resizing runs on uint8 frames (rounded), 4x cheaper than on floats; no upstream code does exactly this,
so a published checkpoint is evaluated with its upstream's protocol instead (`datasets.protocols`).
"""

from __future__ import annotations

import numpy as np
import torch

from . import transforms as T
from .protocols import Protocol, Source
from .sampling import clip_indices, frame_stride, loops_short_videos, segment_indices


class NativeProtocol(Protocol):
    """This project's rules; see the module docstring."""

    name = "native"
    aggregate = "mean_softmax"
    crops = (1, 3)

    def check(self) -> None:
        super().check()
        cfg = self.cfg
        if len(cfg.train_short_side) not in (1, 2) or cfg.train_short_side[0] > cfg.train_short_side[-1]:
            raise ValueError(f"data.train_short_side must be [min, max], got {cfg.train_short_side}")
        if not cfg.multi_scale_crop and cfg.crop_size > cfg.train_short_side[0]:
            raise ValueError(
                f"data.crop_size={cfg.crop_size} is larger than data.train_short_side[0]={cfg.train_short_side[0]}"
            )
        if cfg.sampling == "segment" and cfg.test_num_clips > 2:
            raise ValueError(
                f"data.test_num_clips={cfg.test_num_clips} with data.sampling=segment: 1 (segment "
                "centres) or 2 (centres and starts) clips"
            )

    def span(self, fps):
        cfg = self.cfg
        if cfg.sampling == "segment":
            return float(cfg.num_frames)
        return cfg.num_frames * frame_stride(cfg.sampling_rate, fps, cfg.target_fps)

    @property
    def loops_short_clips(self) -> bool:
        return loops_short_videos(self.cfg.sampling, self.cfg.short_video)

    def _clip(self, source: Source, mode: str, rng=None, clip_idx: int = 0, num_clips: int = 1) -> np.ndarray:
        cfg = self.cfg
        if cfg.sampling == "segment":
            return segment_indices(source.num_frames, cfg.num_frames, mode, rng)
        return clip_indices(
            source.num_frames,
            cfg.num_frames,
            cfg.sampling_rate,
            source.fps,
            cfg.target_fps,
            mode,
            rng,
            clip_idx=clip_idx,
            num_clips=num_clips,
            short_video=cfg.short_video,
        )

    def train_indices(self, source, rng):
        return self._clip(source, "train", rng)

    def val_indices(self, source):
        return self._clip(source, "test")

    def test_indices(self, source):
        cfg, k = self.cfg, self.cfg.test_num_clips
        if cfg.sampling == "segment":
            return segment_indices(source.num_frames, cfg.num_frames, "test", twice=k == 2).reshape(k, -1)
        return np.stack([self._clip(source, "test", clip_idx=c, num_clips=k) for c in range(k)])

    def train_clip(self, frames, rng):
        cfg = self.cfg
        return T.train_clip(
            frames,
            cfg.crop_size,
            cfg.train_short_side,
            cfg.mean,
            cfg.std,
            rng,
            flip=cfg.flip,
            multi_scale=cfg.multi_scale_crop,
        )

    def val_clip(self, frames):
        cfg = self.cfg
        return T.eval_clip(frames, self.test_crop_size, cfg.test_short_side, cfg.mean, cfg.std)

    def test_views(self, frames):
        """Each clip resized once (short side `test_short_side`), then its crops (1: centre; 3:
        `transforms.three_crop`, left/centre/right), clip-major."""
        cfg, size = self.cfg, self.test_crop_size
        views = []
        for clip in frames:
            resized = T.short_side_resize(T.to_tchw(clip), cfg.test_short_side)
            crops = T.three_crop(resized, size) if cfg.test_num_crops == 3 else [T.center_crop(resized, size)]
            views += [T.normalize(c, cfg.mean, cfg.std) for c in crops]
        return torch.stack(views)
