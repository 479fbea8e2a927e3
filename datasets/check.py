"""Scan a list for unreadable entries without training.

    python -m action_launch.datasets.check LIST [--root R] [--format video|csv|multilabel|rawframes]
        [--separator S] [--prefix P] [--num-frames N --sampling-rate S [--short-video loop|clamp]] [--jobs J]
        [--frame-template T --start-index I]

Reports every bad entry as `list:line: path: reason`, the reason being one of: missing,
empty file, zero frames, decode error: ..., too short: ... (fewer frames than the clip span,
when --num-frames and --sampling-rate are given and the training would not loop the clip; the
span is rescaled by the file's fps as in training). Short clips are judged by the training's
rule (`sampling.loops_short_videos`): with --short-video loop, `data.short_video`'s default, a
video shorter than the clip loops and is readable; with clamp it is reported. A video counts as
readable when it opens and its first frame, the centred clip training reads and its last frame
decode. A frame folder counts as readable when it holds the listed number of
frames; with --frame-template (e.g. `img_{:05d}.jpg`) every listed frame file must exist under
its templated name and the first, middle and last must decode (missing frames: ..., decode
error: ...). Exit status 1 if any entry is bad, 2 if the list itself is unusable.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

from .config import DECODERS, ClipConfig, VideoFilesConfig
from .lists import FORMATS, ListItem, read_list
from .sampling import SHORT_VIDEO, clip_indices, frame_stride, loops_short_videos


class Probe(NamedTuple):
    """What the scan found for one list entry: the reason it is unreadable (None if readable) and, when it
    opened, its frame count and fps (None for frame folders)."""

    item: ListItem
    reason: Optional[str]
    frames: Optional[int] = None
    fps: Optional[float] = None


def probe_video(
    path: str,
    num_frames: Optional[int] = None,
    sampling_rate: Optional[float] = None,
    target_fps: float = 30.0,
    short_video: str = ClipConfig.short_video,
    decoder: str = VideoFilesConfig.decoder,
) -> Tuple[Optional[str], Optional[int], Optional[float]]:
    """(reason or None if readable, frame count, fps) of a video, opened with `decoder` as training opens it. With
    `num_frames` and `sampling_rate`, the centred clip is decoded as training reads it (`short_video`: looped or
    clamped), and a video shorter than the clip is `too short` unless the training loops it
    (`sampling.loops_short_videos`)."""
    from .decode import BadVideoError, open_video, read_frames  # decord only when checking videos

    n = fps = None
    try:
        vr = open_video(path, decoder)
        n, fps = len(vr), vr.get_avg_fps()
        probe = [0, n - 1]
        if num_frames and sampling_rate:
            probe += clip_indices(
                n, num_frames, sampling_rate, fps, target_fps, mode="test", short_video=short_video
            ).tolist()
        read_frames(vr, np.array(probe))
    except BadVideoError as e:
        return str(e), n, fps
    if num_frames and sampling_rate and not loops_short_videos("dense", short_video):
        span = _span(num_frames, sampling_rate, fps, target_fps)
        if n < span:
            return (
                (
                    f"too short: {n} frames at {fps:g} fps, the clip spans {span:g} (short_video={short_video} "
                    f"repeats its last frame)"
                ),
                n,
                fps,
            )
    return None, n, fps


def check_video(
    path: str,
    num_frames: Optional[int] = None,
    sampling_rate: Optional[float] = None,
    target_fps: float = 30.0,
    short_video: str = ClipConfig.short_video,
) -> Optional[str]:
    """None if the video is readable (and, unless the training loops it, long enough for the clip), else the
    reason."""
    return probe_video(path, num_frames, sampling_rate, target_fps, short_video)[0]


def _span(num_frames: int, sampling_rate: float, fps: Optional[float], target_fps: float) -> float:
    # frames of a file at `fps` that one dense clip covers, as `clip_indices` spans them
    return num_frames * frame_stride(sampling_rate, fps, target_fps)


def check_frames(
    path: str,
    listed: Optional[int],
    num_frames: Optional[int] = None,
    template: Optional[str] = None,
    start_index: int = 1,
) -> Optional[str]:
    """None if a frame folder exists and holds the frames the list says, else the reason.
    With `template`, the listed frames are looked up by name and three of them decoded."""
    if not os.path.exists(path):
        return "missing"
    if not os.path.isdir(path):
        return "not a folder"
    count = sum(1 for e in os.scandir(path) if e.is_file() and e.stat().st_size > 0)
    if count == 0:
        return "zero frames"
    if listed is not None and count < listed:
        return f"frame count: the list says {listed}, the folder has {count}"
    if num_frames and count < num_frames:
        return f"too short: {count} frames for {num_frames} segments"
    if template and listed:
        return _check_templated(path, listed, template, start_index)
    return None


def _check_templated(path: str, listed: int, template: str, start_index: int) -> Optional[str]:
    from .decode import BadVideoError
    from .rawframes import frame_path, load_image  # Pillow only when frames are decoded

    names = {e.name for e in os.scandir(path)}
    missing = [os.path.basename(frame_path(path, i, template, start_index)) for i in range(listed)]
    missing = [m for m in missing if m not in names]
    if missing:
        return f"missing frames: {len(missing)} of {listed} (first: {missing[0]})"
    try:
        for i in sorted({0, listed // 2, listed - 1}):
            load_image(frame_path(path, i, template, start_index))
    except BadVideoError as e:
        return str(e)
    return None


def _check(args: tuple) -> Probe:
    item, fmt, num_frames, rate, target_fps, template, start_index, short_video, decoder = args
    if fmt == "rawframes":
        reason = check_frames(item.path, item.num_frames, num_frames, template, start_index)
        return Probe(item, reason, item.num_frames if reason is None else None)
    return Probe(item, *probe_video(item.path, num_frames, rate, target_fps, short_video, decoder))


def probe(
    items: List[ListItem],
    fmt: str,
    num_frames: Optional[int] = None,
    sampling_rate: Optional[float] = None,
    target_fps: float = 30.0,
    jobs: int = 1,
    frame_template: Optional[str] = None,
    start_index: int = 1,
    short_video: str = ClipConfig.short_video,
    decoder: str = VideoFilesConfig.decoder,
) -> List[Probe]:
    """A `Probe` of every item, in list order."""
    work = [
        (it, fmt, num_frames, sampling_rate, target_fps, frame_template, start_index, short_video, decoder)
        for it in items
    ]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(_check, work, chunksize=16))
    return [_check(w) for w in work]


def scan(items: List[ListItem], fmt: str, **options: Any) -> List[Tuple[ListItem, str]]:
    """(item, reason) for every bad item, in list order; `options` as `probe` takes them."""
    return [(p.item, p.reason) for p in probe(items, fmt, **options) if p.reason is not None]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m action_launch.datasets.check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("list", help="list file to scan")
    parser.add_argument("--root", help="folder relative paths resolve against (default: the list's folder)")
    parser.add_argument("--format", default="video", choices=FORMATS, help="list format")
    parser.add_argument("--separator", default=" ", help="field separator of csv lists")
    parser.add_argument("--prefix", default="", help="path prefix joined to every entry")
    parser.add_argument("--num-frames", type=int, help="frames per clip (segments for rawframes)")
    parser.add_argument(
        "--sampling-rate", type=float, help="stride at --target-fps; with --num-frames, flags short videos"
    )
    parser.add_argument("--target-fps", type=float, default=30.0, help="frame rate the stride is defined at")
    parser.add_argument(
        "--short-video",
        default=ClipConfig.short_video,
        choices=SHORT_VIDEO,
        help="as data.short_video: a video shorter than the clip loops (readable) or clamps (reported "
        "too short); default: the training's",
    )
    parser.add_argument(
        "--decoder",
        default=VideoFilesConfig.decoder,
        choices=DECODERS,
        help="as data.decoder: the library that opens the videos; default: the training's",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes to scan with")
    parser.add_argument("--frame-template", help="rawframes: frame file name template, e.g. 'img_{:05d}.jpg'")
    parser.add_argument("--start-index", type=int, default=1, help="rawframes: number of the first frame file")
    a = parser.parse_args(argv)
    root = a.root if a.root is not None else (os.path.dirname(a.list) or ".")
    try:
        items = read_list(a.list, root, a.format, a.separator, a.prefix)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    probes = probe(
        items,
        a.format,
        a.num_frames,
        a.sampling_rate,
        a.target_fps,
        a.jobs,
        a.frame_template,
        a.start_index,
        a.short_video,
        a.decoder,
    )
    bad = [p for p in probes if p.reason is not None]
    for p in bad:
        print(f"{a.list}:{p.item.line}: {p.item.path}: {p.reason}")
    summary = f"{len(bad)} of {len(items)} entries unreadable" if bad else f"all {len(items)} entries readable"
    looped = _looped(probes, a) if a.format != "rawframes" else 0
    print(
        summary + (f"; {looped} shorter than the clip, which training loops (data.short_video=loop)" if looped else ""),
        file=sys.stderr,
    )
    return 1 if bad else 0


def _looped(probes: List[Probe], a: argparse.Namespace) -> int:
    """How many readable videos are shorter than the clip and looped by the training's rule (said, not reported)."""
    if not (a.num_frames and a.sampling_rate and loops_short_videos("dense", a.short_video)):
        return 0
    return sum(
        1
        for p in probes
        if p.reason is None
        and p.frames is not None
        and p.frames < _span(a.num_frames, a.sampling_rate, p.fps, a.target_fps)
    )


if __name__ == "__main__":
    sys.exit(main())
