"""`data.protocol=mmaction`: ST-ABN's MMAction 0.x RawFramesDataset and mmcv 0.2.10 rules, restated by hand.

Frame folders are lossless PNGs whose pixels tell where they come from (a frame's grey level gives its index, ramps
give a crop's position), read through `datasets.build`. Random draws come from a scripted generator that also
checks what is asked of it, in upstream's order: segment offsets, flip, crop attempts, colour jitter.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from action_launch.datasets import DataConfig, build
from action_launch.datasets.mmaction import rescaled_size

TEMPLATE = "{:05d}.png"
UPSTREAM_SITE = Path(__file__).resolve().parents[1] / "bench" / ".upstream-site"


class Script:
    """Stands in for `np.random.Generator`: gives `values` in order, checks each lies in the range asked, and
    keeps the calls as (method, low, high)."""

    def __init__(self, *values):
        self.values = list(values)
        self.calls = []

    def _next(self, call, size=None):
        assert self.values, f"drew more than scripted: {call}"
        self.calls.append(call)
        value = self.values.pop(0)
        return value if size is None else np.asarray(value).reshape(size)

    def integers(self, low, high=None, size=None):
        low, high = (0, low) if high is None else (low, high)
        value = self._next(("integers", low, high), size)
        assert np.all((low <= np.asarray(value)) & (np.asarray(value) < high)), (value, low, high)
        return value

    def uniform(self, low=0.0, high=1.0, size=None):
        value = self._next(("uniform", low, high), size)
        assert low <= value <= high, (value, low, high)
        return value

    def random(self, size=None):
        return self._next(("random", 0, 1), size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._next(("normal", loc, scale), size)


def write_frames(folder, frames):
    """(N, H, W, 3) uint8 frames as folder/00001.png, 00002.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / TEMPLATE.format(i + 1))
    return folder


def ramp(h, w):
    """One frame: red = 5 * column, green = 6 * row, blue 0 (crops tell their position)."""
    frame = np.zeros((1, h, w, 3), np.uint8)
    frame[..., 0] = 5 * np.arange(w)[None, :]
    frame[..., 1] = 6 * np.arange(h)[:, None]
    return frame


