"""VideoDataset on real H.264 files written with PyAV: shapes, decoded frames, seeds, bad files."""

import os
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from action_launch import datasets
from action_launch.datasets import DataConfig, build, read_bad_files
from action_launch.datasets.decode import open_video, read_frames
from action_launch.datasets.sampling import clip_indices
from action_launch.datasets.synthetic import write_video
from action_launch.datasets.video import VideoDataset

NUM_VIDEOS = 8
FRAMES = 40


def _gray_video(path, n=FRAMES, h=32, w=40, fps=30, shift=0):
    """Frame i is uniformly grey at level 5*i + shift: decoded frames tell their index."""
    frames = np.stack([np.full((h, w, 3), 5 * i + shift, np.uint8) for i in range(n)])
    return write_video(str(path), frames, fps=fps, gop=10)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    os.makedirs(root / "clips")
    lines = []
    for k in range(NUM_VIDEOS):
        _gray_video(root / "clips" / f"v{k}.mp4", fps=60 if k == 1 else 30)
        lines.append(f"clips/v{k}.mp4 {k % 4}\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "val.txt").write_text("".join(lines[:4]))
    return root


def _cfg(root, **kw):
    base = dict(
        root=str(root),
        num_frames=4,
        sampling_rate=4,
        train_short_side=[20, 28],
        test_short_side=24,
        crop_size=16,
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    base.update(kw)
    return DataConfig(**base)


def _levels(clip):
    """Grey level (0-255) of each frame of a normalised-as-identity (C, T, H, W) clip."""
    return (clip.mean(dim=(0, 2, 3)) * 255 / 5).round().long().tolist()


def test_shapes_and_labels(video_root):
    ds = build(_cfg(video_root), "train")
    assert isinstance(ds, VideoDataset) and len(ds) == NUM_VIDEOS and ds.num_classes == 4
    clip, label = ds[(3, 0)]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32
    assert label == 3
    clip, label = build(_cfg(video_root), "val")[1]
    assert clip.shape == (3, 4, 16, 16) and label == 1
    assert len(build(_cfg(video_root), "test")) == 4  # test_list unset: the val list


def test_decodes_exactly_the_sampled_frames(video_root):
    ds = build(_cfg(video_root, flip=False), "train")
    for seed in range(5):
        clip, _ = ds[(0, seed)]
        # sampling draws first from the generator, so the expected indices follow from the seed
        expected = clip_indices(FRAMES, 4, 4, 30, mode="train", rng=np.random.default_rng(seed))
        assert _levels(clip) == expected.tolist()
    # val: centred clip; the 60 fps video doubles the stride (span 32 of 40 frames -> start 4)
    val = build(_cfg(video_root), "val")
    assert _levels(val[0][0]) == [12, 16, 20, 24]  # span 16 of 40 frames: room 24, start 12
    assert _levels(val[1][0]) == [4, 12, 20, 28]


def test_seeded_items_are_deterministic_and_seeds_differ(video_root):
    ds = build(_cfg(video_root), "train")
    other = build(_cfg(video_root), "train")
    a, b = ds[(2, 123)][0], other[(2, 123)][0]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, ds[(2, s)][0]) for s in range(1, 6))


def test_unseeded_items_vary_between_calls(video_root):
    ds = build(_cfg(video_root), "train")
    clips = [ds[0][0] for _ in range(6)]
    assert any(not torch.equal(clips[0], c) for c in clips[1:])


def test_val_is_deterministic_without_seed(video_root):
    ds = build(_cfg(video_root), "val")
    assert torch.equal(ds[2][0], ds[2][0]) and torch.equal(ds[2][0], ds[(2, 99)][0])


def test_read_frames_sorted_unique_then_reexpanded(video_root):
    vr = open_video(str(video_root / "clips" / "v0.mp4"))
    frames = read_frames(vr, np.array([30, 2, 2, 17, 39, 0]))
    assert frames.shape == (6, 32, 40, 3)
    assert (frames[:, 0, 0, 0] / 5).round().astype(int).tolist() == [30, 2, 2, 17, 39, 0]


def test_read_frames_width_48_decord_bug(tmp_path):
    # decord 0.6 mis-shapes 48-pixel-wide frames (dmlc/decord#336); the fallback recovers them
    path = _gray_video(tmp_path / "w48.mp4", n=12, h=32, w=48)
    frames = read_frames(open_video(str(path)), np.array([5, 1, 5]))
    assert frames.shape == (3, 32, 48, 3)
    assert (frames[:, 10, 10, 1] / 5).round().astype(int).tolist() == [5, 1, 5]


def test_segment_sampling_and_multi_scale(video_root):
    ds = build(_cfg(video_root, sampling="segment", multi_scale_crop=True, num_frames=8), "val")
    clip, _ = ds[0]
    # 40 frames in 8 segments of 5: centres 2, 7, 12, ...
    assert _levels(clip) == [2 + 5 * i for i in range(8)]
    assert build(_cfg(video_root, sampling="segment", multi_scale_crop=True), "train")[(0, 1)][0].shape == (
        3,
        4,
        16,
        16,
    )


