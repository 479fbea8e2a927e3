"""`python -m action_launch.datasets.check`: every unreadable entry reported with its reason, exit status."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from action_launch.datasets import DataConfig, build, check
from action_launch.datasets.synthetic import generate, write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _video(path, n, fps=30, faststart=False):
    frames = np.stack([np.full((32, 32, 3), 4 * i, np.uint8) for i in range(n)])
    return write_video(str(path), frames, fps=fps, gop=8, faststart=faststart)


def _list(tmp_path):
    _video(tmp_path / "ok.mp4", 40)
    _video(tmp_path / "short.mp4", 12)
    _video(tmp_path / "fast.mp4", 40, fps=60)  # 40 frames at 60 fps: span 16 * 2 = 32 fits
    data = Path(_video(tmp_path / "whole.mp4", 40, faststart=True)).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    names = ["ok", "short", "fast", "truncated", "missing", "empty"]
    (tmp_path / "list.txt").write_text("".join(f"{n}.mp4 {i}\n" for i, n in enumerate(names)))
    return tmp_path / "list.txt"


def test_cli_reports_each_bad_entry(tmp_path):
    lst = _list(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "action_launch.datasets.check",
            str(lst),
            "--num-frames",
            "4",
            "--sampling-rate",
            "4",
            "--short-video",
            "clamp",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stdout.strip().splitlines()
    reasons = {line.split(": ")[1].rsplit("/", 1)[-1]: line.split(": ", 2)[2] for line in lines}
    assert set(reasons) == {"short.mp4", "truncated.mp4", "missing.mp4", "empty.mp4"}
    assert reasons["missing.mp4"] == "missing" and reasons["empty.mp4"] == "empty file"
    assert reasons["truncated.mp4"].startswith("decode error")
    assert (
        reasons["short.mp4"]
        == "too short: 12 frames at 30 fps, the clip spans 16 (short_video=clamp repeats its last frame)"
    )
    assert lines[0].startswith(f"{lst}:2: ")
    assert "4 of 6 entries unreadable" in out.stderr


def test_clean_list_exits_zero_and_bad_list_two(tmp_path, capsys):
    _video(tmp_path / "ok.mp4", 20)
    (tmp_path / "good.txt").write_text("ok.mp4 0\n")
    assert check.main([str(tmp_path / "good.txt")]) == 0
    assert check.main([str(tmp_path / "good.txt"), "--num-frames", "8", "--sampling-rate", "4"]) == 0  # looped
    assert (
        check.main([str(tmp_path / "good.txt"), "--num-frames", "8", "--sampling-rate", "4", "--short-video", "clamp"])
        == 1
    )
    (tmp_path / "bad.txt").write_text("ok.mp4\n")
    assert check.main([str(tmp_path / "bad.txt")]) == 2
    assert "bad.txt:1" in capsys.readouterr().err


def test_short_clips_follow_the_training_rule(tmp_path, capsys):
    """By default the checker judges short clips as training does (data.short_video=loop: a clip longer than the
    video wraps around it), so a short video is readable, and said to loop; what the training's own dataset
    skips (the same clip, its val view) is reported."""
    lst = _list(tmp_path)
    assert check.main([str(lst), "--num-frames", "4", "--sampling-rate", "4"]) == 1
    out, err = capsys.readouterr()
    reported = {line.split(": ")[1] for line in out.splitlines()}
    assert {os.path.basename(p) for p in reported} == {"truncated.mp4", "missing.mp4", "empty.mp4"}
    assert (
        err.strip()
        == "3 of 6 entries unreadable; 1 shorter than the clip, which training loops (data.short_video=loop)"
    )
    cfg = DataConfig(
        root=str(tmp_path),
        train_list="list.txt",
        val_list="list.txt",
        num_frames=4,
        sampling_rate=4,
        crop_size=32,
        train_short_side=[32, 32],
        test_short_side=32,
        max_bad_fraction=1.0,
    )
    val = build(cfg, "val")
    assert cfg.short_video == "loop" and val.protocol.loops_short_clips
    for i in range(len(val)):
        val[i]
    assert str(tmp_path / "short.mp4") not in val.bad_files and set(val.bad_files) <= reported
    assert {"missing.mp4", "empty.mp4"} <= {os.path.basename(p) for p in val.bad_files}


def test_every_short_clip_of_a_set_is_readable_as_training_reads_it(tmp_path, capsys):
    """Issue 22: 54 synthetic clips of 24 frames against an 8 x 32 clip were all "unreadable: too short"."""
    root = generate(tmp_path / "syn", num_train=6, num_val=2, size=32, frames=24)
    assert check.main([str(root / "train.txt"), "--num-frames", "8", "--sampling-rate", "32"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (
        "all 6 entries readable; 6 shorter than the clip, which training loops (data.short_video=loop)"
    )


def test_rawframes_folders(tmp_path, capsys):
    for name, n in (("a", 5), ("b", 2)):
        os.makedirs(tmp_path / name)
        for i in range(n):
            (tmp_path / name / f"{i + 1:05d}.jpg").write_bytes(b"x")
    os.makedirs(tmp_path / "c")
    (tmp_path / "frames.txt").write_text("a 5 0\nb 4 1\nc 3 2\nd 3 0\n")
    assert check.main([str(tmp_path / "frames.txt"), "--format", "rawframes"]) == 1
    out = capsys.readouterr().out
    assert "b: frame count: the list says 4, the folder has 2" in out
    assert "c: zero frames" in out and "d: missing" in out and "/a:" not in out


def _reason(path, decoder):
    """What the dataset's own reader says of `path` opened with `decoder` (None: readable)."""
    from action_launch.datasets.decode import BadVideoError, open_video, read_frames

    try:
        vr = open_video(str(path), decoder)
        read_frames(vr, np.array([0, len(vr) - 1]))
    except BadVideoError as e:
        return str(e)
    return None


def test_cli_opens_the_files_with_the_training_decoder(tmp_path):
    """--decoder as data.decoder: a truncated file's reason is the one that decoder gives (they word it apart)."""
    lst = _list(tmp_path)
    truncated = tmp_path / "truncated.mp4"
    assert _reason(truncated, "decord") != _reason(truncated, "torchcodec")
    for decoder in ("decord", "torchcodec"):
        out = subprocess.run(
            [sys.executable, "-m", "action_launch.datasets.check", str(lst), "--decoder", decoder],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert out.returncode == 1, out.stderr
        line = next(x for x in out.stdout.splitlines() if "truncated.mp4" in x)
        assert line.split(": ", 2)[2] == _reason(truncated, decoder), (decoder, line)