def cfg(root, **kw):
    """Frame folders under `root` through the mmaction protocol; mean 0 and std 1 keep the pixel values readable."""
    base = dict(
        dataset="rawframes",
        list_format="rawframes",
        root=str(root),
        protocol="mmaction",
        frame_template=TEMPLATE,
        frame_start_index=1,
        sampling="segment",
        num_frames=1,
        crop_size=8,
        test_short_side=8,
        flip=True,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        num_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


def listed(root, *lines):
    """Write the `folder frames label` list `lines` under `root`; both splits read it."""
    (root / "list.txt").write_text("".join(f"{line}\n" for line in lines))
    return dict(train_list="list.txt", val_list="list.txt")


def pixels(clip):
    """A (C, T, H, W) clip normalised with mean 0, std 1 back on the 0-255 scale."""
    return clip * 255


def levels(clip):
    """`pixels`, rounded to integers (the frames are uint8 before normalisation)."""
    return pixels(clip).round().long()


@pytest.fixture(scope="module")
def level_root(tmp_path_factory):
    """40 frames of 8x8, frame i grey at level 5 i."""
    root = tmp_path_factory.mktemp("levels")
    write_frames(root / "f", np.repeat(5 * np.arange(40, dtype=np.uint8), 8 * 8 * 3).reshape(40, 8, 8, 3))
    return root


def frame_levels(clip):
    """Each frame's index, from its grey level 5 i."""
    return (pixels(clip).mean(dim=(0, 2, 3)) / 5).round().long().tolist()


# draws after the indices that leave an 8x8 frame as it is: no flip; area 1, aspect 1, no swap, at (0, 0)
KEEP = (0.9, 1.0, 1.0, 0.9, 0, 0)


def test_segment_training_offsets_and_a_short_video(level_root):
    ds = build(cfg(level_root, num_frames=8, **listed(level_root, "f 40 0", "f 6 0")), "train")
    # 40 frames, 8 segments: average 40 // 8 = 5, segment i starts at 5 i + U{0..4}
    script = Script([4, 0, 3, 1, 2, 0, 4, 1], *KEEP)
    assert frame_levels(ds.sample(ds.items[0], script)[0]) == [4, 5, 13, 16, 22, 25, 34, 36]
    assert script.calls[0] == ("integers", 0, 5) and not script.values
    # 6 frames: average 0, no draw, every segment at the first frame
    script = Script(*KEEP)
    assert frame_levels(ds.sample(ds.items[1], script)[0]) == [0] * 8
    assert script.calls[0] == ("random", 0, 1)


def test_segment_val_and_test_offsets(level_root):
    lines = listed(level_root, "f 40 0", "f 9 0", "f 6 0")
    val, test = (build(cfg(level_root, num_frames=8, **lines), split) for split in ("val", "test"))
    # tick = (L - 1 + 1) / 8; offset int(tick / 2 + tick i)
    assert frame_levels(val[0][0]) == frame_levels(test[0][0][0]) == [2, 7, 12, 17, 22, 27, 32, 37]
    # tick 9 / 8: 0.56, 1.69, 2.81, 3.94, 5.06, 6.19, 7.31, 8.44
    assert frame_levels(val[1][0]) == frame_levels(test[1][0][0]) == [0, 1, 2, 3, 5, 6, 7, 8]
    # 6 frames: val needs L > 8 + 1 - 1 and collapses to the first frame; test (L > 0) spreads tick 0.75
    assert frame_levels(val[2][0]) == [0] * 8
    assert frame_levels(test[2][0][0]) == [0, 1, 1, 2, 3, 4, 4, 5]


def test_dense_frames_step_and_clamp_at_the_end(level_root):
    # one segment of new_length 8, new_step 3: old_length 24
    lines = listed(level_root, "f 40 0", "f 20 0", "f 22 0")
    kw = dict(sampling="dense", num_frames=8, sampling_rate=3, **lines)
    ds = build(cfg(level_root, **kw), "train")
    # 40 frames: the start is U{0..40 - 24}; 17 + 3 k (1-based) never reaches the end
    script = Script([16], *KEEP)
    assert frame_levels(ds.sample(ds.items[0], script)[0]) == [16, 19, 22, 25, 28, 31, 34, 37]
    assert script.calls[0] == ("integers", 0, 17)
    # 20 frames: start 1; p advances only while p + 3 < 20, so file 19 repeats
    assert frame_levels(ds.sample(ds.items[1], Script(*KEEP))[0]) == [0, 3, 6, 9, 12, 15, 18, 18]
    # 22 frames: 19 + 3 = 22 is not < 22: file 22 exists but is never reached
    assert frame_levels(ds.sample(ds.items[2], Script(*KEEP))[0]) == [0, 3, 6, 9, 12, 15, 18, 18]
    # val and test: start int((40 - 24 + 1) / 2) = 8
    assert frame_levels(build(cfg(level_root, **kw), "val")[0][0]) == [8, 11, 14, 17, 20, 23, 26, 29]
    assert frame_levels(build(cfg(level_root, **kw), "test")[0][0][0]) == [8, 11, 14, 17, 20, 23, 26, 29]


def test_rescale_rounds_half_up(tmp_path):
    # mmcv _scale_size: int(side * (target / short side) + 0.5); 35 * 1.5 = 52.5 -> 53 (Python's round: 52)
    assert rescaled_size(16, 35, 24) == (24, 53) and rescaled_size(35, 16, 24) == (53, 24)
    assert rescaled_size(144, 176, 256) == (256, 313) and rescaled_size(720, 1280, 256) == (256, 455)
    write_frames(tmp_path / "f", ramp(16, 35))
    ds = build(cfg(tmp_path, test_short_side=24, crop_size=21, test_num_crops=10, **listed(tmp_path, "f 1 0")), "test")
    # 53 wide: ten_crop's grid step is (53 - 21) // 4 = 8 (52 wide: 7); the ramp 5 x stays linear under bilinear
    # resizing, so a crop's first column reads 5 * ((left + 0.5) * 35 / 53 - 0.5), clamped at the edge, +-1
    for view, left in zip(pixels(ds[0][0])[::2], (0, 32, 0, 32, 16)):
        assert abs(float(view[0, 0, 0, 0]) - 5 * max(0.0, (left + 0.5) * 35 / 53 - 0.5)) <= 1


def test_val_resize_is_opencvs_fixed_point(tmp_path):
    frame = np.array([[95, 130], [194, 217]], np.uint8)
    write_frames(tmp_path / "f", np.repeat(frame[None, :, :, None], 3, axis=3))
    ds = build(cfg(tmp_path, test_short_side=3, crop_size=3, **listed(tmp_path, "f 1 0")), "val")
    # cv2 INTER_LINEAR 2 -> 3: columns (2048, 0), (1024, 1024), (0 + edge: 2048, 0); row 0 sits at y = -1/6, so
    # rows (0, 0) with weights rint(2048 / 6) = 341 and 1707. Top middle: horizontal (95 + 130) * 1024 = 230400,
    # >> 4 = 14400; (341 * 14400) >> 16 = 74 and (1707 * 14400) >> 16 = 375; (74 + 375 + 2) >> 2 = 112, where the
    # exact bilinear value is 112.5 (a float resize rounds it to 113)
    expected = [[95, 112, 130], [145, 159, 174], [194, 205, 217]]
    out = levels(ds[0][0])
    assert out.shape == (3, 1, 3, 3)
    assert out[:, 0].tolist() == [expected] * 3


@pytest.fixture
def cv2():
    """OpenCV from bench/.upstream-site (bench/pipeline_common.py installs it), or skip."""
    sys.path.insert(0, str(UPSTREAM_SITE))
    try:
        return pytest.importorskip("cv2")
    finally:
        sys.path.remove(str(UPSTREAM_SITE))


def test_val_and_ten_crop_equal_opencv_and_imnormalize(tmp_path, cv2):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 16, 35, 3), dtype=np.uint8)
    write_frames(tmp_path / "f", frames)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    kw = dict(num_frames=2, test_short_side=24, crop_size=20, mean=mean, std=std, **listed(tmp_path, "f 4 0"))
    # what upstream computes for frames 1 and 3 (tick 2): cv2.imread gives BGR; imrescale to 53 x 24; crops;
    # imnormalize to RGB
    resized = np.stack(
        [cv2.resize(f[..., ::-1], (53, 24), interpolation=cv2.INTER_LINEAR)[..., ::-1] for f in frames[[1, 3]]]
    )

    def crop(top, left):
        x = torch.from_numpy(np.ascontiguousarray(resized[:, top : top + 20, left : left + 20])).float()
        return ((x - torch.tensor(mean) * 255) / (torch.tensor(std) * 255)).permute(3, 0, 1, 2)

    val = build(cfg(tmp_path, **kw), "val")[0][0]
    assert torch.allclose(val, crop(2, 16), atol=1e-5)
    views = build(cfg(tmp_path, test_num_crops=10, **kw), "test")[0][0]
    # GroupOverSample on 53 x 24: steps (53 - 20) // 4 = 8, (24 - 20) // 4 = 1
    for k, (top, left) in enumerate([(0, 0), (0, 32), (4, 0), (4, 32), (2, 16)]):
        assert torch.allclose(views[2 * k], crop(top, left), atol=1e-5)
        assert torch.allclose(views[2 * k + 1], crop(top, left).flip(-1), atol=1e-5)


