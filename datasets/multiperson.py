"""`MultiPersonDataset`: one sample = the synchronised clips (or skeleton sequences) of the
P people of one window of an interaction, one label, and the window's place in the
interaction (HIINT: per-person inputs, memory carried over consecutive windows).

List format, one window per line (blank lines and `#` comments skipped):

    interaction_id window_idx label path_person1 path_person2 ...

Every line has the same number P of people; paths resolve against `data.root` (joined with
`data.path_prefix`). Paths ending in `.npy` are skeleton sequences (C, T, V) or (C, T, V, 1)
(memory-mapped); anything else is a video file read with decord. A list holds one kind.

Items are sorted by (interaction_id, window_idx), so a sequential sampler (val/test, or a
batch-size-1 walk) feeds the windows of an interaction in order; `dataset.windows(id)` lists
an interaction's dataset indices in window order.

`dataset[i]` / `dataset[(i, seed)]` -> `(inputs, label, meta)`:
- inputs: float32 (P, C, T, H, W) for videos (the `test` split: (P, V, C, T, H, W) with V =
  test_num_clips x test_num_crops, clip-major as in `datasets.video`), or (P, C, T, V) for
  skeletons;
- label: int;
- meta: {"interaction": str, "window": int}; DataLoader's default collate turns a batch of
  them into {"interaction": [str, ...], "window": tensor}.
Synchronised means one draw for all people: the same frame indices (sampled over the
shortest person's frames) and the same scale/crop/flip, or for skeletons the same temporal
crop and rotation (`datasets.skeleton.sequence_transform` on the people stacked as M).
A missing or unreadable person file makes the window a bad file (skipped, said, logged
under that file's path, as in `VideoDataset`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch

from .config import ClipConfig, SkeletonStreamConfig, VideoFilesConfig
from .decode import BadVideoError, open_video, read_frames
from .protocols import Source
from .registry import register_kind
from .skeleton import check_skeleton_config, graph_bone_pairs, sequence_transform, valid_length
from .video import ClipDataset


@dataclass
class MultiPersonConfig(SkeletonStreamConfig, ClipConfig, VideoFilesConfig):
    """`data.dataset=multiperson`: synchronised windows of P people, each a video (the clip keys) or a skeleton
    sequence (the skeleton stream keys), from a list of its own format."""

    dataset: str = "multiperson"
    """`multiperson`."""


@dataclass(frozen=True)
class MultiPersonItem:
    """One line of a multi-person list."""

    interaction: str
    """Interaction id (groups the windows of one recording)."""
    window: int
    """Window index inside the interaction (0, 1, ... in time order)."""
    label: int
    """Class index of the window."""
    paths: Tuple[str, ...]
    """Resolved per-person files, person order as listed."""
    line: int = 0
    """1-based line number in the list file."""

    @property
    def path(self) -> str:
        """The first person's file (what a message names when no single file is at fault)."""
        return self.paths[0]


