"""Decoding video files: with decord (the default, torch-free, so `datasets.check` starts fast) or torchcodec
(`data.decoder=torchcodec`: the PyTorch project's decoder over the system's FFmpeg libraries, imported only then).

Decoding is almost all of the data pipeline's time, so a clip decodes only its sampled
frames, with ONE batch call on sorted, deduplicated indices (4-9x faster on H.264 than
unsorted ones), then re-expands them to the sampled order. One decoding thread: the DataLoader
workers are the parallelism. Frames are decoded at native size. Both backends index frames as a
full scan of the file finds them and give the same pixels (tests/test_data_video.py);
`bench/data_pipeline.py` compares their speed.

decord and FFmpeg print their errors straight to the process's stderr, interleaved with the
run's log; those lines are caught here and become the reason of the `BadVideoError` instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import IO, Iterator, List, Optional, Sequence, Tuple, Union

import decord
import numpy as np

from .config import DECODERS

# decord's C++ log ("[12:00:00] /github/workspace/src/video/video_reader.cc:83: ...") and FFmpeg's
# ("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55be2c9738c0] moov atom not found"); group 1 is the message
_DECODER_LINE = re.compile(r"^(?:\[[\d:]+\] \S+:\d+: |\[[^\]]+ @ 0x[0-9a-f]+\] )(.*)$")
_capture_lock = threading.Lock()
_capture_file: Optional[Tuple[int, IO[bytes]]] = None  # (pid, file): one per process, forked workers included


class BadVideoError(Exception):
    """A video that cannot give the requested frames; the message is the reason."""


class TorchcodecVideo:
    """A torchcodec `VideoDecoder` (one FFmpeg thread, frames indexed by an exact scan as decord indexes them,
    (T, H, W, C) batches) with the calls the datasets make of a decord reader: `len`, `get_avg_fps`,
    `get_frame_timestamp`, and `frames` for `read_frames`."""

    def __init__(self, path: str):
        self.decoder = _torchcodec_decoder()(path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")

    def __len__(self) -> int:
        return len(self.decoder)

    def get_avg_fps(self) -> float:
        """The container's frame rate, as decord reports it (the scan's frames / duration where it has none)."""
        meta = self.decoder.metadata
        return float(meta.average_fps_from_header or meta.average_fps or 0.0)

    def get_frame_timestamp(self, indices: Sequence[int]) -> np.ndarray:
        """(start, end) seconds of frames `indices` as decord's (N, 2) float32; decodes them (torchcodec has no
        public table of timestamps), which only `protocols.stream_timing`'s fallback asks for."""
        batch = self.decoder.get_frames_at([int(i) for i in indices])
        start = batch.pts_seconds.numpy()
        return np.stack([start, start + batch.duration_seconds.numpy()], axis=1).astype(np.float32)

    def frames(self, indices: List[int]) -> np.ndarray:
        """Frames `indices` (sorted, unique) as a (T, H, W, C) uint8 array."""
        return self.decoder.get_frames_at(indices).data.numpy()


