"""Frame sampling: exact indices for known lengths, fps rescaling, short videos, segments."""

import numpy as np
import pytest

from action_launch.datasets.sampling import clip_indices, frame_stride, segment_indices


def test_test_mode_single_clip_is_centred():
    # 8 frames x stride 32 span 256 frames; 300 - 256 = 44 frames of room, centred start 22
    idx = clip_indices(300, 8, 32, fps=30, mode="test")
    assert idx.tolist() == [22 + 32 * i for i in range(8)]
    assert idx.dtype == np.int64


def test_fps_rescaling_doubles_stride_at_60fps():
    assert frame_stride(32, 60, 30) == 64
    idx = clip_indices(600, 8, 32, fps=60, mode="test")
    # span 512, room 88, centred start 44
    assert idx.tolist() == [44 + 64 * i for i in range(8)]


def test_fractional_stride_floors():
    # 25 fps: stride 4 * 25/30 = 3.333..., span 26.67 -> room 73.3 -> max start 73, centre 36
    idx = clip_indices(100, 8, 4, fps=25, mode="test")
    assert idx.tolist() == [36 + int(np.floor(i * 4 * 25 / 30)) for i in range(8)]


@pytest.mark.parametrize("fps", [None, 0.0, float("nan")])
def test_bogus_fps_keeps_stride(fps):
    assert clip_indices(300, 8, 32, fps=fps, mode="test").tolist() == [22 + 32 * i for i in range(8)]


def test_test_clips_evenly_spaced_from_first_to_last():
    # 8 x 4 = span 32 over 132 frames: room 100, three clips start at 0, 50, 100
    starts = [clip_indices(132, 8, 4, 30, mode="test", clip_idx=k, num_clips=3)[0] for k in range(3)]
    assert starts == [0, 50, 100]
    last = clip_indices(132, 8, 4, 30, mode="test", clip_idx=2, num_clips=3)
    assert last[-1] == 128 and last.max() < 132


def test_train_start_uniform_and_seeded():
    a = clip_indices(100, 4, 8, 30, mode="train", rng=np.random.default_rng(3))
    b = clip_indices(100, 4, 8, 30, mode="train", rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    assert np.all(np.diff(a) == 8)
    starts = {int(clip_indices(100, 4, 8, 30, mode="train", rng=np.random.default_rng(s))[0]) for s in range(400)}
    # span 32 -> starts in [0, 68], all of them reachable
    assert min(starts) == 0 and max(starts) == 68 and len(starts) > 60


def test_exact_fit_has_a_single_start():
    idx = clip_indices(32, 4, 8, 30, mode="train", rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 8, 16, 24]


def test_short_video_loop_and_clamp():
    # span 256 > 100 frames
    loop = clip_indices(100, 8, 32, 30, mode="test", short_video="loop")
    assert loop.tolist() == [0, 32, 64, 96, 28, 60, 92, 24]
    clamp = clip_indices(100, 8, 32, 30, mode="test", short_video="clamp")
    assert clamp.tolist() == [0, 32, 64, 96, 99, 99, 99, 99]
    for s in range(50):
        rng = np.random.default_rng(s)
        tr = clip_indices(100, 8, 32, 30, mode="train", rng=rng, short_video="loop")
        assert tr.min() >= 0 and tr.max() < 100
        assert clip_indices(100, 8, 32, 30, mode="train", rng=rng, short_video="clamp").tolist() == clamp.tolist()


def test_single_frame_video():
    assert clip_indices(1, 8, 32, 30, mode="train", rng=np.random.default_rng(0)).tolist() == [0] * 8
    assert segment_indices(1, 4, "train", np.random.default_rng(0)).tolist() == [0] * 4


def test_never_out_of_range():
    rng = np.random.default_rng(0)
    for n in list(range(1, 70)) + [1000]:
        for mode in ("train", "test"):
            for short in ("loop", "clamp"):
                for fps in (15, 24, 30, 59.94):
                    idx = clip_indices(n, 8, 4, fps, mode=mode, rng=rng, short_video=short, clip_idx=1, num_clips=3)
                    assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < n
            seg = segment_indices(n, 8, mode, rng)
            assert seg.shape == (8,) and seg.min() >= 0 and seg.max() < n


def test_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        clip_indices(0, 8, 4)
    with pytest.raises(ValueError, match="mode"):
        clip_indices(10, 8, 4, mode="val")
    with pytest.raises(ValueError, match="short_video"):
        clip_indices(10, 8, 4, short_video="pad")
    with pytest.raises(ValueError, match="clip_idx"):
        clip_indices(10, 8, 4, mode="test", clip_idx=3, num_clips=3)


def test_segments_test_centres_and_twice():
    assert segment_indices(80, 8, "test").tolist() == [5 + 10 * i for i in range(8)]
    views = segment_indices(80, 8, "test", twice=True)
    assert views.shape == (2, 8)
    assert views[0].tolist() == [5 + 10 * i for i in range(8)]
    assert views[1].tolist() == [10 * i for i in range(8)]
    # uneven: 10 frames in 4 segments of 2.5 -> centres floor(1.25), floor(3.75), ...
    assert segment_indices(10, 4, "test").tolist() == [1, 3, 6, 8]


def test_segments_train_one_random_frame_per_segment():
    seen = set()
    for s in range(200):
        idx = segment_indices(80, 8, "train", np.random.default_rng(s))
        assert all(10 * i <= v < 10 * (i + 1) for i, v in enumerate(idx))
        seen.add(int(idx[0]))
    assert seen == set(range(10))
    a = segment_indices(80, 8, "train", np.random.default_rng(1))
    assert a.tolist() == segment_indices(80, 8, "train", np.random.default_rng(1)).tolist()


def test_segments_fewer_frames_than_segments():
    assert segment_indices(3, 6, "test").tolist() == [0, 0, 1, 1, 2, 2]
    idx = segment_indices(3, 6, "train", np.random.default_rng(0))
    assert sorted(idx.tolist()) == idx.tolist() and idx.max() <= 2
