"""`SkeletonDataset`: NTU-style skeleton arrays for MS-G3D and its personality variant.

Data (MS-G3D's feeder format): one `.npy` array (N, C, T, V, M) per split (`cfg.train_data`,
`cfg.val_data`, `cfg.test_data`), opened memory-mapped so a worker reads only the samples it
is asked for, and a label `.pkl` holding `(sample_names, labels)` (the split's list:
`cfg.train_list`, ...; Python-2 pickles load too).

Per sample, in this order (`sequence_transform`, shared with `datasets.multiperson`):
1. temporal crop and resize to `cfg.window_size` frames (0: keep T). The valid frames are
   those up to the last non-zero one (NTU arrays are zero-padded). Training keeps a random
   fraction p ~ U(`cfg.crop_range`) of them at a random start; val/test keep them all. The
   crop is resized by linear interpolation along time (first and last frames kept);
2. training only, with `cfg.random_rotation` > 0: xyz rotated by R = Rz Ry Rx, each angle
   uniform in [-random_rotation, random_rotation] degrees;
3. the stream: `joint` coordinates, or `bone` vectors bone[v1] = joint[v1] - joint[v2] for
   the graph's (v1, v2) pairs (the root's bone is 0);
4. with `cfg.laban`, the 12 Laban channels of the joints (`datasets.laban`, by `cfg.laban_formula`)
   are appended.

`dataset[i]` / `dataset[(i, seed)]` -> (float32 (C, T, V, M) tensor, label int), C = 3 (15
with Laban); random draws come from `np.random.default_rng(seed)` in the order crop fraction,
crop start, rotation angles. With `cfg.targets_csv`, the second element is instead the
float32 (len(cfg.target_columns),) regression targets of the sample's participant (the
participant id comes from the sample name through `cfg.participant_regex`);
`dataset.participants[i]` names it, so predictions can be averaged per participant, and
`dataset.output_names` names the targets (per-output metrics).

The bone pairs come from `models.graphs`, a numpy-only module with no framework dependency
(the one model-side import of the data layer, made when a dataset needs bones).
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import SkeletonStreamConfig
from .laban import authors_laban_features, bone_vectors, laban_features
from .lists import read_class_names, resolve_list_path
from .registry import register_kind
from .video import SPLITS, Key, parse_key

STREAMS = ("joint", "bone")


@dataclass
class SkeletonConfig(SkeletonStreamConfig):
    """`data.dataset=skeleton`: NTU-style (N, C, T, V, M) arrays, one per split, with a label .pkl as each
    split's list (MS-G3D's feeder), optionally regression targets per participant."""

    dataset: str = "skeleton"
    """`skeleton`."""
    train_data: str = "train_data.npy"
    """(N, C, T, V, M) .npy of the training split (its `train_list` is the label .pkl)."""
    val_data: str = "val_data.npy"
    """.npy of the validation split (labels: `val_list`)."""
    test_data: Optional[str] = None
    """.npy of the test split (labels: `test_list`); defaults to `val_data`."""
    targets_csv: Optional[str] = None
    """CSV of per-participant regression targets; set, samples return float32 targets instead of the label."""
    participant_column: str = "participant"
    """The `targets_csv` column holding the participant id."""
    target_columns: List[str] = field(
        default_factory=lambda: ["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]
    )
    """The `targets_csv` columns returned as targets, in this order."""
    participant_regex: str = r"^([^_]+)"
    """Regex whose first group (or whole match) takes the participant id from a sample name."""

    def has_own_test_split(self) -> bool:
        """A skeleton test split has files of its own with `test_list` or `test_data`."""
        return self.test_list is not None or self.test_data is not None


def graph_bone_pairs(name: str) -> List[Tuple[int, int]]:
    """(v1, v2) pairs of graph `name` for bone[v1] = joint[v1] - joint[v2]."""
    from action_launch.models.graphs import bone_pairs  # numpy-only module; imported when bones are needed

    try:
        return bone_pairs(name)
    except KeyError as e:
        raise ValueError(f"data.graph: {e.args[0]}") from None


def valid_length(x: np.ndarray) -> int:
    """Frames up to and including the last one with any non-zero value (all T if none)."""
    nonzero = np.flatnonzero(np.abs(x).reshape(x.shape[0], x.shape[1], -1).max(axis=(0, 2)) > 0)
    return int(nonzero[-1]) + 1 if len(nonzero) else x.shape[1]


def resize_time(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of (C, T, ...) to (C, length, ...), first and last frames kept."""
    t = x.shape[1]
    if t == length:
        return x
    pos = np.linspace(0.0, t - 1, length)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo).astype(x.dtype).reshape((1, length) + (1,) * (x.ndim - 2))
    return x[:, lo] * (1 - w) + x[:, hi] * w


