"""`VideoDataset`: clips from video files, decoded with `datasets.decode` (one sorted,
deduplicated decord `get_batch` per clip), sampled by `datasets.sampling`, transformed by
`datasets.transforms`.

`ClipDataset` is the part every frame source shares (video files here, frame folders in
`datasets.rawframes`, the per-person clips of `datasets.multiperson`): the list, the seeded
keys, sampling, transforms, the multi-view test split and bad-file skipping. A subclass only
says how to open one item (`open`: its frame count, fps and a reader of given indices).

Which frames a clip takes and how they are resized, cropped, augmented and viewed is the job of the
split's protocol (`data.protocol`, `datasets.protocols`): this module decodes what it asks for.

Unreadable videos (missing, empty, truncated, undecodable) do not stop an epoch: the sample
is replaced by the next readable one of the split, the file is logged once (a WARNING line), kept in
`dataset.bad_files` and appended to `cfg.bad_files_log`; past `cfg.max_bad_fraction` of the
list, an error lists them all (see `BadFileSkipper`).

Splits: `train` (the protocol's random clip and augmentation) and `val` (its one deterministic view)
give `(clip (C, T, H, W), label)`. `test` gives `(views (V, C, T, H, W), label)` with V =
`cfg.test_num_clips` x `cfg.test_num_crops`, in clip-major order (view `v = clip * num_crops + crop`);
the evaluator combines the V predictions of a video as the protocol's upstream does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import numpy as np
import torch

from .config import ClipConfig, DataConfig, ListedClipConfig, VideoFilesConfig
from .decode import BadVideoError, open_video, read_frames
from .lists import (
    ListItem,
    append_bad_file,
    bad_file_listing,
    read_bad_files,
    read_class_names,
    read_list,
    resolve_list_path,
    too_many_bad_files,
)
from .protocols import Source, make_protocol, stream_timing
from .registry import register_kind

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
SAMPLINGS = ("dense", "segment")
Key = Union[int, Tuple[int, int]]
# (what the protocol samples from, reader: indices -> (T, H, W, C) uint8 RGB frames)
Opened = Tuple[Source, Callable[[np.ndarray], np.ndarray]]


@dataclass
class VideoConfig(ListedClipConfig, VideoFilesConfig):
    """`data.dataset=video`: clips decoded from the video files of a classification list."""

    dataset: str = "video"
    """`video`."""


def count_classes(root: str, items: List[ListItem]) -> Optional[int]:
    """`classes.txt` in `root` (one name per line) if present, else the highest label + 1."""
    names = read_class_names(root)
    if names is not None:
        return len(names)
    labels = [l for it in items for l in (it.label if isinstance(it.label, list) else [it.label])]
    return max(labels) + 1 if labels else None


def split_list(cfg: DataConfig, split: str) -> str:
    """The list file of `split` (test falls back to the val list), resolved against `cfg.root`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    list_file = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list or cfg.val_list}[split]
    return resolve_list_path(cfg.root, list_file)


def parse_key(key: Key, n: int, calls: int):
    """(index, entropy) of a dataset key: `(i, seed)` -> the seed itself; a plain `i` ->
    entropy from `torch.initial_seed()` (per worker and epoch), the index and a call counter."""
    if isinstance(key, (tuple, list)):
        index, seed = key
        return int(index) % n, int(seed) % 2**64
    return int(key) % n, [torch.initial_seed() % 2**64, int(key) % 2**63, calls]


