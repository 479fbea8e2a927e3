"""`tsn`: what TSM's (mit-han-lab/temporal-shift-module) and DyReg-GNN's (bit-ml/DyReg-GNN, a copy of TSM's data
code) `TSNDataSet`, `ops/transforms.py`, training scripts (main.py, main_standard.py) and test scripts
(test_models.py) feed the network, so that their published checkpoints score their published accuracy.

Frames, for n = `num_frames` (TSM's num_segments) of a source of L frames (0-based: TSM's file `offset + 1`):

- segment, train (`_sample_indices`): `avg = L // n`; segment i takes `i * avg + randint(avg)`, or frame 0 for
  every segment when L < n. The last `L % n` frames are never drawn.
- segment, val (`_get_val_indices`, the training scripts' validation): `int(tick / 2 + tick * i)`, tick = L / n,
  when L > n; frame 0 for every segment otherwise (L = n included, which the test samples 0..n-1).
- segment, test (`_get_test_indices`): those centres for any L; 2 clips (`--twice_sample`): the centres, then
  `int(tick * i)`.
- dense (`--dense_sample`, I3D's): n frames `64 // n` apart from a start, modulo L (`sampling_rate` is not used).
  Training starts at `randint(0, L - 64)` when L > 64, which never draws the last start, L - 64 (at 0, without a
  draw, otherwise); the test takes 10 clips, starts `linspace(0, max(0, L - 64), 10)` as integers.

Pixels: every resize is Pillow's bilinear one (antialiased when shrinking) on the uint8 frames, as upstream's PIL
images; crops are PIL's boxes (black where a box leaves the frame).

- train (GroupMultiScaleCrop of the frames as stored, no resize first): crop sides `int(min(H, W) * s)` for s in
  (1, .875, .75, .66), a side within 3 px of `crop_size` taken as `crop_size`; one (width, height) pair of scale
  indices at most 1 apart, then one of 13 fixed positions (corners, centre, edge middles, quarter points on a
  grid of `(side - crop) // 4` steps), each drawn uniformly; resized to crop_size x crop_size; mirrored when
  `flip` and a draw is below 1/2 (TSM trains Something-Something and Jester without flip). `train_short_side` is
  not used.
- val (GroupScale, GroupCenterCrop): short side to `test_short_side` (TSM's scale_size, crop_size * 256 // 224;
  the long side `int(size * long / short)`), centre crop `crop_size` at `round((side - crop) / 2)`, Python's round
  (half to even).
- test: scaled the same; 1 crop: centre `test_crop_size`; 3 (GroupFullResSample): left, right, centre at
  x = 0, 4 * step, 2 * step, step = (W - crop) // 4, all at y = 2 * ((H - crop) // 4) (a portrait frame at full
  resolution gets three equal crops); 5 (GroupOverSample): the corners and the centre on the same quarter
  steps; 10: those five, each followed by its mirror image. `test_crop_size = test_short_side` is `--full_res`.
- normalised as ToTorchFormatTensor and GroupNormalize do, `(x / 255 - mean) / std` in float32 in that order, so
  that the network input is equal to the bit.

Test views are combined by the mean of their logits (test_models.py averages the raw outputs; its `--softmax`
applies after the mean).

Where this deliberately differs from upstream:
- views leave clip-major (`v = clip * crops + crop`), upstream's crop-major then clip: the mean is order-free.
- TSNDataSet drops list entries of fewer than 3 frames (training, validation, and a test of one model); here they
  stay, sampled by the same formulas: a list with such entries scores over more videos than upstream did.
- a missing frame file makes the item a bad file (skipped and reported) where TSNDataSet loads frame 1 instead.
- dense validation: TSNDataSet draws the start at random even there; here it is the middle of the starts its
  draw covers, so that validation is repeatable.
- sources may be video files: indices then count the decoded frames.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .protocols import Protocol, Source

# GroupMultiScaleCrop's scales, as get_augmentation passes them
SCALES = (1.0, 0.875, 0.75, 0.66)
# I3D's dense sample: a 64-frame window, and the clips of the dense test
DENSE_WINDOW = 64
DENSE_TEST_CLIPS = 10
# (x, y) positions of GroupMultiScaleCrop.fill_fix_offset in quarter steps: 5 (over-sample), then 8 more
FIXED_POSITIONS = (
    (0, 0),
    (4, 0),
    (0, 4),
    (4, 4),
    (2, 2),
    (0, 2),
    (4, 2),
    (2, 4),
    (2, 0),
    (1, 1),
    (3, 1),
    (1, 3),
    (3, 3),
)
# GroupFullResSample: left, right, centre
FULL_RES_POSITIONS = ((0, 2), (4, 2), (2, 2))

Box = Tuple[int, int, bool]  # left, top, mirrored


def scale_size(crop_size: int) -> int:
    """TSM's scale_size for an input size: the short side of the val/test frames."""
    return crop_size * 256 // 224


def resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, H, W, C) uint8 frames resized by Pillow's bilinear filter, as PIL's `Image.resize` does it."""
    if frames.shape[1:3] == (height, width):
        return frames  # PIL returns a copy of the image, and torchvision's Resize the image itself
    bilinear = Image.Resampling.BILINEAR
    return np.stack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((width, height), bilinear)) for f in frames]
    )


def scale(frames: np.ndarray, size: int) -> np.ndarray:
    """GroupScale(size): torchvision's Resize(size) on each PIL frame: short side `size`, long side
    `int(size * long / short)`."""
    h, w = frames.shape[1:3]
    if w <= h:
        return resize(frames, size, int(size * h / w))
    return resize(frames, int(size * w / h), size)


def crop(frames: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """PIL's `Image.crop((left, top, left + width, top + height))` of each frame: black outside the frame."""
    h, w = frames.shape[1:3]
    if left >= 0 and top >= 0 and left + width <= w and top + height <= h:
        return frames[:, top : top + height, left : left + width]
    out = np.zeros((len(frames), height, width, frames.shape[3]), frames.dtype)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, w), min(top + height, h)
    if x1 > x0 and y1 > y0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = frames[:, y0:y1, x0:x1]
    return out


def normalise(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(T, H, W, C) uint8 -> float32 (C, T, H, W), `x / 255`, then `- mean` and `/ std` per channel: the very
    operations of ToTorchFormatTensor and GroupNormalize, hence the same float32 values."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous().float().div(255)
    for channel, m, s in zip(x, mean, std):
        channel.sub_(m).div_(s)
    return x


def fixed_offsets(
    width: int, height: int, crop_w: int, crop_h: int, positions: Sequence[Tuple[int, int]] = FIXED_POSITIONS
) -> List[Tuple[int, int]]:
    """`fill_fix_offset`: (left, top) of each position, in steps of a quarter of the room on each axis."""
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    return [(i * w_step, j * h_step) for i, j in positions]


def crop_pairs(width: int, height: int, size: int) -> List[Tuple[int, int]]:
    """GroupMultiScaleCrop's (width, height) candidates, in its order (height's scale index outer)."""
    sides = [int(min(width, height) * s) for s in SCALES]
    sides = [size if abs(side - size) < 3 else side for side in sides]
    return [(cw, ch) for i, ch in enumerate(sides) for j, cw in enumerate(sides) if abs(i - j) <= 1]


def dense_positions(num_frames: int) -> int:
    """`sample_pos`: how many starts a 64-frame window has in the source (1 for a short one)."""
    return max(1, 1 + num_frames - DENSE_WINDOW)


class TSNProtocol(Protocol):
    """TSM's and DyReg-GNN's data pipeline; see the module docstring."""

    name = "tsn"
    aggregate = "mean"
    crops = (1, 3, 5, 10)

    def check(self) -> None:
        super().check()
        cfg = self.cfg
        scale_side = scale_size(cfg.crop_size)
        if cfg.test_short_side != scale_side:
            raise ValueError(
                f"data.test_short_side={cfg.test_short_side}: data.protocol=tsn scales to TSM's "
                f"scale_size, data.crop_size * 256 // 224 = {scale_side}"
            )
        if cfg.test_crop_size not in (None, cfg.crop_size, scale_side):
            raise ValueError(
                f"data.test_crop_size={cfg.test_crop_size}: data.protocol=tsn crops data.crop_size "
                f"({cfg.crop_size}) or, as --full_res, the whole scale ({scale_side})"
            )
        if cfg.sampling == "segment" and cfg.test_num_clips not in (1, 2):
            raise ValueError(
                f"data.test_num_clips={cfg.test_num_clips}: data.protocol=tsn with data.sampling=segment "
                "tests 1 clip (segment centres) or 2 (--twice_sample)"
            )
        if cfg.sampling == "dense" and cfg.test_num_clips != DENSE_TEST_CLIPS:
            raise ValueError(
                f"data.test_num_clips={cfg.test_num_clips}: data.protocol=tsn with data.sampling=dense "
                f"tests {DENSE_TEST_CLIPS} clips (--dense_sample)"
            )

    def span(self, fps):
        n = self.cfg.num_frames
        if self.cfg.sampling == "dense":
            return float((n - 1) * (DENSE_WINDOW // n) + 1)
        return float(n)

    def _dense(self, num_frames: int, start: int) -> np.ndarray:
        """The dense clip from `start`, wrapping around a source shorter than it."""
        n = self.cfg.num_frames
        return (np.arange(n) * (DENSE_WINDOW // n) + start) % num_frames

    def _centres(self, num_frames: int) -> np.ndarray:
        """`int(tick / 2.0 + tick * x)`, tick = L / n: the segment centres of the val and test clips."""
        tick = num_frames / float(self.cfg.num_frames)
        return (tick / 2.0 + tick * np.arange(self.cfg.num_frames)).astype(np.int64)

    def train_indices(self, source: Source, rng: np.random.Generator) -> np.ndarray:
        length, n = source.num_frames, self.cfg.num_frames
        if self.cfg.sampling == "dense":
            positions = dense_positions(length)
            return self._dense(length, int(rng.integers(0, positions - 1)) if positions > 1 else 0)
        average = length // n
        # TSNDataSet's sorted-random branch for L > n without a whole frame per segment cannot be reached with one
        # frame per segment (L > n means L // n >= 1): below n frames, every segment takes the first
        if average == 0:
            return np.zeros(n, np.int64)
        return np.arange(n) * average + rng.integers(average, size=n)

    def val_indices(self, source: Source) -> np.ndarray:
        length, n = source.num_frames, self.cfg.num_frames
        if self.cfg.sampling == "dense":
            return self._dense(length, max(0, (dense_positions(length) - 2) // 2))
        return self._centres(length) if length > n else np.zeros(n, np.int64)

    def test_indices(self, source: Source) -> np.ndarray:
        length, n = source.num_frames, self.cfg.num_frames
        if self.cfg.sampling == "dense":
            starts = np.linspace(0, dense_positions(length) - 1, num=DENSE_TEST_CLIPS, dtype=int)
            return np.stack([self._dense(length, int(s)) for s in starts])
        if self.cfg.test_num_clips == 2:
            tick = length / float(n)
            return np.stack([self._centres(length), (tick * np.arange(n)).astype(np.int64)])
        return self._centres(length)[None]

    def train_clip(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        cfg, size = self.cfg, self.cfg.crop_size
        h, w = frames.shape[1:3]
        pairs = crop_pairs(w, h, size)
        crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
        offsets = fixed_offsets(w, h, crop_w, crop_h)
        left, top = offsets[int(rng.integers(len(offsets)))]
        clip = resize(crop(frames, left, top, crop_w, crop_h), size, size)
        if cfg.flip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return normalise(clip, cfg.mean, cfg.std)

    def _centre(self, frames: np.ndarray, size: int) -> np.ndarray:
        """GroupCenterCrop(size): torchvision's CenterCrop, offsets rounded half to even."""
        h, w = frames.shape[1:3]
        return crop(frames, int(round((w - size) / 2.0)), int(round((h - size) / 2.0)), size, size)

    def val_clip(self, frames: np.ndarray) -> torch.Tensor:
        cfg = self.cfg
        return normalise(self._centre(scale(frames, cfg.test_short_side), cfg.crop_size), cfg.mean, cfg.std)

    def _boxes(self, width: int, height: int) -> List[Box]:
        """The test crops of a scaled frame in upstream's order: (left, top, mirrored)."""
        size, k = self.test_crop_size, self.cfg.test_num_crops
        if k == 3:
            return [(x, y, False) for x, y in fixed_offsets(width, height, size, size, FULL_RES_POSITIONS)]
        corners = fixed_offsets(width, height, size, size, FIXED_POSITIONS[:5])
        return [(x, y, mirrored) for x, y in corners for mirrored in ((False, True) if k == 10 else (False,))]

    def test_views(self, frames: np.ndarray) -> torch.Tensor:
        cfg, size = self.cfg, self.test_crop_size
        clips = len(frames)
        scaled = scale(frames.reshape(-1, *frames.shape[2:]), cfg.test_short_side)
        scaled = scaled.reshape(clips, -1, *scaled.shape[1:])
        views = []
        for clip in scaled:
            if cfg.test_num_crops == 1:
                views.append(normalise(self._centre(clip, size), cfg.mean, cfg.std))
                continue
            for left, top, mirrored in self._boxes(clip.shape[2], clip.shape[1]):
                view = crop(clip, left, top, size, size)
                views.append(normalise(view[:, :, ::-1] if mirrored else view, cfg.mean, cfg.std))
        return torch.stack(views)

    def describe(self) -> Dict[str, str]:
        sampling = "dense (64-frame window)" if self.cfg.sampling == "dense" else "segment"
        return {**super().describe(), "sampling": sampling}