def _bad_root(tmp_path, video_root, n_good=8):
    """A list of n_good good videos with a truncated mp4 at line 3 and an empty file at line 6."""
    good = [str(video_root / "clips" / f"v{k % NUM_VIDEOS}.mp4") for k in range(n_good)]
    data = Path(good[0]).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    paths = good[:2] + [str(tmp_path / "truncated.mp4")] + good[2:4] + [str(tmp_path / "empty.mp4")] + good[4:]
    (tmp_path / "train.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
    return paths


def test_bad_files_are_skipped_warned_and_logged(tmp_path, video_root, caplog):
    paths = _bad_root(tmp_path, video_root)
    log = tmp_path / "bad_files.tsv"
    ds = build(_cfg(tmp_path, max_bad_fraction=0.25, bad_files_log=str(log)), "train")
    clip, label = ds[(2, 0)]
    # replaced by the next item of the list (index 3), same seed
    assert label == 3 and torch.equal(clip, ds[(3, 0)][0])
    assert ds[(5, 0)][1] == 6
    # one WARNING log line per file, not a Python warning
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "WARNING"]
    assert said[0][1].startswith(f"skipping unreadable video {paths[2]}: decode error")
    assert said[1][1] == f"skipping unreadable video {paths[5]}: empty file"
    caplog.clear()
    ds[(2, 1)]
    assert caplog.records == []  # once per file
    assert set(ds.bad_files) == {paths[2], paths[5]}
    assert ds.bad_files[paths[5]] == "empty file"
    assert ds.bad_files[paths[2]].startswith("decode error")
    assert read_bad_files(str(log)) == ds.bad_files
    # a full pass yields one sample per index and never raises
    assert len([ds[(i, 0)] for i in range(len(ds))]) == len(ds)


def test_bad_files_from_dataloader_workers_reach_the_log(tmp_path, video_root):
    _bad_root(tmp_path, video_root)
    log = tmp_path / "bad.tsv"
    ds = build(_cfg(tmp_path, max_bad_fraction=0.25, bad_files_log=str(log)), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == len(ds)
    assert sorted(os.path.basename(p) for p in read_bad_files(str(log))) == ["empty.mp4", "truncated.mp4"]


def test_too_many_bad_files_raise_with_the_list(tmp_path, video_root):
    _bad_root(tmp_path, video_root)
    ds = build(_cfg(tmp_path, max_bad_fraction=0.1), "train")  # 10 items: a second bad file is too many
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds[(2, 0)]
        with pytest.raises(RuntimeError, match=r"(?s)2 of 10 videos.*max_bad_fraction.*empty.mp4.*truncated.mp4"):
            ds[(5, 0)]


def test_missing_video_is_a_bad_file(tmp_path, video_root, caplog):
    good = video_root / "clips" / "v0.mp4"
    (tmp_path / "train.txt").write_text(f"nope.mp4 0\n{good} 1\n")
    ds = build(_cfg(tmp_path, max_bad_fraction=0.5), "train")
    assert ds[(0, 0)][1] == 1
    assert caplog.messages == [f"skipping unreadable video {tmp_path / 'nope.mp4'}: missing"]


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\n\nb.mp4 zero\n")
    with pytest.raises(ValueError, match=r"train.txt:3: .*'b.mp4 zero'"):
        build(_cfg(tmp_path), "train")


def test_missing_list_suggests_generator(tmp_path):
    root = tmp_path / "data" / "synthetic"
    with pytest.raises(FileNotFoundError, match=r"train.txt.*python -m action_launch.datasets.synthetic"):
        build(_cfg(root), "train")


def test_build_unknown_dataset_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: multiperson, rawframes, skeleton, video"):
        build(DataConfig(dataset="nope"), "train")
    with pytest.raises(ValueError, match="split"):
        build(_cfg(tmp_path), "training")


def test_crop_larger_than_short_side_is_a_config_error(video_root):
    with pytest.raises(ValueError, match="data.crop_size"):
        build(_cfg(video_root, crop_size=30), "train")


def test_multilabel_targets(tmp_path, video_root):
    good = video_root / "clips" / "v0.mp4"
    (tmp_path / "train.txt").write_text(f"{good} 0 2\n{good} 1\n")
    ds = build(_cfg(tmp_path, list_format="multilabel"), "train")
    assert ds.num_classes == 3
    assert ds[(0, 0)][1].tolist() == [1.0, 0.0, 1.0]


def test_csv_list_with_prefix(tmp_path, video_root):
    (tmp_path / "train.csv").write_text("v0.mp4,2\nv1.mp4,3\n")
    ds = build(
        _cfg(tmp_path, list_format="csv", separator=",", train_list="train.csv", path_prefix=str(video_root / "clips")),
        "train",
    )
    assert [ds[(i, 0)][1] for i in range(2)] == [2, 3]


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, datasets; print('torch' in sys.modules, 'decord' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(datasets.__file__)),
    )
    assert out.stdout.split() == ["False", "False"]


