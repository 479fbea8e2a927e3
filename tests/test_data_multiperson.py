"""MultiPersonDataset: synchronised per-person mp4 clips and skeleton sequences, windows in
interaction order, meta that collates, bad person files skipped."""

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from action_launch.datasets import DataConfig, build
from action_launch.datasets.multiperson import MultiPersonDataset
from action_launch.datasets.sampling import clip_indices
from action_launch.datasets.synthetic import write_video

FRAMES = 30


def _video(path, shift, n=FRAMES):
    """Frame i is grey at 5*i + shift: the person (shift) and the frame index can be read back."""
    frames = np.stack([np.full((24, 32, 3), 5 * i + shift, np.uint8) for i in range(n)])
    return write_video(str(path), frames, fps=30, gop=10)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    for who, shift in (("a", 0), ("b", 100)):
        _video(root / f"{who}.mp4", shift)
    _video(root / "short.mp4", 0, n=20)
    rng = np.random.default_rng(0)
    for k in range(3):
        x = rng.normal(size=(3, 12, 5)).astype(np.float32)
        np.save(root / f"p{k}.npy", x)
    # out of order on purpose: the dataset sorts by (interaction, window)
    (root / "videos.txt").write_text(
        "int2 1 2 a.mp4 b.mp4\nint1 0 0 a.mp4 b.mp4\nint2 0 1 b.mp4 a.mp4\nint1 1 1 short.mp4 b.mp4\n"
    )
    (root / "skeletons.txt").write_text("s1 1 1 p0.npy p1.npy p2.npy\ns1 0 0 p2.npy p1.npy p0.npy\n")
    return root


def _cfg(root, **kw):
    base = dict(
        dataset="multiperson",
        root=str(root),
        train_list="videos.txt",
        val_list="videos.txt",
        num_frames=4,
        sampling_rate=3,
        train_short_side=[16, 20],
        test_short_side=16,
        crop_size=16,
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    base.update(kw)
    return DataConfig(**base)


def _levels(clip):
    """Grey level / 5 of each frame: the frame index, plus 20 for person b."""
    return (clip.mean(dim=(0, 2, 3)) * 255 / 5).round().long().tolist()


def test_sorted_windows_and_meta(root):
    ds = build(_cfg(root), "val")
    assert isinstance(ds, MultiPersonDataset) and len(ds) == 4 and ds.num_people == 2
    assert [(it.interaction, it.window) for it in ds.items] == [("int1", 0), ("int1", 1), ("int2", 0), ("int2", 1)]
    assert ds.interactions == ["int1", "int2"] and ds.windows("int2") == [2, 3]
    x, label, meta = ds[2]
    assert x.shape == (2, 3, 4, 16, 16) and x.dtype == torch.float32
    assert label == 1 and meta == {"interaction": "int2", "window": 0}
    # person order as listed: b (shift 100) then a; val clip centred: span 12 of 30 -> start 9
    assert _levels(x[0]) == [29, 32, 35, 38] and _levels(x[1]) == [9, 12, 15, 18]


def test_people_share_frames_and_spatial_draws(root):
    ds = build(_cfg(root, flip=True), "train")
    for seed in range(4):
        x, _, _ = ds[(0, seed)]  # int1 window 0: a and b
        expected = clip_indices(FRAMES, 4, 3, 30.0, mode="train", rng=np.random.default_rng(seed))
        assert _levels(x[0]) == expected.tolist()
        assert _levels(x[1]) == (expected + 20).tolist()
    # window with a 20-frame person: indices drawn over the shortest one
    for seed in range(4):
        x, _, _ = ds[(1, seed)]
        assert max(_levels(x[0])) <= 19
    a, b = build(_cfg(root), "train")[(0, 11)][0], ds[(0, 11)][0]
    assert torch.equal(a, b)


def test_collate_and_test_views(root):
    ds = build(_cfg(root), "val")
    x, labels, meta = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 2, 3, 4, 16, 16) and labels.tolist() == [0, 1, 1, 2]
    assert meta["interaction"] == ["int1", "int1", "int2", "int2"] and meta["window"].tolist() == [0, 1, 0, 1]
    views, _, _ = build(_cfg(root, test_num_clips=2, test_num_crops=3, test_short_side=20), "test")[0]
    assert views.shape == (2, 6, 3, 4, 16, 16)