def crop_window(
    x: np.ndarray,
    window: int,
    crop_range: Sequence[float],
    rng: Optional[np.random.Generator],
    valid: Optional[int] = None,
) -> np.ndarray:
    """Step 1 of the module docstring: crop the valid frames (randomly when `rng` is given)
    and resize to `window` frames (0: no crop, no resize)."""
    if window <= 0:
        return x
    valid = valid_length(x) if valid is None else valid
    start, length = 0, valid
    if rng is not None:
        p = float(rng.uniform(crop_range[0], crop_range[-1]))
        length = min(valid, max(1, int(round(p * valid))))
        start = int(rng.integers(0, valid - length + 1))
    return resize_time(x[:, start : start + length], window)


def rotation_matrix(ax: float, ay: float, az: float) -> np.ndarray:
    """R = Rz(az) @ Ry(ay) @ Rx(ax), angles in radians."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate the xyz channels (0-2) of (C, T, ...) by a random rotation (step 2)."""
    angles = np.deg2rad(rng.uniform(-degrees, degrees, size=3))
    r = rotation_matrix(*angles).astype(x.dtype)
    out = x.copy()
    out[:3] = np.tensordot(r, x[:3], axes=(1, 0))
    return out


def sequence_transform(
    x: np.ndarray,
    cfg: SkeletonStreamConfig,
    pairs: Optional[List[Tuple[int, int]]],
    rng: Optional[np.random.Generator],
    valid: Optional[int] = None,
) -> np.ndarray:
    """Steps 1-4 of the module docstring on one (C, T, V, ...) float32 sequence; `rng` None
    means evaluation (no random crop or rotation); `valid` overrides the valid length."""
    x = crop_window(x, cfg.window_size, cfg.crop_range, rng, valid)
    if rng is not None and cfg.random_rotation > 0:
        x = random_rotate(x, cfg.random_rotation, rng)
    joints = x
    if cfg.skeleton_stream == "bone":
        x = bone_vectors(joints, _needed(pairs))
    if cfg.laban:
        laban = (
            authors_laban_features(joints[:3])
            if cfg.laban_formula == "authors"
            else laban_features(joints[:3], _needed(pairs))
        )
        x = np.concatenate([x, laban])
    return np.ascontiguousarray(x, dtype=np.float32)


def _needed(pairs: Optional[List[Tuple[int, int]]]) -> List[Tuple[int, int]]:
    """The bone pairs, which bones and Laban features need (the dataset reads them when it computes either)."""
    if pairs is None:
        raise ValueError("bones and Laban features need the graph's bone pairs, got pairs=None")
    return pairs


def check_skeleton_config(cfg: SkeletonStreamConfig) -> None:
    """ValueError naming the key of an invalid skeleton setting."""
    if cfg.skeleton_stream not in STREAMS:
        raise ValueError(f"data.skeleton_stream must be one of {STREAMS}, got {cfg.skeleton_stream!r}")
    if cfg.window_size < 0:
        raise ValueError(f"data.window_size must be >= 0 (0 keeps all frames), got {cfg.window_size}")
    lo, hi = cfg.crop_range[0], cfg.crop_range[-1]
    if len(cfg.crop_range) not in (1, 2) or not 0 < lo <= hi <= 1:
        raise ValueError(f"data.crop_range must be [min, max] with 0 < min <= max <= 1, got {cfg.crop_range}")
    if cfg.laban and cfg.laban_formula == "authors" and graph_bone_pairs(cfg.graph) != graph_bone_pairs("smpl-24"):
        raise ValueError(
            f"data.laban_formula=authors computes the personality authors' SMPL-24 features; "
            f"data.graph must be smpl-24 (or another graph with its bones), got {cfg.graph!r}"
        )


def load_labels(path: str) -> Tuple[List[str], List]:
    """(sample_names, labels) from a label .pkl (MS-G3D's format; Python-2 pickles too)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    with open(path, "rb") as f:
        try:
            names, labels = pickle.load(f, encoding="latin1")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: expected a pickled (sample_names, labels) pair: {e}") from None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != len(labels):
        raise ValueError(f"{path}: {len(names)} sample names but {len(labels)} labels")
    return names, list(labels)


def participant_of(name: str, pattern: str) -> Optional[str]:
    """The participant id in a sample name: the regex's first group, or its whole match."""
    m = re.search(pattern, name)
    if m is None:
        return None
    return m.group(1) if m.re.groups else m.group(0)