def test_seeded_batches_do_not_depend_on_worker_count(video_root):
    ds = build(_cfg(video_root), "train")
    keys = [(i, 1000 + 7 * i) for i in (5, 0, 3, 3, 7, 1)]

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=keys, num_workers=workers)
        return list(loader)

    for (c0, l0), (c2, l2) in zip(batches(0), batches(2)):
        assert torch.equal(c0, c2) and torch.equal(l0, l2)


# data.decoder=torchcodec: the second decode backend gives decord's frames


def _textured_video(path, n=48, size=64, seed=0):
    """A panning noise texture with per-frame grain, x264's default GOP and B-frames: frames that differ everywhere."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (size, size + 2 * n, 3), dtype=np.uint8)
    frames = np.stack([texture[:, 2 * t : 2 * t + size] for t in range(n)]).astype(np.int16)
    frames = np.clip(frames + rng.integers(-12, 13, frames.shape), 0, 255).astype(np.uint8)
    return write_video(str(path), frames, fps=25)


def test_torchcodec_decodes_the_frames_decord_decodes(tmp_path, video_root):
    """Same frame count, fps and timestamps, and the same pixels: H.264 decoding is bit-exact by its standard, and
    both convert yuv420p to RGB with FFmpeg's swscale, so they may differ only where two FFmpeg builds round that
    conversion differently. Measured: identical (0 levels) on every clip here (decord 0.6's bundled FFmpeg,
    Debian's FFmpeg 5.1 under torchcodec 0.13); allowed: 2 levels at most, 1 on average."""
    paths = [
        _textured_video(tmp_path / "texture.mp4"),
        _gray_video(tmp_path / "w48.mp4", n=12, h=32, w=48),
        str(video_root / "clips" / "v1.mp4"),
    ]  # grain + B-frames; decord's 48-px case; 60 fps
    for path in paths:
        dv, tv = open_video(path), open_video(path, "torchcodec")
        assert len(tv) == len(dv) and tv.get_avg_fps() == dv.get_avg_fps()
        every = np.arange(len(dv))
        np.testing.assert_allclose(tv.get_frame_timestamp(every[:6]), dv.get_frame_timestamp(every[:6]), atol=1e-4)
        indices = np.array([len(dv) - 1, 3, 0, 3, len(dv) // 2])  # unsorted, repeated
        a, b = read_frames(dv, indices), read_frames(tv, indices)
        assert a.shape == b.shape and b.dtype == np.uint8
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.max() <= 2 and diff.mean() <= 1.0, (path, diff.max(), diff.mean())


def test_data_decoder_torchcodec_samples_the_same_frames(video_root):
    """The dataset with data.decoder=torchcodec decodes exactly the sampled frames (each grey level is its index)."""
    ds = build(_cfg(video_root, flip=False, decoder="torchcodec"), "train")
    for seed in range(3):
        clip, _ = ds[(0, seed)]
        expected = clip_indices(FRAMES, 4, 4, 30, mode="train", rng=np.random.default_rng(seed))
        assert _levels(clip) == expected.tolist()
        assert torch.equal(clip, build(_cfg(video_root, flip=False), "train")[(0, seed)][0])
    assert _levels(build(_cfg(video_root, decoder="torchcodec"), "val")[1][0]) == [4, 12, 20, 28]


def test_torchcodec_bad_files_and_unknown_decoder(tmp_path, video_root):
    from action_launch.datasets.decode import BadVideoError

    (tmp_path / "junk.mp4").write_text("not a video")
    with pytest.raises(BadVideoError, match=r"^decode error: .*Invalid data found"):
        open_video(str(tmp_path / "junk.mp4"), "torchcodec")
    with pytest.raises(BadVideoError, match="missing"):
        open_video(str(tmp_path / "gone.mp4"), "torchcodec")
    with pytest.raises(BadVideoError, match="decode error: .*index"):
        read_frames(open_video(str(video_root / "clips" / "v0.mp4"), "torchcodec"), np.array([0, FRAMES + 5]))
    with pytest.raises(ValueError, match="unknown data.decoder 'pyav'; valid: decord, torchcodec"):
        open_video(str(video_root / "clips" / "v0.mp4"), "pyav")


def contract_configs(root: Path) -> Dict[str, DataConfig]:
    """The configs `tests/test_contracts.py` checks this kind's contract on, by variant (`root` holds a classes.txt
    of 4 names)."""
    (root / "clips").mkdir()
    for k in range(4):
        _gray_video(root / "clips" / f"v{k}.mp4", n=24)
    (root / "train.txt").write_text("".join(f"clips/v{k}.mp4 {k}\n" for k in range(4)))
    (root / "val.txt").write_text("clips/v0.mp4 0\nclips/v3.mp4 3\n")
    return {"video": _cfg(root, dataset="video", train_list="train.txt", val_list="val.txt")}
