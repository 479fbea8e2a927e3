"""SkeletonDataset on real .npy/.pkl files, and the Laban features: memory map, streams,
crop/resize, rotation, regression targets joined from a CSV, determinism."""

import pickle
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from action_launch.datasets import DataConfig, build, laban
from action_launch.datasets.skeleton import SkeletonDataset, resize_time, rotation_matrix, valid_length
from action_launch.models.graphs import bone_pairs

N, C, T, V, M = 6, 3, 20, 25, 2
VALID = 16  # frames after this are zero padding, as in NTU arrays


def _write(root, n=N, v=V, t=T, names=None, prefix="train"):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, C, t, v, M)).astype(np.float32)
    data[:, :, VALID:] = 0
    np.save(root / f"{prefix}_data.npy", data)
    names = names or [f"S{k:03d}C001P00{k % 3}R001A0{k % 4}" for k in range(n)]
    with open(root / f"{prefix}_label.pkl", "wb") as f:
        pickle.dump((names, [k % 4 for k in range(n)]), f)
    return data


def _cfg(root, **kw):
    base = dict(
        dataset="skeleton",
        root=str(root),
        train_list="train_label.pkl",
        val_list="val_label.pkl",
        train_data="train_data.npy",
        val_data="val_data.npy",
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture()
def root(tmp_path):
    _write(tmp_path)
    _write(tmp_path, n=3, prefix="val")
    return tmp_path


def test_joint_stream_is_the_memory_mapped_array(root):
    ds = build(_cfg(root), "train")
    assert isinstance(ds, SkeletonDataset) and isinstance(ds.data, np.memmap) and ds.data.filename
    data = np.load(root / "train_data.npy")
    assert len(ds) == N and ds.num_classes == 4
    for i in range(N):
        x, label = ds[(i, 0)]
        assert x.dtype == torch.float32 and x.shape == (C, T, V, M) and label == i % 4
        assert np.array_equal(x.numpy(), data[i])  # window_size 0: untouched
    assert len(build(_cfg(root), "val")) == 3


def test_bone_stream_by_hand(root):
    data = np.load(root / "train_data.npy")
    x, _ = build(_cfg(root, skeleton_stream="bone"), "train")[(2, 0)]
    pairs = dict(bone_pairs("ntu-rgb+d"))
    # NTU 1-based edges (2, 21), (4, 3), (25, 12): 0-based 1-20, 3-2, 24-11; centre 21 (index 20) is 0
    for v1, v2 in [(1, 20), (3, 2), (24, 11), (0, 1), (22, 7)]:
        assert pairs[v1] == v2
        assert np.allclose(x[:, :, v1].numpy(), data[2][:, :, v1] - data[2][:, :, v2])
    assert (x[:, :, 20] == 0).all()


def test_valid_length_crop_and_resize(root):
    data = np.load(root / "train_data.npy")
    assert valid_length(data[0]) == VALID
    # eval: all 16 valid frames resized to 31 -> every other frame is an original one
    x, _ = build(_cfg(root, window_size=31), "val")[0]
    val = np.load(root / "val_data.npy")[0]
    assert x.shape == (C, 31, V, M)
    assert np.allclose(x[:, ::2].numpy(), val[:, :VALID], atol=1e-6)
    assert np.allclose(x[:, 1].numpy(), (val[:, 0] + val[:, 1]) / 2, atol=1e-6)
    # train: a random crop of 50-100 % of the valid frames, the draws in a documented order
    ds = build(_cfg(root, window_size=8, crop_range=[0.5, 1.0]), "train")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        length = min(VALID, max(1, int(round(rng.uniform(0.5, 1.0) * VALID))))
        start = int(rng.integers(0, VALID - length + 1))
        expected = resize_time(data[1][:, start : start + length], 8)
        assert np.allclose(ds[(1, seed)][0].numpy(), expected, atol=1e-6)


def test_random_rotation_keeps_lengths_and_is_seeded(root):
    data = np.load(root / "train_data.npy")
    ds = build(_cfg(root, random_rotation=30.0), "train")
    x = ds[(0, 7)][0].numpy()
    assert not np.allclose(x, data[0])
    assert np.allclose(np.linalg.norm(x, axis=0), np.linalg.norm(data[0], axis=0), atol=1e-4)
    assert torch.equal(ds[(0, 7)][0], build(_cfg(root, random_rotation=30.0), "train")[(0, 7)][0])
    assert not torch.equal(ds[(0, 7)][0], ds[(0, 8)][0])
    # val has no randomness
    v = build(_cfg(root, random_rotation=30.0), "val")
    assert torch.equal(v[1][0], v[1][0])
    r = rotation_matrix(0.0, 0.0, np.pi / 2)
    assert np.allclose(r @ [1, 0, 0], [0, 1, 0])


def test_regression_targets_joined_from_csv(tmp_path):
    names = ["P07_chunk0", "P03_chunk0", "P07_chunk1", "P11_chunk0"]
    _write(tmp_path, n=4, names=names)
    (tmp_path / "traits.csv").write_text(
        "participant,openness,conscientiousness,extraversion,agreeableness,neuroticism\n"
        "P03,0.1,0.2,0.3,0.4,0.5\nP07,-1,-2,-3,-4,-5\nP11,1.5,0,0,0,2.5\n"
    )
    ds = build(_cfg(tmp_path, targets_csv="traits.csv", participant_regex=r"^(P\d+)_"), "train")
    assert ds.participants == ["P07", "P03", "P07", "P11"]
    x, y = ds[(0, 0)]
    assert y.dtype == torch.float32 and y.tolist() == [-1, -2, -3, -4, -5]
    assert np.allclose(ds[(1, 0)][1].numpy(), [0.1, 0.2, 0.3, 0.4, 0.5])
    assert ds[(3, 0)][1].tolist() == [1.5, 0, 0, 0, 2.5]
    xs, ys = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert ys.shape == (4, 5)
    with pytest.raises(ValueError, match=r"no participant in .*traits.csv.*P07_chunk0"):
        build(_cfg(tmp_path, targets_csv="traits.csv", participant_regex=r"^Q(\d+)"), "train")
    with pytest.raises(ValueError, match="neuroticism"):
        (tmp_path / "bad.csv").write_text("participant,openness\nP03,1\n")
        build(_cfg(tmp_path, targets_csv="bad.csv"), "train")


def test_laban_shapes_and_hand_checked_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 24, 1)).astype(np.float32)
    pairs = bone_pairs("smpl-24")
    f = laban.laban_features(x, pairs)
    assert f.shape == (12, 6, 24, 1) and f.dtype == np.float32
    # velocity: first difference of position, 0 at t = 0
    assert np.allclose(f[0:3, 3], x[:, 3] - x[:, 2]) and (f[0:3, 0] == 0).all()
    # space: angles of bone (4 -> parent 1) with the axes, by hand
    b = x[:, 2, 4, 0] - x[:, 2, 1, 0]
    assert np.allclose(f[6:9, 2, 4, 0], np.arccos(b / np.linalg.norm(b)), atol=1e-5)
    assert (f[6:12, :, 0] == 0).all()  # the root (pelvis) has no bone
    # weight and flow: first and second differences of the angles
    a = f[6:9]
    assert np.allclose(f[9:12, 4], a[:, 4] - a[:, 3], atol=1e-6)
    assert np.allclose(f[3:6, 4], a[:, 4] - 2 * a[:, 3] + a[:, 2], atol=1e-5) and (f[3:6, :2] == 0).all()
    # a bone along +y: angles (pi/2, 0, pi/2)
    y = np.zeros((3, 1, 2))
    y[1, 0, 1] = 2.0
    assert np.allclose(laban.bone_angles(y, [(0, 0), (1, 0)])[:, 0, 1], [np.pi / 2, 0, np.pi / 2])
    with pytest.raises(ValueError, match="xyz"):
        laban.laban_features(np.zeros((2, 4, 24)), pairs)