def read_targets(path: str, participant_column: str, columns: Sequence[str]) -> Dict[str, np.ndarray]:
    """{participant: float32 (len(columns),) targets} from a CSV with a header row."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.targets_csv not found: {path}")
    out: Dict[str, np.ndarray] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in [participant_column, *columns] if c not in header]
        if missing:
            raise ValueError(
                f"{path}: no column(s) {missing} (data.participant_column / data.target_columns); "
                f"the header has {header}"
            )
        for number, row in enumerate(reader, start=2):
            try:
                out[row[participant_column].strip()] = np.array([float(row[c]) for c in columns], np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: non-numeric target ({e})") from None
    return out


@register_kind(SkeletonConfig)
class SkeletonDataset(torch.utils.data.Dataset):
    """Skeleton sequences of an NTU-style .npy + label .pkl; see the module docstring."""

    def __init__(self, cfg: SkeletonConfig, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        check_skeleton_config(cfg)
        self.cfg, self.split, self.train = cfg, split, split == "train"
        data_file = {"train": cfg.train_data, "val": cfg.val_data, "test": cfg.test_data or cfg.val_data}[split]
        list_file = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list or cfg.val_list}[split]
        self.data_path = resolve_list_path(cfg.root, data_file)
        self.label_path = resolve_list_path(cfg.root, list_file)
        if not os.path.isfile(self.data_path):
            raise FileNotFoundError(f"skeleton data not found: {self.data_path} (data.{split}_data)")
        self._data: Optional[np.memmap] = None
        if self.data.ndim != 5:
            raise ValueError(f"{self.data_path}: expected (N, C, T, V, M), got shape {self.data.shape}")
        self.sample_names, self.labels = load_labels(self.label_path)
        if len(self.labels) != len(self.data):
            raise ValueError(f"{self.label_path} has {len(self.labels)} samples, {self.data_path} has {len(self.data)}")
        _, c, _, v, _ = self.data.shape
        if (cfg.laban or cfg.random_rotation > 0) and c < 3:
            raise ValueError(f"data.laban / data.random_rotation need xyz coordinates; {self.data_path} has C={c}")
        self.pairs = graph_bone_pairs(cfg.graph) if (cfg.skeleton_stream == "bone" or cfg.laban) else None
        if self.pairs is not None and len(self.pairs) != v:
            raise ValueError(f"data.graph={cfg.graph!r} has {len(self.pairs)} joints, {self.data_path} has V={v}")
        self.class_names: Optional[List[str]] = read_class_names(cfg.root)  # label i's name (the root's classes.txt)
        # as the clip datasets count: classes.txt, else the highest label + 1 (a val split may lack the last classes)
        labelled = int(max(self.labels)) + 1 if self.labels else None
        self.num_classes = len(self.class_names) if self.class_names else labelled
        self.participants: Optional[List[str]] = None
        self.targets: Optional[np.ndarray] = None
        self.output_names: Optional[List[str]] = list(cfg.target_columns) if cfg.targets_csv else None
        if cfg.targets_csv:
            self._join_targets(cfg.targets_csv)
        self._calls = 0

    def _join_targets(self, targets_csv: str) -> None:
        cfg = self.cfg
        path = resolve_list_path(cfg.root, targets_csv)
        table = read_targets(path, cfg.participant_column, cfg.target_columns)
        found = [participant_of(n, cfg.participant_regex) for n in self.sample_names]
        unknown = [n for n, p in zip(self.sample_names, found) if p is None or p not in table]
        self.participants = [p for p in found if p is not None]  # all of them once `unknown` is empty
        if unknown:
            raise ValueError(
                f"{len(unknown)} samples of {self.label_path} have no participant in {path} "
                f"(data.participant_regex={cfg.participant_regex!r}), e.g. {unknown[:3]}"
            )
        self.targets = np.stack([table[p] for p in self.participants])

    @property
    def data(self) -> np.memmap:
        """The (N, C, T, V, M) array, memory-mapped (opened once per process: a worker started
        with spawn reopens the file rather than receiving a pickled copy of the whole array)."""
        if self._data is None:
            self._data = np.load(self.data_path, mmap_mode="r")
        return self._data

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Key):
        if not isinstance(key, (tuple, list)):
            self._calls += 1
        index, entropy = parse_key(key, len(self), self._calls)
        rng = np.random.default_rng(entropy) if self.train else None
        x = np.array(self.data[index], dtype=np.float32)  # copies this one sample out of the map
        out = torch.from_numpy(sequence_transform(x, self.cfg, self.pairs, rng))
        if self.targets is not None:
            return out, torch.from_numpy(self.targets[index].copy())
        return out, int(self.labels[index])
