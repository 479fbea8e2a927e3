"""`data.protocol: pyslowfast`: each rule of TimeSformer's PySlowFast loaders (timesformer/datasets: kinetics.py,
ssv2.py, decoder.py, utils.py, transform.py) restated with values derived by hand, on real H.264 files, frame
folders and the stream metadata PyAV reports. Frames carry their number in their colour, so the indices a split
used can be read back from its output. bench/pipeline_pyslowfast.py compares against the upstream code itself."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from action_launch.datasets import DataConfig, build
from action_launch.datasets.decode import BadVideoError, open_video
from action_launch.datasets.protocols import Source, StreamTiming, make_protocol, stream_timing
from action_launch.datasets.synthetic import write_video

PROTOCOL = "pyslowfast"
# small frames and sizes: 32x48 frames, short sides 32-40, crops 32
SMALL = dict(
    num_frames=8,
    sampling_rate=32,
    target_fps=30.0,
    train_short_side=[32, 40],
    crop_size=32,
    test_short_side=32,
    mean=[0.0] * 3,
    std=[1.0] * 3,
    num_workers=0,
    check_files="never",
)


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"protocol": PROTOCOL, **SMALL, **kw})


def _protocol(**kw):
    return make_protocol(_cfg(**kw))


def _coded(n, h=32, w=48):
    """Frame i is flat: red (i % 16) * 16 + 8, green (i // 16) * 16 + 8; lossy coding keeps it to +-7."""
    f = np.full((n, h, w, 3), 128, np.uint8)
    i = np.arange(n)
    f[..., 0] = ((i % 16) * 16 + 8)[:, None, None]
    f[..., 1] = ((i // 16) * 16 + 8)[:, None, None]
    return f


def _decoded(clip):
    """Frame numbers of a (C, T, H, W) clip of `_coded` frames (mean 0, std 1)."""
    rgb = (clip.mean(dim=(2, 3)) * 255).round().long()
    return (rgb[0] // 16 + 16 * (rgb[1] // 16)).tolist()


def _video_source(path):
    vr = open_video(str(path))
    return Source(len(vr), vr.get_avg_fps(), timing=lambda: stream_timing(str(path), vr))


def _timing(pts, frames_length=None, duration=None, fps=30.0):
    pts = np.asarray(pts, dtype=np.int64)
    return Source(
        len(pts),
        fps,
        timing=lambda: StreamTiming(len(pts) if frames_length is None else frames_length, duration, fps, pts),
    )


class Scripted:
    """A generator that gives scripted values and records each call (name, bounds), to check the draws a protocol
    makes, their order and their bounds."""

    def __init__(self, *values):
        self.values, self.calls = list(values), []

    def uniform(self, low=0.0, high=1.0):
        self.calls.append(("uniform", low, high))
        return self.values.pop(0)

    def integers(self, low, high):
        self.calls.append(("integers", low, high))
        return self.values.pop(0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """v132.mp4: 132 frames at 25 fps (bigbuckbunny's length); v20.mp4: 20 frames at 30 fps; f50: a 50-frame
    folder of PNGs (lossless); and their lists."""
    root = tmp_path_factory.mktemp("pyslowfast")
    write_video(str(root / "v132.mp4"), _coded(132), fps=25)
    write_video(str(root / "v20.mp4"), _coded(20), fps=30)
    (root / "f50").mkdir()
    for i, frame in enumerate(_coded(50, 16, 24)):
        Image.fromarray(frame).save(root / "f50" / f"{i + 1:05d}.png")
    (root / "v132.txt").write_text("v132.mp4 1\n")
    (root / "v20.txt").write_text("v20.mp4 2\n")
    (root / "f50.txt").write_text("f50 50 3\n")
    return root


def test_dense_clip_of_a_132_frame_25fps_video(root):
    # 8 x 32 at 30 fps spans 8 * 32 / 30 * 25 = 213.33 frames of a 25 fps file: longer than the video, so
    # delta = 0 and the clip starts at 0; PyAV's window [0, int(212.33 * 512)] holds all 132 frames;
    # linspace(0, 212.33, 8) = 0, 30.3, 60.7, 91, 121.3, 151.7, 182, 212.3, clamped to 131 and truncated.
    timing = stream_timing(str(root / "v132.mp4"), open_video(str(root / "v132.mp4")))
    assert (timing.frames_length, timing.duration / timing.frames_length, timing.fps) == (132, 512.0, 25.0)
    p = _protocol()
    assert p.span(25.0) == 8 * 32 / 30 * 25
    expected = [0, 30, 60, 91, 121, 131, 131, 131]
    assert p.test_indices(_video_source(root / "v132.mp4")).tolist() == [expected]
    clip, label = build(_cfg(root=str(root), val_list="v132.txt"), "val")[0]
    assert _decoded(clip) == expected and label == 1


def test_timestamp_window_keeps_one_frame_past_its_end():
    # 100 frames, 512 ticks each; 4 x 5 at 30 fps spans 20 frames, delta 80; 3 test views start at 80 * i / 3.
    # view 1: start 26.67, end 45.67 -> pts [13653, 23381] -> frames 27..45, plus frame 46 after the window: 20
    # frames, of which linspace(0, 19, 4) = 0, 6.3, 12.7, 19 -> 27, 33, 39, 46 (without the extra frame: 45).
    source = _timing(512 * np.arange(100), duration=51200)
    reads, timing = [], source.timing
    source.timing = lambda: reads.append(1) or timing()
    p = _protocol(num_frames=4, sampling_rate=5, test_num_clips=3)
    assert p.test_indices(source).tolist() == [[0, 6, 12, 19], [27, 33, 39, 46], [54, 60, 66, 73]]
    assert len(reads) == 1  # the container's metadata is read once for all the views


def test_window_is_cut_by_timestamps_not_frame_numbers():
    # stamped two frames late (1024 + 512 k, a B-frame delay with no edit list): the window [0, 9728] of clip 0
    # holds frames 0..17 and the extra 18, so linspace(0, 19, 4)'s last position clamps to 18
    source = _timing(1024 + 512 * np.arange(100), duration=51200)
    assert _protocol(num_frames=4, sampling_rate=5).test_indices(source).tolist() == [[0, 6, 12, 18]]


def test_short_video_repeats_its_last_frame(root):
    # 20 frames at 30 fps, 8 x 4: a 32-frame clip; linspace(0, 31, 8) = 0, 4.4, 8.9, 13.3, 17.7, 22.1, ... -> clamp 19
    cfg = _cfg(root=str(root), val_list="v20.txt", sampling_rate=4, test_num_crops=3, test_num_clips=2)
    views, label = build(cfg, "test")[0]
    assert views.shape == (6, 3, 8, 32, 32) and label == 2
    assert [_decoded(v) for v in views] == [[0, 4, 8, 13, 17, 19, 19, 19]] * 6


def test_frame_folders_decode_everything_and_space_ten_views_by_delta_i_over_n():
    # no timestamps, no fps: a clip of exactly 4 * 8 = 32 of 100 frames, delta 68; view i starts at 68 * i / 10
    # (not / 9) and takes linspace(start, start + 31, 8)
    p = _protocol(sampling_rate=4, test_num_clips=10)
    assert p.span(None) == 32.0
    views = p.test_indices(Source(100))
    assert views[:, 0].tolist() == [0, 6, 13, 20, 27, 34, 40, 47, 54, 61]
    assert views[:, -1].tolist() == [31, 37, 44, 51, 58, 65, 71, 78, 85, 92]
    assert views[0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


def test_video_without_stream_duration_decodes_frames_stamped_from_zero():
    # no duration (Matroska): every frame with pts >= 0 is decoded (here the first two are stamped < 0) and
    # sampled as a frame folder is, at the stream's fps: 4 x 6 at 30 fps of a 25 fps file spans 20 frames
    source = _timing(40 * (np.arange(50) - 2), frames_length=0, fps=25.0)
    p = _protocol(num_frames=4, sampling_rate=6, test_num_clips=2)
    # 48 frames kept, delta 28: clip 1 starts at 14, linspace(14, 33, 4) = 14, 20.3, 26.7, 33, after the 2 skipped
    assert p.test_indices(source).tolist() == [[2, 8, 14, 21], [16, 22, 28, 35]]


def test_videos_upstream_cannot_sample_are_bad_files():
    p = _protocol(num_frames=4, sampling_rate=5)
    with pytest.raises(BadVideoError, match="no frame count"):
        p.val_indices(_timing(512 * np.arange(100), frames_length=0, duration=51200))
    # a header that claims 1000 frames: the window of the last of 2 views lies past every frame
    with pytest.raises(BadVideoError, match="no frame in"):
        _protocol(num_frames=4, sampling_rate=5, test_num_clips=2).test_indices(
            _timing(512 * np.arange(100), frames_length=1000, duration=512000)
        )


def test_ssv2_segments_and_their_middles(root):
    # 50 frames, 8 segments of (50 - 1) / 8 = 6.125: ends round(6.125 i) = 0, 6, 12, 18, 24 (24.5, half to
    # even), 31, 37, 43, 49; test takes (start + end) // 2, training a frame with both ends included
    def no_timing():
        raise AssertionError("segment sampling needs no stream metadata")

    p = _protocol(sampling="segment", test_short_side=32, test_num_crops=3, flip=False)
    middles = [3, 9, 15, 21, 27, 34, 40, 46]
    assert p.test_indices(Source(50, 25.0, timing=no_timing)).tolist() == [middles]
    rng = Scripted(6, 12, 18, 24, 31, 37, 43, 49)
    assert p.train_indices(Source(50), rng).tolist() == [6, 12, 18, 24, 31, 37, 43, 49]
    assert rng.calls == [
        ("integers", s, e + 1) for s, e in [(0, 6), (6, 12), (12, 18), (18, 24), (24, 31), (31, 37), (37, 43), (43, 49)]
    ]
    cfg = _cfg(
        root=str(root),
        dataset="rawframes",
        list_format="rawframes",
        val_list="f50.txt",
        frame_template="{:05d}.png",
        sampling="segment",
        crop_size=16,
        train_short_side=[16, 20],
        test_short_side=16,
        test_num_crops=3,
    )
    views, label = build(cfg, "test")[0]
    assert views.shape == (3, 3, 8, 16, 16) and label == 3
    assert [_decoded(v) for v in views] == [middles] * 3


def test_training_draws_in_order_with_upstreams_bounds():
    # start (uniform in [0, delta]), short side, crop top, crop left, flip; 100 frames, a 32-frame clip: delta 68
    p = _protocol(sampling_rate=4, train_short_side=[50, 60], crop_size=40, test_short_side=50)
    rng = Scripted(10.0, 50.0, 3, 7, 0.9)
    assert p.train_indices(Source(100), rng).tolist() == [10, 14, 18, 23, 27, 32, 36, 41]
    clip = p.train_clip(np.zeros((8, 60, 100, 3), np.uint8), rng)
    # 60x100 -> 50x83 (floor(100 / 60 * 50) = 83); offsets drawn below 50 - 40 and 83 - 40
    assert rng.calls == [
        ("uniform", 0, 68),
        ("uniform", 50, 60),
        ("integers", 0, 10),
        ("integers", 0, 43),
        ("uniform", 0.0, 1.0),
    ]
    assert clip.shape == (3, 8, 40, 40) and clip.dtype == torch.float32 and clip.is_contiguous()


@pytest.mark.parametrize(
    "drawn,calls",
    [
        (50.5, [("integers", 0, 88)]),  # rounds half to even: 50, no resize; only the long axis draws
        (51.5, [("integers", 0, 2), ("integers", 0, 94)]),  # 52; the long side floor(100 / 36 * 52) = 144
    ],
)
def test_short_side_rounds_half_to_even_and_long_side_floors(drawn, calls):
    # a 36x100 frame at short side 50 would be 50 x floor(138.9) = 138: the crop's last offset 88 is never drawn
    p = _protocol(train_short_side=[50, 60], crop_size=50, test_short_side=50, flip=False)
    rng = Scripted(drawn, 0, 0)
    assert p.train_clip(np.zeros((2, 36, 100, 3), np.uint8), rng).shape == (3, 2, 50, 50)
    assert rng.calls == [("uniform", 50, 60)] + calls


def test_a_frame_the_size_of_the_crop_draws_no_offset_and_is_not_resized():
    p = _protocol(train_short_side=[50, 60], crop_size=50, test_short_side=50)
    frames = np.random.default_rng(0).integers(0, 256, (2, 50, 50, 3), dtype=np.uint8)
    rng = Scripted(50.0, 0.25)
    clip = p.train_clip(frames, rng)
    assert [c[0] for c in rng.calls] == ["uniform", "uniform"]  # size, flip: no crop draw
    assert torch.equal(clip, torch.as_tensor(frames).float().div(255.0).permute(3, 0, 1, 2).flip(-1))


def test_inverse_uniform_short_side():
    # INV_UNIFORM_SAMPLE: 1 / uniform(1/40, 1/20); 1 / (1 / 25.4) rounds to 25: 30x60 -> 25x50, crops below 9, 34
    p = _protocol(
        train_short_side=[20, 40], crop_size=16, test_short_side=20, scale_sampling="inverse_uniform", flip=False
    )
    rng = Scripted(1 / 25.4, 0, 0)
    assert p.train_clip(np.zeros((2, 30, 60, 3), np.uint8), rng).shape == (3, 2, 16, 16)
    assert rng.calls == [("uniform", 1 / 40, 1 / 20), ("integers", 0, 9), ("integers", 0, 34)]


@pytest.mark.parametrize("drawn,flipped", [(0.4999, True), (0.5, False)])
def test_flip_when_the_draw_is_below_one_half(drawn, flipped):
    p = _protocol(train_short_side=[32, 32], crop_size=32, test_short_side=32)
    frames = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    clip = p.train_clip(frames, Scripted(32.0, drawn))
    plain = torch.as_tensor(frames).float().div(255.0).permute(3, 0, 1, 2)
    assert torch.equal(clip, plain.flip(-1) if flipped else plain)


def test_frames_are_normalised_then_resized_as_floats():
    # 8x13 to short side 12: 12 x floor(13 / 8 * 12 = 19.5) = 19, centre crop 12 at ceil((19 - 12) / 2) = 4
    frames = np.random.default_rng(2).integers(0, 256, (2, 8, 13, 3), dtype=np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    p = _protocol(train_short_side=[12, 16], crop_size=12, test_short_side=12, mean=mean, std=std)
    x = (torch.as_tensor(frames).float() / 255.0 - torch.tensor(mean)) / torch.tensor(std)
    expected = F.interpolate(x.permute(3, 0, 1, 2), size=(12, 19), mode="bilinear", align_corners=False)
    assert torch.equal(p.val_clip(frames), expected[..., 4:16])


@pytest.mark.parametrize("h,w", [(77, 50), (50, 77)])
def test_three_test_crops_sit_at_both_ends_and_the_ceiled_centre(h, w):
    # the short side is the crop already (no resize); the long side offers 27 pixels: offsets 0, ceil(13.5), 27
    frames = np.zeros((1, 2, h, w, 3), np.uint8)
    frames[..., 0] = np.arange(h)[:, None]
    frames[..., 1] = np.arange(w)[None, :]
    p = _protocol(train_short_side=[50, 60], crop_size=50, test_short_side=50, test_num_crops=3)
    views = p.test_views(frames)
    assert views.shape == (3, 3, 2, 50, 50)
    tops = (views[:, 0, 0, 0, 0] * 255).round().long().tolist()
    lefts = (views[:, 1, 0, 0, 0] * 255).round().long().tolist()
    assert (tops, lefts) == (([0, 14, 27], [0, 0, 0]) if h > w else ([0, 0, 0], [0, 14, 27]))


def test_one_crop_tests_at_the_smallest_training_scale_and_val_is_that_view():
    # Kinetics with 1 crop: short side TRAIN_JITTER_SCALES[0] (40 here), centre crop; 40x60 is not resized
    frames = np.zeros((1, 2, 40, 60, 3), np.uint8)
    frames[..., 1] = np.arange(60)[None, :]
    p = _protocol(train_short_side=[40, 48], test_short_side=40)
    (view,) = p.test_views(frames)
    assert (view[1, 0, 0, 0] * 255).round().item() == 14  # ceil((60 - 32) / 2)
    assert torch.equal(view, p.val_clip(frames[0]))
    three = _protocol(train_short_side=[40, 48], test_short_side=32, test_num_crops=3)
    assert torch.equal(three.val_clip(frames[0]), view)  # val: the 1-crop view whatever the test crops


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(test_short_side=36), "data.test_short_side=36: .* to data.train_short_side\\[0\\]=32; set it to 32"),
        (
            dict(test_num_crops=3, test_short_side=32, test_crop_size=28),
            "data.test_short_side=32: .* to data.test_crop_size=28; set it to 28",
        ),
        (dict(sampling="segment", test_short_side=36), "data.test_short_side=36: .* data.crop_size=32"),
        (dict(sampling="segment", test_num_clips=2), "data.test_num_clips=2 with data.sampling=segment"),
        (dict(train_short_side=[40, 32]), "data.train_short_side must be \\[min, max\\] \\(TRAIN_JITTER_SCALES\\)"),
        (dict(train_short_side=[32]), "data.train_short_side must be \\[min, max\\] \\(TRAIN_JITTER_SCALES\\)"),
        (
            dict(crop_size=36, test_crop_size=32),
            "data.crop_size=36 is larger than data.train_short_side\\[0\\]=32, the smallest training short side",
        ),
        (
            dict(test_crop_size=36, test_short_side=36, test_num_crops=3),
            "data.test_crop_size=36 is larger than data.train_short_side\\[0\\]=32, the short side of the val view",
        ),
    ],
)
def test_check_refuses_what_pyslowfast_cannot_run(overrides, message):
    with pytest.raises(ValueError, match=message):
        _protocol(**overrides)


def test_views_are_summed_and_described():
    p = _protocol(test_num_clips=10, test_num_crops=3, test_short_side=32)
    assert (p.aggregate, p.num_views) == ("sum", 30)
    said = p.describe()
    assert said["protocol"] == "pyslowfast" and "delta*i/n" in said["temporal"] and "floor" in said["resize"]
    assert said["val"] == "clip 0 of 1, centre crop at short side 32"
    assert _protocol(sampling="segment").span(25.0) == 8.0