class BadFileSkipper:
    """Bad-file bookkeeping shared by the datasets: skip, say so once, log, and the ceiling
    `cfg.max_bad_fraction` of the list. Needs `self.cfg`, `self.list_path`, `self.items`,
    `self._paths` (the split's files) and `self.noun`.

    With `cfg.bad_files_log` (a run's `bad_files.tsv`, shared by its DataLoader workers) a file is
    said and logged once per run, and the log's owner enforces the ceiling with
    `ceiling_error()` in its own process, over what every worker found. Without a log, the
    dataset raises itself past the ceiling."""

    noun = "video"
    cfg: ClipConfig
    list_path: str
    items: list
    bad_files: Dict[str, str]
    _paths: Set[str]

    def _record_bad(self, path: str, reason: str) -> None:
        self.bad_files[path] = reason
        log = self.cfg.bad_files_log
        if log:
            if path in read_bad_files(log):  # another worker, or an earlier epoch, found it
                return
            append_bad_file(log, path, reason)
        # a log line, not a Python warning: one line in the run's own format, without the echoed source line
        logger.warning("skipping unreadable %s %s: %s", self.noun, path, reason)
        error = None if log else self.ceiling_error()
        if error:
            raise RuntimeError(error)

    def ceiling_error(self) -> Optional[str]:
        """The error to stop on once this split's unreadable files (this process's and the log's) pass
        `cfg.max_bad_fraction` of the list, listing every one found; None below the ceiling."""
        known = dict(self.bad_files)
        if self.cfg.bad_files_log:
            known.update({p: r for p, r in read_bad_files(self.cfg.bad_files_log).items() if p in self._paths})
        error = too_many_bad_files(
            known, len(self.items), self.list_path, self.noun, self.cfg.max_bad_fraction, scanned=False
        )
        if error:
            self.bad_files.update(known)
        return error


