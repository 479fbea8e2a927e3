"""`RawFrameDataset`: clips from folders of JPEG/PNG frames (mmaction2 `rawframes` lists,
`frame_dir total_frames label`), as TSN, TSM/DyReg and ST-ABN train on Something-Something.

Frame i of a clip (0-based, as the samplers count) is the file
`frame_dir / cfg.frame_template.format(cfg.frame_start_index + i)`, e.g. `img_00001.jpg` for
i = 0 with `img_{:05d}.jpg` and start index 1. The frame count comes from the list, so only
the sampled frames are ever opened (each distinct one once). Sampling, transforms, the
multi-view test split and bad-file skipping are `ClipDataset`'s, shared with `VideoDataset`:
a missing folder, a zero frame count, or a missing or undecodable frame file makes the item
a bad file (skipped, said once in a log line, logged). Frames decode with Pillow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .config import ListedClipConfig
from .decode import BadVideoError
from .lists import ListItem
from .protocols import Source
from .registry import register_kind
from .video import ClipDataset, Opened


@dataclass
class RawFramesConfig(ListedClipConfig):
    """`data.dataset=rawframes`: clips read from folders of JPEG/PNG frames (`rawframes` lists)."""

    dataset: str = "rawframes"
    """`rawframes`."""
    frame_template: str = "img_{:05d}.jpg"
    """File name of frame i inside a frame folder (`str.format` of the frame number)."""
    frame_start_index: int = 1
    """Number of a folder's first frame file (0 or 1)."""


def load_image(path: str) -> np.ndarray:
    """One frame file as an (H, W, 3) uint8 RGB array; BadVideoError if it cannot be read."""
    from PIL import Image, UnidentifiedImageError  # only the raw-frame datasets need Pillow

    if not os.path.isfile(path):
        raise BadVideoError(f"missing frame {os.path.basename(path)}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise BadVideoError(f"decode error: {os.path.basename(path)}: {e}") from None


def frame_path(frame_dir: str, index: int, template: str, start_index: int) -> str:
    """Path of the 0-based frame `index` of a folder."""
    return os.path.join(frame_dir, template.format(start_index + int(index)))


def read_frame_folder(frame_dir: str, indices: np.ndarray, template: str, start_index: int) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of a folder as (T, H, W, 3) uint8; each
    distinct frame file is opened once."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    frames = [load_image(frame_path(frame_dir, i, template, start_index)) for i in unique.tolist()]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise BadVideoError(f"frames of different sizes {sorted(shapes)}")
    return np.stack(frames)[inverse.reshape(-1)]


@register_kind(RawFramesConfig)
class RawFrameDataset(ClipDataset):
    """Clips from the frame folders of a `rawframes` list; see the module docstring.

    `dataset[i]` / `dataset[(i, seed)]` and the splits behave as `VideoDataset`'s. The
    folders have no fps: a dense clip's stride is `cfg.sampling_rate` frames as listed.
    """

    noun = "frame folder"
    list_formats = ("rawframes",)
    cfg: RawFramesConfig

    def __init__(self, cfg: RawFramesConfig, split: str):
        super().__init__(cfg, split)
        try:
            frame_path("", 0, cfg.frame_template, cfg.frame_start_index)
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(
                f"data.frame_template={cfg.frame_template!r} must format one frame number, e.g. 'img_{{:05d}}.jpg': {e}"
            ) from None
        if cfg.frame_start_index < 0:
            raise ValueError(f"data.frame_start_index must be 0 or more, got {cfg.frame_start_index}")

    def open(self, item: ListItem) -> Opened:
        if not os.path.isdir(item.path):
            raise BadVideoError("missing" if not os.path.exists(item.path) else "not a folder")
        if not item.num_frames:
            raise BadVideoError("zero frames")
        cfg = self.cfg
        # a folder has no frame rate: the stride is taken as listed
        return Source(item.num_frames), lambda indices: read_frame_folder(
            item.path, indices, cfg.frame_template, cfg.frame_start_index
        )
