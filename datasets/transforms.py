"""Spatial transforms of a whole clip at once, on torch tensors.

Layouts: decord gives frames as (T, H, W, C) uint8; `to_tchw` views them as (T, C, H, W)
(no copy: channels-last memory), the layout every transform here works on (the batch layout
`interpolate` wants). Clips stay uint8 (0-255) through resizing and cropping, which is ~4x
cheaper than float on CPU and shrinks the data before the float conversion; float clips are
taken to be on the 0-1 scale. `normalize` ends the chain: float32 (C, T, H, W), the model's
layout. `train_clip` / `eval_clip` are the two complete chains the datasets use.

Randomness comes only from an explicit `np.random.Generator` (never the global RNGs), so a
sample is reproducible from its seed alone.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]

# TSM's GroupMultiScaleCrop defaults
TSM_SCALES = (1.0, 0.875, 0.75, 0.66)


def to_tchw(frames: ArrayLike) -> torch.Tensor:
    """(T, H, W, C) frames -> a (T, C, H, W) view of them, dtype kept (uint8: 0-255, float:
    0-1). No copy for numpy/torch input."""
    x = torch.as_tensor(frames)
    if x.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, C), got {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"expected uint8 or float frames, got {x.dtype}")
    return x.permute(0, 3, 1, 2)


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (T, C, H, W) clip (antialias off, align_corners False); uint8
    clips are resized as uint8 (rounded), float ones as float."""
    if clip.shape[-2:] == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


def short_side_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the short side is `size`, keeping the aspect ratio."""
    h, w = clip.shape[-2:]
    if h <= w:
        new_h, new_w = size, max(1, int(round(w * size / h)))
    else:
        new_h, new_w = max(1, int(round(h * size / w))), size
    return resize(clip, new_h, new_w)


def random_short_side_resize(
    clip: torch.Tensor, min_size: int, max_size: int, rng: np.random.Generator
) -> torch.Tensor:
    """Scale jitter: short side uniform in [min_size, max_size] (inclusive)."""
    if min_size > max_size:
        raise ValueError(f"short-side range [{min_size}, {max_size}] is empty")
    return short_side_resize(clip, int(rng.integers(min_size, max_size + 1)))


def _check_crop(clip: torch.Tensor, size: int) -> Tuple[int, int]:
    h, w = clip.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the frames ({h}x{w}); resize first")
    return h, w


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Crop a (T, C, H, W) clip."""
    return clip[..., top : top + height, left : left + width]


def random_crop(clip: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Square crop at a uniformly random position."""
    h, w = _check_crop(clip, size)
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return crop(clip, top, left, size, size)


def spatial_crop(clip: torch.Tensor, size: int, index: int = 1) -> torch.Tensor:
    """Square crop on the long side's axis: index 0 = left/top, 1 = centre, 2 = right/bottom
    (PySlowFast's `uniform_crop`); the short axis is centred."""
    if index not in (0, 1, 2):
        raise ValueError(f"spatial crop index must be 0, 1 or 2, got {index}")
    h, w = _check_crop(clip, size)
    top, left = (h - size) // 2, (w - size) // 2
    if w >= h:
        left = (0, (w - size) // 2, w - size)[index]
    else:
        top = (0, (h - size) // 2, h - size)[index]
    return crop(clip, top, left, size, size)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Square crop in the middle."""
    return spatial_crop(clip, size, 1)


def three_crop(clip: torch.Tensor, size: int) -> List[torch.Tensor]:
    """The three test views: left, centre, right (top, centre, bottom for portrait)."""
    return [spatial_crop(clip, size, i) for i in range(3)]


def horizontal_flip(clip: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror the clip left-right with probability p (one draw for the whole clip)."""
    # always draw, so the generator advances the same way whether or not the clip flips
    if rng.random() < p:
        return clip.flip(-1)
    return clip


def multi_scale_crop(
    clip: torch.Tensor,
    size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = TSM_SCALES,
    max_distort: int = 1,
    more_fix_crop: bool = True,
) -> torch.Tensor:
    """TSM's GroupMultiScaleCrop: crop width and height are each a scale of the short side
    (scale indices at most `max_distort` apart), placed at one of the fixed positions
    (corners, centre, and with `more_fix_crop` the edge middles and quarter points), then
    resized to size x size."""
    h, w = clip.shape[-2:]
    base = min(h, w)
    sides = [int(base * s) for s in scales]
    # sides within 3 pixels of the output size snap to it (as TSM does)
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(sw, sh) for i, sh in enumerate(sides) for j, sw in enumerate(sides) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(0, len(pairs)))]
    crop_w, crop_h = min(crop_w, w), min(crop_h, h)
    ws, hs = (w - crop_w) // 4, (h - crop_h) // 4
    offsets = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if more_fix_crop:
        offsets += [
            (0, 2 * hs),
            (4 * ws, 2 * hs),
            (2 * ws, 4 * hs),
            (2 * ws, 0),
            (ws, hs),
            (3 * ws, hs),
            (ws, 3 * hs),
            (3 * ws, 3 * hs),
        ]
    left, top = offsets[int(rng.integers(0, len(offsets)))]
    return resize(crop(clip, top, left, crop_h, crop_w), size, size)


def normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(T, C, H, W) uint8 (0-255) or float (0-1) -> (x - mean) / std per channel on the 0-1
    scale, as contiguous float32 (C, T, H, W)."""
    c = clip.shape[1]
    scale = 255.0 if clip.dtype == torch.uint8 else 1.0
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    # x * (1 / (scale * std)) - mean / std, per channel over a (C, T*H*W) view: one pass each
    a = (1.0 / (scale * s)).to(torch.float32).view(c, 1)
    b = (m / s).to(torch.float32).view(c, 1)
    x = clip.permute(1, 0, 2, 3).contiguous().to(torch.float32)
    return x.view(c, -1).mul_(a).sub_(b).view(x.shape)


def train_clip(
    frames: ArrayLike,
    crop_size: int,
    short_side: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    rng: np.random.Generator,
    flip: bool = True,
    multi_scale: bool = False,
) -> torch.Tensor:
    """Training chain: (T, H, W, C) frames -> short-side jitter in `short_side` [min, max]
    -> random crop (or TSM multi-scale crop) -> optional flip -> normalise -> (C, T, H, W).
    The random draws always happen in this order: scale, crop, flip."""
    clip = to_tchw(frames)
    lo, hi = (short_side[0], short_side[-1])
    clip = random_short_side_resize(clip, lo, hi, rng)
    clip = multi_scale_crop(clip, crop_size, rng) if multi_scale else random_crop(clip, crop_size, rng)
    if flip:
        clip = horizontal_flip(clip, rng)
    return normalize(clip, mean, std)


def eval_clip(
    frames: ArrayLike,
    crop_size: int,
    short_side: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_index: Optional[int] = 1,
) -> torch.Tensor:
    """Evaluation chain: resize the short side to `short_side`, take spatial crop
    `crop_index` (1 = centre; 0/2 = the other two of the three test crops), normalise."""
    clip = short_side_resize(to_tchw(frames), short_side)
    clip = spatial_crop(clip, crop_size, 1 if crop_index is None else crop_index)
    return normalize(clip, mean, std)
