"""Decoding with decord, torch-free (so `datasets.check` starts fast).

Decoding is almost all of the data pipeline's time, so a clip decodes only its sampled
frames, with ONE `get_batch` call on sorted, deduplicated indices (4-9x faster on H.264 than
unsorted ones), then re-expands them to the sampled order. `num_threads=1`: the DataLoader
workers are the parallelism. Frames are decoded at native size.
"""
from __future__ import annotations

import os
import re

import decord
import numpy as np


class BadVideoError(Exception):
    """A video that cannot give the requested frames; the message is the reason."""


def open_video(path: str) -> "decord.VideoReader":
    """Open a video with one decoding thread; BadVideoError names why it cannot be read
    (missing, empty file, decode error, zero frames)."""
    if not os.path.exists(path):
        raise BadVideoError("missing")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise BadVideoError("empty file")
    try:
        vr = decord.VideoReader(path, num_threads=1)
    except Exception as e:  # decord raises DECORDError (a RuntimeError) with ffmpeg's words
        raise BadVideoError(f"decode error: {_first_line(e)}") from None
    if len(vr) == 0:
        raise BadVideoError("zero frames")
    return vr


def read_frames(vr: "decord.VideoReader", indices: np.ndarray) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) as a (T, H, W, C) uint8 array, decoded
    with one `get_batch` of the sorted unique indices."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    try:
        frames = vr.get_batch(unique.tolist()).asnumpy()
    except Exception as e:
        if "size must exactly match" not in str(e):
            raise BadVideoError(f"decode error: {_first_line(e)}") from None
        frames = _read_frames_padded(vr, unique)
    if frames.shape[0] != len(unique) or frames.ndim != 4:
        raise BadVideoError(f"decode error: got {frames.shape[0]} of {len(unique)} frames")
    return frames[inverse.reshape(-1)]


def _read_frames_padded(vr: "decord.VideoReader", unique: np.ndarray) -> np.ndarray:
    # decord 0.6 bug (dmlc/decord#336): for some small widths (16, 24, 48, 72 px) it
    # mistakes the padded RGB row stride for a 4th channel, and get_batch fails. Frames read
    # one by one come back as (H, W, 4+) with each row padded: keep the first 3*W bytes.
    out = []
    for i in unique.tolist():
        try:
            f = vr[i].asnumpy()
        except Exception as e:
            raise BadVideoError(f"decode error: {_first_line(e)}") from None
        h, w = f.shape[:2]
        out.append(f.reshape(h, -1)[:, : 3 * w].reshape(h, w, 3) if f.shape[2] != 3 else f)
    return np.stack(out)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    # drop decord's "[12:00:00] /github/workspace/src/video/video_reader.cc:83: " prefix
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)[:300]
