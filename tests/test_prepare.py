"""datasets.prepare on real generated mp4s: re-encoding and frame extraction, the lists they
write, failures reported, keyframe interval and size honoured (small videos never enlarged),
classes.txt copied, resuming without redoing work, and lists from a class-folder layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from action_launch.datasets import prepare
from action_launch.datasets.decode import open_video
from action_launch.datasets.lists import read_list
from action_launch.datasets.synthetic import write_video

REPO = Path(__file__).resolve().parents[1]
# name -> (width, height, frames, fps, label); bad.mp4 is truncated, missing.mp4 is not there
VIDEOS = {
    "a/v0.mp4": (64, 48, 30, 30, 3),
    "a/v1.mp4": (96, 64, 45, 30, 0),
    "b/v2.mp4": (80, 64, 60, 30, 1),
    "b/v3.mp4": (48, 64, 40, 25, 2),
}
LIST = ["a/v0.mp4 3", "a/bad.mp4 1", "a/v1.mp4 0", "b/missing.mp4 2", "b/v2.mp4 1", "b/v3.mp4 2"]
GOOD = [line for line in LIST if "bad" not in line and "missing" not in line]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Videos with one keyframe (gop 250) and grainy content, so x264 would place its own."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for name, (w, h, n, fps, _) in VIDEOS.items():
        (root / name).parent.mkdir(exist_ok=True)
        base = rng.integers(0, 200, (1, h, w, 3))
        frames = np.clip(base + rng.integers(0, 56, (n, h, w, 3)), 0, 255).astype(np.uint8)
        write_video(str(root / name), frames, fps=fps, gop=250)
    data = (root / "a/v1.mp4").read_bytes()
    (root / "a/bad.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: no index left
    (root / "train.txt").write_text("\n".join(LIST) + "\n")
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "action_launch.datasets.prepare", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def keyframes(path: Path) -> list:
    with av.open(str(path)) as c:
        return [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]


def x264_settings(path: Path) -> dict:
    """The encoder settings x264 writes into the stream (its `x264 - core ... options:` SEI)."""
    data = path.read_bytes()
    start = data.index(b"options: ") + len(b"options: ")
    text = data[start : data.index(b"\0", start)].decode()
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def test_reencode_lists_frames_size_gop(src, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(str(src / "train.txt"), str(out), "--short-side", "32", "--gop", "8", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    # the two bad entries are reported with their line and reason, and only they
    assert f"train.txt:2: {src / 'a/bad.mp4'}: cannot open" in proc.stdout
    assert f"train.txt:4: {src / 'b/missing.mp4'}: missing" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 2
    assert "4 videos (4 prepared now, 0 already done), 2 failed" in proc.stderr
    assert (out / "train.txt").read_text() == "".join(f"{line}\n" for line in GOOD)  # labels, order, paths
    for item in read_list(str(out / "train.txt"), str(out)):
        w, h, n, fps, _ = VIDEOS[os.path.relpath(item.path, out)]
        vr = open_video(item.path)
        assert len(vr) == n and vr.get_avg_fps() == pytest.approx(fps)
        height, width = vr[0].shape[:2]
        assert min(height, width) == 32 and height % 2 == 0 and width % 2 == 0
        assert width / height == pytest.approx(w / h, abs=0.05)
        assert keyframes(Path(item.path)) == list(range(0, n, 8))
        # the defaults are for random access: fastdecode (CAVLC, no deblocking), no B-frames
        settings = x264_settings(Path(item.path))
        assert (settings["cabac"], settings["deblock"][0], settings["bframes"]) == ("0", "0", "0")
        assert (settings["keyint"], settings["scenecut"]) == ("8", "0")
    assert not list(out.rglob("*.part")) and not (out / "a/bad.mp4").exists()


def test_output_size_never_enlarges():
    assert prepare.output_size(92, 64, 256) == (92, 64)  # such clips became 368x256
    assert prepare.output_size(96, 64, 64) == (96, 64)  # at the target: kept
    assert prepare.output_size(63, 45, 256) == (62, 44)  # made even by losing a pixel, not gaining one
    assert prepare.output_size(93, 65, 0) == (92, 64)
    assert prepare.output_size(96, 64, 48) == (72, 48)
    assert prepare.output_size(640, 360, 256) == (456, 256)


def test_small_videos_keep_their_size_and_classes_are_copied(tmp_path):
    """--frames at the default --short-side 256: a 92x64 clip stays 92x64, a bigger one is
    scaled down, the summary counts the first; classes.txt comes along, OUT_DIR is a data root."""
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name, (w, h) in {"small.mp4": (92, 64), "big.mp4": (384, 288)}.items():
        write_video(str(root / name), rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8))
    (root / "train.txt").write_text("small.mp4 1\nbig.mp4 0\n")
    (root / "classes.txt").write_text("walk\nrun\n")
    out = tmp_path / "out"
    proc = run_cli(str(root / "train.txt"), str(out), "--frames", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "1 kept at their own size (short side at most 256, never enlarged)" in proc.stderr
    sizes = {}
    for name in ("small", "big"):
        with av.open(str(out / name / "img_00001.jpg")) as c:
            frame = next(c.decode(video=0))
        sizes[name] = (frame.width, frame.height)
    assert sizes == {"small": (92, 64), "big": (342, 256)}
    assert (out / "classes.txt").read_text() == "walk\nrun\n"


def test_reencode_scales_down_only_and_redoes_older_records(src, tmp_path):
    out = tmp_path / "out"
    opts = prepare.PrepareOptions(short_side=48, gop=8)
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert (report.done, report.kept_size) == (4, 2)
    shapes = {"a/v0.mp4": (48, 64), "a/v1.mp4": (48, 72), "b/v2.mp4": (48, 60), "b/v3.mp4": (64, 48)}  # (h, w)
    assert {rel: open_video(str(out / rel))[0].shape[:2] for rel in shapes} == shapes
    assert not (out / "classes.txt").exists()  # the source root has none
    # records without the frame sizes were written by a version that enlarged small videos: redone
    manifest = out / prepare.MANIFEST
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    older = [{k: v for k, v in rec.items() if k not in ("frame_size", "source_frame_size")} for rec in records]
    manifest.write_text("".join(json.dumps(rec) + "\n" for rec in older))
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert (report.done, report.skipped, report.kept_size) == (4, 0, 2)
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert (report.done, report.skipped, report.kept_size) == (0, 4, 2)


def test_encoder_settings_can_be_x264s_own(src, tmp_path):
    dst = tmp_path / "v0.mp4"
    opts = prepare.PrepareOptions(short_side=0, gop=12, tune=None, bframes=3, crf=30, preset="fast")
    assert prepare.encode_video(str(src / "a/v0.mp4"), str(dst), opts) == VIDEOS["a/v0.mp4"][2]
    settings = x264_settings(dst)
    assert (settings["cabac"], settings["deblock"][0], settings["bframes"]) == ("1", "1", "3")
    assert (settings["keyint"], settings["crf"]) == ("12", "30.0")


def test_frames_mode_and_fps(src, tmp_path):
    out = tmp_path / "frames"
    opts = prepare.PrepareOptions(short_side=24, frames=True, fps=15)
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert [(line, reason.split(":")[0]) for line, _, reason in report.failed] == [(2, "cannot open"), (4, "missing")]
    items = read_list(str(out / "train.txt"), str(out), fmt="rawframes")
    assert [f"{os.path.relpath(it.path, out)}.mp4 {it.label}" for it in items] == GOOD
    for it in items:
        w, h, n, fps, _ = VIDEOS[os.path.relpath(it.path, out) + ".mp4"]
        assert it.num_frames == round(n * 15 / fps)  # same duration at the new rate
        names = sorted(os.listdir(it.path))
        assert names == [f"img_{k:05d}.jpg" for k in range(1, it.num_frames + 1)]
        with av.open(os.path.join(it.path, names[-1])) as c:
            frame = next(c.decode(video=0))
        assert min(frame.width, frame.height) == 24
    assert not list(out.rglob("*.part"))
    # the suite's own raw-frame reader takes the folders as they are (template, numbered from 1)
    from action_launch.datasets.check import scan

    assert scan(items, "rawframes", frame_template="img_{:05d}.jpg", start_index=1) == []


def test_fps_resampling_reencode(src, tmp_path):
    (tmp_path / "one.txt").write_text(f"{src / 'b/v2.mp4'} 5\n")
    report = prepare.prepare_list(
        str(tmp_path / "one.txt"),
        str(tmp_path / "out"),
        prepare.PrepareOptions(short_side=0, gop=4, fps=45),
        progress=False,
    )
    assert not report.failed
    vr = open_video(str(tmp_path / "out" / (str(src / "b/v2.mp4").lstrip("/"))))  # absolute source: anchor dropped
    assert len(vr) == 90 and vr.get_avg_fps() == pytest.approx(45) and vr[0].shape[:2] == (64, 80)


def test_interrupted_run_resumes_without_redoing_work(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    opts = prepare.PrepareOptions(short_side=32, gop=8)
    calls = []
    real = prepare.encode_video

    def counting(source, dst, o):
        calls.append(os.path.relpath(dst, out))
        if calls == ["a/v0.mp4", "a/bad.mp4", "a/v1.mp4", "b/missing.mp4", "b/v2.mp4"]:  # killed while writing v2
            Path(dst + ".part").write_bytes(b"half a video")
            raise KeyboardInterrupt
        return real(source, dst, o)

    monkeypatch.setattr(prepare, "encode_video", counting)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert calls[-1] == "b/v2.mp4"
    assert not (out / "train.txt").exists()  # no list: the interrupted set is not usable
    done = {rel: (out / rel).stat().st_mtime_ns for rel in ("a/v0.mp4", "a/v1.mp4")}
    # a copy renamed into place whose run died before recording it: not trusted, redone
    (out / "b/v3.mp4").write_bytes((out / "a/v0.mp4").read_bytes())

    calls.clear()
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert calls == ["a/bad.mp4", "b/missing.mp4", "b/v2.mp4", "b/v3.mp4"]  # finished ones not redone
    assert (report.done, report.skipped, len(report.failed)) == (2, 2, 2)
    assert {rel: (out / rel).stat().st_mtime_ns for rel in done} == done
    assert (out / "train.txt").read_text() == "".join(f"{line}\n" for line in GOOD)
    assert not list(out.rglob("*.part"))
    assert len(open_video(str(out / "b/v3.mp4"))) == VIDEOS["b/v3.mp4"][2]

    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, workers=2, progress=False)
    assert (report.done, report.skipped, len(report.failed)) == (0, 4, 2)  # finished: only the bad ones are tried

    # a damaged output, a changed source or changed options are redone
    (out / "a/v0.mp4").write_bytes((out / "a/v0.mp4").read_bytes()[:-100])
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert (report.done, report.skipped) == (1, 3)
    report = prepare.prepare_list(
        str(src / "train.txt"), str(out), prepare.PrepareOptions(short_side=32, gop=4), progress=False
    )
    assert (report.done, report.skipped) == (4, 0)
    assert keyframes(out / "b/v2.mp4") == list(range(0, 60, 4))


def test_interrupted_frame_extraction_resumes(src, tmp_path):
    out = tmp_path / "frames"
    opts = prepare.PrepareOptions(short_side=24, frames=True)
    (src / "two.txt").write_text("a/v0.mp4 3\nb/v2.mp4 1\n")
    prepare.prepare_list(str(src / "two.txt"), str(out), opts, out_list="train.txt", progress=False)
    mtime = (out / "a/v0").stat().st_mtime_ns
    # a killed run left a half folder behind, and a finished-looking folder it never recorded
    (out / "a/v1.part").mkdir()
    (out / "a/v1.part/img_00001.jpg").write_bytes(b"x")
    (out / "b/v3").mkdir(parents=True)
    (out / "b/v3/img_00001.jpg").write_bytes(b"x")
    report = prepare.prepare_list(str(src / "train.txt"), str(out), opts, progress=False)
    assert (report.done, report.skipped, len(report.failed)) == (2, 2, 2)
    assert (out / "a/v0").stat().st_mtime_ns == mtime
    assert len(os.listdir(out / "b/v3")) == VIDEOS["b/v3.mp4"][2]
    assert not list(out.rglob("*.part"))


def test_lists_from_folders_seeded_stratified_split(tmp_path):
    src = tmp_path / "videos"
    counts = {"walk": 10, "jump": 5, "run": 1}
    for name, n in counts.items():
        (src / name).mkdir(parents=True)
        for k in range(n):
            (src / name / f"clip {k}.mp4").write_bytes(b"")
        (src / name / "notes.txt").write_text("not a video")
        (src / name / ".hidden.mp4").write_bytes(b"")
    proc = run_cli("--from-folders", str(src), str(tmp_path / "lists"), "--val-fraction", "0.2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    lists = tmp_path / "lists"
    assert (lists / "classes.txt").read_text() == "jump\nrun\nwalk\n"
    splits = {s: read_list(str(lists / f"{s}.txt"), str(lists)) for s in ("train", "val")}
    for label, name in enumerate(["jump", "run", "walk"]):
        per = {s: [it for it in items if it.label == label] for s, items in splits.items()}
        assert len(per["val"]) == {"jump": 1, "run": 0, "walk": 2}[name]
        paths = sorted(os.path.normpath(it.path) for items in per.values() for it in items)
        assert paths == sorted(str(src / name / f"clip {k}.mp4") for k in range(counts[name]))
    again = tmp_path / "again"
    prepare.lists_from_folders(str(src), str(again), 0.2, seed=3)
    assert (again / "val.txt").read_text().replace("../videos", "") == (lists / "val.txt").read_text().replace(
        "../videos", ""
    )
    vals = set()
    for seed in range(6):
        prepare.lists_from_folders(str(src), str(tmp_path / f"s{seed}"), 0.2, seed=seed)
        vals.add((tmp_path / f"s{seed}" / "val.txt").read_text())
    assert len(vals) > 1  # the seed picks the split


def test_bad_arguments_and_list_overwrite(src, tmp_path):
    proc = run_cli(str(src / "train.txt"), str(src))
    assert proc.returncode == 2 and "would overwrite" in proc.stderr
    proc = run_cli(str(tmp_path / "nope.txt"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "list file not found" in proc.stderr
    proc = run_cli(str(src / "train.txt"), str(tmp_path / "out"), "--frames", "--template", "img.jpg")
    assert proc.returncode == 2 and "--template" in proc.stderr
    proc = run_cli(str(src / "train.txt"), str(tmp_path / "out"), "--tune", "fastdecod")
    assert proc.returncode == 2 and "unknown x264 tune fastdecod" in proc.stderr and not (tmp_path / "out").exists()
    proc = run_cli(str(src / "train.txt"), str(tmp_path / "out"), "--bframes", "-1")
    assert proc.returncode == 2 and "--bframes must be 0 or more" in proc.stderr


def test_killed_pool_leaves_nothing_half_done(src, tmp_path):
    """SIGKILL the whole run (main process and pool) once some outputs are recorded; the
    rerun keeps those, finishes the rest, and nothing half-written is left or listed."""
    import signal
    import time

    many = tmp_path / "many"
    many.mkdir()
    for k in range(8):
        (many / f"c{k:02d}.mp4").symlink_to(src / "b/v2.mp4")
    (many / "all.txt").write_text("".join(f"c{k:02d}.mp4 {k % 3}\n" for k in range(8)))
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "action_launch.datasets.prepare",
        str(many / "all.txt"),
        str(out),
        "--short-side",
        "64",
        "--preset",
        "veryslow",
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        manifest = prepare.read_manifest(str(out))
        if len(manifest) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    recorded = prepare.read_manifest(str(out))
    assert recorded, "nothing finished before the kill"
    kept = {rel: (out / rel).stat().st_mtime_ns for rel in recorded}
    print(f"killed with {len(recorded)} of 8 recorded, half-written: {sorted(p.name for p in out.glob('*.part'))}")
    for path in out.glob("c*.mp4"):  # whatever carries a final name is a whole, readable video
        assert len(open_video(str(path))) == 60
    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({8 - len(recorded)} prepared now, {len(recorded)} already done)" in rerun.stderr
    assert {rel: (out / rel).stat().st_mtime_ns for rel in recorded} == kept
    assert len((out / "all.txt").read_text().splitlines()) == 8
    assert not list(out.glob("*.part"))


def test_outputs_that_would_collide_are_reported(src, tmp_path):
    (tmp_path / "v0.mp4").symlink_to(src / "a/v0.mp4")
    (tmp_path / "v0.avi").symlink_to(src / "a/v1.mp4")  # would also become v0.mp4
    (tmp_path / "list.txt").write_text("v0.mp4 3\nv0.avi 1\nv0.mp4 3\n")  # a repeated line is fine
    report = prepare.prepare_list(
        str(tmp_path / "list.txt"), str(tmp_path / "out"), prepare.PrepareOptions(short_side=0), progress=False
    )
    assert [(line, reason) for line, _, reason in report.failed] == [
        (2, f"its output v0.mp4 is also the output of {tmp_path / 'v0.mp4'}")
    ]
    assert (tmp_path / "out/list.txt").read_text() == "v0.mp4 3\nv0.mp4 3\n"


def _crash_on_v1(task):
    if task[1].endswith("v1.mp4"):
        os._exit(1)  # as a segfault in a decoder or the OOM killer would end the worker
    return prepare.prepare_one(*task)


def test_a_dying_worker_is_reported_not_fatal(src, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_prepare_task", _crash_on_v1)
    report = prepare.prepare_list(
        str(src / "train.txt"), str(tmp_path / "out"), prepare.PrepareOptions(short_side=32), workers=2, progress=False
    )
    reasons = {os.path.relpath(path, src): reason for _, path, reason in report.failed}
    assert reasons["a/v1.mp4"].startswith("worker process died")
    listed = (tmp_path / "out/train.txt").read_text().splitlines()
    assert "a/v1.mp4 0" not in listed and len(listed) + len(reasons) == len(LIST)


def test_csv_list_stays_csv(src, tmp_path):
    (src / "list.csv").write_text("a/v0.mp4,3\nb/v3.mp4,2\n")
    proc = run_cli(
        str(src / "list.csv"),
        str(tmp_path / "out"),
        "--format",
        "csv",
        "--separator",
        ",",
        "--short-side",
        "0",
        "--workers",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/list.csv").read_text() == "a/v0.mp4,3\nb/v3.mp4,2\n"
    assert [it.label for it in read_list(str(tmp_path / "out/list.csv"), str(tmp_path / "out"), "csv", ",")] == [3, 2]
