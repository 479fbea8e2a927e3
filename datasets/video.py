"""`VideoDataset`: clips from video files, decoded with `datasets.decode` (one sorted,
deduplicated decord `get_batch` per clip), sampled by `datasets.sampling`, transformed by
`datasets.transforms`.

Unreadable videos (missing, empty, truncated, undecodable) do not stop an epoch: the sample
is replaced by the next readable one of the split, the file is warned about once, kept in
`dataset.bad_files` and appended to `cfg.bad_files_log`; past `cfg.max_bad_fraction` of the
list, a RuntimeError lists them all.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import transforms as T
from .config import DataConfig
from .decode import BadVideoError, open_video, read_frames
from .lists import ListItem, append_bad_file, read_bad_files, read_list, resolve_list_path
from .sampling import clip_indices, segment_indices

SPLITS = ("train", "val", "test")
SAMPLINGS = ("dense", "segment")
Key = Union[int, Tuple[int, int]]


def count_classes(root: str, items: List[ListItem]) -> Optional[int]:
    """`classes.txt` in `root` (one name per line) if present, else the highest label + 1."""
    names = os.path.join(root, "classes.txt")
    if os.path.isfile(names):
        with open(names, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    labels = [l for it in items for l in (it.label if isinstance(it.label, list) else [it.label])]
    return max(labels) + 1 if labels else None


class VideoDataset(torch.utils.data.Dataset):
    """Clips from the video files of a list (`cfg.list_format` video, csv or multilabel).

    `dataset[i]` or `dataset[(i, seed)]` -> (clip float32 (C, T, H, W), label). With a seed,
    every random draw (frames, scale, crop, flip) comes from `np.random.default_rng(seed)`:
    the engine derives the seed from (run seed, epoch, index), so a resumed run sees the
    same samples whatever the number of workers. A plain index draws from a generator seeded
    with `torch.initial_seed()` (different in each worker and epoch), the index and a call
    counter. val/test splits take the test-mode clip (centred) and the centre crop, no
    randomness. The label is an int, or a multi-hot float32 tensor for `multilabel` lists.
    """

    def __init__(self, cfg: DataConfig, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if cfg.list_format == "rawframes":
            raise ValueError("data.list_format=rawframes lists frame folders; data.dataset=video reads video files")
        if cfg.sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
        _check_sizes(cfg)
        self.cfg = cfg
        self.split = split
        self.train = split == "train"
        list_file = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list or cfg.val_list}[split]
        self.list_path = resolve_list_path(cfg.root, list_file)
        self.items = read_list(self.list_path, cfg.root, cfg.list_format, cfg.separator, cfg.path_prefix)
        if not self.items:
            raise ValueError(f"{self.list_path} lists no samples (data.{split}_list)")
        self.multilabel = cfg.list_format == "multilabel"
        self.num_classes = count_classes(cfg.root, self.items)
        self.bad_files: Dict[str, str] = {}
        self._paths = {it.path for it in self.items}
        self._calls = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Key):
        index, entropy = self._parse_key(key)
        n = len(self.items)
        for step in range(n):
            i = (index + step) % n
            item = self.items[i]
            if item.path in self.bad_files:
                continue
            # the same generator for whichever item ends up used, so the result does not
            # depend on whether this process already knew the earlier items were bad
            rng = np.random.default_rng(entropy)
            try:
                return self.load(item, rng), self.target(item)
            except BadVideoError as e:
                self._record_bad(item.path, str(e))
        raise RuntimeError(f"no readable video in {self.list_path}: {self._bad_listing()}")

    def _parse_key(self, key: Key):
        if isinstance(key, (tuple, list)):
            index, seed = key
            return int(index) % len(self.items), int(seed) % 2**64
        self._calls += 1
        return int(key) % len(self.items), [torch.initial_seed() % 2**64, int(key) % 2**63, self._calls]

    def sample_indices(self, num_video_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of this split's clip for a video (train: random, else test mode)."""
        cfg, mode = self.cfg, "train" if self.train else "test"
        if cfg.sampling == "segment":
            return segment_indices(num_video_frames, cfg.num_frames, mode, rng)
        return clip_indices(num_video_frames, cfg.num_frames, cfg.sampling_rate, fps, cfg.target_fps,
                            mode, rng, short_video=cfg.short_video)

    def load(self, item: ListItem, rng: np.random.Generator) -> torch.Tensor:
        """Decode and transform one item; BadVideoError if the file cannot give the clip."""
        vr = open_video(item.path)
        indices = self.sample_indices(len(vr), vr.get_avg_fps(), rng)
        frames = read_frames(vr, indices)
        cfg = self.cfg
        if self.train:
            return T.train_clip(frames, cfg.crop_size, cfg.train_short_side, cfg.mean, cfg.std, rng,
                                flip=cfg.flip, multi_scale=cfg.multi_scale_crop)
        return T.eval_clip(frames, cfg.crop_size, cfg.test_short_side, cfg.mean, cfg.std)

    def target(self, item: ListItem):
        """The int label, or a multi-hot float32 vector for multi-label lists."""
        if not self.multilabel:
            return item.label
        out = torch.zeros(self.num_classes, dtype=torch.float32)
        out[item.label] = 1.0
        return out

    def _record_bad(self, path: str, reason: str) -> None:
        self.bad_files[path] = reason
        warnings.warn(f"skipping unreadable video {path}: {reason}", RuntimeWarning, stacklevel=3)
        log = self.cfg.bad_files_log
        known = dict(self.bad_files)
        if log:
            append_bad_file(log, path, reason)
            # other workers' findings count too; keep only this split's files
            known.update({p: r for p, r in read_bad_files(log).items() if p in self._paths})
        if len(known) > self.cfg.max_bad_fraction * len(self.items):
            self.bad_files.update(known)
            raise RuntimeError(
                f"{len(known)} of {len(self.items)} videos in {self.list_path} are unreadable, more than "
                f"data.max_bad_fraction={self.cfg.max_bad_fraction}: {self._bad_listing()}")

    def _bad_listing(self) -> str:
        return "".join(f"\n  {p}: {r}" for p, r in sorted(self.bad_files.items()))


def _check_sizes(cfg: DataConfig) -> None:
    if len(cfg.train_short_side) not in (1, 2) or cfg.train_short_side[0] > cfg.train_short_side[-1]:
        raise ValueError(f"data.train_short_side must be [min, max], got {cfg.train_short_side}")
    if not cfg.multi_scale_crop and cfg.crop_size > cfg.train_short_side[0]:
        raise ValueError(f"data.crop_size={cfg.crop_size} is larger than data.train_short_side[0]={cfg.train_short_side[0]}")
    if cfg.crop_size > cfg.test_short_side:
        raise ValueError(f"data.crop_size={cfg.crop_size} is larger than data.test_short_side={cfg.test_short_side}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ValueError(f"data.mean and data.std need 3 values, got {cfg.mean} and {cfg.std}")
