"""A small real-codec action data set, told apart only by motion, and its mp4 writer.

    python -m action_launch.datasets.synthetic data/synthetic [--num-train 160] [--num-val 64] [--size 64]
        [--frames 48] [--fps 30] [--seed 0] [--classes 4]

Each video: a bright square or disc (random colour) on a static random texture. The shape
stands still except during a motion window of a third of the video (random start), during
which, by class: 0 `up` / 1 `down` it slides by 3/8 of the frame, 2 `grow` / 3 `shrink` its
side goes between 1/8 and 3/8 of the frame; with --classes 5-6, 4 `right` / 5 `left` (these
two need `data.flip: false`: a horizontal flip swaps them; the first four survive flips).
A single frame says nothing about the class: position and size take, for every class, the
distribution they have over the frames of the class that changes them. So a clip must span
the motion window: frames x sampling rate matters (8 x 6 covers all 48 frames).

Files: `train/0000.mp4 ...`, `val/...` (H.264 via PyAV, libx264, yuv420p), `classes.txt`,
`synthetic.json` (the parameters) and the lists `train.txt` / `val.txt` (`path label`),
written last and atomically: a folder whose lists exist and whose parameters match is
complete, and is not generated again. Everything is derived from the seed: one seed gives
the same files byte for byte.

Default size 64, not 48: decord 0.6 mis-decodes 16/24/48/72-pixel-wide videos
(dmlc/decord#336; `datasets.decode.read_frames` works around it, but on a slower path).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

# The first four classes are unchanged by a horizontal flip (training flips by default);
# left/right (with --classes 5-6) need data.flip: false.
CLASS_NAMES = ["up", "down", "grow", "shrink", "right", "left"]
MOVES = {"up": (0, -1), "down": (0, 1), "right": (1, 0), "left": (-1, 0)}  # name -> (dx, dy)
SPLIT_IDS = {"train": 0, "val": 1}
FORMAT_VERSION = 2  # bump when render() changes: existing sets are then regenerated


def write_video(
    path: str,
    frames: np.ndarray,
    fps: float = 30,
    crf: int = 18,
    gop: Optional[int] = None,
    preset: str = "veryfast",
    faststart: bool = False,
) -> str:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 mp4 (libx264, yuv420p, one encoder
    thread so the bytes depend only on the frames). H and W must be even (yuv420p).
    `gop`: keyframe interval (None: x264's default). The default preset keeps B-frames, as
    real videos have, so decoders are exercised on reordered frames. `faststart` puts the
    index (moov) before the data, as streaming files have."""
    import av  # only the writer needs PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    options = {"crf": str(crf), "preset": preset, "threads": "1"}
    if gop is not None:
        options["g"] = str(gop)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = options
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def _mixture(rng: np.random.Generator, lo: float, hi: float) -> float:
    """lo or hi or uniform in between, each a third of the time: the distribution a quantity
    takes over the frames of a video that moves it from lo to hi during the middle third."""
    pick = int(rng.integers(0, 3))
    return (lo, hi, float(rng.uniform(lo, hi)))[pick]


