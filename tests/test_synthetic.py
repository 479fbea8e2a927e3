"""The synthetic motion data set: real H.264 files, balanced labels, motion that matches the label."""

import hashlib

import decord
import numpy as np
import pytest

from action_launch.datasets import DataConfig, build, synthetic
from action_launch.datasets.lists import read_list

SMALL = dict(num_train=8, num_val=4, size=32, frames=24, seed=3, classes=4)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "data", **SMALL)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _shape(frame):
    """Centre (x, y) and area of the bright shape; the background stays below 100."""
    ys, xs = np.nonzero(frame.min(axis=-1) > 140)
    return np.array([xs.mean(), ys.mean(), len(xs)])


def test_files_lists_and_balanced_labels(small_set):
    assert (small_set / "classes.txt").read_text().split() == ["up", "down", "grow", "shrink"]
    for split, n in (("train", 8), ("val", 4)):
        items = read_list(str(small_set / f"{split}.txt"), str(small_set))
        assert len(items) == n
        labels = [it.label for it in items]
        assert np.bincount(labels, minlength=4).tolist() == [n // 4] * 4
        for it in items:
            vr = decord.VideoReader(it.path, num_threads=1)
            assert len(vr) == 24 and vr.get_avg_fps() == 30 and vr[0].shape == (32, 32, 3)


def test_motion_matches_label_and_frames_change(small_set):
    for it in read_list(str(small_set / "train.txt"), str(small_set)):
        frames = decord.VideoReader(it.path, num_threads=1).get_batch(list(range(24))).asnumpy().astype(int)
        dx, dy, darea = _shape(frames[-1]) - _shape(frames[0])
        name = ["up", "down", "grow", "shrink"][it.label]
        if name in ("up", "down"):
            assert abs(dx) < 1.5 and abs(dy) >= 8 and np.sign(dy) == (1 if name == "down" else -1), (it.path, dx, dy)
        else:
            assert abs(dx) < 1.5 and abs(dy) < 1.5, (it.path, dx, dy)
            assert np.sign(darea) == (1 if name == "grow" else -1) and abs(darea) > 40, (it.path, darea)
        # static before and after a window of a third of the video
        changes = [np.abs(frames[t + 1] - frames[t]).max() > 60 for t in range(23)]
        assert 1 <= sum(changes) <= 9


def test_a_single_frame_tells_nothing():
    # over many clips, every class gives frames with the same distribution of shape position
    # and size (rendered without encoding: this checks the generator's design)
    stats = []
    for label in range(4):
        feats = np.concatenate(
            [
                np.stack([_shape(f) for f in synthetic.render(np.random.default_rng([label, i]), label, 32, 12)])
                for i in range(300)
            ]
        )
        stats.append(np.concatenate([feats.mean(0), feats.std(0)]))
    stats = np.array(stats)  # per class: mean x, y, area, std x, y, area
    spread = stats.max(0) - stats.min(0)
    assert spread[[0, 1]].max() < 1.0 and spread[[3, 4]].max() < 0.5, stats
    area = stats[:, 2].mean()
    assert spread[2] < 0.12 * area and spread[5] < 0.1 * area, stats


def test_deterministic_from_seed_and_seed_matters(tmp_path, small_set):
    again = synthetic.generate(tmp_path / "again", **SMALL)
    assert _digest(again) == _digest(small_set)
    other = synthetic.generate(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _digest(other)["train/0000.mp4"] != _digest(small_set)["train/0000.mp4"]


def test_complete_set_is_skipped_and_interrupted_set_redone(tmp_path):
    out = synthetic.generate(tmp_path / "s", **SMALL)
    video = out / "train" / "0001.mp4"
    stamp = video.stat().st_mtime_ns
    assert synthetic.is_complete(out, synthetic._params(8, 4, 32, 24, 30, 3, 4))
    synthetic.generate(out, **SMALL)
    assert video.stat().st_mtime_ns == stamp
    (out / "val.txt").unlink()  # as if interrupted before the last list was written
    assert not synthetic.is_complete(out, synthetic._params(8, 4, 32, 24, 30, 3, 4))
    synthetic.generate(out, **SMALL)
    assert (out / "val.txt").is_file() and video.stat().st_mtime_ns != stamp


def test_cli_and_dataset_read_it(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main([str(out), "--num-train", "4", "--num-val", "4", "--size", "32", "--frames", "24"]) == 0
    assert "wrote 4 train + 4 val" in capsys.readouterr().out
    cfg = DataConfig(
        root=str(out), num_frames=8, sampling_rate=3, train_short_side=[32, 40], test_short_side=32, crop_size=32
    )
    ds = build(cfg, "train")
    assert ds.num_classes == 4
    clip, label = ds[(0, 0)]
    assert clip.shape == (3, 8, 32, 32) and label == 0
    assert synthetic.main([str(out), "--num-train", "4", "--num-val", "4", "--size", "32", "--frames", "24"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_bad_parameters():
    with pytest.raises(ValueError, match="classes"):
        synthetic.generate("unused", classes=9)
    with pytest.raises(ValueError, match="even"):
        synthetic.generate("unused", size=33)