def _authors_laban(data):
    """data_gen/preprocess_personality.py's `laban` stage, restated: data (N, T, V=24, 3); velocity is np.diff of a
    (N*T, V, 3) reshape along axis 1 (the joints) with prepend=0; angles are arccos of the normalised bone's dot
    product with each axis (the (9, 9) bone left unnormalised); flow is np.diff twice along time with prepend=0;
    channels last: velocity, flow, space, weight (= space)."""
    n, t, v, _ = data.shape
    velocity = np.diff(data.reshape(n * t, v, 3), axis=1, prepend=0).reshape(data.shape)
    angles = np.copy(data)
    for v1, v2 in laban.AUTHORS_SMPL_PAIRS:
        bone = data[:, :, v1, :] - data[:, :, v2, :]
        if v1 != v2:
            bone = bone / np.sqrt(np.sum(np.square(bone), keepdims=True, axis=-1))
        angles[:, :, v1, :] = np.dstack([np.arccos(np.dot(bone, axis))[..., None] for axis in np.eye(3)])
    flow = np.diff(np.diff(angles, axis=1, prepend=0), axis=1, prepend=0)
    return np.concatenate((velocity, flow, angles, angles), axis=-1)


def test_authors_laban_features_match_their_preprocessing():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(3, 7, 24, 3)).astype(np.float32)  # their layout: (N, T, V, xyz)
    theirs = _authors_laban(data)  # (N, T, V, 12)
    ours = np.stack([laban.authors_laban_features(sample.transpose(2, 0, 1)[..., None])[..., 0] for sample in data])
    np.testing.assert_allclose(ours, theirs.transpose(0, 3, 1, 2), atol=1e-5)
    f = ours[0]
    assert np.allclose(f[0:3, :, 5], data[0, :, 5].T - data[0, :, 4].T) and np.allclose(f[0:3, :, 0], data[0, :, 0].T)
    assert np.allclose(f[6:12, :, 9], np.pi / 2) and np.array_equal(f[6:9], f[9:12])  # root bone; weight = space
    assert np.allclose(f[3:6, 0], f[6:9, 0])  # flow at t=0: the angles themselves (zeros before the first frame)
    zero = laban.authors_laban_features(np.zeros((3, 2, 24)))
    assert np.isfinite(zero).all() and np.allclose(zero[6:9], np.pi / 2)  # their code: NaN here
    with pytest.raises(ValueError, match="SMPL-24"):
        laban.authors_laban_features(np.zeros((3, 2, 25)))