def test_skeleton_people(root):
    cfg = _cfg(root, train_list="skeletons.txt", val_list="skeletons.txt")
    ds = build(cfg, "val")
    x, label, meta = ds[0]
    assert x.shape == (3, 3, 12, 5) and label == 0 and meta == {"interaction": "s1", "window": 0}
    assert np.array_equal(x[0].numpy(), np.load(root / "p2.npy"))
    # training crop/resize is one draw for all people: the same crop of identical inputs
    (root / "same.txt").write_text("s 0 0 p0.npy p0.npy\n")
    tr = build(_cfg(root, train_list="same.txt", window_size=6, random_rotation=20.0), "train")
    y, _, _ = tr[(0, 3)]
    assert y.shape == (2, 3, 6, 5) and torch.equal(y[0], y[1])


def test_missing_person_file_is_bad(tmp_path, root, caplog):
    (tmp_path / "train.txt").write_text(f"i 0 0 {root}/a.mp4 {tmp_path}/gone.mp4\ni 1 1 {root}/a.mp4 {root}/b.mp4\n")
    ds = build(_cfg(tmp_path, train_list="train.txt", max_bad_fraction=0.5), "train")
    x, label, meta = ds[(0, 0)]
    assert caplog.messages == [f"skipping unreadable person file {tmp_path}/gone.mp4: missing"]
    assert label == 1 and meta["window"] == 1
    assert list(ds.bad_files) == [f"{tmp_path}/gone.mp4"]
    caplog.clear()
    ds[(0, 1)]
    assert caplog.messages == []  # once per file


def test_malformed_lists(tmp_path):
    (tmp_path / "train.txt").write_text("i 0 0 a.mp4 b.mp4\ni 1 0 a.mp4\n")
    with pytest.raises(ValueError, match=r"train.txt:2: .*1 people, line 1 has 2"):
        build(_cfg(tmp_path, train_list="train.txt"), "train")
    (tmp_path / "train.txt").write_text("i 0 0 a.mp4\ni 0 1 b.mp4\n")
    with pytest.raises(ValueError, match=r"train.txt:2: .*already on line 1"):
        build(_cfg(tmp_path, train_list="train.txt"), "train")
    (tmp_path / "train.txt").write_text("i 0 0 a.mp4 b.npy\n")
    with pytest.raises(ValueError, match="mixes"):
        build(_cfg(tmp_path, train_list="train.txt"), "train")


def contract_configs(root: Path) -> Dict[str, DataConfig]:
    """The configs `tests/test_contracts.py` checks this kind's contract on, by variant (`root` holds a classes.txt
    of 4 names)."""
    for who, shift in (("a", 0), ("b", 100)):
        _video(root / f"{who}.mp4", shift)
    for k in range(2):
        np.save(root / f"p{k}.npy", np.random.default_rng(k).normal(size=(3, 12, 5)).astype(np.float32))
    (root / "videos.txt").write_text("i2 0 1 b.mp4 a.mp4\ni1 0 0 a.mp4 b.mp4\ni1 1 3 a.mp4 b.mp4\n")
    (root / "skeletons.txt").write_text("s1 1 1 p0.npy p1.npy\ns1 0 0 p1.npy p0.npy\ns2 0 2 p0.npy p1.npy\n")
    return {
        "multiperson": _cfg(root),
        "multiperson skeletons": _cfg(root, train_list="skeletons.txt", val_list="skeletons.txt"),
    }
