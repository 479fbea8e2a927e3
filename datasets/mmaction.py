"""`mmaction`: what ST-ABN's code feeds its network: MMAction 0.x's `RawFramesDataset` and `GroupImageTransform`
(machine-perception-robotics-group/ST-ABN_PyTorch) with mmcv 0.2.10's image functions, as the configs
config_files/sthv1/st_abn_32.py (segments) and st_abn_32_2.py (dense) and tools/test_recognizer.py use them.

Frames. MMAction numbers a folder's L frames 1..L (our index = its number - 1); `old_length` = new_length x
new_step. `data.sampling=segment` is `num_segments = num_frames`, new_length 1; `dense` is one segment of
`new_length = num_frames` frames `new_step = sampling_rate` apart (a video file's frames count as a folder's:
no fps rescaling).
- train (`_sample_indices`): `avg = (L - old_length + 1) // n`; segment i starts at `i * avg + U{0..avg-1}`;
  with `avg` 0, all at the first frame;
- val (`_get_val_indices`): `int(tick / 2 + tick * i)`, `tick = (L - old_length + 1) / n`, when
  L > n + old_length - 1, else all at the first frame; test (`_get_test_indices`): the same formula whenever
  L > old_length - 1, so a short video is spread at test but collapsed to frame 1 in val;
- a segment's frames (`_get_frames`): from its start p, p advances by new_step only while p + new_step < L, so a
  clip running past the end repeats its last reachable frame (and never reaches frame L from L - new_step).

Pixels (the frames are BGR there; every constant below is applied to the channel it meets in BGR):
- train (`resize_crop=True`): `RandomResizedCrop` on the frames as stored: ten attempts of area U(0.08, 1) and
  aspect U(3/4, 4/3) (Python `round`), the sides swapped with probability 1/2, accepted when the crop's width
  fits the image's HEIGHT and its height the WIDTH (upstream mixes `shape[0]` and `shape[1]`), its left drawn in
  0..W - h and top in 0..H - w; the box [left, top, left + w - 1, top + h - 1] is then clipped to the image
  (`mmcv.imcrop`), so an accepted crop can come out smaller than drawn; fallback: the centred square of the
  short side. The crop is resized to crop_size x crop_size, flipped (drawn BEFORE the crop, in `__getitem__`),
  then colour-jittered with `data.color_jitter` (`GroupColorJitter(color_space_aug=True)`, see `color_jitter`);
- val / test: the short side rescaled to `test_short_side` (mmcv `imrescale`: sides `int(side * s + 0.5)`),
  then the centre crop (`(w - crop) // 2`), or `three_crop` (`Group3CropSample`: left, right, middle, with
  `2 * ((w - crop) // 2)` as the right; it asserts the crop spans the short side) or `ten_crop`
  (`GroupOverSample`: the 5 TSN positions on a `(w - crop) // 4` grid, each followed by its mirror image);
- normalised as `mmcv.imnormalize` ((x - mean) / std on the 0-255 scale, to RGB). One clip per video; the
  crops' logits are averaged (`TSN3D.forward_test` averages the features of the crops before the linear head).

Random draws, from the one generator in upstream's order: indices, flip, crop attempts, colour jitter. Where this
differs from upstream, on purpose: resizing is `cv2_resize`, OpenCV's fixed-point INTER_LINEAR restated in torch
integer arithmetic (bit-equal to cv2's; no OpenCV dependency); the colour jitter runs in float32 where upstream
drifts into float64 for some frames (saturation of a still-uint8 image), < 1e-3 of a pixel level; frames
decode with Pillow, not OpenCV (bench/pipeline_mmaction.py measures that difference on real JPEGs).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import transforms as T
from .protocols import Protocol, Source

# RandomResizedCrop's defaults
AREA = (0.08, 1.0)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
# GroupColorJitter: colour-space ranges, the luma weights it multiplies BGR channels by, YIQ and its inverse,
# and the PCA lighting (ImageNet's eigenvalues on the 0-255 scale, RGB rows; alpha std 0.1)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 32.0, (0.6, 1.4), (0.6, 1.4), 18.0
GREY_ON_BGR = np.array([0.299, 0.587, 0.114], np.float32)
TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
FROM_YIQ = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])
EIGVAL = np.array([55.46, 4.794, 1.148])
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
LIGHTING_STD = 0.1
# OpenCV's INTER_RESIZE_COEF_SCALE: bilinear weights are integers out of 2048
COEF = 2048


def _taps(src: int, dst: int, start: int, count: int, clamp_weight: bool):
    """cv2 INTER_LINEAR taps of output positions start..start+count-1 along one axis: (first source index, second,
    their integer weights). Positions are (d + 0.5) * scale - 0.5 in float32; along x a position outside the
    image takes the edge pixel with weights (2048, 0) (`clamp_weight`), along y only the indices are clamped."""
    scale = 1.0 / (dst / src)  # cv2 keeps 1 / inv_scale, which can differ from src / dst in the last bit
    pos = ((np.arange(start, start + count) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = pos - first.astype(np.float32)
    if clamp_weight:
        outside = (first < 0) | (first >= src - 1)
        frac[outside] = 0
        first = np.clip(first, 0, src - 1)
    # each weight rounded on its own (half to even), as cv2's saturate_cast<short>
    w0 = np.rint((np.float32(1) - frac) * np.float32(COEF)).astype(np.int32)
    w1 = np.rint(frac * np.float32(COEF)).astype(np.int32)
    i0, i1 = np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1)
    return tuple(torch.from_numpy(a) for a in (i0, i1, w0, w1))


def cv2_resize(
    clip: torch.Tensor, height: int, width: int, box: Optional[Tuple[int, int, int, int]] = None
) -> torch.Tensor:
    """`cv2.resize(frame, (width, height), interpolation=INTER_LINEAR)` of every frame of a (T, C, H, W) uint8 clip,
    bit for bit: 11-bit weights, an exact horizontal pass, a vertical pass that drops 4 then 16 bits of each
    term and rounds the sum by 2 bits (its SIMD and scalar paths agree). `box` (top, left, h, w) computes only
    that crop of the output (each output pixel depends on its own taps only)."""
    src_h, src_w = clip.shape[-2:]
    top, left, out_h, out_w = box or (0, 0, height, width)
    if (src_h, src_w) == (height, width):  # cv2 copies
        return clip[..., top : top + out_h, left : left + out_w]
    x0, x1, a0, a1 = _taps(src_w, width, left, out_w, clamp_weight=True)
    y0, y1, b0, b1 = _taps(src_h, height, top, out_h, clamp_weight=False)
    # on a (T, H, W, C) view, the frames' own memory order: in-place int32 steps, ~2.5x faster than on (T, C, H, W)
    rows = slice(int(y0.min()), int(y1.max()) + 1)
    x = clip[..., rows, :].permute(0, 2, 3, 1)
    horizontal = x.index_select(2, x0).to(torch.int32).mul_(a0[:, None])
    horizontal.add_(x.index_select(2, x1).to(torch.int32).mul_(a1[:, None]))
    out = horizontal.index_select(1, y0 - rows.start).bitwise_right_shift_(4).mul_(b0[:, None, None])
    out.bitwise_right_shift_(16)
    out.add_(
        horizontal.index_select(1, y1 - rows.start)
        .bitwise_right_shift_(4)
        .mul_(b1[:, None, None])
        .bitwise_right_shift_(16)
    )
    # the two terms sum to at most 1020: the rounded shift lands in 0..255 without saturating
    return out.add_(2).bitwise_right_shift_(2).to(torch.uint8).permute(0, 3, 1, 2)


def rescaled_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """mmcv `imrescale(img, (inf, short_side))`: the factor is short_side / short side, each side
    `int(side * factor + 0.5)`."""
    factor = short_side / min(height, width)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def segment_starts(
    num_frames: int, segments: int, old_length: int, mode: str, rng: Optional[np.random.Generator] = None
) -> np.ndarray:
    """MMAction's 1-based segment start frames: `mode` train (`_sample_indices`, random), val (`_get_val_indices`)
    or test (`_get_test_indices`); see the module docstring."""
    if mode == "train":
        average = (num_frames - old_length + 1) // segments
        if average > 0:
            if rng is None:
                raise ValueError("segment_starts: mode train needs rng")
            return np.arange(segments) * average + rng.integers(average, size=segments) + 1
        # upstream's middle branch (sorted draws when average is 0 yet L > max(n, old_length)) needs n > 1 and
        # old_length > 1 at once, which neither layout has
        return np.ones(segments, np.int64)
    shortest = segments + old_length - 1 if mode == "val" else old_length - 1
    if num_frames <= shortest:
        return np.ones(segments, np.int64)
    tick = (num_frames - old_length + 1) / float(segments)
    return np.array([int(tick / 2.0 + tick * i) for i in range(segments)], np.int64) + 1


def segment_frames(starts: np.ndarray, num_frames: int, new_length: int, new_step: int) -> np.ndarray:
    """`_get_frames`: from each 1-based start p, `new_length` frames; p advances by `new_step` only while
    p + new_step < num_frames. Returns 0-based indices, segment-major."""
    starts = np.asarray(starts, np.int64)[:, None]
    steps = np.maximum((num_frames - 1 - starts) // new_step, 0)  # advances p can make
    frames = starts + new_step * np.minimum(np.arange(new_length)[None, :], steps)
    return frames.reshape(-1) - 1


def resized_crop_box(height: int, width: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """`RandomResizedCrop.get_params` then `mmcv.imcrop`'s clipping: (top, left, h, w) of the crop taken from an
    H x W frame; the draws per attempt: area, aspect, swap, then left and top once accepted."""
    area = height * width
    for _ in range(10):
        target = rng.uniform(*AREA) * area
        aspect = rng.uniform(*ASPECT)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if rng.random() < 0.5:
            w, h = h, w
        if w <= height and h <= width:  # upstream's mix-up: w against shape[0], h against shape[1]
            left = int(rng.integers(0, width - h + 1))
            top = int(rng.integers(0, height - w + 1))
            break
    else:
        w = h = min(height, width)
        left, top = (width - w) // 2, (height - w) // 2
    # the box spans w columns and h rows from (left, top); imcrop clips it to the frame
    return top, left, min(h, height - top), min(w, width - left)


def _hue_matrix(alpha: float) -> np.ndarray:
    """`GroupColorJitter.hue`'s float32 matrix t (pixel' = pixel @ t): a rotation of I and Q by alpha * pi."""
    u, w = np.cos(alpha * np.pi), np.sin(alpha * np.pi)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, u, -w], [0.0, w, u]])
    return (FROM_YIQ @ rotation @ TO_YIQ).T.astype(np.float32)


def color_jitter(clip: torch.Tensor, rng: np.random.Generator, order: List[int]) -> torch.Tensor:
    """`GroupColorJitter(color_space_aug=True)` of a float (T, C, H, W) clip on the 0-255 scale, whose channels are
    BGR channels `order` (rgb: [2, 1, 0]). Drawn once: brightness delta U(-32, 32), contrast and saturation
    alphas U(0.6, 1.4), hue alpha U(-18, 18) (I and Q turn by alpha * pi: any angle); per frame, coins
    U(0, 1) > 0.5: brightness, then the branch (contrast, saturation, hue or saturation, hue, contrast), then one
    per op in the branch's order; last, one PCA lighting shift N(0, 0.1) x eigenvalues for the whole clip. No
    clipping to 0-255 anywhere (upstream has none)."""
    # upstream casts the brightness delta and the contrast alpha to float32 (and not the saturation alpha)
    delta = float(np.float32(rng.uniform(-BRIGHTNESS, BRIGHTNESS)))
    contrast = float(np.float32(rng.uniform(*CONTRAST)))
    saturation = float(rng.uniform(*SATURATION))
    hue = torch.from_numpy(_hue_matrix(rng.uniform(-HUE, HUE))[np.ix_(order, order)])
    grey = torch.from_numpy(GREY_ON_BGR[order]).view(3, 1, 1)

    def saturate(img: torch.Tensor) -> torch.Tensor:
        return img * saturation + (img * grey).sum(0, keepdim=True) * (1.0 - saturation)

    ops = {
        "contrast": lambda img: img * contrast,
        "saturation": saturate,
        "hue": lambda img: torch.einsum("khw,kj->jhw", img, hue),
    }
    frames = []
    for img in clip:
        if rng.uniform(0.0, 1.0) > 0.5:
            img = img + delta
        branch = ("contrast", "saturation", "hue") if rng.uniform(0.0, 1.0) > 0.5 else ("saturation", "hue", "contrast")
        for name in branch:
            if rng.uniform(0.0, 1.0) > 0.5:
                img = ops[name](img)
        frames.append(img)
    rgb = ((EIGVEC * rng.normal(0.0, LIGHTING_STD, size=3)) @ EIGVAL).astype(np.float32)
    return torch.stack(frames) + torch.from_numpy(rgb[::-1][order].copy()).view(1, 3, 1, 1)


class MMActionProtocol(Protocol):
    """ST-ABN's MMAction 0.x pipeline; see the module docstring."""

    name = "mmaction"
    aggregate = "mean"
    crops = (1, 3, 10)

    def check(self) -> None:
        super().check()
        cfg = self.cfg
        if cfg.test_num_clips != 1:
            raise ValueError(
                f"data.test_num_clips={cfg.test_num_clips}: MMAction's RawFramesDataset tests one clip "
                "per video (its num_segments spread over it)"
            )
        if cfg.sampling == "dense" and (cfg.num_frames == 1) != (cfg.sampling_rate == 1):
            raise ValueError(
                f"data.sampling_rate={cfg.sampling_rate} with data.num_frames={cfg.num_frames}: "
                "MMAction lays a dense clip out as NCTHW only when new_length and new_step are both 1 "
                "or both > 1 (else it feeds (T, C, H, W))"
            )
        if cfg.test_num_crops == 3 and self.test_crop_size != cfg.test_short_side:
            key = "data.test_crop_size" if cfg.test_crop_size else "data.crop_size"
            raise ValueError(
                f"{key}={self.test_crop_size} with data.test_num_crops=3: MMAction's "
                f"three_crop asserts the crop spans the rescaled short side (data.test_short_side="
                f"{cfg.test_short_side})"
            )
        if cfg.multi_scale_crop:
            raise ValueError(
                "data.multi_scale_crop=true: MMAction's GroupImageTransform trains with "
                "RandomResizedCrop (resize_crop) and never builds its multi-scale crop"
            )

    @property
    def _layout(self) -> Tuple[int, int, int]:
        """(num_segments, new_length, new_step) of the config."""
        cfg = self.cfg
        return (cfg.num_frames, 1, 1) if cfg.sampling == "segment" else (1, cfg.num_frames, cfg.sampling_rate)

    def span(self, fps):
        segments, new_length, new_step = self._layout
        # shorter than old_length (dense) or than the segment count, a clip repeats frames
        return float(max(segments, new_length * new_step))

    def _indices(self, source: Source, mode: str, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        segments, new_length, new_step = self._layout
        starts = segment_starts(source.num_frames, segments, new_length * new_step, mode, rng)
        return segment_frames(starts, source.num_frames, new_length, new_step)

    def train_indices(self, source, rng):
        return self._indices(source, "train", rng)

    def val_indices(self, source):
        return self._indices(source, "val")

    def test_indices(self, source):
        return self._indices(source, "test")[None]

    @property
    def _bgr(self) -> List[int]:
        """The BGR channel each of our channels is (upstream's colour constants are applied in BGR)."""
        return [2, 1, 0] if self.cfg.channel_order == "rgb" else [0, 1, 2]

    def _normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """`mmcv.imnormalize` of a (T, C, H, W) clip on the 0-255 scale -> float32 (C, T, H, W)."""
        mean = torch.tensor(self.cfg.mean, dtype=torch.float64).mul(255).float().view(3, 1, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float64).mul(255).float().view(3, 1, 1, 1)
        return clip.permute(1, 0, 2, 3).to(torch.float32).contiguous().sub_(mean).div_(std)

    def train_clip(self, frames, rng):
        cfg = self.cfg
        clip = T.to_tchw(frames)
        flip = rng.random() < (0.5 if cfg.flip else 0.0)  # drawn whatever flip_ratio, as __getitem__ does
        top, left, h, w = resized_crop_box(clip.shape[-2], clip.shape[-1], rng)
        clip = cv2_resize(T.crop(clip, top, left, h, w), cfg.crop_size, cfg.crop_size)
        if flip:
            clip = clip.flip(-1)
        if cfg.color_jitter:
            clip = color_jitter(clip.to(torch.float32), rng, self._bgr)
        return self._normalize(clip)

    def _rescaled(self, clip: np.ndarray) -> torch.Tensor:
        """(T, H, W, C) frames with the short side rescaled to `test_short_side`, as (T, C, H, W) uint8."""
        height, width = rescaled_size(clip.shape[1], clip.shape[2], self.cfg.test_short_side)
        return cv2_resize(T.to_tchw(clip), height, width)

    def val_clip(self, frames):
        size = self.test_crop_size
        height, width = rescaled_size(frames.shape[1], frames.shape[2], self.cfg.test_short_side)
        box = ((height - size) // 2, (width - size) // 2, size, size)  # GroupCenterCrop
        return self._normalize(cv2_resize(T.to_tchw(frames), height, width, box))

    def crop_offsets(self, height: int, width: int) -> List[Tuple[int, int]]:
        """(top, left) of the test crops of a rescaled height x width frame: centre, three_crop's left, right,
        middle (top, bottom, middle for portrait), or ten_crop's TSN five (each mirrored after it)."""
        size = self.test_crop_size
        if self.cfg.test_num_crops == 1:
            return [((height - size) // 2, (width - size) // 2)]
        if self.cfg.test_num_crops == 3:
            if size == height:
                step = (width - size) // 2
                return [(0, 0), (0, 2 * step), (0, step)]
            step = (height - size) // 2
            return [(0, 0), (2 * step, 0), (step, 0)]
        ws, hs = (width - size) // 4, (height - size) // 4
        return [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]

    def test_views(self, frames):
        """The one clip rescaled once, then its crops in upstream's order (ten_crop: each crop, then its mirror)."""
        size = self.test_crop_size
        clip = self._rescaled(frames[0])
        views = []
        for top, left in self.crop_offsets(clip.shape[-2], clip.shape[-1]):
            view = T.crop(clip, top, left, size, size)
            views += [view, view.flip(-1)] if self.cfg.test_num_crops == 10 else [view]
        return torch.stack([self._normalize(v) for v in views])

    def describe(self) -> Dict[str, str]:
        segments, new_length, new_step = self._layout
        oversample = {1: "centre", 3: "three_crop", 10: "ten_crop"}[self.cfg.test_num_crops]
        return {
            **super().describe(),
            "frames": f"num_segments={segments} new_length={new_length} new_step={new_step}",
            "oversample": oversample,
        }