def _torchcodec_decoder() -> type:
    """torchcodec's `VideoDecoder`; a RuntimeError that says what to install where it cannot load (a set-up
    error of every file alike, not a bad file)."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # ImportError, or the RuntimeError of a library that cannot load (FFmpeg, torch ABI)
        raise RuntimeError(
            f"data.decoder=torchcodec: torchcodec cannot load ({_first_line(e)}); install it with "
            "pip install 'torchcodec>=0.12' (a build for this torch) and FFmpeg's shared libraries (Debian: apt-get "
            "install ffmpeg), or use data.decoder=decord"
        ) from None
    return VideoDecoder


Video = Union["decord.VideoReader", TorchcodecVideo]
"""An open video file: `len` frames, `get_avg_fps()`, `get_frame_timestamp(indices)`, read with `read_frames`."""


def open_video(path: str, decoder: str = "decord") -> Video:
    """Open a video with one decoding thread, with `decoder` (`DECODERS`); BadVideoError names why it cannot be
    read (missing, empty file, decode error, zero frames)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown data.decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    if not os.path.exists(path):
        raise BadVideoError("missing")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise BadVideoError("empty file")
    if decoder == "torchcodec":
        _torchcodec_decoder()  # a missing torchcodec or FFmpeg is said once, not as every file's decode error
    opener = TorchcodecVideo if decoder == "torchcodec" else lambda p: decord.VideoReader(p, num_threads=1)
    # Only the message leaves an except block: a kept exception's traceback holds the reader in a cycle,
    # and a reader the garbage collector frees later in a forked DataLoader worker aborts the process.
    vr: Optional[Video] = None
    with _decoder_messages() as said:
        try:
            vr, error = opener(path), ""
        except Exception as e:  # decord raises DECORDError (a RuntimeError); the details went to stderr
            error = _first_line(e)
    if vr is None:
        raise BadVideoError(f"decode error: {_reason(error, said)}")
    if len(vr) == 0:
        raise BadVideoError("zero frames")
    return vr


def read_frames(vr: Video, indices: np.ndarray) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) as a (T, H, W, C) uint8 array, decoded
    with one batch call (decord's `get_batch`, torchcodec's `get_frames_at`) of the sorted unique indices."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    frames: Optional[np.ndarray] = None
    with _decoder_messages() as said:
        try:
            if isinstance(vr, TorchcodecVideo):
                frames, error = vr.frames(unique.tolist()), ("", "")
            else:
                frames, error = vr.get_batch(unique.tolist()).asnumpy(), ("", "")
        except Exception as e:  # the message only (see open_video)
            error = (str(e), _first_line(e))
    if frames is None:
        if "size must exactly match" not in error[0] or isinstance(vr, TorchcodecVideo):
            raise BadVideoError(f"decode error: {_reason(error[1], said)}")
        frames = _read_frames_padded(vr, unique)
    if frames.shape[0] != len(unique) or frames.ndim != 4:
        raise BadVideoError(f"decode error: got {frames.shape[0]} of {len(unique)} frames")
    return frames[inverse.reshape(-1)]


def _read_frames_padded(vr: decord.VideoReader, unique: np.ndarray) -> np.ndarray:
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


@contextlib.contextmanager
def _decoder_messages() -> Iterator[List[str]]:
    """Catch what is written to this process's stderr (fd 2) meanwhile: decord's and FFmpeg's lines go to
    the list yielded (their messages), anything else is written back to stderr afterwards."""
    said: List[str] = []
    with _capture_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no stderr to borrow: decode without catching
            yield said
            return
        capture = _process_capture_file()
        capture.seek(0)
        capture.truncate()
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            others = []
            for line in capture.read().decode(errors="replace").splitlines():
                match = _DECODER_LINE.match(line)
                (said.append(match.group(1).strip()) if match else others.append(line))
            if others:
                os.write(2, ("\n".join(others) + "\n").encode())


def _process_capture_file() -> IO[bytes]:
    global _capture_file
    if _capture_file is None or _capture_file[0] != os.getpid():
        _capture_file = (os.getpid(), tempfile.TemporaryFile())  # noqa: SIM115 - kept for the process's life
        atexit.register(_capture_file[1].close)
    return _capture_file[1]


def _reason(message: str, said: List[str]) -> str:
    """FFmpeg's or decord's own words when they printed any (the exception itself only says
    "Error reading <path>..."), else the exception's first line (`message`)."""
    return "; ".join(dict.fromkeys(said))[:300] if said else message


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    # drop decord's "[12:00:00] /github/workspace/src/video/video_reader.cc:83: " prefix, and torchcodec's
    # "SingleStreamDecoder, /__w/torchcodec/.../SingleStreamDecoder.cpp:52, "
    line = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", line)[:300]