class ClipDataset(BadFileSkipper, torch.utils.data.Dataset):
    """Clips from the items of a list; subclasses define `open(item)`.

    `dataset[i]` or `dataset[(i, seed)]` -> (clip float32 (C, T, H, W), label); the `test`
    split gives (views float32 (V, C, T, H, W), label), see the module docstring. With a
    seed, every random draw (frames, scale, crop, flip) comes from
    `np.random.default_rng(seed)`: the engine derives the seed from (run seed, epoch, index),
    so a resumed run sees the same samples whatever the number of workers. A plain index
    draws from a generator seeded with `torch.initial_seed()` (different in each worker and
    epoch), the index and a call counter. val/test splits take the test-mode clip(s) and
    fixed crops, no randomness. The label is an int, or a multi-hot float32 tensor for
    `multilabel` lists.
    """

    list_formats: Tuple[str, ...] = ("video", "csv", "multilabel")

    def __init__(self, cfg: ClipConfig, split: str):
        self.list_path = split_list(cfg, split)
        listed = cfg if isinstance(cfg, ListedClipConfig) else None  # a data.list_format list (multiperson: its own)
        if listed is not None and listed.list_format not in self.list_formats:
            raise ValueError(
                f"data.dataset={cfg.dataset} reads {self.noun}s: data.list_format must be one of "
                f"{self.list_formats}, got {listed.list_format!r}"
            )
        if cfg.sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
        self.protocol = make_protocol(cfg)
        self.cfg = cfg
        self.split = split
        self.train = split == "train"
        self.items = self.read_items()
        if not self.items:
            raise ValueError(f"{self.list_path} lists no samples (data.{split}_list)")
        self.multilabel = listed is not None and listed.list_format == "multilabel"
        self.num_classes = count_classes(cfg.root, self.items)
        # label i's name (the data root's classes.txt; None without one): the confusion matrix's and per-class metrics'
        self.class_names: Optional[List[str]] = read_class_names(cfg.root)
        self.bad_files: Dict[str, str] = {}
        self._paths = {p for it in self.items for p in self.item_paths(it)}
        self._calls = 0

    def read_items(self) -> list:
        """The split's items, parsed from `self.list_path` (a `data.list_format` list; a dataset whose lists have a
        format of their own overrides this)."""
        cfg = self.cfg
        assert isinstance(cfg, ListedClipConfig), f"{type(self).__name__} reads its own lists: it overrides read_items"
        return read_list(self.list_path, cfg.root, cfg.list_format, cfg.separator, cfg.path_prefix)

    def item_paths(self, item) -> Tuple[str, ...]:
        """The files an item reads (one for a video or frame folder); any bad one skips it."""
        return (item.path,)

    @property
    def num_views(self) -> int:
        """Views per sample: clips x crops for the test split, else 1."""
        return self.protocol.num_views if self.split == "test" else 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Key):
        index, entropy = self._parse_key(key)
        n = len(self.items)
        for step in range(n):
            i = (index + step) % n
            item = self.items[i]
            if any(p in self.bad_files for p in self.item_paths(item)):
                continue
            # the same generator for whichever item ends up used, so the result does not
            # depend on whether this process already knew the earlier items were bad
            rng = np.random.default_rng(entropy)
            try:
                return self.sample(item, rng)
            except BadVideoError as e:
                # an item of several files says which one failed in `e.path`
                self._record_bad(getattr(e, "path", None) or item.path, str(e))
        raise RuntimeError(f"no readable {self.noun} in {self.list_path}: {bad_file_listing(self.bad_files)}")

    def _parse_key(self, key: Key):
        if not isinstance(key, (tuple, list)):
            self._calls += 1
        return parse_key(key, len(self.items), self._calls)

    def sample(self, item: Any, rng: np.random.Generator) -> tuple:
        """What `dataset[key]` returns for a readable item of `self.items` (a `ListItem` here, another kind in
        subclasses): (clip or views, label)."""
        return self.load(item, rng), self.target(item)

    def open(self, item: ListItem) -> Opened:
        """(source, reader of frame indices); BadVideoError if unreadable."""
        raise NotImplementedError

    def sample_indices(self, source: Source, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of this split's clip (train: random, val: the protocol's one view)."""
        return self.protocol.train_indices(source, rng) if self.train else self.protocol.val_indices(source)

    def view_indices(self, source: Source) -> np.ndarray:
        """(test_num_clips, num_frames) indices of the test clips."""
        return self.protocol.test_indices(source)

    def read(self, reader: Callable[[np.ndarray], np.ndarray], indices: np.ndarray) -> np.ndarray:
        """Frames `indices` in the model's channel order (`data.channel_order`)."""
        frames = reader(indices)
        return np.ascontiguousarray(frames[..., ::-1]) if self.cfg.channel_order == "bgr" else frames

    def load(self, item: ListItem, rng: np.random.Generator) -> torch.Tensor:
        """Decode and transform one item; BadVideoError if the source cannot give the clip."""
        source, reader = self.open(item)
        if self.split == "test":
            indices = self.view_indices(source)
            # one read of every view's frames, then split by clip
            frames = self.read(reader, indices.reshape(-1))
            return self.test_views(frames.reshape(indices.shape + frames.shape[1:]))
        return self.transform(self.read(reader, self.sample_indices(source, rng)), rng)

    def transform(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """(T, H, W, C) uint8 frames -> the split's float32 (C, T, H, W) clip."""
        return self.protocol.train_clip(frames, rng) if self.train else self.protocol.val_clip(frames)

    def test_views(self, frames: np.ndarray) -> torch.Tensor:
        """(clips, T, H, W, C) frames -> (clips x crops, C, T, H, W) views, clip-major."""
        return self.protocol.test_views(frames)

    def target(self, item: ListItem):
        """The int label, or a multi-hot float32 vector for multi-label lists."""
        if not self.multilabel:
            return item.label
        if self.num_classes is None:  # every line without labels, and no classes.txt
            raise ValueError(
                f"{self.list_path}: no line has a label and {self.cfg.root} has no classes.txt: "
                "cannot size the multi-hot targets"
            )
        out = torch.zeros(self.num_classes, dtype=torch.float32)
        out[item.label] = 1.0
        return out


@register_kind(VideoConfig)
class VideoDataset(ClipDataset):
    """Clips from the video files of a list (`cfg.list_format` video, csv or multilabel),
    decoded with decord; the source fps rescales the dense sampling stride."""

    noun = "video"
    cfg: VideoConfig

    def __init__(self, cfg: VideoConfig, split: str):
        if cfg.list_format == "rawframes":
            raise ValueError(
                "data.list_format=rawframes lists frame folders; data.dataset=video reads video files "
                "(use data.dataset=rawframes)"
            )
        super().__init__(cfg, split)

    def open(self, item: ListItem) -> Opened:
        vr = open_video(item.path, self.cfg.decoder)
        source = Source(len(vr), vr.get_avg_fps(), timing=lambda: stream_timing(item.path, vr))
        return source, lambda indices: read_frames(vr, indices)