def render(rng: np.random.Generator, label: int, size: int = 64, frames: int = 48) -> np.ndarray:
    """One clip of class `label` as (frames, size, size, 3) uint8; all randomness from `rng`.

    Every quantity a class changes (vertical or horizontal position, size) is, for the
    classes that do not change it, drawn from the distribution it has over the frames of the
    classes that do: so the marginal of any single frame is the same for every class.
    """
    name = CLASS_NAMES[label]
    small, large = size / 8, 3 * size / 8  # shape side range
    travel = 3 * size / 8  # distance moved by up/down/left/right
    # static textured background: coarse blobs plus fine grain, darker than the shape
    coarse = rng.integers(0, 70, (size // 8 + 1, size // 8 + 1, 3))
    background = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:size, :size] + rng.integers(0, 30, (size, size, 3))
    background = background.astype(np.uint8)
    colour = rng.integers(160, 256, 3).astype(np.uint8)
    disc = bool(rng.integers(0, 2))
    # centre: a random midpoint, then per axis an offset in [-travel/2, travel/2]: moving
    # from one end to the other for the class moving along it, else a static draw
    room = size / 2 - large / 2 - travel / 2 - 1
    mid = size / 2 + rng.uniform(-room, room, 2)
    offsets = [_mixture(rng, -travel / 2, travel / 2) for _ in range(2)]
    side = _mixture(rng, small, large)
    window = max(2, round(frames / 3))
    start_t = int(rng.integers(0, frames - window + 1))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        # 0 before the window, 1 after, (i + 0.5) / window at its i-th frame: symmetric, so
        # frames before and after are equally frequent over the data set
        p = min(max((t - start_t + 0.5) / window, 0.0), 1.0)
        ox, oy = offsets
        k = side
        if name in MOVES:
            dx, dy = MOVES[name]
            ox = ox if dx == 0 else dx * travel * (p - 0.5)
            oy = oy if dy == 0 else dy * travel * (p - 0.5)
        elif name == "grow":
            k = small + (large - small) * p
        elif name == "shrink":
            k = large - (large - small) * p
        cx, cy = mid[0] + ox, mid[1] + oy
        if disc:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (k / 2) ** 2
        else:
            mask = (np.abs(xx - cx) <= k / 2) & (np.abs(yy - cy) <= k / 2)
        out[t] = background
        out[t][mask] = colour
    return out


def _params(num_train, num_val, size, frames, fps, seed, classes) -> dict:
    return dict(
        version=FORMAT_VERSION,
        num_train=num_train,
        num_val=num_val,
        size=size,
        frames=frames,
        fps=fps,
        seed=seed,
        classes=classes,
    )


def is_complete(out_dir, params: dict) -> bool:
    """Lists, classes and parameters present, parameters equal, every listed video there."""
    out = Path(out_dir)
    try:
        if json.loads((out / "synthetic.json").read_text()) != params:
            return False
        for split in SPLIT_IDS:
            lines = (out / f"{split}.txt").read_text().split("\n")
            paths = [line.rsplit(" ", 1)[0] for line in lines if line.strip()]
            if len(paths) != params[f"num_{split}"] or not all((out / p).is_file() for p in paths):
                return False
    except (OSError, ValueError):
        return False
    return (out / "classes.txt").is_file()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate(
    out_dir,
    num_train: int = 160,
    num_val: int = 64,
    size: int = 64,
    frames: int = 48,
    fps: float = 30,
    seed: int = 0,
    classes: int = 4,
    force: bool = False,
) -> Path:
    """Write the data set into `out_dir` (skipped when a complete one with the same
    parameters is there, unless `force`) and return its path. Labels are balanced: video i
    of a split has label i % classes."""
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be in [2, {len(CLASS_NAMES)}], got {classes}")
    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if frames < 6:
        raise ValueError(f"frames must be >= 6, got {frames}")
    out = Path(out_dir)
    params = _params(num_train, num_val, size, frames, fps, seed, classes)
    if not force and is_complete(out, params):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "val.txt", "synthetic.json"):  # an interrupted run is incomplete
        if (out / name).exists():
            (out / name).unlink()
    lists = {}
    for split, count in (("train", num_train), ("val", num_val)):
        (out / split).mkdir(exist_ok=True)
        lines: List[str] = []
        for i in range(count):
            label = i % classes
            rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
            rel = f"{split}/{i:04d}.mp4"
            write_video(str(out / rel), render(rng, label, size, frames), fps=fps)
            lines.append(f"{rel} {label}\n")
        lists[split] = "".join(lines)
    _write_atomic(out / "classes.txt", "".join(f"{name}\n" for name in CLASS_NAMES[:classes]))
    _write_atomic(out / "synthetic.json", json.dumps(params, indent=1) + "\n")
    for split, text in lists.items():  # the lists last: they mark the set complete
        _write_atomic(out / f"{split}.txt", text)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m action_launch.datasets.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", help="folder to write (e.g. data/synthetic)")
    parser.add_argument("--num-train", type=int, default=160, help="training videos")
    parser.add_argument("--num-val", type=int, default=64, help="validation videos")
    parser.add_argument("--size", type=int, default=64, help="frame width and height (even)")
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--fps", type=float, default=30, help="frame rate")
    parser.add_argument("--seed", type=int, default=0, help="everything derives from it")
    parser.add_argument("--classes", type=int, default=4, help=f"motion classes, 2-{len(CLASS_NAMES)}")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    a = parser.parse_args(argv)
    params = _params(a.num_train, a.num_val, a.size, a.frames, a.fps, a.seed, a.classes)
    if not a.force and is_complete(a.out_dir, params):
        print(f"{a.out_dir}: complete synthetic set already there, nothing to do")
        return 0
    t0 = time.time()
    generate(a.out_dir, a.num_train, a.num_val, a.size, a.frames, a.fps, a.seed, a.classes, force=True)
    print(
        f"{a.out_dir}: wrote {a.num_train} train + {a.num_val} val videos "
        f"({a.classes} classes) in {time.time() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
