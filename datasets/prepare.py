"""Prepare a data set once for fast training: re-encode videos, extract frames, build lists.

    python -m action_launch.datasets.prepare SRC_LIST OUT_DIR [--root R] [--format video|csv] [--separator S]
        [--short-side 256] [--gop 16] [--fps F] [--crf 23] [--preset medium] [--tune fastdecode]
        [--bframes 0]
        [--frames] [--template img_{:05d}.jpg] [--workers N] [--out-list NAME]
    python -m action_launch.datasets.prepare --from-folders SRC_DIR OUT_DIR [--val-fraction 0.2] [--seed 0]

Re-encoding (the default): every video of the list becomes an H.264 mp4 (libx264, yuv420p,
no audio) under OUT_DIR at the same relative path (extension `.mp4`), scaled down so that its
short side is --short-side (aspect kept, both sides even; a video whose short side is already
at most --short-side keeps its size, never enlarged, as every video does with 0; the summary
counts them), with a keyframe exactly every --gop frames (scene-cut keyframes off) and, with
--fps, resampled to that rate (frames dropped or repeated). The defaults are chosen for random access, not for size: a
clip of sparse frames costs a seek to the keyframe before each frame plus the frames decoded
from there, so the keyframe interval bounds the work; x264's `fastdecode` tune (CAVLC instead
of CABAC, no deblocking) and no B-frames make every decoded frame cheaper, for files about a
third bigger at the same --crf and keyframe interval. `bench/data_pipeline.py --prepared` measures both parts on
256x256 videos written with x264's defaults (keyframe every 250 frames).
With --frames: every video becomes a folder of JPEGs named by --template (numbered from 1,
as mmaction2's raw frames are), same resize and resampling.

The new list (OUT_DIR/<name of SRC_LIST>, or --out-list) has the same labels, in the same
order, with paths relative to OUT_DIR: `path label` (csv lists stay csv) or, with --frames,
`frame_dir total_frames label`. The source root's classes.txt (--root, default the list's
folder), if it has one, is copied to OUT_DIR, so that OUT_DIR is a complete data root.

Videos are decoded and encoded one frame at a time with PyAV, in --workers processes, with a
progress bar and an ETA. A video that fails (missing, undecodable, truncated) is printed at
the end with its reason, left out of the new list, and makes the exit status 1; the good ones
are still listed. Exit status 2: the list itself is unusable.

Resumable and atomic: an output is written under a temporary name in its own folder
(`x.mp4.part`, `x.part/`), verified (decord reads back the frame count written; the JPEGs are
all there) and renamed into place; OUT_DIR/prepare_manifest.jsonl then records it with the
source's size, mtime and frame size, the options and the frame size written. A later run skips
an output whose record matches (the frame size too, as these options size it now) and that
still verifies, and redoes anything else: a leftover `.part` is overwritten, never taken
for complete. The list is written last (temporary file, then rename).

--from-folders: `SRC_DIR/class_name/video.ext` -> OUT_DIR/classes.txt (sorted class names, the
line number is the label) and OUT_DIR/train.txt, val.txt (`path label`, paths relative to
OUT_DIR), split per class with a seeded shuffle (stratified), --val-fraction of each class
going to val.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .lists import read_list

MANIFEST = "prepare_manifest.jsonl"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
X264_TUNES = {"film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency"}
JPEG_QSCALE = 2  # ffmpeg's -q:v 2: visually lossless, the usual choice for extracted frames


class PrepareError(Exception):
    """A video that cannot be prepared; the message is the reason."""


@dataclass(frozen=True)
class PrepareOptions:
    """What an output is made with; a finished output is reused only if these are equal."""

    short_side: int = 256
    """Largest short side in pixels (rounded to even): bigger videos are scaled down to it, the
    others keep their size (made even, never enlarged); 0 keeps every size."""
    gop: int = 16
    """Keyframe interval of re-encoded videos, exact (scene-cut keyframes are off)."""
    fps: Optional[float] = None
    """Output frame rate (frames dropped or repeated); None keeps every source frame."""
    crf: int = 23
    """x264 constant rate factor (quality; lower is better and bigger)."""
    preset: str = "medium"
    """x264 preset (speed of encoding vs size)."""
    tune: Optional[str] = "fastdecode"
    """x264 tune; `fastdecode` (no CABAC, no deblocking) decodes faster, files are bigger; None: no tune."""
    bframes: int = 0
    """Most consecutive B-frames (x264's default is 3); none means no reordering delay after a seek."""
    frames: bool = False
    """Extract JPEG frames to folders instead of re-encoding."""
    template: str = "img_{:05d}.jpg"
    """File name of frame k (from 1) in a frame folder."""


# --- sizes, rates and paths


def keeps_size(width: int, height: int, short_side: int) -> bool:
    """A video of this size is not scaled: its short side is at most `short_side`, or `short_side` is 0."""
    return not 0 < short_side < min(width, height)


def output_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """(width, height) of the copy, both even (yuv420p): scaled down to the short side
    `short_side` (aspect kept, rounded), or the source's own size (an odd side loses a pixel)
    when `keeps_size`; never larger than the source."""
    if keeps_size(width, height, short_side):
        return max(2, width - width % 2), max(2, height - height % 2)
    scale = short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return 30.0  # containers without a rate: assume the usual one


def resample(frames: Iterable, in_fps: float, out_fps: Optional[float]) -> Iterator:
    """Frames at `out_fps`, streaming: output frame j (time j / out_fps) is the last source
    frame shown at time (j + 0.5) / out_fps, so frames are dropped or repeated; the output
    lasts as long as the source. `out_fps` None yields every frame unchanged."""
    if out_fps is None:
        yield from frames
        return
    prev, t_prev, t0, j = None, 0.0, None, 0
    for i, frame in enumerate(frames):
        t = float(frame.time) if frame.time is not None else i / in_fps
        t0 = t if t0 is None else t0
        t -= t0
        if prev is not None:
            while (j + 0.5) / out_fps < t:
                yield prev
                j += 1
        prev, t_prev = frame, t
    if prev is not None:
        total = max(1, round((t_prev + 1.0 / in_fps) * out_fps))
        while j < total:
            yield prev
            j += 1


def output_relpath(src: str, root: str, frames: bool) -> str:
    """Where a source's copy goes under OUT_DIR: its path relative to `root` (an absolute
    path outside `root` loses its anchor), `.mp4` for a video, no extension for a folder."""
    rel = os.path.relpath(os.path.abspath(src), os.path.abspath(root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = os.path.abspath(src).lstrip(os.sep)
    stem = os.path.splitext(os.path.normpath(rel))[0]
    return (stem if frames else stem + ".mp4").replace(os.sep, "/")


# --- the work on one video (runs in a worker process; imports av and decord there)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _decoded(src: str):
    """(container, video stream, frame iterator) of a source; errors become PrepareError."""
    import av

    if not os.path.exists(src):
        raise PrepareError("missing")
    if os.path.isfile(src) and os.path.getsize(src) == 0:
        raise PrepareError("empty file")
    try:
        container = av.open(src)
    except av.error.FFmpegError as e:
        raise PrepareError(f"cannot open: {e}") from None
    if not container.streams.video:
        container.close()
        raise PrepareError("no video stream")
    stream = container.streams.video[0]
    return container, stream, container.decode(stream)


def _frames_checked(frames: Iterator, declared: int, counter: List[int]) -> Iterator:
    """Pass frames through, counting them; a decode error or a stream that ends well before
    the frame count its container declares is a truncated or corrupt file."""
    import av

    try:
        for frame in frames:
            counter[0] += 1
            # the source's frame types must not reach the encoder: libx264 keeps an input
            # I-frame as a keyframe, which would break the exact keyframe interval
            frame.pict_type = av.video.frame.PictureType.NONE
            yield frame
    except av.error.FFmpegError as e:
        raise PrepareError(f"decode error after {counter[0]} frames: {e}") from None
    if counter[0] == 0:
        raise PrepareError("zero frames")
    if declared and counter[0] < declared - max(2, declared // 50):  # a few frames short is common
        raise PrepareError(f"truncated: decoded {counter[0]} of the {declared} frames its container declares")


def encode_video(src: str, dst: str, opts: PrepareOptions) -> int:
    """Re-encode `src` to the H.264 mp4 `dst` (via `dst.part`, verified, then renamed);
    returns the number of frames written."""
    import av

    tmp = dst + ".part"
    _remove(tmp)
    container, stream, frames = _decoded(src)
    written = 0
    try:
        with container:
            in_fps = _stream_fps(stream)
            out_fps = opts.fps or in_fps
            width, height = output_size(stream.codec_context.width, stream.codec_context.height, opts.short_side)
            rate = _fraction(out_fps)
            with av.open(tmp, "w", format="mp4") as out:
                enc = out.add_stream("libx264", rate=rate)
                enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
                # one thread per encoder: the worker processes are the parallelism
                enc.options = {
                    "crf": str(opts.crf),
                    "preset": opts.preset,
                    "threads": "1",
                    "g": str(opts.gop),
                    "keyint_min": str(opts.gop),
                    "sc_threshold": "0",
                    "bf": str(opts.bframes),
                }
                if opts.tune:
                    enc.options = {**enc.options, "tune": opts.tune}
                source = _frames_checked(frames, stream.frames, [0])
                for frame in resample(source, in_fps, opts.fps):
                    frame = frame.reformat(width=width, height=height, format="yuv420p")
                    frame.pts, frame.time_base = written, 1 / rate
                    for packet in enc.encode(frame):
                        out.mux(packet)
                    written += 1
                for packet in enc.encode():
                    out.mux(packet)
        _verify_video(tmp, written)
        os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    return written


def source_size(src: str) -> Tuple[int, int]:
    """(width, height) of a source's video stream, from its header."""
    container, stream, _ = _decoded(src)
    with container:
        return stream.codec_context.width, stream.codec_context.height


def _verify_video(path: str, expected: int) -> None:
    from .decode import BadVideoError, open_video

    try:
        count = len(open_video(path))
    except BadVideoError as e:
        raise PrepareError(f"written copy unreadable: {e}") from None
    if count != expected:
        raise PrepareError(f"written copy has {count} frames, {expected} were encoded")


def extract_frames(src: str, dst: str, opts: PrepareOptions) -> int:
    """Write the frames of `src` as JPEGs into the folder `dst` (via `dst.part/`, then
    renamed); returns the number of frames written."""
    import av

    tmp = dst + ".part"
    _remove(tmp)
    container, stream, frames = _decoded(src)
    written = 0
    try:
        os.makedirs(tmp)
        with container:
            in_fps = _stream_fps(stream)
            width, height = output_size(stream.codec_context.width, stream.codec_context.height, opts.short_side)
            jpeg = av.CodecContext.create("mjpeg", "w")  # intra only: every packet is a whole JPEG
            jpeg.width, jpeg.height, jpeg.pix_fmt, jpeg.time_base = width, height, "yuvj420p", Fraction(1, 1)
            jpeg.options = {"qmin": str(JPEG_QSCALE), "qmax": str(JPEG_QSCALE)}
            for frame in resample(_frames_checked(frames, stream.frames, [0]), in_fps, opts.fps):
                frame = frame.reformat(width=width, height=height, format="yuvj420p")
                frame.pts, frame.time_base = written, jpeg.time_base
                data = b"".join(bytes(p) for p in jpeg.encode(frame))
                if not data:
                    raise PrepareError(f"JPEG encoder gave nothing for frame {written + 1}")
                written += 1
                with open(os.path.join(tmp, opts.template.format(written)), "wb") as f:
                    f.write(data)
        if count_frames(tmp, opts.template) != written:
            raise PrepareError("frame folder incomplete after writing")
        if os.path.exists(dst):  # a stale or outdated folder: swap, then delete it
            old = dst + ".old"
            _remove(old)
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    return written


def count_frames(folder: str, template: str) -> int:
    """k such that the template's frames 1..k are all in `folder` and not empty (0 if none)."""
    try:
        sizes = {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return 0
    k = 0
    while sizes.get(template.format(k + 1), 0) > 0:
        k += 1
    return k if k == len(sizes) else -1  # extra files: not a folder this tool finished


def _source_stamp(src: str) -> dict:
    st = os.stat(src)
    return {"src": os.path.abspath(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_finished(record: Optional[dict], src: str, dst: str, opts: PrepareOptions) -> bool:
    """The manifest record matches the source and options, and the output still verifies."""
    if not record or not os.path.exists(src):
        return False
    if record.get("options") != asdict(opts) or any(record.get(k) != v for k, v in _source_stamp(src).items()):
        return False
    source = record.get("source_frame_size")
    if not source or record.get("frame_size") != list(output_size(source[0], source[1], opts.short_side)):
        return False  # sized otherwise than these options size it now (enlarged by an older version)
    if opts.frames:
        return os.path.isdir(dst) and count_frames(dst, opts.template) == record.get("frames")
    if not os.path.isfile(dst) or os.path.getsize(dst) != record.get("bytes"):
        return False
    try:
        _verify_video(dst, record["frames"])
    except PrepareError:
        return False
    return True


def prepare_one(src: str, dst: str, opts: PrepareOptions, record: Optional[dict] = None) -> dict:
    """Prepare one video unless `record` shows it finished. Returns {"status": "skipped" |
    "done" | "failed", "frames", "record" (for the manifest), "reason"}; never raises for a bad
    video."""
    try:
        if record is not None and is_finished(record, src, dst, opts):
            return {"status": "skipped", "frames": record["frames"], "record": record}
        if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
            raise PrepareError("the output would overwrite the source (OUT_DIR is the source folder)")
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        stamp = _source_stamp(src) if os.path.exists(src) else {}  # a missing source fails in the encoder
        written = (extract_frames if opts.frames else encode_video)(src, dst, opts)
        width, height = source_size(src)
        record = {
            **stamp,
            "frames": written,
            "options": asdict(opts),
            "bytes": None if opts.frames else os.path.getsize(dst),
            "source_frame_size": [width, height],
            "frame_size": list(output_size(width, height, opts.short_side)),
        }
        return {"status": "done", "frames": written, "record": record}
    except PrepareError as e:
        return {"status": "failed", "reason": str(e)}
    except Exception as e:  # anything else about one video is that video's failure, reported
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}


def _prepare_task(task: tuple) -> dict:
    return prepare_one(*task)


# --- manifest and lists


def read_manifest(out_dir: str) -> Dict[str, dict]:
    """{output relpath: its latest record}; a torn last line (killed run) is ignored."""
    records: Dict[str, dict] = {}
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records[rec["out"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return records


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def copy_classes(root: str, out_dir: str) -> None:
    """Copy `root`/classes.txt to `out_dir` (temporary file, then rename), if it is there and
    not that file already."""
    src, dst = os.path.join(root, "classes.txt"), os.path.join(out_dir, "classes.txt")
    if os.path.isfile(src) and not (os.path.exists(dst) and os.path.samefile(src, dst)):
        shutil.copyfile(src, dst + ".part")
        os.replace(dst + ".part", dst)


def _list_line(fmt: str, separator: str, path: str, label, frames: int) -> str:
    if fmt == "rawframes":
        return f"{path} {frames} {label}\n"
    return f"{path}{separator if fmt == 'csv' else ' '}{label}\n"


@dataclass
class Report:
    """What a run did."""

    done: int = 0
    """Outputs written by this run."""
    skipped: int = 0
    """Outputs already finished and verified."""
    kept_size: int = 0
    """Outputs (done or skipped) at their source's own size: its short side was at most the target."""
    failed: List[Tuple[int, str, str]] = field(default_factory=list)
    """(list line, source path, reason) of every entry left out of the new list."""
    list_path: str = ""
    """The new list file."""


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="prepare", disable=not enabled)


def prepare_list(
    src_list: str,
    out_dir: str,
    opts: PrepareOptions,
    root: Optional[str] = None,
    fmt: str = "video",
    separator: str = " ",
    workers: int = 1,
    out_list: Optional[str] = None,
    progress: bool = True,
) -> Report:
    """Prepare every video of `src_list` into `out_dir` and write the new list (see the module
    docstring). Raises OSError/ValueError when the list itself is unusable."""
    if fmt not in ("video", "csv"):
        raise ValueError(f"--format must be video or csv, got {fmt!r}")
    if opts.gop < 1:
        raise ValueError(f"--gop must be >= 1, got {opts.gop}")
    if opts.fps is not None and opts.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {opts.fps}")
    if opts.frames:
        try:
            if opts.template.format(1) == opts.template.format(2):
                raise ValueError
        except (ValueError, IndexError, KeyError):
            raise ValueError(
                f"--template must number the frames, like img_{{:05d}}.jpg; got {opts.template!r}"
            ) from None
    root = root if root is not None else (os.path.dirname(src_list) or ".")
    items = read_list(src_list, root, fmt, separator)
    os.makedirs(out_dir, exist_ok=True)
    list_path = os.path.join(out_dir, out_list or os.path.basename(src_list))
    if os.path.exists(list_path) and os.path.samefile(list_path, src_list):
        raise ValueError(f"the new list would overwrite {src_list}; choose another OUT_DIR or --out-list")

    manifest = read_manifest(out_dir)
    report = Report(list_path=list_path)
    outputs: Dict[str, str] = {}  # output relpath -> source path (one source per output)
    results: Dict[str, dict] = {}
    tasks = []
    for item in items:
        rel = output_relpath(item.path, root, opts.frames)
        if rel in outputs:
            if os.path.abspath(outputs[rel]) != os.path.abspath(item.path):
                results.setdefault(
                    f"{rel}#{item.line}",
                    {"status": "failed", "reason": f"its output {rel} is also the output of {outputs[rel]}"},
                )
            continue
        outputs[rel] = item.path
        if opts.frames and any(c.isspace() for c in rel):
            results[rel] = {"status": "failed", "reason": "whitespace in the path: not allowed in a rawframes list"}
            continue
        tasks.append((rel, (item.path, os.path.join(out_dir, rel), opts, manifest.get(rel))))

    def finish(rel: str, result: dict, log) -> None:
        results[rel] = result
        if result["status"] == "done":
            log.write(json.dumps({"out": rel, **result["record"]}) + "\n")
            log.flush()  # one whole line per finished output: a kill tears at most the last
        if result["status"] == "failed":
            bar.set_postfix(failed=sum(r["status"] == "failed" for r in results.values()), refresh=False)
        bar.update(1)

    with open(os.path.join(out_dir, MANIFEST), "a", encoding="utf-8") as log:
        if workers > 1 and len(tasks) > 1:
            # the pool forks before the bar starts its monitor thread
            with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
                futures = {pool.submit(_prepare_task, task): rel for rel, task in tasks}
                with _progress_bar(len(tasks), progress) as bar:
                    for future in as_completed(futures):
                        try:
                            result = future.result()
                        except BrokenProcessPool as e:  # a worker killed (OOM, a crash in ffmpeg)
                            result = {"status": "failed", "reason": f"worker process died ({e}); run again to retry"}
                        finish(futures[future], result, log)
        else:
            with _progress_bar(len(tasks), progress) as bar:
                for rel, task in tasks:
                    finish(rel, _prepare_task(task), log)

    lines = []
    for item in items:
        rel = output_relpath(item.path, root, opts.frames)
        result = results.get(f"{rel}#{item.line}") or results[rel]
        if result["status"] == "failed":
            report.failed.append((item.line, item.path, result["reason"]))
            continue
        lines.append(_list_line("rawframes" if opts.frames else fmt, separator, rel, item.label, result["frames"]))
    report.done = sum(r["status"] == "done" for r in results.values())
    report.skipped = sum(r["status"] == "skipped" for r in results.values())
    sizes = [r["record"]["source_frame_size"] for r in results.values() if r["status"] != "failed"]
    report.kept_size = sum(keeps_size(width, height, opts.short_side) for width, height in sizes)
    copy_classes(root, out_dir)
    _write_atomic(list_path, "".join(lines))  # last: the list marks the prepared set usable
    return report


# --- lists from a folder layout


def lists_from_folders(src_dir: str, out_dir: str, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, int]:
    """Write classes.txt, train.txt and val.txt for `src_dir/class_name/video.ext`; returns
    {"classes", "train", "val"} counts. Each class is shuffled with a generator seeded by
    (seed, class name) and round(val_fraction * n) of its videos go to val (at least one
    when the class has two or more and the fraction is > 0; never all)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"source folder not found: {src_dir}")
    classes = sorted(e.name for e in os.scandir(src_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{src_dir} has no class folders (expected {src_dir}/class_name/video.mp4)")
    if any(c.isspace() for name in classes for c in name):
        raise ValueError(f"class names may not contain whitespace (classes.txt is one name a line): {classes}")
    os.makedirs(out_dir, exist_ok=True)
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    for label, name in enumerate(classes):
        folder = os.path.join(src_dir, name)
        videos = sorted(
            e.name
            for e in os.scandir(folder)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(VIDEO_EXTENSIONS)
        )
        random.Random(f"{seed}/{name}").shuffle(videos)
        n_val = round(val_fraction * len(videos))
        if val_fraction > 0 and len(videos) >= 2:
            n_val = min(max(n_val, 1), len(videos) - 1)
        for k, video in enumerate(videos):
            rel = os.path.relpath(os.path.join(folder, video), out_dir).replace(os.sep, "/")
            splits["val" if k < n_val else "train"].append(f"{rel} {label}\n")
    _write_atomic(os.path.join(out_dir, "classes.txt"), "".join(f"{name}\n" for name in classes))
    for split, lines in splits.items():  # the lists last
        _write_atomic(os.path.join(out_dir, f"{split}.txt"), "".join(sorted(lines)))
    return {"classes": len(classes), "train": len(splits["train"]), "val": len(splits["val"])}


# --- command line


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m action_launch.datasets.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("src", help="list file to prepare (with --from-folders: the folder of class folders)")
    parser.add_argument("out_dir", help="folder for the prepared copies and the new list(s)")
    parser.add_argument("--root", help="folder the list's relative paths resolve against (default: the list's folder)")
    parser.add_argument("--format", default="video", choices=("video", "csv"), help="format of the source list")
    parser.add_argument("--separator", default=" ", help="field separator of csv lists")
    parser.add_argument(
        "--short-side",
        type=int,
        default=256,
        help="largest short side of the copies: bigger videos are scaled down to it, smaller ones "
        "keep their size (0: keep every size)",
    )
    parser.add_argument("--gop", type=int, default=16, help="keyframe interval of the re-encoded videos")
    parser.add_argument("--fps", type=float, help="frame rate of the copies (default: the source's, every frame)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (lower: better, bigger)")
    parser.add_argument("--preset", default="medium", help="x264 preset (ultrafast ... veryslow)")
    parser.add_argument(
        "--tune",
        default="fastdecode",
        help="x264 tune (default fastdecode: decodes faster, files bigger; 'none': no tune)",
    )
    parser.add_argument("--bframes", type=int, default=0, help="most consecutive B-frames (x264's default: 3)")
    parser.add_argument("--frames", action="store_true", help="extract JPEG frames to folders instead")
    parser.add_argument("--template", default="img_{:05d}.jpg", help="frame file name, numbered from 1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    parser.add_argument("--out-list", help="name of the new list in OUT_DIR (default: the source list's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--from-folders",
        action="store_true",
        help="build classes.txt, train.txt and val.txt from SRC/class_name/video.ext",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="with --from-folders: share of each class in val"
    )
    parser.add_argument("--seed", type=int, default=0, help="with --from-folders: seed of the split")
    a = parser.parse_args(argv)
    if a.bframes < 0:
        parser.error(f"--bframes must be 0 or more, got {a.bframes}")
    unknown_tunes = sorted(set(a.tune.split(",")) - X264_TUNES - {"none"})
    if unknown_tunes:
        parser.error(
            f"--tune {a.tune}: unknown x264 tune {', '.join(unknown_tunes)}; "
            f"choose from {', '.join(sorted(X264_TUNES))} or none"
        )

    if a.from_folders:
        try:
            counts = lists_from_folders(a.src, a.out_dir, a.val_fraction, a.seed)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(
            f"{a.out_dir}: {counts['classes']} classes, {counts['train']} train + {counts['val']} val videos "
            f"(classes.txt, train.txt, val.txt)"
        )
        return 0

    opts = PrepareOptions(
        short_side=a.short_side,
        gop=a.gop,
        fps=a.fps,
        crf=a.crf,
        preset=a.preset,
        tune=None if a.tune == "none" else a.tune,
        bframes=a.bframes,
        frames=a.frames,
        template=a.template,
    )
    t0 = time.time()
    try:
        report = prepare_list(
            a.src, a.out_dir, opts, a.root, a.format, a.separator, a.workers, a.out_list, progress=not a.no_progress
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line, path, reason in report.failed:
        print(f"{a.src}:{line}: {path}: {reason}")
    kind = "frame folders" if opts.frames else "videos"
    kept = (
        f"{report.kept_size} kept at their own size (short side at most {opts.short_side}, never enlarged); "
        if opts.short_side > 0
        else ""
    )
    print(
        f"{report.list_path}: {report.done + report.skipped} {kind} ({report.done} prepared now, "
        f"{report.skipped} already done), {len(report.failed)} failed and left out; {kept}"
        f"{time.time() - t0:.1f}s",
        file=sys.stderr,
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