def test_laban_dataset_has_15_channels(tmp_path):
    _write(tmp_path, v=24)
    data = np.load(tmp_path / "train_data.npy")
    ds = build(_cfg(tmp_path, graph="smpl-24", laban=True), "train")
    x, _ = ds[(0, 0)]
    assert x.shape == (15, T, 24, M)  # 3 coordinates + 12 Laban features
    assert np.allclose(x[:3].numpy(), data[0])
    assert np.allclose(x[3:].numpy(), laban.laban_features(data[0], bone_pairs("smpl-24")), atol=1e-6)
    with pytest.raises(ValueError, match="data.graph"):
        build(_cfg(tmp_path, graph="ntu-rgb+d", laban=True), "train")
    authors, _ = build(_cfg(tmp_path, graph="smpl-24", laban=True, laban_formula="authors"), "train")[(0, 0)]
    assert np.allclose(authors[:3].numpy(), data[0])
    assert np.allclose(authors[3:].numpy(), laban.authors_laban_features(data[0]), atol=1e-6)
    assert not np.allclose(authors[3:].numpy(), x[3:].numpy())
    with pytest.raises(ValueError, match="data.laban_formula=authors.*smpl-24"):
        build(_cfg(tmp_path, graph="kinetics", laban=True, laban_formula="authors"), "train")


def test_config_errors(root):
    with pytest.raises(ValueError, match="data.skeleton_stream"):
        build(_cfg(root, skeleton_stream="motion"), "train")
    with pytest.raises(ValueError, match="data.graph.*ntu-rgb\\+d"):
        build(_cfg(root, skeleton_stream="bone", graph="ntu"), "train")
    with pytest.raises(FileNotFoundError, match="data.train_data"):
        build(_cfg(root, train_data="nope.npy"), "train")
    with pytest.raises(ValueError, match="data.crop_range"):
        build(_cfg(root, crop_range=[0.0, 1.0]), "train")


def test_pickled_dataset_reopens_the_map_and_loads_in_workers(root):
    ds = build(_cfg(root, window_size=8), "train")
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000 and isinstance(clone.data, np.memmap)
    keys = [(i, 3 * i) for i in range(N)]
    a = list(torch.utils.data.DataLoader(ds, batch_size=3, sampler=keys, num_workers=0))
    b = list(torch.utils.data.DataLoader(clone, batch_size=3, sampler=keys, num_workers=2))
    assert all(torch.equal(x0, x1) and torch.equal(y0, y1) for (x0, y0), (x1, y1) in zip(a, b))


def contract_configs(root: Path) -> Dict[str, DataConfig]:
    """The configs `tests/test_contracts.py` checks this kind's contract on, by variant (`root` holds a classes.txt
    of 4 names)."""
    names = [f"P0{k % 3}_chunk{k}" for k in range(6)]
    _write(root, names=names)
    _write(root, n=3, prefix="val", names=names[:3])
    (root / "traits.csv").write_text(
        "participant,openness,conscientiousness,extraversion,agreeableness,neuroticism\n"
        "P00,0,0,0,0,0\nP01,1,1,1,1,1\nP02,2,2,2,2,2\n"
    )
    return {
        "skeleton": _cfg(root),
        "skeleton regression": _cfg(root, targets_csv="traits.csv", participant_regex=r"^(P\d+)_"),
    }
