"""The multi-view `test` split of both frame datasets: V = clips x crops views, clip-major,
each view equal to the single-view chain on its clip and crop; temporal positions exact."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from action_launch.datasets import DataConfig, build
from action_launch.datasets import transforms as T
from action_launch.datasets.decode import open_video, read_frames
from action_launch.datasets.sampling import clip_indices, segment_indices
from action_launch.datasets.synthetic import write_video

FRAMES = 40


def _frames(n=FRAMES, h=24, w=40):
    """Frame i: red = 5*i everywhere, green = a left-to-right ramp (tells the crops apart)."""
    f = np.zeros((n, h, w, 3), np.uint8)
    f[..., 0] = (5 * np.arange(n))[:, None, None]
    f[..., 1] = (6 * np.arange(w))[None, None, :]
    return f


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    frames = _frames()
    write_video(str(root / "v0.mp4"), frames, fps=30, gop=10)
    os.makedirs(root / "f0")
    for i, f in enumerate(frames):
        Image.fromarray(f).save(root / "f0" / f"{i:06d}.png")  # lossless: levels exact
    (root / "video.txt").write_text("v0.mp4 3\n")
    (root / "frames.txt").write_text(f"f0 {FRAMES} 3\n")
    return root


def _cfg(root, kind, **kw):
    base = dict(
        root=str(root),
        num_frames=4,
        sampling_rate=2,
        test_short_side=24,
        crop_size=16,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        train_short_side=[16, 24],
    )
    if kind == "video":
        base.update(val_list="video.txt")
    else:
        base.update(
            dataset="rawframes",
            list_format="rawframes",
            val_list="frames.txt",
            frame_template="{:06d}.png",
            frame_start_index=0,
        )
    base.update(kw)
    return DataConfig(**base)


def _read(root, kind, indices):
    if kind == "video":
        return read_frames(open_video(str(root / "v0.mp4")), indices)
    return _frames()[indices]


@pytest.mark.parametrize("kind", ["video", "rawframes"])
@pytest.mark.parametrize("clips,crops", [(1, 1), (3, 1), (1, 3), (2, 3)])
def test_view_shapes_and_clip_major_order(roots, kind, clips, crops):
    ds = build(_cfg(roots, kind, test_num_clips=clips, test_num_crops=crops), "test")
    assert ds.num_views == clips * crops
    views, label = ds[0]
    assert views.shape == (clips * crops, 3, 4, 16, 16) and views.dtype == torch.float32 and label == 3
    for c in range(clips):
        idx = clip_indices(FRAMES, 4, 2, 30.0, mode="test", clip_idx=c, num_clips=clips)
        frames = _read(roots, kind, idx)
        for k in range(crops):
            crop_index = k if crops == 3 else 1
            expected = T.eval_clip(frames, 16, 24, [0.0] * 3, [1.0] * 3, crop_index=crop_index)
            assert torch.equal(views[c * crops + k], expected), (c, k)


def test_temporal_and_spatial_positions_exact(roots):
    views, _ = build(_cfg(roots, "rawframes", test_num_clips=3, test_num_crops=3), "test")[0]
    # span 8 of 40 frames: room 32, starts 0, 16, 32
    red = (views[:, 0].mean(dim=(2, 3)) * 255 / 5).round().long()
    for c, start in enumerate((0, 16, 32)):
        for k in range(3):
            assert red[3 * c + k].tolist() == [start, start + 2, start + 4, start + 6]
    # 24x40 frames keep their size; 16-wide crops start at columns 0, 12, 24
    green = views[:3, 1, 0, 0, 0] * 255
    assert green.round().long().tolist() == [0, 6 * 12, 6 * 24]


def test_segment_views_centres_then_starts(roots):
    views, _ = build(_cfg(roots, "rawframes", sampling="segment", num_frames=5, test_num_clips=2), "test")[0]
    red = (views[:, 0].mean(dim=(2, 3)) * 255 / 5).round().long()
    assert (
        red.tolist()
        == segment_indices(FRAMES, 5, "test", twice=True).tolist()
        == [[4, 12, 20, 28, 36], [0, 8, 16, 24, 32]]
    )


def test_views_are_deterministic_and_collate(roots):
    ds = build(_cfg(roots, "video", test_num_clips=2, test_num_crops=3), "test")
    assert torch.equal(ds[0][0], ds[(0, 5)][0])
    views, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=1)))
    assert views.shape == (1, 6, 3, 4, 16, 16) and labels.tolist() == [3]


def test_val_split_stays_single_view(roots):
    clip, _ = build(_cfg(roots, "video", test_num_clips=3, test_num_crops=3), "val")[0]
    assert clip.shape == (3, 4, 16, 16)


def test_bad_view_config(roots):
    with pytest.raises(ValueError, match="data.test_num_crops"):
        build(_cfg(roots, "video", test_num_crops=2), "test")
    with pytest.raises(ValueError, match="data.test_num_clips"):
        build(_cfg(roots, "video", sampling="segment", test_num_clips=3), "test")