def test_centre_and_three_crop_offsets(tmp_path):
    write_frames(tmp_path / "wide", ramp(16, 37))
    write_frames(tmp_path / "tall", ramp(37, 16))
    # the short side is already 16: the rescale copies, pixel values stay the ramp's
    kw = dict(test_short_side=16, crop_size=16, **listed(tmp_path, "wide 1 0", "tall 1 0"))
    wide, tall = build(cfg(tmp_path, **kw), "val")[0][0], build(cfg(tmp_path, **kw), "val")[1][0]
    assert levels(wide)[0, 0, 0, 0] == 5 * ((37 - 16) // 2) and levels(tall)[1, 0, 0, 0] == 6 * 10
    test = build(cfg(tmp_path, test_num_crops=3, **kw), "test")
    # Group3CropSample: step (37 - 16) // 2 = 10; left, right (2 * step, not 37 - 16), middle
    assert [int(v[0, 0, 0, 0]) for v in levels(test[0][0])] == [5 * 0, 5 * 20, 5 * 10]
    assert [int(v[1, 0, 0, 0]) for v in levels(test[1][0])] == [6 * 0, 6 * 20, 6 * 10]


def test_ten_crop_positions_and_mirrors(tmp_path):
    write_frames(tmp_path / "f", ramp(20, 37))
    ds = build(cfg(tmp_path, test_short_side=20, crop_size=16, test_num_crops=10, **listed(tmp_path, "f 1 0")), "test")
    views = levels(ds[0][0])
    assert views.shape == (10, 3, 1, 16, 16) and ds.protocol.aggregate == "mean"
    # fill_fix_offset on a ((37 - 16) // 4, (20 - 16) // 4) = (5, 1) grid, as (top, left), each then mirrored
    for k, (top, left) in enumerate([(0, 0), (0, 20), (4, 0), (4, 20), (2, 10)]):
        view, mirror = views[2 * k], views[2 * k + 1]
        assert (int(view[1, 0, 0, 0]) // 6, int(view[0, 0, 0, 0]) // 5) == (top, left)
        assert torch.equal(mirror, view.flip(-1))


@pytest.fixture(scope="module")
def ramp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramp")
    write_frames(root / "f", ramp(30, 40))
    return root


def crop_of(clip):
    """(first column, first row) of the ramp a clip was cropped from, and its width and height."""
    red, green = levels(clip)[0, 0], levels(clip)[1, 0]
    return int(red[0, 0]) // 5, int(green[0, 0]) // 6, red.shape[1], red.shape[0]


def test_random_resized_crop_mixes_width_and_height_then_clips(ramp_root):
    ds = build(cfg(ramp_root, crop_size=10, test_short_side=30, **listed(ramp_root, "f 1 0")), "train")
    # area 0.1 * 1200, aspect 1.2: w = 12, h = 10, not swapped; accepted as w <= H = 30 and h <= W = 40; the left
    # is drawn in 0..W - h = 30, the top in 0..H - w = 18; the box [30, 18, 41, 27] is clipped to x <= 39: 10 x 10
    script = Script([0], 0.9, 0.1, 1.2, 0.9, 30, 18)
    assert crop_of(ds.sample(ds.items[0], script)[0]) == (30, 18, 10, 10)
    assert script.calls == [
        ("integers", 0, 1),
        ("random", 0, 1),
        ("uniform", 0.08, 1.0),
        ("uniform", 0.75, 4 / 3),
        ("random", 0, 1),
        ("integers", 0, 31),
        ("integers", 0, 19),
    ]


def test_random_resized_crop_rejects_a_fitting_crop_swaps_and_falls_back(ramp_root):
    ds = build(cfg(ramp_root, crop_size=30, test_short_side=30, **listed(ramp_root, "f 1 0")), "train")
    # area 1, aspect 4/3: w = 40, h = 30 fits the 30 x 40 frame but fails w <= H; swapped (0.1 < 0.5), w = 30, h = 40
    # passes; the box spans 30 columns and 40 rows, clipped to 30
    script = Script([0], 0.9, 1.0, 4 / 3, 0.9, 1.0, 4 / 3, 0.1, 0, 0)
    assert crop_of(ds.sample(ds.items[0], script)[0]) == (0, 0, 30, 30) and not script.values
    # ten rejections: the centred square of the short side
    script = Script([0], 0.9, *[1.0, 4 / 3, 0.9] * 10)
    assert crop_of(ds.sample(ds.items[0], script)[0]) == (5, 0, 30, 30) and not script.values


@pytest.mark.parametrize("flip", [True, False])
def test_flip_is_drawn_before_the_crop(ramp_root, flip):
    ds = build(cfg(ramp_root, crop_size=10, test_short_side=30, flip=flip, **listed(ramp_root, "f 1 0")), "train")
    script = Script([0], 0.3, 0.1, 1.2, 0.9, 30, 18)
    red = levels(ds.sample(ds.items[0], script)[0])[0, 0, 0]
    # flip_ratio 0 (data.flip false) still draws np.random.rand() in __getitem__
    assert red.tolist() == [5 * x for x in (range(39, 29, -1) if flip else range(30, 40))]
    assert not script.values


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory):
    """Two 4x4 frames of RGB (250, 100, 50)."""
    root = tmp_path_factory.mktemp("colour")
    write_frames(root / "f", np.tile(np.array([250, 100, 50], np.uint8), (2, 4, 4, 1)))
    return root


# indices (2 segments of 1 frame), no flip, the whole 4x4 frame; jitter: brightness +10, contrast 1.2,
# saturation 0.8, hue 0.5 (a quarter turn of I and Q)
BEFORE_JITTER = ([0, 0], 0.9, 1.0, 1.0, 0.9, 0, 0, 10.0, 1.2, 0.8, 0.5)
UNCHANGED = (250, 100, 50)


@pytest.mark.parametrize(
    "coins,expected",
    [
        # brightness, no clipping at 255
        ((0.9, 0.9, 0.1, 0.1, 0.1), (260, 110, 60)),
        # branch coin > 0.5: contrast, saturation, hue; contrast on
        ((0.1, 0.9, 0.9, 0.1, 0.1), (300, 120, 60)),
        # branch coin <= 0.5: saturation, hue, contrast; the same coin now turns saturation on: grey = 0.299 B + 0.587 G
        # + 0.114 R = 102.15 (luma weights on BGR channels), x * 0.8 + grey * 0.2
        ((0.1, 0.1, 0.9, 0.1, 0.1), (220.43, 100.43, 60.43)),
        # hue on BGR as if RGB: YIQ (102.15, -77.85, 36.0), turned a quarter: I' = -Q, Q' = I; back to (19.389, 162.311,
        # 9.268) BGR
        ((0.1, 0.9, 0.1, 0.1, 0.9), (9.26775, 162.31095, 19.38915)),
        # branch 2, hue then contrast
        ((0.1, 0.1, 0.1, 0.9, 0.9), (1.2 * 9.26775, 1.2 * 162.31095, 1.2 * 19.38915)),
    ],
)
def test_colour_jitter_ops_per_frame(colour_root, coins, expected):
    ds = build(cfg(colour_root, num_frames=2, crop_size=4, color_jitter=True, **listed(colour_root, "f 2 0")), "train")
    # the second frame's coins all fail: it stays as read; no lighting noise
    script = Script(*BEFORE_JITTER, *coins, 0.1, 0.1, 0.1, 0.1, 0.1, [0.0, 0.0, 0.0])
    out = pixels(ds.sample(ds.items[0], script)[0])
    assert not script.values and script.calls[-1] == ("normal", 0.0, 0.1)
    expected = torch.tensor(expected, dtype=torch.float32).view(3, 1, 1)
    assert torch.allclose(out[:, 0], expected.expand(3, 4, 4), atol=2e-3)
    assert torch.allclose(out[:, 1], torch.tensor(UNCHANGED, dtype=torch.float32).view(3, 1, 1), atol=1e-4)


def test_pca_lighting_is_added_to_the_right_channels(colour_root):
    ds = build(cfg(colour_root, num_frames=2, crop_size=4, color_jitter=True, **listed(colour_root, "f 2 0")), "train")
    script = Script(*BEFORE_JITTER, *[0.1] * 10, [0.2, 0.0, 0.5])
    out = pixels(ds.sample(ds.items[0], script)[0])
    # shift = eigvec @ (alpha * eigval) = eigvec[:, 0] * 11.092 + eigvec[:, 2] * 0.574, R, G, B rows
    shift = (-0.5675 * 11.092 + 0.4009 * 0.574, -0.5808 * 11.092 - 0.8140 * 0.574, -0.5836 * 11.092 + 0.4203 * 0.574)
    expected = torch.tensor([u + s for u, s in zip(UNCHANGED, shift)]).view(3, 1, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-3)


def test_bgr_frames_get_the_same_jitter(colour_root):
    coins = (0.9, 0.1, 0.9, 0.9, 0.9) * 2
    outs = []
    for order in ("rgb", "bgr"):
        ds = build(
            cfg(
                colour_root,
                num_frames=2,
                crop_size=4,
                color_jitter=True,
                channel_order=order,
                **listed(colour_root, "f 2 0"),
            ),
            "train",
        )
        outs.append(ds.sample(ds.items[0], Script(*BEFORE_JITTER, *coins, [0.1, -0.2, 0.3]))[0])
    assert torch.allclose(outs[0], outs[1].flip(0), atol=1e-5)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(test_num_clips=2), r"data.test_num_clips=2: .*one clip"),
        (dict(test_short_side=10, test_num_crops=3), r"data.crop_size=8 with data.test_num_crops=3: .*three_crop"),
        (dict(sampling="dense", num_frames=8, sampling_rate=1), r"data.sampling_rate=1 with data.num_frames=8"),
        (dict(multi_scale_crop=True), r"data.multi_scale_crop"),
    ],
)
def test_check_refuses_what_mmaction_cannot_run(level_root, kw, message):
    with pytest.raises(ValueError, match=message):
        build(cfg(level_root, **listed(level_root, "f 40 0"), **kw), "val")


def test_declared_rules(level_root):
    lines = listed(level_root, "f 40 0")
    segment = build(cfg(level_root, num_frames=8, test_num_crops=10, **lines), "test").protocol
    dense = build(cfg(level_root, sampling="dense", num_frames=8, sampling_rate=3, **lines), "test").protocol
    assert (segment.aggregate, segment.crops, segment.num_views) == ("mean", (1, 3, 10), 10)
    # a clip repeats frames below n frames (segments) or old_length = new_length * new_step (dense)
    assert (segment.span(None), dense.span(30.0)) == (8.0, 24.0)
    assert segment.describe()["oversample"] == "ten_crop"
    assert dense.describe()["frames"] == "num_segments=1 new_length=8 new_step=3"
