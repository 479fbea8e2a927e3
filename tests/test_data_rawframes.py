"""RawFrameDataset on real JPEG/PNG frame folders written with Pillow: template and start
index, exact indices, only the sampled frames opened, bad folders skipped and reported."""

import re
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image

from action_launch.datasets import DataConfig, build, rawframes, read_bad_files
from action_launch.datasets.rawframes import RawFrameDataset
from action_launch.datasets.sampling import clip_indices, segment_indices

FRAMES = 30


def write_folder(folder, n=FRAMES, template="img_{:05d}.jpg", start=1, h=24, w=32, shift=0):
    """Frame i is uniformly grey at level 5*i + shift: a decoded frame tells its index."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 5 * i + shift, np.uint8)).save(
            folder / template.format(start + i), quality=95
        )
    return folder


@pytest.fixture(scope="module")
def frame_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    lines = []
    for k in range(4):
        write_folder(root / "rgb" / f"f{k}")
        lines.append(f"rgb/f{k} {FRAMES} {k}\n")
    (root / "train.txt").write_text("".join(lines))
    (root / "val.txt").write_text("".join(lines[:2]))
    return root


def _cfg(root, **kw):
    base = dict(
        dataset="rawframes",
        list_format="rawframes",
        root=str(root),
        num_frames=4,
        sampling_rate=3,
        train_short_side=[20, 28],
        test_short_side=24,
        crop_size=16,
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    base.update(kw)
    return DataConfig(**base)


def _levels(clip):
    return (clip.mean(dim=(0, 2, 3)) * 255 / 5).round().long().tolist()


def test_shapes_labels_and_exact_dense_indices(frame_root):
    ds = build(_cfg(frame_root, flip=False), "train")
    assert isinstance(ds, RawFrameDataset) and len(ds) == 4 and ds.num_classes == 4
    for seed in range(4):
        clip, label = ds[(2, seed)]
        assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and label == 2
        # no fps for a folder: the stride is sampling_rate frames as listed
        assert _levels(clip) == clip_indices(FRAMES, 4, 3, None, mode="train", rng=np.random.default_rng(seed)).tolist()
    # val: centred clip, span 12 of 30 frames: room 18, start 9
    assert _levels(build(_cfg(frame_root), "val")[0][0]) == [9, 12, 15, 18]


def test_segment_indices_exact(frame_root):
    ds = build(_cfg(frame_root, sampling="segment", num_frames=5), "train")
    for seed in range(3):
        expected = segment_indices(FRAMES, 5, "train", np.random.default_rng(seed))
        assert _levels(ds[(1, seed)][0]) == expected.tolist()
    assert _levels(build(_cfg(frame_root, sampling="segment", num_frames=5), "val")[1][0]) == [3, 9, 15, 21, 27]


@pytest.mark.parametrize("template,start", [("{:06d}.jpg", 0), ("img_{:05d}.png", 1), ("frame{:d}.jpg", 0)])
def test_template_and_start_index(tmp_path, template, start):
    write_folder(tmp_path / "v", n=12, template=template, start=start)
    (tmp_path / "val.txt").write_text("v 12 0\n")
    ds = build(_cfg(tmp_path, frame_template=template, frame_start_index=start, num_frames=3), "val")
    assert _levels(ds[0][0]) == [1, 4, 7]  # span 9 of 12: start 1


def test_only_the_sampled_frames_are_opened(frame_root, monkeypatch):
    opened = []
    real = rawframes.load_image
    monkeypatch.setattr(rawframes, "load_image", lambda path: opened.append(path) or real(path))
    ds = build(_cfg(frame_root, sampling="segment", num_frames=6), "train")
    ds[(3, 7)]
    expected = segment_indices(FRAMES, 6, "train", np.random.default_rng(7))
    names = sorted(p.split("/")[-1] for p in opened)
    assert names == sorted({f"img_{1 + i:05d}.jpg" for i in expected.tolist()})
    assert all("/rgb/f3/" in p for p in opened)
    # a short clip that repeats frames opens each distinct file once
    opened.clear()
    (frame_root / "short.txt").write_text("rgb/f0 3 0\n")
    short = build(_cfg(frame_root, train_list="short.txt", sampling_rate=1, num_frames=8), "train")
    assert short[(0, 0)][0].shape[1] == 8 and len(opened) == 3


def test_missing_folder_and_missing_frame_are_bad_files(tmp_path, frame_root, caplog):
    write_folder(tmp_path / "partial", n=10)  # the list says 30 frames: later ones are missing
    (tmp_path / "train.txt").write_text(
        f"{tmp_path}/gone {FRAMES} 0\n{frame_root}/rgb/f1 {FRAMES} 1\n{tmp_path}/partial {FRAMES} 2\n"
        f"{frame_root}/rgb/f3 {FRAMES} 3\n{tmp_path}/partial 0 2\n"
    )
    log = tmp_path / "bad.tsv"
    ds = build(_cfg(tmp_path, max_bad_fraction=0.5, bad_files_log=str(log)), "train")
    clip, label = ds[(0, 5)]
    assert caplog.messages == [f"skipping unreadable frame folder {tmp_path}/gone: missing"]
    assert label == 1 and torch.equal(clip, ds[(1, 5)][0])  # replaced by the next item, same seed
    assert ds[(2, 0)][1] == 3
    assert re.fullmatch(
        rf"skipping unreadable frame folder {tmp_path}/partial: missing frame img_000\d\d.jpg", caplog.messages[-1]
    )
    assert read_bad_files(str(log)) == ds.bad_files
    assert set(ds.bad_files) == {f"{tmp_path}/gone", f"{tmp_path}/partial"}
    caplog.clear()
    ds[(0, 1)], ds[(2, 1)]
    assert caplog.messages == []  # once per folder


def test_too_many_bad_folders_raise_with_the_list(tmp_path, frame_root):
    (tmp_path / "train.txt").write_text(f"a 5 0\nb 5 0\n{frame_root}/rgb/f0 {FRAMES} 0\n")
    ds = build(_cfg(tmp_path, max_bad_fraction=0.4), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"(?s)2 of 3 frame folders.*max_bad_fraction.*/a: missing.*/b: missing"):
            ds[(0, 0)]


def test_seeded_items_are_deterministic(frame_root):
    a, b = build(_cfg(frame_root), "train"), build(_cfg(frame_root), "train")
    assert torch.equal(a[(1, 42)][0], b[(1, 42)][0])
    assert any(not torch.equal(a[(1, 42)][0], a[(1, s)][0]) for s in range(5))


def test_config_errors(frame_root):
    with pytest.raises(ValueError, match="data.list_format"):
        build(_cfg(frame_root, list_format="video"), "train")
    with pytest.raises(ValueError, match="data.frame_template"):
        build(_cfg(frame_root, frame_template="img_{name}.jpg"), "train")
    with pytest.raises(ValueError, match="data.dataset=rawframes"):
        build(_cfg(frame_root, dataset="video"), "train")


def test_dataloader_with_workers(frame_root):
    ds = build(_cfg(frame_root), "train")
    keys = [(i, 10 + i) for i in (3, 1, 2, 0)]
    batches = [list(torch.utils.data.DataLoader(ds, batch_size=2, sampler=keys, num_workers=w)) for w in (0, 2)]
    for (c0, l0), (c2, l2) in zip(*batches):
        assert torch.equal(c0, c2) and torch.equal(l0, l2)


def test_check_cli_with_template(tmp_path, capsys):
    from action_launch.datasets import check

    write_folder(tmp_path / "ok", n=6, template="{:06d}.jpg", start=0)
    write_folder(tmp_path / "gap", n=6, template="{:06d}.jpg", start=0)
    (tmp_path / "gap" / "000003.jpg").unlink()
    (tmp_path / "gap" / "000006.jpg").write_bytes(b"x")  # right count, but frame 3 missing
    write_folder(tmp_path / "corrupt", n=6, template="{:06d}.jpg", start=0)
    (tmp_path / "corrupt" / "000005.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "list.txt").write_text("ok 6 0\ngap 6 0\ncorrupt 6 1\n")
    args = [str(tmp_path / "list.txt"), "--format", "rawframes", "--frame-template", "{:06d}.jpg", "--start-index", "0"]
    assert check.main(args) == 1
    out = capsys.readouterr().out
    assert "gap: missing frames: 1 of 6 (first: 000003.jpg)" in out
    assert "corrupt: decode error: 000005.jpg" in out and "/ok:" not in out
    assert check.main(args[:3]) == 0  # without a template: counts only


def contract_configs(root: Path) -> Dict[str, DataConfig]:
    """The configs `tests/test_contracts.py` checks this kind's contract on, by variant (`root` holds a classes.txt
    of 4 names)."""
    for k in range(4):
        write_folder(root / "rgb" / f"f{k}", n=12)
    (root / "train.txt").write_text("".join(f"rgb/f{k} 12 {k}\n" for k in range(4)))
    (root / "val.txt").write_text("rgb/f1 12 1\nrgb/f3 12 3\n")
    return {"rawframes": _cfg(root, train_list="train.txt", val_list="val.txt")}