class BadPersonFile(BadVideoError):
    """One person's file of a window cannot be read; `path` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path = path


def read_multiperson_list(list_path: str, root: str = ".", path_prefix: str = "") -> List[MultiPersonItem]:
    """Parse and sort a multi-person list; ValueError `file:line: reason: 'line'` when malformed."""
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"list file not found: {list_path}")
    items: List[MultiPersonItem] = []
    seen: Dict[Tuple[str, int], int] = {}
    with open(list_path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            try:
                if len(parts) < 4:
                    raise ValueError("expected 'interaction_id window_idx label path_person1 [path_person2 ...]'")
                window, label = int(parts[1]), int(parts[2])
                if window < 0 or label < 0:
                    raise ValueError("negative window index or label")
                if items and len(parts) - 3 != len(items[0].paths):
                    raise ValueError(f"{len(parts) - 3} people, line {items[0].line} has {len(items[0].paths)}")
                if (parts[0], window) in seen:
                    raise ValueError(f"window {window} of {parts[0]!r} already on line {seen[parts[0], window]}")
            except ValueError as e:
                raise ValueError(f"{list_path}:{number}: malformed multiperson list line ({e}): {text!r}") from None
            seen[parts[0], window] = number
            paths = tuple(os.path.join(root, path_prefix, p) for p in parts[3:])
            items.append(MultiPersonItem(parts[0], window, label, paths, number))
    kinds = {p.endswith(".npy") for it in items for p in it.paths}
    if len(kinds) > 1:
        raise ValueError(f"{list_path} mixes skeleton .npy files and videos; one kind per list")
    return sorted(items, key=lambda it: (it.interaction, it.window))


@register_kind(MultiPersonConfig)
class MultiPersonDataset(ClipDataset):
    """Synchronised multi-person windows; see the module docstring."""

    noun = "person file"
    list_formats = ()  # the list has its own format, whatever data.list_format says
    cfg: MultiPersonConfig

    def __init__(self, cfg: MultiPersonConfig, split: str):
        super().__init__(cfg, split)
        self.num_people = len(self.items[0].paths)
        self.skeleton = self.items[0].paths[0].endswith(".npy")
        self.pairs = None
        if self.skeleton:
            check_skeleton_config(cfg)
            if cfg.skeleton_stream == "bone" or cfg.laban:
                self.pairs = graph_bone_pairs(cfg.graph)
        self._windows: Dict[str, List[int]] = {}
        for i, it in enumerate(self.items):
            self._windows.setdefault(it.interaction, []).append(i)

    def read_items(self) -> List[MultiPersonItem]:
        return read_multiperson_list(self.list_path, self.cfg.root, self.cfg.path_prefix)

    def item_paths(self, item: MultiPersonItem) -> Tuple[str, ...]:
        return item.paths

    @property
    def num_views(self):
        """Views per window of the test split (videos: (P, V, ...)); None for skeleton or feature
        windows, which have no view axis."""
        return None if self.skeleton else super().num_views

    @property
    def interactions(self) -> List[str]:
        """Interaction ids, sorted."""
        return list(self._windows)

    def windows(self, interaction: str) -> List[int]:
        """Dataset indices of an interaction's windows, in window order."""
        return list(self._windows[interaction])

    def sample(self, item: MultiPersonItem, rng: np.random.Generator) -> tuple:
        inputs = self._load_skeletons(item, rng) if self.skeleton else self._load_videos(item, rng)
        return inputs, item.label, {"interaction": item.interaction, "window": item.window}

    def _load_videos(self, item: MultiPersonItem, rng: np.random.Generator) -> torch.Tensor:
        readers = []
        for path in item.paths:
            try:
                readers.append(open_video(path, self.cfg.decoder))
            except BadVideoError as e:
                raise BadPersonFile(path, str(e)) from None
        source = Source(min(len(vr) for vr in readers), readers[0].get_avg_fps())
        if self.split == "test":
            indices = self.view_indices(source)
            flat = indices.reshape(-1)
        else:
            flat = indices = self.sample_indices(source, rng)
        person_seed = int(rng.integers(2**63))  # every person's spatial draws repeat this one
        clips = []
        for path, vr in zip(item.paths, readers):
            try:
                frames = self.read(functools.partial(read_frames, vr), flat)
            except BadVideoError as e:
                raise BadPersonFile(path, str(e)) from None
            if self.split == "test":
                clips.append(self.test_views(frames.reshape(indices.shape + frames.shape[1:])))
            else:
                clips.append(self.transform(frames, np.random.default_rng(person_seed)))
        return torch.stack(clips)

    def _load_skeletons(self, item: MultiPersonItem, rng: np.random.Generator) -> torch.Tensor:
        seqs = []
        for path in item.paths:
            if not os.path.isfile(path):
                raise BadPersonFile(path, "missing")
            try:
                x = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise BadPersonFile(path, f"unreadable .npy: {e}") from None
            if x.ndim == 4 and x.shape[-1] == 1:
                x = x[..., 0]
            if x.ndim != 3:
                raise BadPersonFile(path, f"expected (C, T, V), got shape {x.shape}")
            seqs.append(x)
        shapes = {(x.shape[0], x.shape[2]) for x in seqs}
        if len(shapes) != 1:
            raise BadPersonFile(item.path, f"people of one window differ in (C, V): {sorted(shapes)}")
        t = min(x.shape[1] for x in seqs)
        # people stacked as M: one crop/rotation for all; the crop spans the longest valid person
        stacked = np.stack([np.asarray(x[:, :t], dtype=np.float32) for x in seqs], axis=-1)
        valid = valid_length(stacked)
        out = sequence_transform(stacked, self.cfg, self.pairs, rng if self.train else None, valid)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(out, -1, 0)))
