"""A small real-codec action data set, and the mp4 writer the tests use.

`write_video` writes H.264 (libx264, yuv420p) mp4 files with PyAV.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np


def write_video(path: str, frames: np.ndarray, fps: float = 30, crf: int = 18, gop: Optional[int] = None,
                preset: str = "veryfast") -> str:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 mp4 (libx264, yuv420p, one encoder
    thread so the bytes depend only on the frames). H and W must be even (yuv420p).
    `gop`: keyframe interval (None: x264's default). The default preset keeps B-frames, as
    real videos have, so decoders are exercised on reordered frames."""
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
    with av.open(path, "w") as container:
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
