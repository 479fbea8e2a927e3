"""`data.protocol=tsn` through `datasets.build`: TSM's and DyReg-GNN's TSNDataSet indices, transforms and test crops,
each rule restated with expectations worked out by hand, on small lossless frame folders and an H.264 video.

Frame i of a folder has red = 2 * i everywhere (its level tells the index, through any resize) and seeded noise in
green and blue (any misplaced crop or other resize changes them). Pixels are compared with Pillow applied by hand,
the way TSM's PIL images are: scale, crop boxes, bilinear resize. The random draws go through a scripted generator,
which logs the calls it gets, into `ClipDataset.sample`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from action_launch.datasets import DataConfig, build
from action_launch.datasets.decode import open_video, read_frames
from action_launch.datasets.synthetic import write_video

PROTOCOL = "tsn"
TEMPLATE = "img_{:05d}.png"
# name: (frames, height, width)
FOLDERS = {
    "f30": (30, 30, 40),
    "f12": (12, 30, 40),
    "f4": (4, 30, 40),
    "f3": (3, 30, 40),
    "f90": (90, 30, 40),
    "odd": (6, 24, 37),
    "tall": (6, 37, 24),
    "small": (4, 14, 20),
}
# GroupMultiScaleCrop on 40x30 frames to 16: sides int(30 * s) = 30, 26, 22, 19 (none within 3 of 16); its
# (width, height) pairs of scale indices at most 1 apart, height's index outer
PAIRS_30X40 = [(30, 30), (26, 30), (30, 26), (26, 26), (22, 26), (26, 22), (22, 22), (19, 22), (22, 19), (19, 19)]
# fill_fix_offset(more_fix_crop=True), in quarter steps: corners, centre, edge middles, quarter points
POSITIONS = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    f = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    f[..., 0] = (2 * np.arange(n, dtype=np.uint8))[:, None, None]
    return f


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("tsn")
    for seed, (name, (n, h, w)) in enumerate(FOLDERS.items()):
        (out / name).mkdir()
        for i, frame in enumerate(_frames(n, h, w, seed)):
            Image.fromarray(frame).save(out / name / TEMPLATE.format(i + 1))
        (out / f"{name}.txt").write_text(f"{name} {n} 5\n")
    write_video(str(out / "v.mp4"), _frames(40, 30, 40), fps=25, gop=8)
    (out / "video.txt").write_text("v.mp4 5\n")
    return out


def _stored(name: str) -> np.ndarray:
    n, h, w = FOLDERS[name]
    return _frames(n, h, w, list(FOLDERS).index(name))


def _dataset(root, name: str, split: str, **kw):
    base = dict(
        dataset="rawframes",
        list_format="rawframes",
        root=str(root),
        train_list=f"{name}.txt",
        val_list=f"{name}.txt",
        frame_template=TEMPLATE,
        frame_start_index=1,
        protocol=PROTOCOL,
        sampling="segment",
        num_frames=4,
        crop_size=16,
        test_short_side=18,
        flip=False,
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    base.update(kw)
    return build(DataConfig(**base), split)


def _levels(clip: torch.Tensor) -> list:
    """Frame indices of a (C, T, H, W) clip or (V, C, T, H, W) views, from the red level."""
    return (clip[..., 0, :, :, :].mean(dim=(-1, -2)) * 255 / 2).round().long().tolist()


def _pil(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def _input(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) uint8 -> the (C, T, H, W) network input with mean 0 and std 1: x / 255."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255


class Scripted:
    """An `np.random.Generator` stand-in: gives back the scripted values in order and logs each call."""

    def __init__(self, *values):
        self.values = list(values)
        self.calls = []

    def integers(self, low, high=None, size=None):
        self.calls.append(("integers", low, high, size))
        value = np.asarray(self.values.pop(0))
        lo, hi = (0, low) if high is None else (low, high)
        assert np.all(value >= lo) and np.all(value < hi), (value, lo, hi)
        return value if size is not None else int(value)

    def random(self, size=None):
        self.calls.append(("random", size))
        return self.values.pop(0)


# ------------------------------------------------------------------------------------------------------- indices


@pytest.mark.parametrize(
    "name,script,frames,first_call",
    [
        # L = 30, n = 4: avg 7, segment i draws in [7i, 7i + 7); the last 30 % 4 = 2 frames never come
        ("f30", [[6, 0, 3, 5]], [6, 7, 17, 26], ("integers", 7, None, 4)),
        # L = n: avg 1, a draw of zeros all the same
        ("f4", [[0, 0, 0, 0]], [0, 1, 2, 3], ("integers", 1, None, 4)),
        # L < n: every segment takes frame 0, nothing drawn for it
        ("f3", [], [0, 0, 0, 0], None),
    ],
)
def test_segment_training_indices_and_draw_order(root, name, script, frames, first_call):
    ds = _dataset(root, name, "train", flip=True)
    rng = Scripted(*script, 3, 7, 0.9)
    clip, label = ds.sample(ds.items[0], rng)
    assert _levels(clip) == frames and label == 5 and clip.shape == (3, 4, 16, 16)
    # indices, then GroupMultiScaleCrop's pair of 10 and position of 13, then the flip
    crop_calls = [("integers", 10, None, None), ("integers", 13, None, None), ("random", None)]
    assert rng.calls == ([first_call] if first_call else []) + crop_calls and not rng.values


@pytest.mark.parametrize(
    "name,segments,frames",
    [
        ("f30", 4, [3, 11, 18, 26]),  # tick 7.5: int(3.75 + 7.5 i)
        ("f12", 7, [0, 2, 4, 5, 7, 9, 11]),  # tick 12/7: 6/7 + 3 * 12/7 is 5.999999999999999 in floats, frame 5
        ("f4", 4, [0, 0, 0, 0]),  # L > n fails at L = n: all frame 0 (the test split takes 0, 1, 2, 3)
        ("f3", 4, [0, 0, 0, 0]),
    ],
)
def test_segment_validation_indices(root, name, segments, frames):
    clip, _ = _dataset(root, name, "val", num_frames=segments)[0]
    assert _levels(clip) == frames


@pytest.mark.parametrize(
    "name,segments,centres,starts",
    [
        ("f12", 7, [0, 2, 4, 5, 7, 9, 11], [0, 1, 3, 5, 6, 8, 10]),  # starts int(12/7 * i)
        ("f30", 4, [3, 11, 18, 26], [0, 7, 15, 22]),
        ("f4", 4, [0, 1, 2, 3], [0, 1, 2, 3]),
        ("f3", 4, [0, 1, 1, 2], [0, 0, 1, 2]),  # tick 0.75 for any L: int(0.375 + 0.75 i), int(0.75 i)
    ],
)
def test_segment_test_indices_one_clip_and_twice(root, name, segments, centres, starts):
    views, _ = _dataset(root, name, "test", num_frames=segments)[0]
    assert _levels(views) == [centres]
    views, _ = _dataset(root, name, "test", num_frames=segments, test_num_clips=2)[0]
    assert _levels(views) == [centres, starts]


def test_dense_indices(root):
    kw = dict(sampling="dense", num_frames=8, test_num_clips=10)
    # L = 90: 27 starts, but the draw is randint(0, 26), frames 8 apart
    ds = _dataset(root, "f90", "train", **kw)
    rng = Scripted(25, 0, 0)
    assert _levels(ds.sample(ds.items[0], rng)[0]) == [25 + 8 * i for i in range(8)]
    assert rng.calls[0] == ("integers", 0, 26, None)
    # L = 30 < 64: one start, nothing drawn, the clip wraps: 8 i mod 30
    ds = _dataset(root, "f30", "train", **kw)
    rng = Scripted(0, 0)
    assert _levels(ds.sample(ds.items[0], rng)[0]) == [0, 8, 16, 24, 2, 10, 18, 26] and len(rng.calls) == 2
    # validation: the middle of the 26 starts drawn, 12
    assert _levels(_dataset(root, "f90", "val", **kw)[0][0]) == [12 + 8 * i for i in range(8)]
    # test: 10 starts linspace(0, 26, 10) as integers
    views, _ = _dataset(root, "f90", "test", **kw)[0]
    assert _levels(views) == [[s + 8 * i for i in range(8)] for s in (0, 2, 5, 8, 11, 14, 17, 20, 23, 26)]
    views, _ = _dataset(root, "f30", "test", **kw)[0]
    assert _levels(views) == [[0, 8, 16, 24, 2, 10, 18, 26]] * 10
    # 16 frames: 4 apart
    views, _ = _dataset(root, "f30", "test", **{**kw, "num_frames": 16})[0]
    assert _levels(views)[0] == [4 * i % 30 for i in range(16)]


# ---------------------------------------------------------------------------------------------------------- pixels


def test_scaling_and_centre_crop_rounding(root):
    odd, tall = _stored("odd")[[0, 2, 3, 5]], _stored("tall")[[0, 2, 3, 5]]  # 6 frames: int(0.75 + 1.5 i)
    # 37x24 -> short side 18, long int(18 * 37 / 24) = int(27.75) = 27; centre crop 16 at round(5.5) = 6, round(1)
    clip, _ = _dataset(root, "odd", "val")[0]
    assert torch.equal(clip, _input(_pil(odd, 27, 18)[:, 1:17, 6:22]))
    # portrait 24x37 -> 18x27, the crop at left round(1), top round(5.5) = 6
    clip, _ = _dataset(root, "tall", "val")[0]
    assert torch.equal(clip, _input(_pil(tall, 18, 27)[:, 6:22, 1:17]))
    # --full_res, one crop of 18: left round(4.5) = 4 (half to even)
    views, _ = _dataset(root, "odd", "test", num_frames=2, test_crop_size=18)[0]
    assert torch.equal(views[0], _input(_pil(_stored("odd")[[1, 4]], 27, 18)[:, :, 4:22]))


@pytest.mark.parametrize("size,lefts", [(16, [0, 8, 4]), (18, [0, 8, 4])])
def test_full_res_three_crops(root, size, lefts):
    """GroupFullResSample: left, right, centre at 0, 4 and 2 steps of (27 - size) // 4 = 2 (the right crop stops
    short of the edge), top 2 * ((18 - size) // 4) = 0 (not centred for 16)."""
    views, _ = _dataset(root, "odd", "test", num_frames=2, test_num_crops=3, test_crop_size=size)[0]
    scaled = _pil(_stored("odd")[[1, 4]], 27, 18)
    assert views.shape == (3, 3, 2, size, size)
    for view, left in zip(views, lefts):
        assert torch.equal(view, _input(scaled[:, :size, left : left + size]))


def test_full_res_three_crops_of_a_portrait_frame_are_one(root):
    """18 wide: no room across (step 0), so all three crops sit at 0, 2 * ((27 - 18) // 4) = 4."""
    views, _ = _dataset(root, "tall", "test", num_frames=2, test_num_crops=3, test_crop_size=18)[0]
    expected = _input(_pil(_stored("tall")[[1, 4]], 18, 27)[:, 4:22])
    assert all(torch.equal(view, expected) for view in views)


@pytest.mark.parametrize("crops", [5, 10])
def test_over_sample(root, crops):
    """GroupOverSample: corners and centre on steps of (27 - 16) // 4 = 2 and (18 - 16) // 4 = 0; 10 crops: each
    followed by its mirror image."""
    views, _ = _dataset(root, "odd", "test", num_frames=2, test_num_crops=crops)[0]
    scaled = _pil(_stored("odd")[[1, 4]], 27, 18)
    expected = []
    for left, top in [(0, 0), (8, 0), (0, 0), (8, 0), (4, 0)]:
        box = scaled[:, top : top + 16, left : left + 16]
        expected += [box, box[:, :, ::-1]] if crops == 10 else [box]
    assert views.shape[0] == crops
    for view, box in zip(views, expected):
        assert torch.equal(view, _input(box))


def test_multi_scale_crop_grid(root):
    """Every pair and position of GroupMultiScaleCrop on the frames as stored (40x30), resized to 16 by Pillow."""
    ds = _dataset(root, "f3", "train")
    stored = _stored("f3")[[0, 0, 0, 0]]
    for k, (w, h) in enumerate(PAIRS_30X40):
        for p, (i, j) in enumerate(POSITIONS):
            rng = Scripted(k, p)
            clip, _ = ds.sample(ds.items[0], rng)
            left, top = i * ((40 - w) // 4), j * ((30 - h) // 4)
            assert torch.equal(clip, _input(_pil(stored[:, top : top + h, left : left + w], 16, 16))), (w, h, left, top)
            assert rng.calls == [("integers", 10, None, None), ("integers", 13, None, None)]  # no flip: no draw


def test_snapped_crop_past_the_frame_is_black(root):
    """20x14 frames: side 14 is within 3 of 16, so the crop is 16x16, larger than the frame, at offsets in steps
    of (20 - 16) // 4 = 1 and (14 - 16) // 4 = -1; PIL's crop is black outside (sides 16, 12, 10, 9)."""
    ds = _dataset(root, "small", "train")
    stored = _stored("small")
    clip, _ = ds.sample(ds.items[0], Scripted([0] * 4, 0, 3))  # 4 frames, 4 segments; (16, 16) at (4, -4)
    expected = np.zeros((4, 16, 16, 3), np.uint8)
    expected[:, 4:] = stored[:, :12, 4:20]
    assert torch.equal(clip, _input(expected))
    clip, _ = ds.sample(ds.items[0], Scripted([0] * 4, 0, 0))  # upper left: rows 14 and 15 below the frame
    expected = np.zeros((4, 16, 16, 3), np.uint8)
    expected[:, :14] = stored[:, :, :16]
    assert torch.equal(clip, _input(expected))


@pytest.mark.parametrize("draw,mirrored", [(0.49, True), (0.5, False)])
def test_flip_below_one_half(root, draw, mirrored):
    ds = _dataset(root, "f3", "train", flip=True)
    clip, _ = ds.sample(ds.items[0], Scripted(3, 4, draw))  # (26, 26) at the centre (2 * 3, 2 * 1)
    expected = _pil(_stored("f3")[[0, 0, 0, 0], 2:28, 6:32], 16, 16)
    assert torch.equal(clip, _input(expected[:, :, ::-1] if mirrored else expected))


def test_video_file_twice_three_crops(root):
    """Indices count the decoded frames (L = 40, tick 10): centres 5, 15, 25, 35 and starts 0, 10, 20, 30; 40x30
    scales to 24x18, crops at 0, 8, 4 (step (24 - 16) // 4 = 2), top 0."""
    cfg = DataConfig(
        root=str(root),
        val_list="video.txt",
        protocol=PROTOCOL,
        sampling="segment",
        num_frames=4,
        crop_size=16,
        test_short_side=18,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        test_num_clips=2,
        test_num_crops=3,
    )
    views, label = build(cfg, "test")[0]
    vr = open_video(str(root / "v.mp4"))
    assert views.shape == (6, 3, 4, 16, 16) and label == 5
    for c, indices in enumerate(([5, 15, 25, 35], [0, 10, 20, 30])):
        scaled = _pil(read_frames(vr, np.array(indices)), 24, 18)
        for k, left in enumerate((0, 8, 4)):
            assert torch.equal(views[3 * c + k], _input(scaled[:, :16, left : left + 16])), (c, k)


def test_normalisation_is_upstreams(root):
    """(x / 255 - mean) / std in float32 in that order (ToTorchFormatTensor, GroupNormalize): equal to the bit."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    clip, _ = _dataset(root, "odd", "val", mean=mean, std=std)[0]
    expected = _input(_pil(_stored("odd")[[0, 2, 3, 5]], 27, 18)[:, 1:17, 6:22])
    for c in range(3):
        expected[c].sub_(mean[c]).div_(std[c])
    assert torch.equal(clip, expected)


# ---------------------------------------------------------------------------------------------- settings, summary


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(test_num_clips=3), "data.test_num_clips"),  # segment: 1 or --twice_sample
        (dict(sampling="dense", test_num_clips=1), "data.test_num_clips"),  # dense: 10
        (dict(test_short_side=20), "data.test_short_side"),  # scale_size = 16 * 256 // 224 = 18
        (dict(test_crop_size=17), "data.test_crop_size"),  # 16, or 18 (--full_res)
        (dict(test_num_crops=4), "data.test_num_crops"),
    ],
)
def test_refuses_what_tsm_cannot_run(root, kw, key):
    with pytest.raises(ValueError) as e:
        _dataset(root, "f30", "test", **kw)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_aggregate_span_and_description(root):
    protocol = _dataset(root, "f30", "test", test_num_clips=2, test_num_crops=10).protocol
    assert protocol.aggregate == "mean"  # test_models.py averages the logits of the views
    assert protocol.num_views == 20 and protocol.span(None) == 4.0
    assert protocol.describe()["sampling"] == "segment" and protocol.describe()["aggregate"] == "mean"
    dense = _dataset(root, "f30", "test", sampling="dense", num_frames=8, test_num_clips=10).protocol
    assert dense.span(25.0) == 57.0  # 8 frames 8 apart
